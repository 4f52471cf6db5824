package kernels

// The production entry points. Each dispatches to the fastest implementation
// for this CPU; the reference versions in ref.go define their semantics.

// SwiGLU computes h = silu(a) * b element-wise.
func SwiGLU(h, a, b []float32) { RefSwiGLU(h, a, b) }

// SwiGLUBackward overwrites da and db with the gradients of h = silu(a)*b.
func SwiGLUBackward(da, db, dh, a, b []float32) { RefSwiGLUBackward(da, db, dh, a, b) }

// RMSNorm normalises rows x d values; see RefRMSNorm.
func RMSNorm(y, rstd, x, g []float32, rows, d int, eps float32) {
	RefRMSNorm(y, rstd, x, g, rows, d, eps)
}

// RMSNormBackward overwrites dx and accumulates dg; see RefRMSNormBackward.
func RMSNormBackward(dx, dg, dy, x, g, rstd []float32, rows, d int) {
	RefRMSNormBackward(dx, dg, dy, x, g, rstd, rows, d)
}

// Softmax replaces x by softmax(x) in place.
func Softmax(x []float32) { RefSoftmaxRows(x, 1, len(x), len(x), nil) }

// RoPERow rotates one row of heads*hd values at one position in place
// (rotate-half); cos and sin hold hd/2 values for that position.
func RoPERow(v []float32, heads, hd int, cos, sin []float32, inverse bool) {
	RefRoPE(v, 1, heads, hd, func(int) int { return 0 }, cos, sin, inverse)
}

// AdamW performs one AdamW update in place; see RefAdamW.
func AdamW(p, g, m, v []float32, lr, beta1, beta2, eps, wd, bc1, bc2 float32) {
	RefAdamW(p, g, m, v, lr, beta1, beta2, eps, wd, bc1, bc2)
}

// Dot returns sum a[i]*b[i].
func Dot(a, b []float32) float32 {
	var s float32
	for i := range a {
		s += a[i] * b[i]
	}
	return s
}

// Axpy computes y += alpha*x.
func Axpy(alpha float32, x, y []float32) {
	for i := range x {
		y[i] += alpha * x[i]
	}
}

// Scale computes x *= alpha.
func Scale(alpha float32, x []float32) {
	for i := range x {
		x[i] *= alpha
	}
}
