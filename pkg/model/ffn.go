package model

// SwiGLU feed-forward blocks, hand-written forward and backward:
// y = (silu(x W1) * (x W3)) W2 for n rows of width d, hidden h. A group of
// blocks (the experts of an MoE layer, each with its own rows and weights)
// runs phase by phase, each phase one grouped GEMM over all experts, so the
// cores split the whole layer's work rather than each small GEMM.
//
//	xND [n,d]  w1DH, w3DH [d,h]  w2HD [h,d]
//	aNH = x W1, bNH = x W3, hNH = silu(a)*b (kept for backward)

import "github.com/switchyard-ml/switchyard/pkg/kernels"

type ffnAct struct{ a, b, hh []float32 }

func newFFNAct(n, h int) ffnAct {
	return ffnAct{a: make([]float32, n*h), b: make([]float32, n*h), hh: make([]float32, n*h)}
}

func (a ffnAct) rows(lo, hi, h int) ffnAct {
	return ffnAct{a: a.a[lo*h : hi*h], b: a.b[lo*h : hi*h], hh: a.hh[lo*h : hi*h]}
}

// ffnBlock is one SwiGLU block's rows, weights, gradients and buffers.
type ffnBlock struct {
	n             int
	x, y          []float32 // [n,d] input, output
	w1, w3, w2    []float32
	gw1, gw3, gw2 []float32
	act           ffnAct // [n,h] saved activations
	dy, dx        []float32
	scratch       ffnAct // [n,h] da, db, dhh
}

// ffnGroup runs a list of blocks; it owns the GEMM descriptor list so that
// steady-state calls do not allocate.
type ffnGroup struct {
	d, h   int
	blocks []ffnBlock
	gemms  []kernels.Gemm
}

func (g *ffnGroup) gemm(tA, tB bool, m, n, k int, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	if m == 0 || n == 0 {
		return
	}
	g.gemms = append(g.gemms, kernels.Gemm{TransA: tA, TransB: tB, M: m, N: n, K: k, Alpha: 1, A: a, Lda: lda, B: b, Ldb: ldb, Beta: beta, C: c, Ldc: ldc})
}

func (g *ffnGroup) flush() {
	if len(g.gemms) > 0 {
		kernels.GroupedSgemm(g.gemms)
	}
	clear(g.gemms) // drop references to the buffers
	g.gemms = g.gemms[:0]
}

// forward sets y = beta*y + swiglu(x) for every block.
func (g *ffnGroup) forward(beta float32) {
	d, h := g.d, g.h
	for i := range g.blocks {
		b := &g.blocks[i]
		g.gemm(false, false, b.n, h, d, b.x, d, b.w1, h, 0, b.act.a, h)
		g.gemm(false, false, b.n, h, d, b.x, d, b.w3, h, 0, b.act.b, h)
	}
	g.flush()
	for i := range g.blocks {
		b := &g.blocks[i]
		if b.n > 0 {
			kernels.SwiGLU(b.act.hh[:b.n*h], b.act.a[:b.n*h], b.act.b[:b.n*h])
		}
		g.gemm(false, false, b.n, d, h, b.act.hh, h, b.w2, d, beta, b.y, d)
	}
	g.flush()
}

// backward accumulates every block's weight gradients and sets
// dx = dxBeta*dx + d(loss)/dx.
func (g *ffnGroup) backward(dxBeta float32) {
	d, h := g.d, g.h
	for i := range g.blocks {
		b := &g.blocks[i]
		g.gemm(true, false, h, d, b.n, b.act.hh, h, b.dy, d, 1, b.gw2, d)
		g.gemm(false, true, b.n, h, d, b.dy, d, b.w2, d, 0, b.scratch.hh, h)
	}
	g.flush()
	for i := range g.blocks {
		b := &g.blocks[i]
		if b.n > 0 {
			n := b.n * h
			kernels.SwiGLUBackward(b.scratch.a[:n], b.scratch.b[:n], b.scratch.hh[:n], b.act.a[:n], b.act.b[:n])
		}
		g.gemm(true, false, d, h, b.n, b.x, d, b.scratch.a, h, 1, b.gw1, h)
		g.gemm(true, false, d, h, b.n, b.x, d, b.scratch.b, h, 1, b.gw3, h)
		g.gemm(false, true, b.n, d, h, b.scratch.a, h, b.w1, h, dxBeta, b.dx, d)
	}
	g.flush()
	for i := range g.blocks {
		b := &g.blocks[i]
		g.gemm(false, true, b.n, d, h, b.scratch.b, h, b.w3, h, 1, b.dx, d)
	}
	g.flush()
}
