package gpu

// The MoE feed-forward on the device: router GEMM, softmax/top-k, the
// per-sequence statistics for the LBL, the dispatch plan (stable counting
// sort of the (token, choice) pairs by expert, capacity drops), gather,
// the experts as grouped GEMMs over their own token counts (no padding),
// SwiGLU, combine into the residual stream; and the backward of all of it.
//
// One host round trip per MoE layer and micro-batch: the plan's slot
// offsets (the grouped GEMMs' shapes). In training the per-sequence
// statistics of every layer come back in one copy after the last MoE
// layer's router; the host records them in the balancer, which starts
// the count all-reduce while the rest of the forward runs.

import (
	"context"
	"fmt"

	"github.com/switchyard-ml/switchyard/pkg/cuda"
	"github.com/switchyard-ml/switchyard/pkg/model"
	"github.com/switchyard-ml/switchyard/pkg/router"
)

func pname(l int, what string) string { return fmt.Sprintf("layers.%d.%s", l, what) }

func (m *Model) capacity() int {
	if m.Cfg.CapacityFactor <= 0 {
		return 0
	}
	return router.Capacity(m.mT, m.Cfg.Experts, m.Cfg.TopK, m.Cfg.CapacityFactor)
}

// moeRows are a MoE layer's views of the [T][d] buffers: this rank's token
// slice (all tokens without tensor parallelism).
type moeRows struct {
	h2, xmid, next cuda.DevPtr // act, f32, f32 (forward)
	dy, dyAct, dh  cuda.DevPtr // f32, act, f32 (backward)
	tgt            cuda.DevPtr // i32
}

func (m *Model) moeRowsOf(L *layerBufs, next cuda.DevPtr) moeRows {
	off := int64(m.mOff) * int64(m.Cfg.Dim)
	as := m.actSize()
	r := moeRows{h2: L.h2.Add(off * as), xmid: L.xmid.Add(off * 4), dy: m.buf.dx.Add(off * 4), dyAct: m.buf.dxAct.Add(off * as),
		dh: m.buf.dh.Add(off * 4), tgt: m.buf.tgt.Add(int64(m.mOff) * 4)}
	if next != 0 {
		r.next = next.Add(off * 4)
	}
	return r
}

// moeForward: next = xmid + moe(h2). With tensor parallelism each rank
// runs its token slice (whole sequences), so duplicates never reach the
// router, the LBL statistics or the experts, and an all-gather gives
// every rank the whole output.
func (m *Model) moeForward(ctx context.Context, l, mi int, L *layerBufs, next cuda.DevPtr, b *model.Batch, stats *model.ExpertStats, train bool) error {
	c := m.Cfg
	B, S, T, d, E, k, h := m.mB, m.S, m.mT, c.Dim, c.Experts, c.TopK, c.Hidden
	mr := m.moeRowsOf(L, next)
	m.prof.mark(regRouter)
	if err := m.gemm(false, false, T, E, d, 1, mr.h2, d, m.w(pname(l, "router")), E, 0, 0, E, m.buf.logits, cuda.F32); err != nil {
		return err
	}
	bias := cuda.DevPtr(0)
	if m.bal != nil {
		bias = m.buf.bias.Add(int64(mi) * int64(E) * 4)
	}
	if err := m.k.routerFwd(L.probs, L.lse, L.idx, L.wTK, m.buf.logits, bias, T, E, k, c.Renormalize); err != nil {
		return err
	}
	if err := m.k.plan(L.slotOf, L.tok, L.choice, m.buf.hist, m.buf.demand, m.buf.kept, m.buf.offsets, L.idx, T, E, k, m.capacity()); err != nil {
		return err
	}
	if train {
		block := m.buf.stats.Add(int64(mi) * m.statsLen() * 4)
		psum, z := block.Add(int64(B*E+B)*4), block.Add(int64(2*B*E+B)*4)
		if err := m.k.routerStats(L.cnt, psum, L.nv, z, L.probs, L.lse, L.idx, mr.tgt, B, S, E, k); err != nil {
			return err
		}
	}
	// the host round trip: offsets (and statistics)
	off := m.host.offsets[mi]
	if err := download(m.dev, off, m.buf.offsets); err != nil {
		return fmt.Errorf("gpu: layer %d: plan offsets: %w", l, err)
	}
	if err := m.checkOffsets(off); err != nil {
		return fmt.Errorf("gpu: layer %d: %w", l, err)
	}
	m.host.dropped += T*k - int(off[E])
	if train && mi == len(m.moeL)-1 {
		if err := m.recordStats(ctx); err != nil {
			return err
		}
	}
	if stats != nil {
		if err := download(m.dev, m.host.idx[:T*k], L.idx); err != nil {
			return err
		}
		stats.RecordRange(mi, b, m.mOff, T, m.host.idx, k)
	}
	m.prof.mark(regExperts)
	slots := int(off[E])
	if err := m.k.moeGather(L.xe, mr.h2, L.tok, slots, d); err != nil {
		return err
	}
	ye := L.ye // the experts' outputs, in the rows' order
	if m.ep != nil {
		if err := m.epDispatch(ctx, mi, L, off); err != nil {
			return fmt.Errorf("gpu: layer %d: %w", l, err)
		}
		ye = m.buf.epA
	}
	// a = x W1, b = x W3 per expert (one grouped call), hh = swiglu, y = hh W2
	rw := m.rowsOf(mi, L)
	as := m.actSize()
	w1, w3, w2 := m.w(pname(l, "w1")), m.w(pname(l, "w3")), m.w(pname(l, "w2"))
	dh, hd := int64(d)*int64(h), int64(h)*int64(d)
	var gs []cuda.Gemm
	for e := 0; e < rw.n; e++ {
		lo, n := int64(rw.off[e]), int(rw.off[e+1]-rw.off[e])
		if n == 0 {
			continue
		}
		for _, wa := range []struct{ w, out cuda.DevPtr }{{w1, L.a}, {w3, L.b}} {
			gs = append(gs, cuda.Gemm{M: n, N: h, K: d, Alpha: 1, A: rw.x.Add(lo * int64(d) * as), Lda: d,
				B: wa.w.Add(int64(e) * dh * as), Ldb: h, D: wa.out.Add(lo * int64(h) * as), Ldd: h, C: wa.out.Add(lo * int64(h) * as), Ldc: h, AB: m.act, CD: m.act})
		}
	}
	if err := m.grouped(gs); err != nil {
		return err
	}
	if err := m.k.swigluFwd(L.hh, L.a, L.b, int64(rw.rows)*int64(h)); err != nil {
		return err
	}
	gs = gs[:0]
	for e := 0; e < rw.n; e++ {
		lo, n := int64(rw.off[e]), int(rw.off[e+1]-rw.off[e])
		if n == 0 {
			continue
		}
		gs = append(gs, cuda.Gemm{M: n, N: d, K: h, Alpha: 1, A: L.hh.Add(lo * int64(h) * as), Lda: h,
			B: w2.Add(int64(e) * hd * as), Ldb: d, C: ye.Add(lo * int64(d) * as), Ldc: d, AB: m.act, CD: m.act})
	}
	if err := m.grouped(gs); err != nil {
		return err
	}
	if m.ep != nil {
		if err := m.epReturn(ctx, mi, L, ye, L.ye, "expert combine"); err != nil {
			return fmt.Errorf("gpu: layer %d: %w", l, err)
		}
	}
	if err := m.k.moeCombine(mr.next, mr.xmid, L.ye, L.wTK, L.slotOf, L.idx, T, d, k); err != nil {
		return err
	}
	if err := m.sharedForward(l, L, mr.h2, mr.next, T); err != nil {
		return err
	}
	return m.tpGather(ctx, next, "MoE output")
}

// grouped runs the experts' GEMMs: one grouped call, or with
// SWITCHYARD_EXPERT_GEMM=loop one GEMM per problem (for comparing the two
// on a GPU).
func (m *Model) grouped(gs []cuda.Gemm) error {
	if len(gs) == 0 {
		return nil
	}
	if m.expertLoop {
		for i := range gs {
			if err := m.dev.Gemm(&gs[i]); err != nil {
				return fmt.Errorf("gpu: expert gemm %d of %d: %w", i, len(gs), err)
			}
		}
		return nil
	}
	if err := m.dev.GemmGrouped(gs); err != nil {
		return fmt.Errorf("gpu: grouped gemm of %d problems: %w", len(gs), err)
	}
	return nil
}

// checkOffsets verifies a plan read back from the device (a corrupt plan
// would address memory outside the slot buffers).
func (m *Model) checkOffsets(off []int32) error {
	E, n := m.Cfg.Experts, m.mT*m.Cfg.TopK
	if off[0] != 0 || int(off[E]) > n {
		return fmt.Errorf("gpu: dispatch plan offsets [0]=%d [E]=%d for %d choices", off[0], off[E], n)
	}
	for e := 0; e < E; e++ {
		if off[e+1] < off[e] {
			return fmt.Errorf("gpu: dispatch plan offsets decrease at expert %d", e)
		}
	}
	return nil
}

// moeBackward: from the gradient of the layer output dy (float, m.buf.dx;
// its act copy m.buf.dxAct) to the gradient of the FFN norm's output
// (float, m.buf.dh), accumulating the router's, experts' and shared
// experts' weight gradients.
//
// With tensor parallelism each rank runs the backward of its token slice
// and an all-gather gives every rank the whole input gradient; the
// auxiliary losses' gradients are scaled by 1/tp (each slice's losses are
// 1/tp of the micro-batch's).
func (m *Model) moeBackward(ctx context.Context, l, mi int, L *layerBufs, gradScale float32) error {
	c := m.Cfg
	S, T, d, E, k, h := m.S, m.mT, c.Dim, c.Experts, c.TopK, c.Hidden
	as := m.actSize()
	mr := m.moeRowsOf(L, 0)
	m.prof.mark(regExperts)
	if err := m.k.moeCombineBwd(m.buf.dye, m.buf.dw, mr.dy, L.ye, L.wTK, L.slotOf, T, d, k); err != nil {
		return err
	}
	// the experts' rows: inputs x, output gradients dy (expert-major with
	// expert parallelism, after the exchange)
	rw := m.rowsOf(mi, L)
	dy := m.buf.dye
	if m.ep != nil {
		if err := m.epGradDispatch(ctx, mi, L); err != nil {
			return fmt.Errorf("gpu: layer %d: %w", l, err)
		}
		dy = m.buf.epB
	}
	nE := rw.n
	w1, w3, w2 := m.w(pname(l, "w1")), m.w(pname(l, "w3")), m.w(pname(l, "w2"))
	dh64 := int64(d) * int64(h)
	// Weight gradients: in fp32 straight into the float gradients (beta 1);
	// in bf16 into a bf16 scratch per expert (cuBLAS's grouped GEMM takes
	// bf16 operands with a bf16 output only) that is then added into the
	// float gradients, like autocast's bf16 weight gradients.
	gdst := func(name string, part int) (cuda.DevPtr, float32, cuda.DType, int64) {
		if m.act == cuda.BF16 {
			return m.buf.gexp.Add(int64(part) * int64(nE) * dh64 * 2), 0, cuda.BF16, 2
		}
		return m.g(pname(l, name)), 1, cuda.F32, 4
	}
	g1, beta, gt, gs := gdst("w1", 0)
	g3, _, _, _ := gdst("w3", 1)
	g2, _, _, _ := gdst("w2", 2)
	each := func(f func(e int, lo int64, n int) []cuda.Gemm) []cuda.Gemm {
		var gs []cuda.Gemm
		for e := 0; e < nE; e++ {
			lo, n := int64(rw.off[e]), int(rw.off[e+1]-rw.off[e])
			if n > 0 {
				gs = append(gs, f(e, lo, n)...)
			}
		}
		return gs
	}
	// dW2 = hh^T dye
	gl := each(func(e int, lo int64, n int) []cuda.Gemm {
		return []cuda.Gemm{{TransA: true, M: h, N: d, K: n, Alpha: 1, Beta: beta, A: L.hh.Add(lo * int64(h) * as), Lda: h,
			B: dy.Add(lo * int64(d) * as), Ldb: d, C: g2.Add(int64(e) * dh64 * gs), Ldc: d, AB: m.act, CD: gt}}
	})
	if err := m.grouped(gl); err != nil {
		return err
	}
	// dhh = dye W2^T
	gl = each(func(e int, lo int64, n int) []cuda.Gemm {
		return []cuda.Gemm{{TransB: true, M: n, N: h, K: d, Alpha: 1, A: dy.Add(lo * int64(d) * as), Lda: d,
			B: w2.Add(int64(e) * dh64 * as), Ldb: d, C: m.buf.dhh.Add(lo * int64(h) * as), Ldc: h, AB: m.act, CD: m.act}}
	})
	if err := m.grouped(gl); err != nil {
		return err
	}
	if err := m.k.swigluBwd(m.buf.da, m.buf.db, m.buf.dhh, L.a, L.b, int64(rw.rows)*int64(h)); err != nil {
		return err
	}
	// dW1 = xe^T da, dW3 = xe^T db (one call)
	gl = each(func(e int, lo int64, n int) []cuda.Gemm {
		xe := rw.x.Add(lo * int64(d) * as)
		return []cuda.Gemm{
			{TransA: true, M: d, N: h, K: n, Alpha: 1, Beta: beta, A: xe, Lda: d, B: m.buf.da.Add(lo * int64(h) * as), Ldb: h,
				C: g1.Add(int64(e) * dh64 * gs), Ldc: h, AB: m.act, CD: gt},
			{TransA: true, M: d, N: h, K: n, Alpha: 1, Beta: beta, A: xe, Lda: d, B: m.buf.db.Add(lo * int64(h) * as), Ldb: h,
				C: g3.Add(int64(e) * dh64 * gs), Ldc: h, AB: m.act, CD: gt},
		}
	})
	if err := m.grouped(gl); err != nil {
		return err
	}
	// dxa = da W1^T, dxb = db W3^T (one call; the scatter adds them)
	gl = each(func(e int, lo int64, n int) []cuda.Gemm {
		return []cuda.Gemm{
			{TransB: true, M: n, N: d, K: h, Alpha: 1, A: m.buf.da.Add(lo * int64(h) * as), Lda: h,
				B: w1.Add(int64(e) * dh64 * as), Ldb: h, C: m.buf.dxa.Add(lo * int64(d) * as), Ldc: d, AB: m.act, CD: m.act},
			{TransB: true, M: n, N: d, K: h, Alpha: 1, A: m.buf.db.Add(lo * int64(h) * as), Lda: h,
				B: w3.Add(int64(e) * dh64 * as), Ldb: h, C: m.buf.dxb.Add(lo * int64(d) * as), Ldc: d, AB: m.act, CD: m.act},
		}
	})
	if err := m.grouped(gl); err != nil {
		return err
	}
	dxa, dxb := m.buf.dxa, m.buf.dxb // slot order
	if m.ep != nil {
		// back to the sources: dxa through epS, dxb through dye (free now)
		if err := m.epReturn(ctx, mi, L, m.buf.dxa, m.buf.epS, "expert input gradient combine"); err != nil {
			return fmt.Errorf("gpu: layer %d: %w", l, err)
		}
		if err := m.epReturn(ctx, mi, L, m.buf.dxb, m.buf.dye, "expert input gradient combine"); err != nil {
			return fmt.Errorf("gpu: layer %d: %w", l, err)
		}
		dxa, dxb = m.buf.epS, m.buf.dye
	}
	if err := m.k.moeScatter(mr.dh, dxa, dxb, L.slotOf, L.idx, T, d, k); err != nil {
		return err
	}
	if m.act == cuda.BF16 {
		if err := m.addExpertGrads(l, rw.off, nE); err != nil {
			return err
		}
	}
	if err := m.sharedBackward(l, L, mr); err != nil {
		return err
	}
	// router: weights -> probabilities -> logits, plus the auxiliary losses
	m.prof.mark(regRouter)
	terms, err := m.bal.GradTerms(ctx, mi, float64(gradScale)/float64(m.tpSize))
	if err != nil {
		return err
	}
	fE := make([]float32, E)
	for e, v := range terms.F {
		fE[e] = float32(v)
	}
	if err := upload(m.dev, m.buf.fE, fE); err != nil {
		return err
	}
	a := &auxGrad{f: m.buf.fE, c: float32(terms.C), seqScale: float32(terms.SeqScale), cz: float32(terms.ZC),
		cnt: L.cnt, nv: L.nv, renorm: c.Renormalize, T: T, S: S, E: E, topk: k,
		probs: L.probs, lse: L.lse, tgt: mr.tgt, idx: L.idx, w: L.wTK, dw: m.buf.dw, outZ: m.buf.dlogits}
	if terms.C == 0 {
		a.f = 0
	}
	if err := m.k.routerBwd(a); err != nil {
		return err
	}
	if err := m.gemm(true, false, d, E, T, 1, mr.h2, d, m.buf.dlogits, E, 1, m.g(pname(l, "router")), E, 0, cuda.F32); err != nil {
		return err
	}
	if err := m.gemm(false, true, T, d, E, 1, m.buf.dlogits, E, m.w(pname(l, "router")), E, 1, mr.dh, d, 0, cuda.F32); err != nil {
		return err
	}
	return m.tpGather(ctx, m.buf.dh, "MoE input gradient")
}

// addExpertGrads adds the bf16 weight-gradient scratch of the E experts
// this rank runs that had rows into the float gradients (runs of
// consecutive experts per tensor; the scratch of an expert without rows
// was not written).
func (m *Model) addExpertGrads(l int, off []int32, E int) error {
	dh := int64(m.Cfg.Dim) * int64(m.Cfg.Hidden)
	for part, name := range []string{"w1", "w3", "w2"} {
		g := m.g(pname(l, name))
		src := m.buf.gexp.Add(int64(part) * int64(E) * dh * 2)
		for e := 0; e < E; {
			if off[e+1] == off[e] {
				e++
				continue
			}
			f := e
			for e < E && off[e+1] > off[e] {
				e++
			}
			if err := m.k.addBF16(g.Add(int64(f)*dh*4), src.Add(int64(f)*dh*2), int64(e-f)*dh); err != nil {
				return err
			}
		}
	}
	return nil
}

// sharedBackward adds the shared experts' contributions over the layer's
// rows: weight gradients from dy (mr.dyAct) and their input gradient
// into mr.dh.
func (m *Model) sharedBackward(l int, L *layerBufs, mr moeRows) error {
	c := m.Cfg
	T, d, h := m.mT, c.Dim, c.Hidden
	Th := int64(T) * int64(h)
	for s := 0; s < c.Shared; s++ {
		off := int64(s) * Th * m.actSize()
		wo := int64(s) * int64(d) * int64(h)
		if err := m.swigluBackward(T, d, h, mr.h2, mr.dyAct, mr.dh, L.sa.Add(off), L.sb.Add(off), L.sh.Add(off),
			m.w(pname(l, "shared_w1")).Add(wo*m.actSize()), m.w(pname(l, "shared_w3")).Add(wo*m.actSize()), m.w(pname(l, "shared_w2")).Add(wo*m.actSize()),
			m.g(pname(l, "shared_w1")).Add(wo*4), m.g(pname(l, "shared_w3")).Add(wo*4), m.g(pname(l, "shared_w2")).Add(wo*4), 1); err != nil {
			return err
		}
	}
	return nil
}

// swigluBackward is the backward of y = (silu(x W1) * (x W3)) W2 over T
// rows given dy (act): weight gradients accumulate, and the input
// gradient goes into dh (float; dhBeta 0: overwritten, 1: added).
func (m *Model) swigluBackward(T, d, hd int, x, dy, dh, a, b, hh, w1, w3, w2, g1, g3, g2 cuda.DevPtr, dhBeta float32) error {
	n := int64(T) * int64(hd)
	if err := m.gemm(true, false, hd, d, T, 1, hh, hd, dy, d, 1, g2, d, 0, cuda.F32); err != nil {
		return err
	}
	if err := m.gemm(false, true, T, hd, d, 1, dy, d, w2, d, 0, 0, hd, m.buf.dhh, m.act); err != nil {
		return err
	}
	if err := m.k.swigluBwd(m.buf.da, m.buf.db, m.buf.dhh, a, b, n); err != nil {
		return err
	}
	if err := m.gemm(true, false, d, hd, T, 1, x, d, m.buf.da, hd, 1, g1, hd, 0, cuda.F32); err != nil {
		return err
	}
	if err := m.gemm(true, false, d, hd, T, 1, x, d, m.buf.db, hd, 1, g3, hd, 0, cuda.F32); err != nil {
		return err
	}
	if err := m.gemm(false, true, T, d, hd, 1, m.buf.da, hd, w1, hd, dhBeta, dh, d, 0, cuda.F32); err != nil {
		return err
	}
	return m.gemm(false, true, T, d, hd, 1, m.buf.db, hd, w3, hd, 1, dh, d, 0, cuda.F32)
}
