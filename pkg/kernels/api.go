package kernels

// The production entry points. Each dispatches to the fastest implementation
// for this CPU (AVX-512 assembly, else plain Go); the reference versions in
// ref.go define their semantics and are the tests' oracle. Every slice must
// hold at least as many values as the shape says; a short slice panics.

import "math"

// SwiGLU computes h = silu(a) * b element-wise.
func SwiGLU(h, a, b []float32) {
	n := len(h)
	if n == 0 {
		return
	}
	_, _ = a[n-1], b[n-1]
	if path == pathAVX512 {
		swigluAVX512(&h[0], &a[0], &b[0], n)
		return
	}
	for i := range h {
		h[i] = a[i] * sigmoidf(a[i]) * b[i]
	}
}

// SwiGLUBackward overwrites da and db with the gradients of h = silu(a)*b.
func SwiGLUBackward(da, db, dh, a, b []float32) {
	n := len(dh)
	if n == 0 {
		return
	}
	_, _, _, _ = da[n-1], db[n-1], a[n-1], b[n-1]
	if path == pathAVX512 {
		swigluBwdAVX512(&da[0], &db[0], &dh[0], &a[0], &b[0], n)
		return
	}
	for i := range dh {
		s := sigmoidf(a[i])
		silu := a[i] * s
		da[i] = dh[i] * b[i] * (s * (1 + a[i]*(1-s)))
		db[i] = dh[i] * silu
	}
}

// RMSNorm normalises rows x d values; see RefRMSNorm.
func RMSNorm(y, rstd, x, g []float32, rows, d int, eps float32) {
	if rows <= 0 || d <= 0 {
		return
	}
	_, _, _, _ = y[rows*d-1], x[rows*d-1], g[d-1], rstd[rows-1]
	for r := 0; r < rows; r++ {
		xr, yr := x[r*d:(r+1)*d], y[r*d:(r+1)*d]
		rs := float32(1 / math.Sqrt(float64(sumSq(xr))/float64(d)+float64(eps)))
		rstd[r] = rs
		if path == pathAVX512 {
			mulScaleAVX512(&yr[0], &xr[0], &g[0], rs, d)
			continue
		}
		for i, v := range xr {
			yr[i] = v * rs * g[i]
		}
	}
}

// RMSNormBackward overwrites dx and accumulates dg; see RefRMSNormBackward.
func RMSNormBackward(dx, dg, dy, x, g, rstd []float32, rows, d int) {
	if rows <= 0 || d <= 0 {
		return
	}
	_, _, _, _, _, _ = dx[rows*d-1], dy[rows*d-1], x[rows*d-1], dg[d-1], g[d-1], rstd[rows-1]
	for r := 0; r < rows; r++ {
		xr, dyr, dxr := x[r*d:(r+1)*d], dy[r*d:(r+1)*d], dx[r*d:(r+1)*d]
		rs := rstd[r]
		var dot float32
		if path == pathAVX512 {
			dot = dot3AVX512(&xr[0], &g[0], &dyr[0], d)
		} else {
			for i := range xr {
				dot += xr[i] * g[i] * dyr[i]
			}
		}
		rs64 := float64(rs)
		c := float32(float64(dot) / float64(d) * rs64 * rs64 * rs64)
		if path == pathAVX512 {
			rmsBwdAVX512(&dxr[0], &dg[0], &dyr[0], &xr[0], &g[0], rs, c, d)
			continue
		}
		for i := range xr {
			dg[i] += xr[i] * rs * dyr[i]
			dxr[i] = rs*g[i]*dyr[i] - xr[i]*c
		}
	}
}

// Softmax replaces x by softmax(x) in place.
func Softmax(x []float32) {
	n := len(x)
	if n == 0 {
		return
	}
	if path != pathAVX512 {
		softmaxGeneric(x)
		return
	}
	mx := maxAVX512(&x[0], n)
	s := expSubSumAVX512(&x[0], mx, n)
	scaleAVX512(1/s, &x[0], n)
}

// SoftmaxRows is the fast RefSoftmaxRows: each of rows rows (stride ld)
// becomes the softmax of its first n(r) entries (all cols when n is nil),
// the rest of the row's cols entries zero.
func SoftmaxRows(x []float32, rows, cols, ld int, n func(r int) int) {
	for r := 0; r < rows; r++ {
		row := x[r*ld : r*ld+cols]
		valid := cols
		if n != nil {
			valid = n(r)
		}
		Softmax(row[:valid])
		clear(row[valid:])
	}
}

// RoPERow rotates one row of heads*hd values at one position in place
// (rotate-half); cos and sin hold hd/2 values for that position.
func RoPERow(v []float32, heads, hd int, cos, sin []float32, inverse bool) {
	half := hd / 2
	if heads <= 0 || half == 0 {
		return
	}
	_, _, _ = v[(heads-1)*hd+2*half-1], cos[half-1], sin[half-1]
	sign := float32(1)
	if inverse {
		sign = -1
	}
	for h := 0; h < heads; h++ {
		x := v[h*hd : h*hd+2*half]
		if path == pathAVX512 {
			ropeAVX512(&x[0], &x[half], &cos[0], &sin[0], sign, half)
			continue
		}
		for i := 0; i < half; i++ {
			x1, x2, sn := x[i], x[i+half], sin[i]*sign
			x[i] = x1*cos[i] - x2*sn
			x[i+half] = x2*cos[i] + x1*sn
		}
	}
}

// RoPE is the fast RefRoPE over rows rows of heads*hd values.
func RoPE(x []float32, rows, heads, hd int, pos func(r int) int, cos, sin []float32, inverse bool) {
	half := hd / 2
	for r := 0; r < rows; r++ {
		p := pos(r)
		RoPERow(x[r*heads*hd:(r+1)*heads*hd], heads, hd, cos[p*half:(p+1)*half], sin[p*half:(p+1)*half], inverse)
	}
}

// AdamW performs one AdamW update in place; see RefAdamW.
func AdamW(p, g, m, v []float32, lr, beta1, beta2, eps, wd, bc1, bc2 float32) {
	n := len(p)
	if n == 0 {
		return
	}
	_, _, _ = g[n-1], m[n-1], v[n-1]
	if path != pathAVX512 {
		RefAdamW(p, g[:n], m[:n], v[:n], lr, beta1, beta2, eps, wd, bc1, bc2)
		return
	}
	k := [9]float32{lr, beta1, 1 - beta1, beta2, 1 - beta2, eps, wd, bc1, bc2}
	adamwAVX512(&p[0], &g[0], &m[0], &v[0], n, &k)
}

// Dot returns sum a[i]*b[i].
func Dot(a, b []float32) float32 {
	n := len(a)
	if n == 0 {
		return 0
	}
	_ = b[n-1]
	if path == pathAVX512 {
		return dotAVX512(&a[0], &b[0], n)
	}
	var s float32
	for i := range a {
		s += a[i] * b[i]
	}
	return s
}

// Axpy computes y += alpha*x.
func Axpy(alpha float32, x, y []float32) {
	n := len(x)
	if n == 0 {
		return
	}
	_ = y[n-1]
	if path == pathAVX512 {
		axpyAVX512(alpha, &x[0], &y[0], n)
		return
	}
	for i := range x {
		y[i] += alpha * x[i]
	}
}

// Scale computes x *= alpha.
func Scale(alpha float32, x []float32) {
	if len(x) == 0 {
		return
	}
	if path == pathAVX512 {
		scaleAVX512(alpha, &x[0], len(x))
		return
	}
	for i := range x {
		x[i] *= alpha
	}
}
