package kernels

import (
	"math"
	"math/rand/v2"
	"testing"
)

// Tolerances (relative unless stated): exp 1e-6 over [-87, 88]; SwiGLU and
// its backward 4e-6 (+1e-30 absolute for results in the denormal range);
// softmax 1e-5; RMSNorm 1e-5 of (1+|ref|) (float32 instead of float64
// accumulation over d <= 4097); RoPE, Axpy, AdamW 1e-6; Dot (n+2)*2^-24 of
// sum |a*b|.

var elemLens = []int{0, 1, 2, 7, 15, 16, 17, 31, 33, 100, 1000, 4097}

// forEachPath runs fn with the vectorised path and with the portable Go path.
func forEachPath(t *testing.T, fn func(t *testing.T)) {
	saved := path
	defer func() { path = saved }()
	paths := []int{pathGeneric}
	if saved != pathGeneric {
		paths = append(paths, saved)
	}
	for _, p := range paths {
		path = p
		t.Run(Name(), fn)
	}
}

func closeRel(got, want, rel, abs float64) bool {
	if math.IsNaN(want) || math.IsNaN(got) {
		return math.IsNaN(want) && math.IsNaN(got)
	}
	if math.IsInf(want, 0) {
		return got == want
	}
	return math.Abs(got-want) <= rel*math.Abs(want)+abs
}

func wideInputs(r *rand.Rand, n int) []float32 {
	s := randSlice(r, n)
	special := []float32{0, -0.5, 20, -20, 50, -50, 90, -90, 100, -100, 1000, -1000, 1e-8}
	for i := range s {
		if i%7 == 3 {
			s[i] = special[(i/7)%len(special)]
		} else {
			s[i] *= 3
		}
	}
	return s
}

func TestExpAccuracy(t *testing.T) {
	check := func(name string, f func([]float32) []float32) {
		var xs []float32
		for x := -87.0; x <= 88.5; x += 0.00037 {
			xs = append(xs, float32(x))
		}
		got := f(xs)
		worst := 0.0
		for i, x := range xs {
			want := math.Exp(float64(x))
			e := math.Abs(float64(got[i])-want) / want
			worst = max(worst, e)
			if e > 1e-6 {
				t.Fatalf("%s: exp(%g) = %g, want %g (rel %g)", name, x, got[i], want, e)
			}
		}
		t.Logf("%s: max relative error %.3g over %d points", name, worst, len(xs))
		sp := f([]float32{-100, -1000, 100, 1000, float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1))})
		if sp[0] > 1e-38 || sp[1] != 0 || !math.IsInf(float64(sp[2]), 1) || !math.IsInf(float64(sp[3]), 1) || sp[4] == sp[4] || !math.IsInf(float64(sp[5]), 1) || sp[6] != 0 {
			t.Fatalf("%s: special values %v", name, sp)
		}
	}
	check("go", func(xs []float32) []float32 {
		o := make([]float32, len(xs))
		for i, x := range xs {
			o[i] = expf(x)
		}
		return o
	})
	if path == pathAVX512 {
		check("avx512", func(xs []float32) []float32 {
			o := append([]float32(nil), xs...)
			expSubSumAVX512(&o[0], 0, len(o))
			return o
		})
	}
}

func TestSwiGLU(t *testing.T) {
	forEachPath(t, func(t *testing.T) {
		r := rand.New(rand.NewPCG(1, 2))
		for _, n := range elemLens {
			a, b, dh := wideInputs(r, n), randSlice(r, n), randSlice(r, n)
			h, want := make([]float32, n+1), make([]float32, n+1)
			h[n], want[n] = 42, 42 // must stay untouched
			SwiGLU(h[:n], a, b)
			RefSwiGLU(want[:n], a, b)
			for i := range h {
				if !closeRel(float64(h[i]), float64(want[i]), 4e-6, 1e-30) {
					t.Fatalf("n=%d: h[%d] = %g want %g (a=%g)", n, i, h[i], want[i], a[min(i, n-1)])
				}
			}
			da, db := make([]float32, n), make([]float32, n)
			wda, wdb := make([]float32, n), make([]float32, n)
			SwiGLUBackward(da, db, dh, a, b)
			RefSwiGLUBackward(wda, wdb, dh, a, b)
			for i := range da {
				// da = dh*b*s*(1 + a*(1-s)) cancels near a = -1.28: the
				// tolerance is relative to the uncancelled terms.
				s := 1 / (1 + math.Exp(-float64(a[i])))
				scale := math.Abs(float64(dh[i])*float64(b[i])) * s * (1 + math.Abs(float64(a[i]))*(1-s))
				if math.Abs(float64(da[i])-float64(wda[i])) > 4e-6*scale+1e-30 || !closeRel(float64(db[i]), float64(wdb[i]), 4e-6, 1e-30) {
					t.Fatalf("n=%d i=%d a=%g: da %g want %g, db %g want %g", n, i, a[i], da[i], wda[i], db[i], wdb[i])
				}
			}
		}
	})
}

func TestSoftmax(t *testing.T) {
	forEachPath(t, func(t *testing.T) {
		r := rand.New(rand.NewPCG(3, 4))
		for _, n := range elemLens {
			x := wideInputs(r, n)
			want := append([]float32(nil), x...)
			RefSoftmaxRows(want, 1, n, n, nil)
			Softmax(x)
			for i := range x {
				if !closeRel(float64(x[i]), float64(want[i]), 1e-5, 1e-30) {
					t.Fatalf("n=%d: p[%d] = %g want %g", n, i, x[i], want[i])
				}
			}
		}
		// Causal rows.
		rows, cols, ld := 9, 9, 11
		x := randSlice(r, rows*ld)
		want := append([]float32(nil), x...)
		causal := func(r int) int { return r + 1 }
		RefSoftmaxRows(want, rows, cols, ld, causal)
		SoftmaxRows(x, rows, cols, ld, causal)
		for i := range x {
			if !closeRel(float64(x[i]), float64(want[i]), 1e-5, 0) {
				t.Fatalf("rows: x[%d] = %g want %g", i, x[i], want[i])
			}
		}
	})
}

func TestRMSNorm(t *testing.T) {
	forEachPath(t, func(t *testing.T) {
		r := rand.New(rand.NewPCG(5, 6))
		for _, d := range elemLens[1:] {
			rows := 3
			x, g, dy := randSlice(r, rows*d), randSlice(r, d), randSlice(r, rows*d)
			y, rstd := make([]float32, rows*d), make([]float32, rows)
			wy, wrstd := make([]float32, rows*d), make([]float32, rows)
			RMSNorm(y, rstd, x, g, rows, d, 1e-5)
			RefRMSNorm(wy, wrstd, x, g, rows, d, 1e-5)
			for i := range y {
				if !closeRel(float64(y[i]), float64(wy[i]), 1e-5, 1e-5) {
					t.Fatalf("d=%d: y[%d] = %g want %g", d, i, y[i], wy[i])
				}
			}
			for i := range rstd {
				if !closeRel(float64(rstd[i]), float64(wrstd[i]), 1e-5, 0) {
					t.Fatalf("d=%d: rstd[%d] = %g want %g", d, i, rstd[i], wrstd[i])
				}
			}
			dx, dg := make([]float32, rows*d), randSlice(r, d)
			wdx, wdg := make([]float32, rows*d), append([]float32(nil), dg...)
			RMSNormBackward(dx, dg, dy, x, g, wrstd, rows, d)
			RefRMSNormBackward(wdx, wdg, dy, x, g, wrstd, rows, d)
			for i := range dx {
				if !closeRel(float64(dx[i]), float64(wdx[i]), 1e-5, 1e-5) {
					t.Fatalf("d=%d: dx[%d] = %g want %g", d, i, dx[i], wdx[i])
				}
			}
			for i := range dg {
				if !closeRel(float64(dg[i]), float64(wdg[i]), 1e-5, 1e-5) {
					t.Fatalf("d=%d: dg[%d] = %g want %g", d, i, dg[i], wdg[i])
				}
			}
		}
	})
}

func TestRoPE(t *testing.T) {
	forEachPath(t, func(t *testing.T) {
		r := rand.New(rand.NewPCG(7, 8))
		for _, hd := range []int{2, 6, 32, 34, 64, 128} {
			heads, rows, maxPos := 3, 4, 10
			half := hd / 2
			cos, sin := make([]float32, maxPos*half), make([]float32, maxPos*half)
			for p := 0; p < maxPos; p++ {
				for i := 0; i < half; i++ {
					th := float64(p) * math.Pow(10000, -2*float64(i)/float64(hd))
					cos[p*half+i], sin[p*half+i] = float32(math.Cos(th)), float32(math.Sin(th))
				}
			}
			pos := func(r int) int { return 2*r + 1 }
			for _, inv := range []bool{false, true} {
				x := randSlice(r, rows*heads*hd)
				want := append([]float32(nil), x...)
				RefRoPE(want, rows, heads, hd, pos, cos, sin, inv)
				RoPE(x, rows, heads, hd, pos, cos, sin, inv)
				for i := range x {
					if !closeRel(float64(x[i]), float64(want[i]), 1e-6, 1e-6) {
						t.Fatalf("hd=%d inv=%v: x[%d] = %g want %g", hd, inv, i, x[i], want[i])
					}
				}
			}
		}
	})
}

func TestAdamW(t *testing.T) {
	forEachPath(t, func(t *testing.T) {
		r := rand.New(rand.NewPCG(9, 10))
		for _, n := range elemLens {
			p, g, m, v := randSlice(r, n), randSlice(r, n), randSlice(r, n), absSlice(randSlice(r, n))
			wp, wm, wv := append([]float32(nil), p...), append([]float32(nil), m...), append([]float32(nil), v...)
			AdamW(p, g, m, v, 3e-4, 0.9, 0.999, 1e-8, 0.01, 1-0.9*0.9, 1-0.999*0.999)
			RefAdamW(wp, g, wm, wv, 3e-4, 0.9, 0.999, 1e-8, 0.01, 1-0.9*0.9, 1-0.999*0.999)
			for i := range p {
				if !closeRel(float64(p[i]), float64(wp[i]), 1e-6, 1e-9) || !closeRel(float64(m[i]), float64(wm[i]), 1e-6, 1e-9) || !closeRel(float64(v[i]), float64(wv[i]), 1e-6, 1e-9) {
					t.Fatalf("n=%d i=%d: p %g/%g m %g/%g v %g/%g", n, i, p[i], wp[i], m[i], wm[i], v[i], wv[i])
				}
			}
		}
	})
}

func TestBLAS1(t *testing.T) {
	forEachPath(t, func(t *testing.T) {
		r := rand.New(rand.NewPCG(11, 12))
		for _, n := range elemLens {
			a, b := randSlice(r, n), randSlice(r, n+3)
			var want, bound float64
			for i := range a {
				want += float64(a[i]) * float64(b[i])
				bound += math.Abs(float64(a[i]) * float64(b[i]))
			}
			if got := Dot(a, b); math.Abs(float64(got)-want) > float64(n+2)*math.Ldexp(1, -24)*bound {
				t.Fatalf("n=%d: Dot = %g want %g", n, got, want)
			}
			y := append([]float32(nil), b...)
			Axpy(-1.5, a, y)
			for i := range y {
				w := b[i]
				if i < n {
					w += -1.5 * a[i]
				}
				if !closeRel(float64(y[i]), float64(w), 1e-6, 1e-6) {
					t.Fatalf("n=%d: Axpy y[%d] = %g want %g", n, i, y[i], w)
				}
			}
			x := append([]float32(nil), b...)
			Scale(0.3, x[:n])
			for i := range x {
				w := b[i]
				if i < n {
					w *= 0.3
				}
				if x[i] != w {
					t.Fatalf("n=%d: Scale x[%d] = %g want %g", n, i, x[i], w)
				}
			}
		}
	})
}

func TestElemAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts differ under -race")
	}
	n := 1000
	a, b, c, d, e := make([]float32, n), make([]float32, n), make([]float32, n), make([]float32, n), make([]float32, n)
	allocs := testing.AllocsPerRun(10, func() {
		SwiGLU(a, b, c)
		SwiGLUBackward(a, b, c, d, e)
		RMSNorm(a, b[:10], c, d[:100], 10, 100, 1e-5)
		RMSNormBackward(a, b[:100], c, d, e[:100], b[500:510], 10, 100)
		Softmax(a)
		RoPERow(a[:256], 4, 64, b[:32], c[:32], true)
		AdamW(a, b, c, d, 1e-3, 0.9, 0.99, 1e-8, 0, 0.5, 0.5)
		Axpy(Dot(a, b), c, d)
		Scale(2, e)
	})
	if allocs != 0 {
		t.Fatalf("element-wise kernels allocate %v times", allocs)
	}
}
