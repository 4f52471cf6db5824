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
	env   *runEnv // what the ops share while a program runs
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
	m := &Model{Cfg: cfg, P: buildParams(cfg, lo, hi, tpRank, tp), env: &runEnv{scale: 1}, exchange: o.exchange, tp: o.tp}
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
func (m *Model) SetGradScale(s float32) { m.env.scale = s }

// builder assembles one program's graph. Its error is sticky: after the
// first failure every call returns nil without touching gorgonia, and build
// reports that first error.
type builder struct {
	m    *Model
	pr   *Program
	kind string // "train" or "eval": tags every op, so the graphs never share one
	err  error
	bal  *lbl.Balancer
	// next MoE layer's index among the MoE layers
	moeIdx int
}

func (b *builder) base(what string) opBase {
	return opBase{tag: b.kind + "/" + what, env: b.m.env, forwardOnly: b.kind == "eval"}
}

// param makes the gorgonia node of parameter name over its live weights.
func (b *builder) param(name string, shape ...int) *G.Node {
	val := tensor.New(tensor.WithShape(shape...), tensor.WithBacking(b.m.P.W(name)))
	opts := []G.NodeConsOpt{G.WithShape(shape...), G.WithName(name), G.WithValue(val)}
	var n *G.Node
	if len(shape) == 1 {
		n = G.NewVector(b.pr.g, tensor.Float32, opts...)
	} else {
		n = G.NewMatrix(b.pr.g, tensor.Float32, opts...)
	}
	b.pr.params = append(b.pr.params, n)
	b.pr.names = append(b.pr.names, name)
	return n
}

func (b *builder) keep(n *G.Node, err error, what string) *G.Node {
	if err != nil {
		b.err = fmt.Errorf("model: build %s graph: %s: %w", b.kind, what, err)
		return nil
	}
	return n
}

func (b *builder) apply(op G.Op, in ...*G.Node) *G.Node {
	if b.err != nil {
		return nil
	}
	n, err := G.ApplyOp(op, in...)
	return b.keep(n, err, op.String())
}

func (b *builder) mul(x, w *G.Node) *G.Node {
	if b.err != nil {
		return nil
	}
	n, err := G.Mul(x, w)
	return b.keep(n, err, "matmul "+w.Name())
}

func (b *builder) add(x, y *G.Node) *G.Node {
	if b.err != nil {
		return nil
	}
	n, err := G.Add(x, y)
	return b.keep(n, err, "residual add")
}

func (m *Model) build(B int, bal *lbl.Balancer, stats *ExpertStats, train bool) (*Program, error) {
	c := m.Cfg
	pr := &Program{Batch: NewBatch(B, c.SeqLen), g: G.NewGraph(), Stats: stats, KeepRegisters: true}
	b := &builder{m: m, pr: pr, kind: "eval", bal: bal}
	if train {
		b.kind = "train"
	}
	x := b.apply(newEmbedOp(b.base("embed"), pr.Batch, c.Vocab, c.Dim), b.param("embed", c.Vocab, c.Dim))
	for l := 0; l < c.Layers; l++ {
		x = b.add(x, b.attention(l, x))
		x = b.add(x, b.ffn(l, x))
	}
	hf := b.apply(newRMSNormOp(b.base("final_norm"), pr.Batch.T(), c.Dim, c.NormEps), x, b.param("final_norm", c.Dim))
	logits := b.mul(hf, b.param("head", c.Dim, c.Vocab))
	pr.xent = newXentOp(b.base("xent"), pr.Batch, c.Vocab)
	cost := b.apply(pr.xent, logits)
	if b.err != nil {
		return nil, b.err
	}
	if train {
		grads, err := G.Grad(cost, pr.params...)
		if err != nil {
			return nil, fmt.Errorf("model: build %s graph: gradients: %w", b.kind, err)
		}
		pr.grads = grads
	}
	pr.vm = G.NewTapeMachine(pr.g)
	return pr, nil
}

// attention is layer l's attention branch: norm, q/k/v projection (this
// rank's heads), the attention core and the output projection, with the
// tensor-parallel copy before and reduce after.
func (b *builder) attention(l int, x *G.Node) *G.Node {
	c, m := b.m.Cfg, b.m
	T, d := b.pr.Batch.T(), c.Dim
	tp := 1
	if m.tp != nil {
		tp = m.tp.Size()
	}
	dl := d / tp
	h := b.apply(newRMSNormOp(b.base(pname(l, "attn_norm")), T, d, c.NormEps), x, b.param(pname(l, "attn_norm"), d))
	if m.tp != nil {
		h = b.apply(newTPCommOp(b.base(pname(l, "tp_copy")), m.tp, false, T, d), h)
	}
	qkv := b.mul(h, b.param(pname(l, "wqkv"), d, 3*dl))
	a := b.apply(newAttentionOp(b.base(pname(l, "attn")), b.pr.Batch.B, c.SeqLen, c.Heads/tp, dl, c.RopeBase), qkv)
	o := b.mul(a, b.param(pname(l, "wo"), dl, d))
	if m.tp != nil {
		o = b.apply(newTPCommOp(b.base(pname(l, "tp_reduce")), m.tp, true, T, d), o)
	}
	return o
}

// ffn is layer l's feed-forward branch: norm, then the MoE layer or the
// dense SwiGLU.
func (b *builder) ffn(l int, x *G.Node) *G.Node {
	c, m := b.m.Cfg, b.m
	T := b.pr.Batch.T()
	h := b.apply(newRMSNormOp(b.base(pname(l, "ffn_norm")), T, c.Dim, c.NormEps), x, b.param(pname(l, "ffn_norm"), c.Dim))
	if !c.IsMoE(l) {
		return b.apply(newDenseFFNOp(b.base(pname(l, "ffn")), l, c, T, m.P), h)
	}
	// evaluation routes with the aux-loss-free bias too: it is part of
	// how the trained router selects experts
	w := moeWiring{bal: b.bal, biasOf: m.biasOf, stats: b.pr.Stats, tg: m.tp, ex: m.exchange}
	op := newMoEOp(b.base(pname(l, "moe")), l, b.moeIdx, c, b.pr.Batch, m.P, w)
	b.pr.moes = append(b.pr.moes, op)
	b.moeIdx++
	return b.apply(op, h)
}

// Step runs forward and backward on m.Train.Batch and adds the gradients
// (times the grad scale) into m.P.Grad. It returns the batch's mean
// cross-entropy in nats. ctx reaches every collective of the step.
func (m *Model) Step(ctx context.Context) (float64, error) {
	pr := m.Train
	pr.Batch.SetValid()
	if err := m.env.run(ctx, pr.vm.RunAll); err != nil {
		pr.vm.Reset()
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
func (m *Model) Forward(ctx context.Context) ([]float32, error) {
	pr := m.Eval
	pr.Batch.SetValid()
	if err := m.env.run(ctx, pr.vm.RunAll); err != nil {
		pr.vm.Reset()
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
