package kernels

import "math"

// RefSgemm is the reference row-major SGEMM (accumulates in float64 per
// output element for a stable oracle).
func RefSgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var s float64
			for p := 0; p < k; p++ {
				var av, bv float32
				if transA {
					av = a[p*lda+i]
				} else {
					av = a[i*lda+p]
				}
				if transB {
					bv = b[j*ldb+p]
				} else {
					bv = b[p*ldb+j]
				}
				s += float64(av) * float64(bv)
			}
			ci := &c[i*ldc+j]
			if beta == 0 {
				*ci = alpha * float32(s)
			} else {
				*ci = alpha*float32(s) + beta*(*ci)
			}
		}
	}
}

func sigmoid(x float32) float32 { return float32(1 / (1 + math.Exp(-float64(x)))) }

// RefSwiGLU computes h[i] = silu(a[i]) * b[i] where silu(x) = x*sigmoid(x).
func RefSwiGLU(h, a, b []float32) {
	for i := range h {
		h[i] = a[i] * sigmoid(a[i]) * b[i]
	}
}

// RefSwiGLUBackward computes da = dh*b*silu'(a), db = dh*silu(a) (overwrites da, db).
func RefSwiGLUBackward(da, db, dh, a, b []float32) {
	for i := range dh {
		s := sigmoid(a[i])
		silu := a[i] * s
		dsilu := s * (1 + a[i]*(1-s))
		da[i] = dh[i] * b[i] * dsilu
		db[i] = dh[i] * silu
	}
}

// RefRMSNorm normalises each of rows rows of x (width d): y = x / rms(x) * g,
// rms = sqrt(mean(x^2) + eps). rstd[r] = 1/rms is saved for backward.
func RefRMSNorm(y, rstd, x, g []float32, rows, d int, eps float32) {
	for r := 0; r < rows; r++ {
		xr := x[r*d : (r+1)*d]
		var ss float64
		for _, v := range xr {
			ss += float64(v) * float64(v)
		}
		rs := float32(1 / math.Sqrt(ss/float64(d)+float64(eps)))
		rstd[r] = rs
		yr := y[r*d : (r+1)*d]
		for i, v := range xr {
			yr[i] = v * rs * g[i]
		}
	}
}

// RefRMSNormBackward: dx (overwritten) and dg (accumulated) from dy.
// dx = rstd*(g*dy) - x*rstd^3*mean(x*g*dy).
func RefRMSNormBackward(dx, dg, dy, x, g, rstd []float32, rows, d int) {
	for r := 0; r < rows; r++ {
		xr, dyr, dxr := x[r*d:(r+1)*d], dy[r*d:(r+1)*d], dx[r*d:(r+1)*d]
		rs := float64(rstd[r])
		var dot float64
		for i := range xr {
			dot += float64(xr[i]) * float64(g[i]) * float64(dyr[i])
			dg[i] += xr[i] * float32(rs) * dyr[i]
		}
		c := dot / float64(d) * rs * rs * rs
		for i := range xr {
			dxr[i] = float32(rs*float64(g[i])*float64(dyr[i]) - float64(xr[i])*c)
		}
	}
}

// RefSoftmaxRows replaces each row of x (rows x cols, row stride ld) by its
// softmax over the first n entries of the row; entries n..cols-1 become 0.
// Used for causal attention where row i has n = i+1 valid entries; pass
// n = nil for full rows.
func RefSoftmaxRows(x []float32, rows, cols, ld int, n func(r int) int) {
	for r := 0; r < rows; r++ {
		row := x[r*ld : r*ld+cols]
		valid := cols
		if n != nil {
			valid = n(r)
		}
		mx := float32(math.Inf(-1))
		for _, v := range row[:valid] {
			if v > mx {
				mx = v
			}
		}
		var s float64
		for i := 0; i < valid; i++ {
			e := math.Exp(float64(row[i] - mx))
			row[i] = float32(e)
			s += e
		}
		inv := float32(1 / s)
		for i := 0; i < valid; i++ {
			row[i] *= inv
		}
		for i := valid; i < cols; i++ {
			row[i] = 0
		}
	}
}

// RefRoPE rotates, in place, rows of x laid out as [rows][heads][hd] using
// rotate-half: for i < hd/2, (x1, x2) = (x[i], x[i+hd/2]) becomes
// (x1*cos - x2*sin, x2*cos + x1*sin) with cos/sin = tables[pos][i].
// pos(r) gives the position of row r. cos and sin are [maxPos][hd/2].
// inverse=true applies the transpose rotation (for backward).
func RefRoPE(x []float32, rows, heads, hd int, pos func(r int) int, cos, sin []float32, inverse bool) {
	half := hd / 2
	for r := 0; r < rows; r++ {
		p := pos(r)
		c := cos[p*half : (p+1)*half]
		s := sin[p*half : (p+1)*half]
		for h := 0; h < heads; h++ {
			v := x[(r*heads+h)*hd : (r*heads+h+1)*hd]
			for i := 0; i < half; i++ {
				x1, x2 := v[i], v[i+half]
				sn := s[i]
				if inverse {
					sn = -sn
				}
				v[i] = x1*c[i] - x2*sn
				v[i+half] = x2*c[i] + x1*sn
			}
		}
	}
}

// RefAdamW performs one decoupled-weight-decay Adam update in place.
// bc1 = 1-beta1^t, bc2 = 1-beta2^t.
func RefAdamW(p, g, m, v []float32, lr, beta1, beta2, eps, wd, bc1, bc2 float32) {
	for i := range p {
		gi := g[i]
		m[i] = beta1*m[i] + (1-beta1)*gi
		v[i] = beta2*v[i] + (1-beta2)*gi*gi
		mh := m[i] / bc1
		vh := v[i] / bc2
		p[i] -= lr * (mh/(float32(math.Sqrt(float64(vh)))+eps) + wd*p[i])
	}
}
