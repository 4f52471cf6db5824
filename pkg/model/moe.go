package model

// The MoE feed-forward as one gorgonia op: x [T,d] -> y [T,d]. Its inside is
// hand-written: router matmul and softmax, top-k (pkg/router), the
// load-balancing statistics (pkg/lbl), tokens sorted by expert and one GEMM
// per expert with no padding, weighted combine, optional shared experts.
// The router and expert parameters live in the model's flat Params and the
// backward op accumulates their gradients there directly.
//
//	xTD [T,d] input (normalised)      logitsTE, probsTE [T,E]
//	idxTK, wTK [T,k] selected experts and combine weights
//	xeSD, yeSD [Tk,d] inputs/outputs of every kept slot, grouped by expert
//	act (a, b, hh) [Tk,h] expert activations, slot order

import (
	"context"
	"fmt"
	"time"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/switchyard-ml/switchyard/pkg/kernels"
	"github.com/switchyard-ml/switchyard/pkg/lbl"
	"github.com/switchyard-ml/switchyard/pkg/router"
)

type moeOp struct {
	opBase
	layer, moeIdx int // transformer layer and index among MoE layers
	cfg           Config
	batch         *Batch
	p             *Params
	bal           *lbl.Balancer // nil in evaluation graphs
	biasOf        *lbl.Balancer // the selection bias's source (training and evaluation)
	stats         *ExpertStats  // non-nil: record selections per domain
	scale         *float32
	fail          *error      // the op's own error, reported instead of gorgonia's wrapping of it
	ep            *epState    // nil: every expert is local
	tg            TensorGroup // nil: no tensor parallelism; else this rank handles tokens [off, off+T)
	off, tFull    int
	T, d, h, E, k int
	capacity      int

	wr, w1, w3, w2     []float32
	gwr, gw1, gw3, gw2 []float32
	sw1, sw3, sw2      []float32
	gsw1, gsw3, gsw2   []float32

	logitsTE, probsTE []float32
	idxTK             []int32
	wTK               []float32
	plan              router.Plan
	xeSD, yeSD        []float32
	act               ffnAct
	sharedAct         []ffnAct
	experts           ffnGroup   // one block per routed expert, rows = its slots
	shared            []ffnGroup // one group per shared expert (they write the same output)
	outTD             []float32
	outVal            *tensor.Dense

	// backward
	dxTD, dyeSD, dxeSD  []float32
	dwTK                []float32
	dProbsTE, dLogitsTE []float32
	scratch             ffnAct
	sharedScratch       ffnAct
	dVal                *tensor.Dense
}

func newMoEOp(tag string, l, moeIdx int, cfg Config, b *Batch, p *Params, bal *lbl.Balancer, stats *ExpertStats, scale *float32, tg TensorGroup) *moeOp {
	tFull, d, h, E, k := b.T(), cfg.Dim, cfg.Hidden, cfg.Experts, cfg.TopK
	T, off := tFull, 0
	if tg != nil {
		T = tFull / tg.Size()
		off = tg.Rank() * T
	}
	o := &moeOp{opBase: opBase{tag: tag, inDims: []int{2}, out: tensor.Shape{tFull, d}},
		layer: l, moeIdx: moeIdx, cfg: cfg, batch: b, p: p, bal: bal, stats: stats, scale: scale,
		T: T, d: d, h: h, E: E, k: k, tg: tg, off: off, tFull: tFull}
	if cfg.CapacityFactor > 0 {
		o.capacity = router.Capacity(T, E, k, cfg.CapacityFactor)
	}
	o.wr, o.gwr = p.W(pname(l, "router")), p.G(pname(l, "router"))
	o.w1, o.gw1 = p.W(pname(l, "w1")), p.G(pname(l, "w1"))
	o.w3, o.gw3 = p.W(pname(l, "w3")), p.G(pname(l, "w3"))
	o.w2, o.gw2 = p.W(pname(l, "w2")), p.G(pname(l, "w2"))
	if cfg.Shared > 0 {
		o.sw1, o.gsw1 = p.W(pname(l, "shared_w1")), p.G(pname(l, "shared_w1"))
		o.sw3, o.gsw3 = p.W(pname(l, "shared_w3")), p.G(pname(l, "shared_w3"))
		o.sw2, o.gsw2 = p.W(pname(l, "shared_w2")), p.G(pname(l, "shared_w2"))
		for s := 0; s < cfg.Shared; s++ {
			act := newFFNAct(T, h)
			o.sharedAct = append(o.sharedAct, act)
			o.shared = append(o.shared, ffnGroup{d: d, h: h, blocks: []ffnBlock{{n: T,
				w1: o.sw1[s*d*h : (s+1)*d*h], w3: o.sw3[s*d*h : (s+1)*d*h], w2: o.sw2[s*h*d : (s+1)*h*d],
				gw1: o.gsw1[s*d*h : (s+1)*d*h], gw3: o.gsw3[s*d*h : (s+1)*d*h], gw2: o.gsw2[s*h*d : (s+1)*h*d], act: act}}})
		}
	}
	o.logitsTE = make([]float32, T*E)
	o.probsTE = make([]float32, T*E)
	o.idxTK = make([]int32, T*k)
	o.wTK = make([]float32, T*k)
	o.xeSD = make([]float32, T*k*d)
	o.yeSD = make([]float32, T*k*d)
	o.act = newFFNAct(T*k, h)
	o.outTD = make([]float32, tFull*d)
	o.outVal = dense(o.outTD, tFull, d)
	El := len(o.w1) / (d * h)
	o.experts = ffnGroup{d: d, h: h, blocks: make([]ffnBlock, El)}
	for e := range o.experts.blocks {
		o.experts.blocks[e] = ffnBlock{w1: o.w1[e*d*h : (e+1)*d*h], w3: o.w3[e*d*h : (e+1)*d*h], w2: o.w2[e*h*d : (e+1)*h*d],
			gw1: o.gw1[e*d*h : (e+1)*d*h], gw3: o.gw3[e*d*h : (e+1)*d*h], gw2: o.gw2[e*h*d : (e+1)*h*d]}
	}
	return o
}

// bindExperts points every expert block at its slot rows of this run's plan.
func (o *moeOp) bindExperts(backward bool) {
	d, h := o.d, o.h
	for e := range o.experts.blocks {
		b := &o.experts.blocks[e]
		lo, hi := int(o.plan.Offsets[e]), int(o.plan.Offsets[e+1])
		b.n = hi - lo
		b.x, b.y = o.xeSD[lo*d:hi*d], o.yeSD[lo*d:hi*d]
		b.act = o.act.rows(lo, hi, h)
		if backward {
			b.dy, b.dx = o.dyeSD[lo*d:hi*d], o.dxeSD[lo*d:hi*d]
			b.scratch = o.scratch.rows(lo, hi, h)
		}
	}
}

func (o *moeOp) Do(in ...G.Value) (G.Value, error) {
	T, d, E, k := o.T, o.d, o.E, o.k
	x := f32(in[0])[o.off*d : (o.off+T)*d]
	out := o.outTD[o.off*d : (o.off+T)*d]
	blas := kernels.Default()
	start := time.Now()
	// router: logits = x Wr, probs = softmax(logits)
	blas.Sgemm(false, false, T, E, d, 1, x, d, o.wr, E, 0, o.logitsTE, E)
	copy(o.probsTE, o.logitsTE)
	for t := 0; t < T; t++ {
		kernels.Softmax(o.probsTE[t*E : (t+1)*E])
	}
	var bias []float32
	if o.biasOf != nil {
		bias = o.biasOf.Bias(o.moeIdx)
	}
	router.TopK(o.probsTE, T, E, k, bias, o.idxTK)
	router.Weights(o.probsTE, T, E, k, o.idxTK, o.cfg.Renormalize, o.wTK)
	if err := o.plan.Build(o.idxTK, T, E, k, o.capacity); err != nil {
		*o.fail = err
		return nil, err
	}
	if o.bal != nil {
		o.bal.Record(o.moeIdx, o.logitsTE, o.probsTE, o.idxTK, T, o.batch.S, o.batch.Valid[o.off:o.off+T])
		// after the last MoE layer: the counts travel while the rest of
		// the step computes (the backward waits for them)
		o.bal.StartSync(context.Background())
	}
	if o.stats != nil {
		o.stats.record(o.moeIdx, o.batch, o.off, T, o.idxTK, k)
	}
	since(&prof.Router, start)
	defer since(&prof.Experts, time.Now())
	// dispatch: gather kept slots grouped by expert
	S := o.plan.Slots()
	for s := 0; s < S; s++ {
		t := int(o.plan.Token[s])
		copy(o.xeSD[s*d:(s+1)*d], x[t*d:(t+1)*d])
	}
	if o.ep != nil {
		if err := o.forwardRemote(context.Background(), S); err != nil {
			*o.fail = err
			return nil, err
		}
	} else {
		o.bindExperts(false)
		o.experts.forward(0)
	}
	// combine: y[t] = sum over kept choices of w[t,c] * ye[slot]
	clear(out)
	for s := 0; s < S; s++ {
		t, c := int(o.plan.Token[s]), int(o.plan.Choice[s])
		kernels.Axpy(o.wTK[t*k+c], o.yeSD[s*d:(s+1)*d], out[t*d:(t+1)*d])
	}
	for s := range o.shared {
		b := &o.shared[s].blocks[0]
		b.x, b.y = x, out
		o.shared[s].forward(1)
	}
	if o.tg != nil {
		if err := o.tg.AllGatherEqual(context.Background(), o.outTD); err != nil {
			*o.fail = fmt.Errorf("model: gather MoE outputs over the tensor-parallel group: %w", err)
			return nil, *o.fail
		}
	}
	return o.outVal, nil
}

func (o *moeOp) DiffWRT(int) []bool { return []bool{true} }

// lblScale is the auxiliary losses' gradient scale: 1/micro-batches, and
// 1/tp with tensor parallelism, whose ranks each balance a 1/tp token slice
// (the slices' losses average to the whole micro-batch's).
func (o *moeOp) lblScale() float64 {
	s := float64(*o.scale)
	if o.tg != nil {
		s /= float64(o.tg.Size())
	}
	return s
}

func (o *moeOp) SymDiff(in G.Nodes, out, grad *G.Node) (G.Nodes, error) {
	T, d, h, E, k := o.T, o.d, o.h, o.E, o.k
	o.dxTD = make([]float32, o.tFull*d)
	o.dyeSD = make([]float32, T*k*d)
	o.dxeSD = make([]float32, T*k*d)
	o.dwTK = make([]float32, T*k)
	o.dProbsTE = make([]float32, T*E)
	o.dLogitsTE = make([]float32, T*E)
	o.scratch = newFFNAct(T*k, h)
	if o.ep != nil {
		o.ep.allocBackward(T, k, d, h)
	}
	if o.cfg.Shared > 0 {
		o.sharedScratch = newFFNAct(T, h)
	}
	o.dVal = dense(o.dxTD, o.tFull, d)
	g := &moeGradOp{opBase: opBase{tag: o.tag + "/grad", inDims: []int{2, 2}, out: tensor.Shape{T, d}}, fwd: o}
	n, err := G.ApplyOp(g, in[0], grad)
	return G.Nodes{n}, err
}

type moeGradOp struct {
	opBase
	fwd *moeOp
}

func (g *moeGradOp) Do(in ...G.Value) (G.Value, error) {
	o := g.fwd
	T, d, E, k := o.T, o.d, o.E, o.k
	x, dy := f32(in[0])[o.off*d:(o.off+T)*d], f32(in[1])[o.off*d:(o.off+T)*d]
	dxTD := o.dxTD[o.off*d : (o.off+T)*d]
	blas := kernels.Default()
	S := o.plan.Slots()
	start := time.Now()
	// combine backward: dye[slot] = w * dy[t]; dw[t,c] = <dy[t], ye[slot]>
	clear(o.dwTK)
	for s := 0; s < S; s++ {
		t, c := int(o.plan.Token[s]), int(o.plan.Choice[s])
		dyt := dy[t*d : (t+1)*d]
		o.dwTK[t*k+c] = kernels.Dot(dyt, o.yeSD[s*d:(s+1)*d])
		dst := o.dyeSD[s*d : (s+1)*d]
		w := o.wTK[t*k+c]
		for i, v := range dyt {
			dst[i] = w * v
		}
	}
	if o.ep != nil {
		if err := o.backwardRemote(context.Background(), S); err != nil {
			*o.fail = err
			return nil, err
		}
	} else {
		o.bindExperts(true)
		o.experts.backward(0)
	}
	// scatter slot input gradients back to tokens
	clear(dxTD)
	for s := 0; s < S; s++ {
		t := int(o.plan.Token[s])
		kernels.Axpy(1, o.dxeSD[s*d:(s+1)*d], dxTD[t*d:(t+1)*d])
	}
	since(&prof.Experts, start)
	start = time.Now()
	// router backward: weights -> probs -> logits, plus the auxiliary losses
	clear(o.dProbsTE)
	router.WeightsBackward(o.probsTE, T, E, k, o.idxTK, o.wTK, o.dwTK, o.cfg.Renormalize, o.dProbsTE)
	for t := 0; t < T; t++ {
		p, dp, dz := o.probsTE[t*E:(t+1)*E], o.dProbsTE[t*E:(t+1)*E], o.dLogitsTE[t*E:(t+1)*E]
		dot := kernels.Dot(p, dp)
		for j := range p {
			dz[j] = p[j] * (dp[j] - dot)
		}
	}
	if o.bal != nil {
		if err := o.bal.Backward(context.Background(), o.moeIdx, o.lblScale(), o.dLogitsTE); err != nil {
			*o.fail = err
			return nil, err
		}
	}
	blas.Sgemm(true, false, d, E, T, 1, x, d, o.dLogitsTE, E, 1, o.gwr, E)
	blas.Sgemm(false, true, T, d, E, 1, o.dLogitsTE, E, o.wr, E, 1, dxTD, d)
	since(&prof.Router, start)
	defer since(&prof.Experts, time.Now())
	for s := range o.shared {
		b := &o.shared[s].blocks[0]
		b.x, b.dy, b.dx, b.scratch = x, dy, dxTD, o.sharedScratch
		o.shared[s].backward(1)
	}
	if o.tg != nil {
		if err := o.tg.AllGatherEqual(context.Background(), o.dxTD); err != nil {
			*o.fail = fmt.Errorf("model: gather MoE input gradients over the tensor-parallel group: %w", err)
			return nil, *o.fail
		}
	}
	return o.dVal, nil
}

// ---- dense SwiGLU layer: x [T,d] -> y [T,d] ----

type denseFFNOp struct {
	opBase
	T, d, h      int
	ffn          ffnGroup
	outTD, dxTD  []float32
	outVal, dVal *tensor.Dense
}

func newDenseFFNOp(tag string, l int, cfg Config, T int, p *Params) *denseFFNOp {
	d, h := cfg.Dim, cfg.DenseHidden
	o := &denseFFNOp{opBase: opBase{tag: tag, inDims: []int{2}, out: tensor.Shape{T, d}}, T: T, d: d, h: h}
	o.outTD = make([]float32, T*d)
	o.outVal = dense(o.outTD, T, d)
	o.ffn = ffnGroup{d: d, h: h, blocks: []ffnBlock{{n: T, y: o.outTD,
		w1: p.W(pname(l, "w1")), w3: p.W(pname(l, "w3")), w2: p.W(pname(l, "w2")),
		gw1: p.G(pname(l, "w1")), gw3: p.G(pname(l, "w3")), gw2: p.G(pname(l, "w2")), act: newFFNAct(T, h)}}}
	return o
}

func (o *denseFFNOp) Do(in ...G.Value) (G.Value, error) {
	defer since(&prof.Experts, time.Now())
	o.ffn.blocks[0].x = f32(in[0])
	o.ffn.forward(0)
	return o.outVal, nil
}

func (o *denseFFNOp) DiffWRT(int) []bool { return []bool{true} }

func (o *denseFFNOp) SymDiff(in G.Nodes, out, grad *G.Node) (G.Nodes, error) {
	o.ffn.blocks[0].scratch = newFFNAct(o.T, o.h)
	o.dxTD = make([]float32, o.T*o.d)
	o.ffn.blocks[0].dx = o.dxTD
	o.dVal = dense(o.dxTD, o.T, o.d)
	g := &denseFFNGradOp{opBase: opBase{tag: o.tag + "/grad", inDims: []int{2, 2}, out: tensor.Shape{o.T, o.d}}, fwd: o}
	n, err := G.ApplyOp(g, in[0], grad)
	return G.Nodes{n}, err
}

type denseFFNGradOp struct {
	opBase
	fwd *denseFFNOp
}

func (g *denseFFNGradOp) Do(in ...G.Value) (G.Value, error) {
	defer since(&prof.Experts, time.Now())
	o := g.fwd
	b := &o.ffn.blocks[0]
	b.x, b.dy = f32(in[0]), f32(in[1])
	o.ffn.backward(0)
	return o.dVal, nil
}
