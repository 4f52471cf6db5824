package kernels

import (
	"math"
	"math/rand/v2"
	"testing"
)

// Finite-difference checks of the fast backward kernels against the fast
// forward ones: L = sum(dy * f(x)), centred differences with step 1e-2 in
// float32, tolerance 2e-3 * (1 + |grad|) (truncation ~1e-5, rounding ~1e-5).

func fdCheck(t *testing.T, name string, x []float32, grad []float32, loss func() float64) {
	t.Helper()
	const h = 1e-2
	for i := range x {
		orig := x[i]
		x[i] = orig + h
		lp := loss()
		x[i] = orig - h
		lm := loss()
		x[i] = orig
		fd := (lp - lm) / (2 * h)
		if math.Abs(fd-float64(grad[i])) > 2e-3*(1+math.Abs(fd)) {
			t.Fatalf("%s[%d]: analytic %g, finite difference %g", name, i, grad[i], fd)
		}
	}
}

func dot64(a, b []float32) float64 {
	var s float64
	for i := range a {
		s += float64(a[i]) * float64(b[i])
	}
	return s
}

func TestSwiGLUGradFD(t *testing.T) {
	forEachPath(t, func(t *testing.T) {
		r := rand.New(rand.NewPCG(21, 22))
		n := 37
		a, b, dh := wideInputs(r, n), randSlice(r, n), randSlice(r, n)
		for i := range a {
			a[i] = float32(math.Max(-8, math.Min(8, float64(a[i]))))
		}
		h := make([]float32, n)
		loss := func() float64 { SwiGLU(h, a, b); return dot64(dh, h) }
		da, db := make([]float32, n), make([]float32, n)
		SwiGLUBackward(da, db, dh, a, b)
		fdCheck(t, "da", a, da, loss)
		fdCheck(t, "db", b, db, loss)
	})
}

func TestRMSNormGradFD(t *testing.T) {
	forEachPath(t, func(t *testing.T) {
		r := rand.New(rand.NewPCG(23, 24))
		rows, d := 3, 19
		x, g, dy := randSlice(r, rows*d), randSlice(r, d), randSlice(r, rows*d)
		y, rstd := make([]float32, rows*d), make([]float32, rows)
		loss := func() float64 { RMSNorm(y, rstd, x, g, rows, d, 1e-5); return dot64(dy, y) }
		loss()
		dx, dg := make([]float32, rows*d), make([]float32, d)
		RMSNormBackward(dx, dg, dy, x, g, rstd, rows, d)
		fdCheck(t, "dx", x, dx, loss)
		fdCheck(t, "dg", g, dg, loss)
	})
}
