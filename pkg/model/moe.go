package model

// The MoE feed-forward as one gorgonia op: x [T,d] -> y [T,d]. Its inside is
// hand-written, as the four stages of moe_stages.go (router, dispatch,
// experts, combine), plus the shared experts that every token passes
// through. The router and expert parameters live in the model's flat Params
// and the backward accumulates their gradients there directly.
//
//	xTD [T,d] input (normalised)   yTD [T,d] output
//	xeSD, yeSD [S,d] inputs/outputs of the kept slots, grouped by expert
//	act [S,h] expert activations, slot order

import (
	"fmt"
	"time"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/switchyard-ml/switchyard/pkg/lbl"
	"github.com/switchyard-ml/switchyard/pkg/router"
)

type moeOp struct {
	opBase
	moeIdx  int // index among the model's MoE layers (the balancer's layer)
	s       moeShape
	batch   *Batch
	wiring  moeWiring
	ep      *epState // nil: every expert is local
	r       routerState
	slots   slotBufs
	experts ffnGroup // one block per local routed expert, rows = its slots
	shared  sharedExperts
	outTD   []float32 // [tFull,d]
	dxTD    []float32 // [tFull,d]
	outVal  *tensor.Dense
	dVal    *tensor.Dense
}

// moeWiring is what an MoE layer uses from outside the model's parameters.
type moeWiring struct {
	bal    *lbl.Balancer // receives the routing statistics; nil in evaluation graphs
	biasOf *lbl.Balancer // the selection bias's source (training and evaluation)
	stats  *ExpertStats  // non-nil: record selections per domain
	tg     TensorGroup   // nil: no tensor parallelism
	ex     ExpertExchange
}

// slotBufs are the kept slots' rows, grouped by expert.
type slotBufs struct {
	xeSD, yeSD, dyeSD, dxeSD []float32 // [T*k,d] (S rows used)
	act, scratch             ffnAct    // [T*k,h]
}

// sharedExperts run on every token and add to the routed output.
type sharedExperts struct {
	groups  []ffnGroup // one single-block group per shared expert, [T,h] activations each
	scratch ffnAct     // [T,h] backward scratch, used by one expert at a time
}

func newMoEOp(base opBase, l, moeIdx int, cfg Config, b *Batch, p *Params, w moeWiring) *moeOp {
	s := moeShape{T: b.T(), tFull: b.T(), d: cfg.Dim, h: cfg.Hidden, E: cfg.Experts, k: cfg.TopK}
	if w.tg != nil {
		s.T = s.tFull / w.tg.Size()
		s.off = w.tg.Rank() * s.T
	}
	if cfg.CapacityFactor > 0 {
		s.capacity = router.Capacity(s.T, s.E, s.k, cfg.CapacityFactor)
	}
	o := &moeOp{opBase: base.shaped([]int{2}, tensor.Shape{s.tFull, s.d}), moeIdx: moeIdx, s: s, batch: b, wiring: w,
		r: newRouterState(s, p.W(pname(l, "router")), p.G(pname(l, "router")), cfg.Renormalize)}
	S, d, h := s.T*s.k, s.d, s.h
	o.slots = slotBufs{xeSD: o.fwdBuf("moe.xe", S*d), yeSD: o.fwdBuf("moe.ye", S*d),
		act: ffnAct{a: o.fwdBuf("moe.a", S*h), b: o.fwdBuf("moe.b", S*h), hh: o.fwdBuf("moe.hh", S*h)}}
	routed := ffnParamsOf(p, l, "")
	o.experts = ffnGroup{d: d, h: h, blocks: make([]ffnBlock, routed.blocks(d, h))}
	for e := range o.experts.blocks {
		o.experts.blocks[e] = routed.block(e, d, h)
	}
	if cfg.Shared > 0 {
		sp := ffnParamsOf(p, l, "shared_")
		for i := 0; i < cfg.Shared; i++ {
			blk := sp.block(i, d, h)
			blk.n, blk.act = s.T, newFFNAct(s.T, h)
			o.shared.groups = append(o.shared.groups, ffnGroup{d: d, h: h, blocks: []ffnBlock{blk}})
		}
	}
	if w.ex != nil {
		o.ep = newEPState(w.ex, s.T, s.E, s.k, d, h)
	}
	o.outTD = o.fwdBuf("moe.out", s.tFull*d)
	o.outVal = dense(o.outTD, s.tFull, d)
	return o
}

// bindExperts points every expert block at its slot rows of this run's plan.
func (o *moeOp) bindExperts(backward bool) {
	d, h := o.s.d, o.s.h
	for e := range o.experts.blocks {
		b := &o.experts.blocks[e]
		lo, hi := int(o.r.plan.Offsets[e]), int(o.r.plan.Offsets[e+1])
		b.n = hi - lo
		b.x, b.y = o.slots.xeSD[lo*d:hi*d], o.slots.yeSD[lo*d:hi*d]
		b.act = o.slots.act.rows(lo, hi, h)
		if backward {
			b.dy, b.dx = o.slots.dyeSD[lo*d:hi*d], o.slots.dxeSD[lo*d:hi*d]
			b.scratch = o.slots.scratch.rows(lo, hi, h)
		}
	}
}

// rows returns this rank's rows [off, off+T) of a [tFull,d] buffer.
func (o *moeOp) rows(buf []float32) []float32 {
	return buf[o.s.off*o.s.d : (o.s.off+o.s.T)*o.s.d]
}

func (o *moeOp) Do(in ...G.Value) (G.Value, error) {
	x, y := o.rows(f32(in[0])), o.rows(o.outTD)
	start := time.Now()
	if err := o.route(x); err != nil {
		return nil, o.env.failed(err)
	}
	o.env.since(partRouter, start)
	defer o.env.since(partExperts, time.Now())
	S, d := o.r.plan.Slots(), o.s.d
	dispatchForward(&o.r.plan, x, o.slots.xeSD, d)
	if err := o.expertsForward(S); err != nil {
		return nil, o.env.failed(err)
	}
	combineForward(&o.r.plan, o.r.wTK, o.slots.yeSD, y, d, o.s.k)
	for i := range o.shared.groups {
		b := &o.shared.groups[i].blocks[0]
		b.x, b.y = x, y
		o.shared.groups[i].forward(1)
	}
	if o.wiring.tg != nil {
		if err := o.wiring.tg.AllGatherEqual(o.env.ctx, o.outTD); err != nil {
			return nil, o.env.failed(fmt.Errorf("model: gather MoE outputs over the tensor-parallel group: %w", err))
		}
	}
	return o.outVal, nil
}

// route runs the router and records its statistics.
func (o *moeOp) route(x []float32) error {
	w, T := o.wiring, o.s.T
	var bias []float32
	if w.biasOf != nil {
		bias = w.biasOf.Bias(o.moeIdx)
	}
	if err := routerForward(&o.r, o.s, x, bias); err != nil {
		return err
	}
	if w.bal != nil {
		w.bal.Record(o.moeIdx, o.r.logitsTE, o.r.probsTE, o.r.idxTK, T, o.batch.S, o.batch.Valid[o.s.off:o.s.off+T])
		// after the last MoE layer: the counts travel while the rest of
		// the step computes (the backward waits for them)
		w.bal.StartSync(o.env.ctx)
	}
	if w.stats != nil {
		w.stats.record(o.moeIdx, o.batch, o.s.off, T, o.r.idxTK, o.s.k)
	}
	return nil
}

// expertsForward runs the experts over the S kept slots: yeSD = ffn(xeSD).
func (o *moeOp) expertsForward(S int) error {
	if o.ep != nil {
		return o.forwardRemote(o.env.ctx, S)
	}
	o.bindExperts(false)
	o.experts.forward(0)
	return nil
}

// expertsBackward accumulates the experts' weight gradients and sets
// dxeSD from dyeSD.
func (o *moeOp) expertsBackward(S int) error {
	if o.ep != nil {
		return o.backwardRemote(o.env.ctx, S)
	}
	o.bindExperts(true)
	o.experts.backward(0)
	return nil
}

func (o *moeOp) DiffWRT(int) []bool { return []bool{true} }

// lblScale is the auxiliary losses' gradient scale: 1/micro-batches, and
// 1/tp with tensor parallelism, whose ranks each balance a 1/tp token slice
// (the slices' losses average to the whole micro-batch's).
func (o *moeOp) lblScale() float64 {
	s := float64(o.env.scale)
	if o.wiring.tg != nil {
		s /= float64(o.wiring.tg.Size())
	}
	return s
}

func (o *moeOp) SymDiff(in G.Nodes, out, grad *G.Node) (G.Nodes, error) {
	s := o.s
	S, d, h := s.T*s.k, s.d, s.h
	o.dxTD = make([]float32, s.tFull*d)
	o.dVal = dense(o.dxTD, s.tFull, d)
	// used only while the layer's backward runs (moeGradOp.Do, its
	// all-to-alls included): one set for all the layers
	o.slots.dyeSD = o.env.shared("moe.backward.dye", S*d)
	o.slots.dxeSD = o.env.shared("moe.backward.dxe", S*d)
	o.slots.scratch = ffnAct{a: o.env.shared("moe.backward.da", S*h), b: o.env.shared("moe.backward.db", S*h), hh: o.env.shared("moe.backward.dhh", S*h)}
	o.r.allocBackward(s)
	if o.ep != nil {
		o.ep.allocBackward(s.T, s.k, d, h)
	}
	if len(o.shared.groups) > 0 {
		o.shared.scratch = newFFNAct(s.T, h)
	}
	g := &moeGradOp{opBase: o.derive("/grad", []int{2, 2}, tensor.Shape{s.T, d}), fwd: o}
	n, err := G.ApplyOp(g, in[0], grad)
	return G.Nodes{n}, err
}

type moeGradOp struct {
	opBase
	fwd *moeOp
}

func (g *moeGradOp) Do(in ...G.Value) (G.Value, error) {
	o := g.fwd
	x, dy, dx := o.rows(f32(in[0])), o.rows(f32(in[1])), o.rows(o.dxTD)
	S, d := o.r.plan.Slots(), o.s.d
	start := time.Now()
	combineBackward(&o.r.plan, o.r.wTK, o.slots.yeSD, dy, o.slots.dyeSD, o.r.dwTK, d, o.s.k)
	if err := o.expertsBackward(S); err != nil {
		return nil, o.env.failed(err)
	}
	clear(dx)
	dispatchBackward(&o.r.plan, o.slots.dxeSD, dx, d)
	o.env.since(partExperts, start)
	start = time.Now()
	if err := routerBackward(&o.r, o.s, x, dx, o.auxBackward); err != nil {
		return nil, o.env.failed(err)
	}
	o.env.since(partRouter, start)
	defer o.env.since(partExperts, time.Now())
	for i := range o.shared.groups {
		b := &o.shared.groups[i].blocks[0]
		b.x, b.dy, b.dx, b.scratch = x, dy, dx, o.shared.scratch
		o.shared.groups[i].backward(1)
	}
	if o.wiring.tg != nil {
		if err := o.wiring.tg.AllGatherEqual(o.env.ctx, o.dxTD); err != nil {
			return nil, o.env.failed(fmt.Errorf("model: gather MoE input gradients over the tensor-parallel group: %w", err))
		}
	}
	return o.dVal, nil
}

// auxBackward adds the auxiliary losses' gradient to the router logits'.
func (o *moeOp) auxBackward(dLogitsTE []float32) error {
	if o.wiring.bal == nil {
		return nil
	}
	return o.wiring.bal.Backward(o.env.ctx, o.moeIdx, o.lblScale(), dLogitsTE)
}

// ---- dense SwiGLU layer: x [T,d] -> y [T,d] ----

type denseFFNOp struct {
	opBase
	T, d, h      int
	ffn          ffnGroup
	outTD, dxTD  []float32
	outVal, dVal *tensor.Dense
}

func newDenseFFNOp(base opBase, l int, cfg Config, T int, p *Params) *denseFFNOp {
	d, h := cfg.Dim, cfg.DenseHidden
	o := &denseFFNOp{opBase: base.shaped([]int{2}, tensor.Shape{T, d}), T: T, d: d, h: h}
	o.outTD = make([]float32, T*d)
	o.outVal = dense(o.outTD, T, d)
	blk := ffnParamsOf(p, l, "").block(0, d, h)
	blk.n, blk.y, blk.act = T, o.outTD, newFFNAct(T, h)
	o.ffn = ffnGroup{d: d, h: h, blocks: []ffnBlock{blk}}
	return o
}

func (o *denseFFNOp) Do(in ...G.Value) (G.Value, error) {
	defer o.env.since(partExperts, time.Now())
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
	g := &denseFFNGradOp{opBase: o.derive("/grad", []int{2, 2}, tensor.Shape{o.T, o.d}), fwd: o}
	n, err := G.ApplyOp(g, in[0], grad)
	return G.Nodes{n}, err
}

type denseFFNGradOp struct {
	opBase
	fwd *denseFFNOp
}

func (g *denseFFNGradOp) Do(in ...G.Value) (G.Value, error) {
	defer g.env.since(partExperts, time.Now())
	o := g.fwd
	b := &o.ffn.blocks[0]
	b.x, b.dy = f32(in[0]), f32(in[1])
	o.ffn.backward(0)
	return o.dVal, nil
}
