package model

// SwiGLU feed-forward blocks, hand-written forward and backward:
// y = (silu(x W1) * (x W3)) W2 for n rows of width d, hidden h. A group of
// blocks (the experts of an MoE layer, each with its own rows and weights)
// runs phase by phase, each phase one grouped call over all experts, so the
// cores split the whole layer's work rather than each small GEMM:
//
//	forward:  a = x W1, b = x W3 | hh = silu(a)*b | y = hh W2
//	backward: dW2 += hh^T dy, dhh = dy W2^T | da, db = swiglu'(dhh) |
//	          dW1 += x^T da, dW3 += x^T db, dx = da W1^T + db W3^T
//
// The two dx products form one grouped problem (Gemm.K2), so each unit
// finishes its block of dx while it is in cache and no phase is spent on
// the second product. The SwiGLUs ride on the GEMM units (Gemm.Pre for hh
// before y's rows, Gemm.Post for da, db after dhh's rows): split over the
// cores with the GEMMs, on rows still in cache, with no phase of their own.
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

// ffnParams are the weights and gradients of consecutive SwiGLU blocks
// (experts): w1, w3 [n][d,h], w2 [n][h,d].
type ffnParams struct{ w1, w3, w2, gw1, gw3, gw2 []float32 }

// ffnParamsOf returns layer l's prefix+"w1", "w3", "w2" parameters.
func ffnParamsOf(p *Params, l int, prefix string) ffnParams {
	name := func(w string) string { return pname(l, prefix+w) }
	return ffnParams{w1: p.W(name("w1")), w3: p.W(name("w3")), w2: p.W(name("w2")),
		gw1: p.G(name("w1")), gw3: p.G(name("w3")), gw2: p.G(name("w2"))}
}

// blocks returns how many blocks of width d and hidden h the params hold.
func (f ffnParams) blocks(d, h int) int { return len(f.w1) / (d * h) }

// block returns block i with its weights set (rows and buffers unset).
func (f ffnParams) block(i, d, h int) ffnBlock {
	lo, hi := i*d*h, (i+1)*d*h
	return ffnBlock{w1: f.w1[lo:hi], w3: f.w3[lo:hi], w2: f.w2[lo:hi],
		gw1: f.gw1[lo:hi], gw3: f.gw3[lo:hi], gw2: f.gw2[lo:hi]}
}

// ffnGroup runs a list of blocks; it owns the GEMM descriptor list so that
// steady-state calls do not allocate.
type ffnGroup struct {
	d, h   int
	blocks []ffnBlock
	gemms  []kernels.Gemm
	glus   []kernels.SwiGLUOp
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

// swiglus sets g.glus to one op per block (row width h) and returns it; the
// Gemms of the next flush point into it.
func (g *ffnGroup) swiglus(bwd bool) []kernels.SwiGLUOp {
	clear(g.glus)
	g.glus = g.glus[:0]
	h := g.h
	for i := range g.blocks {
		b := &g.blocks[i]
		n := b.n * h
		o := kernels.SwiGLUOp{Backward: bwd, A: b.act.a[:n], B: b.act.b[:n], Row: h}
		if bwd {
			o.DA, o.DB, o.DH = b.scratch.a[:n], b.scratch.b[:n], b.scratch.hh[:n]
		} else {
			o.H = b.act.hh[:n]
		}
		g.glus = append(g.glus, o)
	}
	return g.glus
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
	// hh = silu(a)*b for each block of rows just before y's block uses it.
	glus := g.swiglus(false)
	for i := range g.blocks {
		b := &g.blocks[i]
		g.gemm(false, false, b.n, d, h, b.act.hh, h, b.w2, d, beta, b.y, d)
		if b.n > 0 {
			g.gemms[len(g.gemms)-1].Pre = &glus[i]
		}
	}
	g.flush()
	clear(g.glus)
}

// backward accumulates every block's weight gradients and sets
// dx = dxBeta*dx + d(loss)/dx.
func (g *ffnGroup) backward(dxBeta float32) {
	d, h := g.d, g.h
	// da, db = swiglu'(dhh) for each block of rows of dhh once computed.
	glus := g.swiglus(true)
	for i := range g.blocks {
		b := &g.blocks[i]
		g.gemm(true, false, h, d, b.n, b.act.hh, h, b.dy, d, 1, b.gw2, d)
		g.gemm(false, true, b.n, h, d, b.dy, d, b.w2, d, 0, b.scratch.hh, h)
		if b.n > 0 {
			g.gemms[len(g.gemms)-1].Post = &glus[i]
		}
	}
	g.flush()
	for i := range g.blocks {
		b := &g.blocks[i]
		g.gemm(true, false, d, h, b.n, b.x, d, b.scratch.a, h, 1, b.gw1, h)
		g.gemm(true, false, d, h, b.n, b.x, d, b.scratch.b, h, 1, b.gw3, h)
		// dx = da W1^T + db W3^T as one problem (both products per unit).
		if b.n > 0 {
			g.gemms = append(g.gemms, kernels.Gemm{TransB: true, M: b.n, N: d, K: h, Alpha: 1,
				A: b.scratch.a, Lda: h, B: b.w1, Ldb: h, Beta: dxBeta, C: b.dx, Ldc: d,
				K2: h, A2: b.scratch.b, Lda2: h, B2: b.w3, Ldb2: h})
		}
	}
	g.flush()
	clear(g.glus)
}
