package model

import (
	"context"
	"fmt"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/switchyard-ml/switchyard/pkg/kernels"
	"github.com/switchyard-ml/switchyard/pkg/lbl"
)

// Model is a decoder-only MoE transformer bound to one micro-batch shape.
// It owns the parameters (Params) and two compiled gorgonia programs over
// them: a training graph (forward, cross-entropy, backward) and an
// evaluation graph (forward only, with per-domain expert statistics).
type Model struct {
	Cfg   Config
	P     *Params
	Train *Program
	Eval  *Program
	scale float32 // gradient scale of one micro-batch (1 / accumulation steps)
	fail  error   // set by an op whose own error gorgonia would wrap
	// exchange moves tokens between expert-parallel ranks (nil: this model
	// holds every expert)
	exchange ExpertExchange
	tp       TensorGroup   // nil: no tensor parallelism
	biasOf   *lbl.Balancer // the routers' selection bias (training and evaluation)
}

// ExpertExchange is what expert parallelism needs from the parallel
// runtime: an all-to-all with variable counts over the expert-parallel
// group. Expert e lives on rank e*Size()/E.
type ExpertExchange interface {
	Rank() int
	Size() int
	AllToAllVF32(ctx context.Context, send []float32, sendCounts []int, recv []float32, recvCounts []int) error
}

// Option configures New.
type Option func(*options)

type options struct {
	exchange ExpertExchange
	tp       TensorGroup
}

// WithExpertParallel makes the model hold only its share of every MoE
// layer's routed experts and exchange tokens with the other expert-parallel
// ranks through ex.
func WithExpertParallel(ex ExpertExchange) Option { return func(o *options) { o.exchange = ex } }

// Program is one compiled graph with its input batch.
type Program struct {
	Batch *Batch
	g     *G.ExprGraph
	vm    G.VM
	xent  *xentOp
	// gorgonia-visible parameters and, in training graphs, their gradients
	params []*G.Node
	names  []string
	grads  []*G.Node
	moes   []*moeOp
	Stats  *ExpertStats // evaluation graphs only
	// KeepRegisters reuses gorgonia's intermediate tensors across runs
	// (default); off, every run re-allocates them (TapeMachine.Reset).
	KeepRegisters bool
}

// New builds a model for micro-batches of microBatch sequences. bal receives
// the router statistics of training steps (it must cover cfg.MoELayers()
// layers); domains sizes the evaluation statistics.
func New(cfg Config, microBatch int, bal *lbl.Balancer, domains int, opts ...Option) (*Model, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if microBatch < 1 {
		return nil, fmt.Errorf("%w: micro-batch = %d: must be >= 1", ErrConfig, microBatch)
	}
	useEngineBLAS()
	lo, hi := 0, cfg.Experts
	if o.exchange != nil {
		n, r := o.exchange.Size(), o.exchange.Rank()
		if cfg.Experts%n != 0 {
			return nil, fmt.Errorf("%w: experts = %d: expert parallelism over %d ranks needs a multiple of %d", ErrConfig, cfg.Experts, n, n)
		}
		lo, hi = r*cfg.Experts/n, (r+1)*cfg.Experts/n
	}
	tpRank, tp := 0, 1
	if o.tp != nil && o.tp.Size() > 1 {
		tpRank, tp = o.tp.Rank(), o.tp.Size()
		switch {
		case cfg.Heads%tp != 0:
			return nil, fmt.Errorf("%w: heads = %d: tensor parallelism over %d ranks needs a multiple of %d", ErrConfig, cfg.Heads, tp, tp)
		case microBatch%tp != 0:
			return nil, fmt.Errorf("%w: micro-batch = %d: tensor parallelism over %d ranks splits the MoE tokens by whole sequences and needs a multiple of %d", ErrConfig, microBatch, tp, tp)
		}
	} else {
		o.tp = nil
	}
	m := &Model{Cfg: cfg, P: buildParams(cfg, lo, hi, tpRank, tp), scale: 1, exchange: o.exchange, tp: o.tp}
	var err error
	m.biasOf = bal
	if m.Train, err = m.build(microBatch, bal, nil, true); err != nil {
		return nil, err
	}
	stats := NewExpertStats(cfg.MoELayers(), max(domains, 1), cfg.Experts)
	if m.Eval, err = m.build(microBatch, nil, stats, false); err != nil {
		return nil, err
	}
	return m, nil
}

// SetGradScale sets the factor applied to every gradient of one Step
// (1 / micro-batches per optimizer step).
func (m *Model) SetGradScale(s float32) { m.scale = s }

func (m *Model) build(B int, bal *lbl.Balancer, stats *ExpertStats, train bool) (*Program, error) {
	c := m.Cfg
	S, d, V := c.SeqLen, c.Dim, c.Vocab
	T := B * S
	tp := 1
	if m.tp != nil {
		tp = m.tp.Size()
	}
	dl := d / tp
	pr := &Program{Batch: NewBatch(B, S), g: G.NewGraph(), Stats: stats, KeepRegisters: true}
	g := pr.g
	kind := "eval"
	if train {
		kind = "train"
	}
	param := func(name string, shape ...int) *G.Node {
		w := m.P.W(name)
		var n *G.Node
		val := tensor.New(tensor.WithShape(shape...), tensor.WithBacking(w))
		if len(shape) == 1 {
			n = G.NewVector(g, tensor.Float32, G.WithShape(shape...), G.WithName(name), G.WithValue(val))
		} else {
			n = G.NewMatrix(g, tensor.Float32, G.WithShape(shape...), G.WithName(name), G.WithValue(val))
		}
		pr.params = append(pr.params, n)
		pr.names = append(pr.names, name)
		return n
	}
	tag := func(what string) string { return kind + "/" + what }
	must := func(n *G.Node, err error) *G.Node {
		if err != nil {
			panic(err)
		}
		return n
	}
	var buildErr error
	func() {
		defer func() {
			if r := recover(); r != nil {
				buildErr = fmt.Errorf("model: build graph: %v", r)
			}
		}()
		x := must(G.ApplyOp(newEmbedOp(tag("embed"), pr.Batch, V, d), param("embed", V, d)))
		moeIdx := 0
		for l := 0; l < c.Layers; l++ {
			h := must(G.ApplyOp(newRMSNormOp(tag(pname(l, "attn_norm")), T, d, c.NormEps), x, param(pname(l, "attn_norm"), d)))
			if m.tp != nil {
				h = must(G.ApplyOp(newTPCommOp(tag(pname(l, "tp_copy")), m.tp, false, T, d, &m.fail), h))
			}
			qkv := must(G.Mul(h, param(pname(l, "wqkv"), d, 3*dl)))
			a := must(G.ApplyOp(newAttentionOp(tag(pname(l, "attn")), B, S, c.Heads/tp, dl, c.RopeBase), qkv))
			o := must(G.Mul(a, param(pname(l, "wo"), dl, d)))
			if m.tp != nil {
				o = must(G.ApplyOp(newTPCommOp(tag(pname(l, "tp_reduce")), m.tp, true, T, d, &m.fail), o))
			}
			x = must(G.Add(x, o))
			h2 := must(G.ApplyOp(newRMSNormOp(tag(pname(l, "ffn_norm")), T, d, c.NormEps), x, param(pname(l, "ffn_norm"), d)))
			var f *G.Node
			if c.IsMoE(l) {
				op := newMoEOp(tag(pname(l, "moe")), l, moeIdx, c, pr.Batch, m.P, bal, stats, &m.scale, m.tp)
				// evaluation routes with the aux-loss-free bias too: it is
				// part of how the trained router selects experts
				op.biasOf = m.biasOf
				op.fail = &m.fail
				if m.exchange != nil {
					op.ep = newEPState(m.exchange, op.T, c.Experts, c.TopK, d, c.Hidden)
				}
				pr.moes = append(pr.moes, op)
				moeIdx++
				f = must(G.ApplyOp(op, h2))
			} else {
				f = must(G.ApplyOp(newDenseFFNOp(tag(pname(l, "ffn")), l, c, T, m.P), h2))
			}
			x = must(G.Add(x, f))
		}
		hf := must(G.ApplyOp(newRMSNormOp(tag("final_norm"), T, d, c.NormEps), x, param("final_norm", d)))
		logits := must(G.Mul(hf, param("head", d, V)))
		pr.xent = newXentOp(tag("xent"), pr.Batch, V, &m.scale)
		cost := must(G.ApplyOp(pr.xent, logits))
		if train {
			grads, err := G.Grad(cost, pr.params...)
			if err != nil {
				panic(err)
			}
			pr.grads = grads
		}
	}()
	if buildErr != nil {
		return nil, buildErr
	}
	pr.vm = G.NewTapeMachine(g)
	return pr, nil
}

// Step runs forward and backward on m.Train.Batch and adds the gradients
// (times the grad scale) into m.P.Grad. It returns the batch's mean
// cross-entropy in nats.
func (m *Model) Step() (float64, error) {
	pr := m.Train
	pr.Batch.SetValid()
	m.fail = nil
	if err := pr.vm.RunAll(); err != nil {
		pr.vm.Reset()
		if m.fail != nil {
			err = m.fail
		}
		return 0, fmt.Errorf("model: train step: %w", err)
	}
	for i, gn := range pr.grads {
		q := m.P.must(pr.names[i])
		kernels.Axpy(1, f32(gn.Value()), m.P.Grad[q.Offset:q.Offset+q.Size])
	}
	loss := pr.xent.loss
	pr.reset()
	return loss, nil
}

// Forward runs the evaluation graph on m.Eval.Batch, recording expert
// selections per domain in m.Eval.Stats. It returns the per-token negative
// log-likelihood in nats (0 at padding), valid until the next call.
func (m *Model) Forward() ([]float32, error) {
	pr := m.Eval
	pr.Batch.SetValid()
	m.fail = nil
	if err := pr.vm.RunAll(); err != nil {
		pr.vm.Reset()
		if m.fail != nil {
			err = m.fail
		}
		return nil, fmt.Errorf("model: forward: %w", err)
	}
	pr.reset()
	return pr.xent.nllT, nil
}

// reset readies the program's machine for the next run, keeping its
// registers unless KeepRegisters is off.
func (pr *Program) reset() {
	if pr.KeepRegisters && rewind(pr.vm) {
		return
	}
	pr.vm.Reset()
}

// Close releases the compiled programs.
func (m *Model) Close() error {
	for _, pr := range []*Program{m.Train, m.Eval} {
		if pr != nil && pr.vm != nil {
			pr.vm.Close()
		}
	}
	return nil
}
