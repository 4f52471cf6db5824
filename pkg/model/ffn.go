package model

// SwiGLU feed-forward blocks, hand-written forward and backward:
// y = (silu(x W1) * (x W3)) W2 for n rows of width d, hidden h.
//
//	xND [n,d]  w1DH, w3DH [d,h]  w2HD [h,d]
//	aNH = x W1, bNH = x W3, hNH = silu(a)*b (kept for backward)

import "github.com/switchyard-ml/switchyard/pkg/kernels"

type ffnAct struct{ a, b, hh []float32 }

func newFFNAct(n, h int) ffnAct {
	return ffnAct{a: make([]float32, n*h), b: make([]float32, n*h), hh: make([]float32, n*h)}
}

// ffnForward computes yND = beta*yND + swiglu(xND) (n may be 0).
func ffnForward(x []float32, n, d, h int, w1, w3, w2 []float32, act ffnAct, y []float32, beta float32) {
	if n == 0 {
		return
	}
	blas := kernels.Default()
	a, b, hh := act.a[:n*h], act.b[:n*h], act.hh[:n*h]
	blas.Sgemm(false, false, n, h, d, 1, x, d, w1, h, 0, a, h)
	blas.Sgemm(false, false, n, h, d, 1, x, d, w3, h, 0, b, h)
	kernels.SwiGLU(hh, a, b)
	blas.Sgemm(false, false, n, d, h, 1, hh, h, w2, d, beta, y, d)
}

// ffnBackward accumulates dw1, dw3, dw2 and sets dx = dxBeta*dx + d(loss)/dx.
// scratch holds three [n,h] buffers (its a, b, hh are used as da, db, dhh).
func ffnBackward(x []float32, n, d, h int, w1, w3, w2 []float32, act ffnAct, dy []float32,
	dw1, dw3, dw2 []float32, scratch ffnAct, dx []float32, dxBeta float32) {
	if n == 0 {
		return
	}
	blas := kernels.Default()
	a, b, hh := act.a[:n*h], act.b[:n*h], act.hh[:n*h]
	da, db, dhh := scratch.a[:n*h], scratch.b[:n*h], scratch.hh[:n*h]
	blas.Sgemm(true, false, h, d, n, 1, hh, h, dy, d, 1, dw2, d)
	blas.Sgemm(false, true, n, h, d, 1, dy, d, w2, d, 0, dhh, h)
	kernels.SwiGLUBackward(da, db, dhh, a, b)
	blas.Sgemm(true, false, d, h, n, 1, x, d, da, h, 1, dw1, h)
	blas.Sgemm(true, false, d, h, n, 1, x, d, db, h, 1, dw3, h)
	blas.Sgemm(false, true, n, d, h, 1, da, h, w1, h, dxBeta, dx, d)
	blas.Sgemm(false, true, n, d, h, 1, db, h, w3, h, 1, dx, d)
}
