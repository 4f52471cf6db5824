package lbl

import (
	"math"
	"math/rand/v2"
	"testing"
)

// Finite-difference checks in float64. Central differences with h = 1e-5
// have truncation error ~h^2 * |f”'| ~ 1e-10 and rounding error
// ~1e-16/h ~ 1e-11 for losses of order 1; the tolerance is 1e-8 absolute
// (gradients here are of order 1e-2..1).
const (
	fdH   = 1e-5
	fdTol = 1e-8
)

func randLogits(rng *rand.Rand, n int, scale float64) []float64 {
	z := make([]float64, n)
	for i := range z {
		z[i] = scale * rng.NormFloat64()
	}
	return z
}

// topk64 is a plain reference top-k (largest first, lower index on ties).
func topk64(zTE []float64, T, E, k int) []int32 {
	idx := make([]int32, T*k)
	for t := 0; t < T; t++ {
		used := make([]bool, E)
		for j := 0; j < k; j++ {
			best := -1
			for e := 0; e < E; e++ {
				if !used[e] && (best < 0 || zTE[t*E+e] > zTE[t*E+best]) {
					best = e
				}
			}
			used[best] = true
			idx[t*k+j] = int32(best)
		}
	}
	return idx
}

func fdCheck(t *testing.T, name string, z []float64, analytic []float64, loss func([]float64) float64) {
	t.Helper()
	for i := range z {
		z0 := z[i]
		z[i] = z0 + fdH
		lp := loss(z)
		z[i] = z0 - fdH
		lm := loss(z)
		z[i] = z0
		fd := (lp - lm) / (2 * fdH)
		if math.Abs(fd-analytic[i]) > fdTol {
			t.Fatalf("%s: d/dz[%d] analytic %.12g, finite difference %.12g", name, i, analytic[i], fd)
		}
	}
}

func TestAddGradFiniteDifference(t *testing.T) {
	rng := rand.New(rand.NewPCG(10, 10))
	const T, E, k = 7, 5, 2
	z := randLogits(rng, T*E, 1.5)
	valid := []bool{true, false, true, true, false, true, true}
	countsE := make([]float64, E)
	Counts(topk64(z, T, E, k), T, E, k, valid, countsE)
	fE := make([]float64, E)
	pE := make([]float64, E)
	n := float64(ValidTokens(T, valid))
	LossFromCounts(countsE, n, k, pE, fE) // f is a constant from here on
	const scale = 0.37
	loss := func(z []float64) float64 {
		MeanProbs(softmax64(z, T, E), T, E, valid, pE)
		var s float64
		for e := range pE {
			s += fE[e] * pE[e]
		}
		return scale * float64(E) * s
	}
	g := make([]float64, T*E)
	for i := range g {
		g[i] = 1 // AddGrad must add to this
	}
	AddGrad(softmax64(z, T, E), T, E, valid, fE, scale, g)
	for i := range g {
		g[i]--
	}
	fdCheck(t, "AddGrad", z, g, loss)
}

func TestSeqGradFiniteDifference(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 11))
	const B, S, E, k = 3, 5, 6, 2
	const T = B * S
	z := randLogits(rng, T*E, 2)
	idx := topk64(z, T, E, k) // routing is fixed (stop-gradient)
	valid := make([]bool, T)
	for i := range valid {
		valid[i] = i%S != 3 && (i < S || i >= 2*S) // sequence 1 all padding, token 3 of others padding
	}
	s1, s2, s3 := make([]float64, E), make([]float64, E), make([]float64, E)
	const scale = 1.3
	loss := func(z []float64) float64 {
		return scale * SeqLoss(softmax64(z, T, E), idx, T, S, E, k, valid, s1, s2, s3)
	}
	g := make([]float64, T*E)
	AddSeqGrad(softmax64(z, T, E), idx, T, S, E, k, valid, scale, g, s1, s2)
	fdCheck(t, "AddSeqGrad", z, g, loss)
	for i := range g {
		if !valid[i/E] && g[i] != 0 {
			t.Fatalf("padding token %d has seq gradient", i/E)
		}
	}
	// With one sequence the sequence-level LBL is the micro-batch LBL.
	countsE, pE, fE := make([]float64, E), make([]float64, E), make([]float64, E)
	Counts(idx, T, E, k, valid, countsE)
	MeanProbs(softmax64(z, T, E), T, E, valid, pE)
	micro := LossFromCounts(countsE, float64(ValidTokens(T, valid)), k, pE, fE)
	if seq := SeqLoss(softmax64(z, T, E), idx, T, T, E, k, valid, s1, s2, s3); math.Abs(seq-micro) > 1e-14 {
		t.Fatalf("S=T: seq %v, micro %v", seq, micro)
	}
}

func TestZGradFiniteDifference(t *testing.T) {
	rng := rand.New(rand.NewPCG(12, 12))
	const T, E = 6, 7
	z := randLogits(rng, T*E, 3)
	valid := []bool{true, true, false, true, true, true}
	const scale = 0.8
	loss := func(z []float64) float64 { return scale * ZLoss(z, T, E, valid) }
	g := make([]float64, T*E)
	AddZGrad(z, T, E, valid, scale, g)
	fdCheck(t, "AddZGrad", z, g, loss)
	// Closed form on one token: logits all 0 give lse = log E.
	if got := ZLoss(make([]float64, E), 1, E, nil); math.Abs(got-math.Log(E)*math.Log(E)) > 1e-14 {
		t.Fatalf("z-loss of zero logits %v", got)
	}
	// Stable for large logits.
	big := []float32{1000, 999, -1000}
	if got := ZLoss(big, 1, 3, nil); math.IsInf(got, 0) || math.IsNaN(got) {
		t.Fatalf("z-loss overflowed: %v", got)
	}
}

func TestConsistencyFactsRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 13))
	for trial := 0; trial < 50; trial++ {
		T := 1 + rng.IntN(20)
		E := 2 + rng.IntN(10)
		k := 1 + rng.IntN(E)
		z := randLogits(rng, T*E, 2)
		P := softmax64(z, T, E)
		countsE, pE, fE := make([]float64, E), make([]float64, E), make([]float64, E)
		Counts(topk64(z, T, E, k), T, E, k, nil, countsE)
		MeanProbs(P, T, E, nil, pE)
		loss := LossFromCounts(countsE, float64(T), k, pE, fE)
		var fs float64
		for _, f := range fE {
			fs += f
		}
		if math.Abs(fs-1) > 1e-14 {
			t.Fatalf("f sums to %v", fs)
		}
		g := make([]float64, T*E)
		AddGrad(P, T, E, nil, fE, 1, g)
		for tok := 0; tok < T; tok++ {
			var s float64
			for _, v := range g[tok*E : (tok+1)*E] {
				s += v
			}
			if math.Abs(s) > 1e-15 {
				t.Fatalf("token %d gradient sums to %g", tok, s)
			}
		}
		if k == E && math.Abs(loss-1) > 1e-14 {
			t.Fatalf("k=E loss %v", loss)
		}
	}
}

func TestPaddingNeverCounts(t *testing.T) {
	idx := []int32{0, 1, 2, 3, 0, 1}
	counts := make([]float64, 4)
	Counts(idx, 3, 4, 2, []bool{true, false, true}, counts)
	if want := []float64{2, 2, 0, 0}; !equalF(counts, want) {
		t.Fatalf("counts %v, want %v", counts, want)
	}
	probs := []float32{1, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0}
	pE := make([]float64, 4)
	MeanProbs(probs, 3, 4, []bool{true, false, true}, pE)
	if want := []float64{0.5, 0.5, 0, 0}; !equalF(pE, want) {
		t.Fatalf("p %v, want %v", pE, want)
	}
	// No valid token at all: zeros, no NaN.
	MeanProbs(probs, 3, 4, []bool{false, false, false}, pE)
	fE := make([]float64, 4)
	if l := LossFromCounts([]float64{0, 0, 0, 0}, 0, 2, pE, fE); l != 0 || !equalF(pE, []float64{0, 0, 0, 0}) {
		t.Fatalf("empty batch: loss %v p %v", l, pE)
	}
	d := make([]float32, 12)
	AddGrad(probs, 3, 4, []bool{false, false, false}, []float64{1, 0, 0, 0}, 1, d)
	AddZGrad(probs, 3, 4, []bool{false, false, false}, 1, d)
	if !equalF32(d, make([]float32, 12)) {
		t.Fatalf("all-padding gradient %v", d)
	}
}

func equalF(a, b []float64) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return len(a) == len(b)
}

func equalF32(a, b []float32) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return len(a) == len(b)
}

func TestShapePanicsCarryPackageName(t *testing.T) {
	defer func() {
		r := recover()
		s, _ := r.(string)
		if len(s) < 4 || s[:4] != "lbl:" {
			t.Fatalf("panic %v, want a message starting with lbl:", r)
		}
	}()
	Counts([]int32{0}, 2, 4, 1, nil, make([]float64, 4))
}
