package gpu

// Every device buffer of the engine, laid out by one function (layout)
// that both allocates them (New) and counts them (Estimate), so the
// memory estimate is the allocation by construction.

import (
	"fmt"
	"math"

	"github.com/switchyard-ml/switchyard/pkg/cuda"
	"github.com/switchyard-ml/switchyard/pkg/model"
)

// layerBufs are what one transformer layer keeps from its forward pass
// for the backward pass (act = the act type).
type layerBufs struct {
	x          cuda.DevPtr // f32 [T][d] the layer's input (residual stream)
	h1, rstd1  cuda.DevPtr // act [T][d], f32 [T]: attention norm output
	q, k, v    cuda.DevPtr // act [B][H][S][hd] after RoPE
	p          cuda.DevPtr // act [B][H][S][S] attention probabilities
	attn       cuda.DevPtr // act [T][d] attention output (heads merged)
	xmid       cuda.DevPtr // f32 [T][d] after the attention residual
	h2, rstd2  cuda.DevPtr // act [T][d], f32 [T]: FFN norm output
	a, b, hh   cuda.DevPtr // act: dense [T][hd]; MoE [rows][h] in the experts' row order
	probs, lse cuda.DevPtr // f32 [T][E], [T] (MoE)
	idx, wTK   cuda.DevPtr // i32 / f32 [T][k]
	slotOf     cuda.DevPtr // i32 [T*k]
	tok        cuda.DevPtr // i32 [T*k] token of each slot
	choice     cuda.DevPtr // i32 [T*k]
	xe, ye     cuda.DevPtr // act [T*k][d] expert inputs / outputs, slot order
	xl         cuda.DevPtr // act [rows][d] expert parallelism: the rows this rank's experts run, expert-major
	perm, inv  cuda.DevPtr // i32 [rows] expert parallelism: received <-> expert-major row maps (ep.go)
	cnt, nv    cuda.DevPtr // f32 [B][E], [B] per-sequence counts, valid tokens (in buffers.stats)
	sa, sb, sh cuda.DevPtr // act [shared][T][h] shared experts' activations
}

type buffers struct {
	// parameters: f32 master values, gradients, AdamW moments; bf16 copy
	w, g, m, v, wb cuda.DevPtr
	layers         []layerBufs
	xL             cuda.DevPtr // f32 [T][d] final residual stream
	hf, rstdF      cuda.DevPtr // act [T][d], f32 [T] final norm
	// batch
	tok, tgt, order, start cuda.DevPtr // i32 [T], [T], [T], [V+1]
	cos, sin               cuda.DevPtr // f32 [S][hd/2]
	// scratch shared by the layers
	qkv     cuda.DevPtr // act [T][3d]
	scores  cuda.DevPtr // f32 [B][H][S][S] scores; dP in backward
	ds      cuda.DevPtr // act [B][H][S][S] dS (bf16 mode; = scores in fp32)
	oh      cuda.DevPtr // act [T][d] attention output in head layout / dO
	dq, dk  cuda.DevPtr // act [T][d]
	dv      cuda.DevPtr // act [T][d]
	logits  cuda.DevPtr // f32 [T][max(V,E)] router and head logits
	dlogits cuda.DevPtr // act [T][max(V,E)]
	nll     cuda.DevPtr // f32 [T]
	hist    cuda.DevPtr // i32 [chunks][E]
	demand  cuda.DevPtr // i32 [E]
	kept    cuda.DevPtr // i32 [E]
	offsets cuda.DevPtr // i32 [E+1]
	// stats holds every MoE layer's router statistics, one block of
	// statsLen floats per layer: counts [B][E], valid tokens [B],
	// probability sums [B][E], lse^2 sums [B]; one copy brings all of
	// them to the host after the last MoE layer's router
	stats    cuda.DevPtr
	bias     cuda.DevPtr // f32 [moe layers][E] selection bias
	fE       cuda.DevPtr // f32 [E] LBL coefficients of one layer
	dx, dh   cuda.DevPtr // f32 [T][d] residual gradient, norm input gradient
	dxAct    cuda.DevPtr // act [T][d]
	dAttn    cuda.DevPtr // act [T][d]
	part     cuda.DevPtr // f32 [norm blocks][d]
	dye      cuda.DevPtr // act [T*k][d] (dense: unused)
	dw       cuda.DevPtr // f32 [T*k]
	dhh      cuda.DevPtr // act [max(T*k*h, T*hd)]
	da, db   cuda.DevPtr // act same
	dxa, dxb cuda.DevPtr // act [rows][d] expert input gradient halves, the experts' row order
	// expert parallelism: rows in flight ([rows][d]) and slot-order
	// input gradients ([T*k][d])
	epA, epB, epS cuda.DevPtr
	gexp          cuda.DevPtr // bf16 [3][E][d][h] expert weight-gradient scratch (bf16 mode)
	dqkv          cuda.DevPtr // act [T][3d]
	normPart      cuda.DevPtr // f64 [sumsq blocks] grad-norm partials
}

// sizer hands out buffers: with an arena it allocates them; without one
// it only counts their bytes.
type sizer struct {
	a     *arena
	total int64
	parts map[string]int64 // bytes by category, for the estimate's split
}

func (s *sizer) take(cat string, n int64, t cuda.DType, what string) (cuda.DevPtr, error) {
	if n < 0 {
		return 0, fmt.Errorf("gpu: negative size for %s", what)
	}
	bytes := max(n, 1) * t.Size()
	s.total += bytes
	if s.parts == nil {
		s.parts = map[string]int64{}
	}
	s.parts[cat] += bytes
	if s.a == nil {
		return 0, nil
	}
	return s.a.alloc(n, t, what)
}

// f64 is an 8-byte element (two F32 slots).
func f64(n int64) int64 { return 2 * n }

// layout takes every buffer of the engine from s.
func (m *Model) layout(s *sizer) error {
	c := m.Cfg
	B, S, T := int64(m.B), int64(m.S), int64(m.T)
	d, E, k, h, V := int64(c.Dim), int64(c.Experts), int64(c.TopK), int64(c.Hidden), int64(c.Vocab)
	hd := d / int64(c.Heads)
	// this rank's heads and their width (tensor parallelism: 1/tp of
	// them), and the tokens its MoE layers run (1/tp of them)
	H, dl, mT := int64(m.hl), int64(m.dl), int64(m.mT)
	act := m.act
	// rows: what a layer's experts run on this rank (the slots, or with
	// expert parallelism every source's rows for this rank's experts)
	rows, El := mT*k, E
	if m.ep != nil {
		rows, El = int64(m.ep.rmax), int64(m.ep.El)
	}
	var err error
	take := func(cat string, dst *cuda.DevPtr, n int64, t cuda.DType, what string) {
		if err != nil {
			return
		}
		*dst, err = s.take(cat, n, t, what)
	}
	P := m.nPar
	take("parameters", &m.buf.w, P, cuda.F32, "parameters")
	take("gradients", &m.buf.g, P, cuda.F32, "gradients")
	take("optimizer", &m.buf.m, P, cuda.F32, "AdamW m")
	take("optimizer", &m.buf.v, P, cuda.F32, "AdamW v")
	if act == cuda.BF16 {
		take("parameters", &m.buf.wb, P, cuda.BF16, "bf16 parameters")
	}
	m.buf.layers = make([]layerBufs, c.Layers)
	var probs cuda.DevPtr // with recomputation: every layer's
	if m.recompute {
		take("activations", &probs, B*H*S*S, act, "attention probabilities (recomputed)")
	}
	for l := range m.buf.layers {
		L := &m.buf.layers[l]
		const cat = "activations"
		take(cat, &L.x, T*d, cuda.F32, "x")
		take(cat, &L.h1, T*d, act, "h1")
		take(cat, &L.rstd1, T, cuda.F32, "rstd1")
		take(cat, &L.q, T*dl, act, "q")
		take(cat, &L.k, T*dl, act, "k")
		take(cat, &L.v, T*dl, act, "v")
		if m.recompute {
			L.p = probs
		} else {
			take(cat, &L.p, B*H*S*S, act, "attention probabilities")
		}
		take(cat, &L.attn, T*dl, act, "attention output")
		take(cat, &L.xmid, T*d, cuda.F32, "xmid")
		take(cat, &L.h2, T*d, act, "h2")
		take(cat, &L.rstd2, T, cuda.F32, "rstd2")
		if !c.IsMoE(l) {
			hdn := int64(c.DenseHidden)
			take(cat, &L.a, T*hdn, act, "a")
			take(cat, &L.b, T*hdn, act, "b")
			take(cat, &L.hh, T*hdn, act, "hh")
			continue
		}
		take(cat, &L.a, rows*h, act, "expert a")
		take(cat, &L.b, rows*h, act, "expert b")
		take(cat, &L.hh, rows*h, act, "expert hh")
		if m.ep != nil {
			take(cat, &L.xl, rows*d, act, "expert rows")
			take(cat, &L.perm, rows, cuda.I32, "expert row order")
			take(cat, &L.inv, rows, cuda.I32, "expert row return order")
		}
		take(cat, &L.probs, mT*E, cuda.F32, "router probabilities")
		take(cat, &L.lse, mT, cuda.F32, "router lse")
		take(cat, &L.idx, mT*k, cuda.I32, "router choices")
		take(cat, &L.wTK, mT*k, cuda.F32, "combine weights")
		take(cat, &L.slotOf, mT*k, cuda.I32, "slot of choice")
		take(cat, &L.tok, mT*k, cuda.I32, "token of slot")
		take(cat, &L.choice, mT*k, cuda.I32, "choice of slot")
		take(cat, &L.xe, mT*k*d, act, "expert inputs")
		take(cat, &L.ye, mT*k*d, act, "expert outputs")
		if ns := int64(c.Shared); ns > 0 {
			take(cat, &L.sa, ns*mT*h, act, "shared a")
			take(cat, &L.sb, ns*mT*h, act, "shared b")
			take(cat, &L.sh, ns*mT*h, act, "shared hh")
		}
	}
	const sc = "scratch"
	take("activations", &m.buf.xL, T*d, cuda.F32, "final x")
	take("activations", &m.buf.hf, T*d, act, "final norm")
	take("activations", &m.buf.rstdF, T, cuda.F32, "final rstd")
	take(sc, &m.buf.tok, T, cuda.I32, "tokens")
	take(sc, &m.buf.tgt, T, cuda.I32, "targets")
	take(sc, &m.buf.order, T, cuda.I32, "token order")
	take(sc, &m.buf.start, V+1, cuda.I32, "token starts")
	take(sc, &m.buf.cos, S*hd/2, cuda.F32, "rope cos")
	take(sc, &m.buf.sin, S*hd/2, cuda.F32, "rope sin")
	take(sc, &m.buf.qkv, T*3*dl, act, "qkv")
	take(sc, &m.buf.scores, B*H*S*S, cuda.F32, "scores")
	if act == cuda.BF16 {
		take(sc, &m.buf.ds, B*H*S*S, act, "dS")
	} else {
		m.buf.ds = m.buf.scores
	}
	take(sc, &m.buf.oh, T*dl, act, "head-layout output")
	take(sc, &m.buf.dq, T*dl, act, "dq")
	take(sc, &m.buf.dk, T*dl, act, "dk")
	take(sc, &m.buf.dv, T*dl, act, "dv")
	wide := max(V, E)
	take(sc, &m.buf.logits, T*wide, cuda.F32, "logits")
	take(sc, &m.buf.dlogits, T*wide, act, "logit gradients")
	take(sc, &m.buf.nll, T, cuda.F32, "nll")
	take(sc, &m.buf.hist, int64(planChunks(int(mT*k)))*E, cuda.I32, "plan histogram")
	take(sc, &m.buf.demand, E, cuda.I32, "demand")
	take(sc, &m.buf.kept, E, cuda.I32, "kept")
	take(sc, &m.buf.offsets, E+1, cuda.I32, "offsets")
	nMoE := int64(len(m.moeL))
	take("activations", &m.buf.stats, max(nMoE, 1)*m.statsLen(), cuda.F32, "router statistics")
	for i, l := range m.moeL {
		L := &m.buf.layers[l]
		if m.buf.stats != 0 {
			base := m.buf.stats.Add(int64(i) * m.statsLen() * 4)
			L.cnt, L.nv = base, base.Add(int64(m.mB)*E*4)
		}
	}
	take(sc, &m.buf.bias, int64(max(len(m.moeL), 1))*E, cuda.F32, "router bias")
	take(sc, &m.buf.fE, E, cuda.F32, "LBL coefficients")
	take(sc, &m.buf.dx, T*d, cuda.F32, "dx")
	take(sc, &m.buf.dh, T*d, cuda.F32, "dh")
	take(sc, &m.buf.dxAct, T*d, act, "dx act")
	take(sc, &m.buf.dAttn, T*dl, act, "dattn")
	nblk, _ := normParts(int(T))
	take(sc, &m.buf.part, int64(nblk)*d, cuda.F32, "norm partials")
	if c.MoELayers() > 0 {
		take(sc, &m.buf.dye, mT*k*d, act, "dye")
		take(sc, &m.buf.dw, mT*k, cuda.F32, "dw")
		take(sc, &m.buf.dxa, rows*d, act, "dxa")
		take(sc, &m.buf.dxb, rows*d, act, "dxb")
		if act == cuda.BF16 {
			take(sc, &m.buf.gexp, 3*El*d*h, cuda.BF16, "expert gradient scratch")
		}
		if m.ep != nil {
			take(sc, &m.buf.epA, rows*d, act, "expert rows in flight")
			take(sc, &m.buf.epB, rows*d, act, "expert rows in flight")
			take(sc, &m.buf.epS, mT*k*d, act, "expert input gradients")
		}
	}
	ffn := max(rows*h, T*int64(c.DenseHidden), mT*h)
	take(sc, &m.buf.dhh, ffn, act, "dhh")
	take(sc, &m.buf.da, ffn, act, "da")
	take(sc, &m.buf.db, ffn, act, "db")
	take(sc, &m.buf.dqkv, T*3*dl, act, "dqkv")
	take(sc, &m.buf.normPart, f64(int64(sumsqBlocks(m.nPar))), cuda.F32, "norm partials")
	return err
}

// statsLen is the floats of one MoE layer's router statistics.
func (m *Model) statsLen() int64 {
	B, E := int64(m.mB), int64(m.Cfg.Experts)
	return 2*B*E + 2*B
}

// statsParts splits one layer's statistics block into its arrays.
func (m *Model) statsParts(v []float32) (cnt, nv, psum, z []float32) {
	B, E := m.mB, m.Cfg.Experts
	return v[:B*E], v[B*E : B*E+B], v[B*E+B : 2*B*E+B], v[2*B*E+B : 2*B*E+2*B]
}

// MemEstimate is the device memory of a run, by category, in bytes.
type MemEstimate struct {
	Parameters  int64 `json:"parameters"`
	Gradients   int64 `json:"gradients"`
	Optimizer   int64 `json:"optimizer"`
	Activations int64 `json:"activations"`
	Scratch     int64 `json:"scratch"`
	Total       int64 `json:"total"`
}

func (e MemEstimate) String() string {
	return fmt.Sprintf("parameters %.1f + gradients %.1f + optimizer %.1f + activations %.1f + scratch %.1f GiB",
		gib(e.Parameters), gib(e.Gradients), gib(e.Optimizer), gib(e.Activations), gib(e.Scratch))
}

// Estimate is the device memory New allocates for cfg, micro-batch and
// precision (without the libraries' workspaces): the same layout, counted.
func Estimate(cfg model.Config, microBatch int, prec Precision) (MemEstimate, error) {
	return EstimateEP(cfg, microBatch, prec, 1)
}

// EstimateEP is Estimate for one rank of an expert-parallel group of ep
// ranks: its share of the experts' parameters, gradients and moments,
// and room for the rows the other ranks may send its experts.
func EstimateEP(cfg model.Config, microBatch int, prec Precision, ep int) (MemEstimate, error) {
	return EstimateParallel(cfg, microBatch, prec, ep, 1)
}

// EstimateParallel is EstimateEP for a rank that is also one of tp
// tensor-parallel ranks: its share of the attention projections and of
// their activations, and the MoE activations of its 1/tp of the tokens.
func EstimateParallel(cfg model.Config, microBatch int, prec Precision, ep, tp int) (MemEstimate, error) {
	return estimate(cfg, microBatch, prec, ep, tp, false)
}

// EstimateRecompute is EstimateParallel with the attention probabilities
// recomputed in the backward (Options.RecomputeAttention): one buffer of
// them instead of one a layer.
func EstimateRecompute(cfg model.Config, microBatch int, prec Precision, ep, tp int) (MemEstimate, error) {
	return estimate(cfg, microBatch, prec, ep, tp, true)
}

func estimate(cfg model.Config, microBatch int, prec Precision, ep, tp int, recompute bool) (MemEstimate, error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return MemEstimate{}, err
	}
	if _, err := ParsePrecision(string(prec)); err != nil {
		return MemEstimate{}, err
	}
	if microBatch < 1 {
		return MemEstimate{}, fmt.Errorf("%w: micro-batch %d", ErrConfig, microBatch)
	}
	if err := SupportedTP(cfg, microBatch, tp); err != nil {
		return MemEstimate{}, err
	}
	total, _ := cfg.ParamCount()
	if total > math.MaxInt32*8 {
		return MemEstimate{}, fmt.Errorf("%w: %d parameters", ErrConfig, total)
	}
	m := &Model{Cfg: cfg, B: microBatch, S: cfg.SeqLen, T: microBatch * cfg.SeqLen, Prec: prec, act: prec.act(), recompute: recompute}
	m.shape(tp, 0)
	for l := 0; l < cfg.Layers; l++ {
		if cfg.IsMoE(l) {
			m.moeL = append(m.moeL, l)
		}
	}
	El := cfg.Experts
	if ep > 1 {
		if cfg.Experts%ep != 0 {
			return MemEstimate{}, fmt.Errorf("%w: experts = %d: expert parallelism over %d ranks needs a multiple of %d", ErrConfig, cfg.Experts, ep, ep)
		}
		El = cfg.Experts / ep
		m.ep = &epState{P: ep, El: El, rmax: epRows(cfg, m.mT, ep)}
	}
	m.nPar = int64(model.CountParams(cfg, 0, El, tp))
	s := &sizer{}
	if err := m.layout(s); err != nil {
		return MemEstimate{}, err
	}
	return MemEstimate{Parameters: s.parts["parameters"], Gradients: s.parts["gradients"], Optimizer: s.parts["optimizer"],
		Activations: s.parts["activations"], Scratch: s.parts["scratch"], Total: s.total}, nil
}

// initTables uploads the RoPE tables.
func (m *Model) initTables() error {
	cos, sin := ropeTables(m.S, m.Cfg.HeadDim(), m.Cfg.RopeBase)
	if err := upload(m.dev, m.buf.cos, cos); err != nil {
		return err
	}
	return upload(m.dev, m.buf.sin, sin)
}
