package router

import (
	"errors"
	"math"
	"math/rand/v2"
	"sort"
	"testing"
)

// refTopK is the obviously correct oracle: sort all experts by
// (score+bias desc, index asc) and take the first k.
func refTopK(scoresTE []float32, T, E, k int, biasE []float32) []int32 {
	out := make([]int32, T*k)
	for t := 0; t < T; t++ {
		es := make([]int, E)
		for e := range es {
			es[e] = e
		}
		val := func(e int) float32 {
			v := scoresTE[t*E+e]
			if biasE != nil {
				v += biasE[e]
			}
			if math.IsNaN(float64(v)) {
				return float32(math.Inf(-1))
			}
			return v
		}
		sort.SliceStable(es, func(a, b int) bool { return val(es[a]) > val(es[b]) })
		for j := 0; j < k; j++ {
			out[t*k+j] = int32(es[j])
		}
	}
	return out
}

// randScores draws scores from a small set of values so that ties are common.
func randScores(rng *rand.Rand, n int, levels int) []float32 {
	s := make([]float32, n)
	for i := range s {
		if levels > 0 {
			s[i] = float32(rng.IntN(levels)) / 4
		} else {
			s[i] = float32(rng.NormFloat64())
		}
	}
	return s
}

func TestTopKMatchesSortReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := 0; trial < 400; trial++ {
		T := rng.IntN(20)
		E := 1 + rng.IntN(17)
		k := 1 + rng.IntN(E)
		levels := []int{0, 3, 8}[trial%3]
		scores := randScores(rng, T*E, levels)
		if trial%7 == 0 && len(scores) > 0 {
			scores[rng.IntN(len(scores))] = float32(math.NaN())
		}
		var bias []float32
		if trial%2 == 1 {
			bias = randScores(rng, E, levels)
		}
		got := make([]int32, T*k)
		TopK(scores, T, E, k, bias, got)
		want := refTopK(scores, T, E, k, bias)
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("trial %d (T=%d E=%d k=%d levels=%d bias=%v): token %d got %v want %v",
					trial, T, E, k, levels, bias != nil, i/k, got[i/k*k:i/k*k+k], want[i/k*k:i/k*k+k])
			}
		}
	}
}

func TestTopKTiesAndBias(t *testing.T) {
	scores := []float32{1, 2, 2, 1}
	idx := make([]int32, 3)
	TopK(scores, 1, 4, 3, nil, idx)
	if want := []int32{1, 2, 0}; !equal32(idx, want) {
		t.Fatalf("ties: got %v want %v", idx, want)
	}
	// The bias changes selection and order only.
	TopK(scores, 1, 4, 2, []float32{0, 0, 0, 5}, idx[:2])
	if want := []int32{3, 1}; !equal32(idx[:2], want) {
		t.Fatalf("bias: got %v want %v", idx[:2], want)
	}
}

func TestWeights(t *testing.T) {
	probs := []float32{0.1, 0.2, 0.3, 0.4}
	idx := []int32{3, 1}
	w := make([]float32, 2)
	Weights(probs, 1, 4, 2, idx, false, w)
	if w[0] != 0.4 || w[1] != 0.2 {
		t.Fatalf("raw weights %v", w)
	}
	Weights(probs, 1, 4, 2, idx, true, w)
	if math.Abs(float64(w[0])-2.0/3) > 1e-7 || math.Abs(float64(w[1])-1.0/3) > 1e-7 {
		t.Fatalf("renormalised weights %v", w)
	}
}

// TestWeightsBackwardFiniteDifference checks WeightsBackward against central
// differences of loss = sum_tj c_tj * w_tj. Probabilities are multiples of
// 1/64 and h = 2^-10 so the perturbed inputs are exact in float32; the loss
// is evaluated in float64 from float32 weights, so each difference carries a
// rounding error of about 1e-7*|loss|/h. Tolerance: 2e-3 absolute on
// gradients of order 1.
func TestWeightsBackwardFiniteDifference(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	const T, E, k = 5, 6, 3
	probs := make([]float32, T*E)
	for i := range probs {
		probs[i] = float32(1+rng.IntN(32)) / 64
	}
	idx := make([]int32, T*k)
	TopK(probs, T, E, k, nil, idx)
	c := make([]float32, T*k)
	for i := range c {
		c[i] = float32(rng.NormFloat64())
	}
	for _, renorm := range []bool{false, true} {
		w := make([]float32, T*k)
		loss := func() float64 {
			Weights(probs, T, E, k, idx, renorm, w)
			var s float64
			for i := range w {
				s += float64(c[i]) * float64(w[i])
			}
			return s
		}
		loss()
		dProbs := make([]float32, T*E)
		for i := range dProbs {
			dProbs[i] = 0.5 // accumulation: the result must add to this
		}
		WeightsBackward(probs, T, E, k, idx, w, c, renorm, dProbs)
		const h = 1.0 / 1024
		for i := range probs {
			p0 := probs[i]
			probs[i] = p0 + h
			lp := loss()
			probs[i] = p0 - h
			lm := loss()
			probs[i] = p0
			fd := (lp - lm) / (2 * h)
			got := float64(dProbs[i]) - 0.5
			if math.Abs(got-fd) > 2e-3 {
				t.Fatalf("renorm=%v d/dp[%d]: analytic %g, finite difference %g", renorm, i, got, fd)
			}
		}
	}
}

func equal32(a, b []int32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// checkPlan verifies every invariant of a plan built from idxTK.
func checkPlan(t *testing.T, p *Plan, idxTK []int32, T, E, k, capacity int) {
	t.Helper()
	hist := make([]int32, E)
	for _, e := range idxTK[:T*k] {
		hist[e]++
	}
	if !equal32(p.DemandE, hist) {
		t.Fatalf("DemandE %v, histogram %v", p.DemandE, hist)
	}
	if len(p.Offsets) != E+1 || p.Offsets[0] != 0 {
		t.Fatalf("offsets %v", p.Offsets)
	}
	S := p.Slots()
	if len(p.Token) != S || len(p.Choice) != S || len(p.SlotOf) != T*k {
		t.Fatalf("lengths: S=%d token=%d choice=%d slotOf=%d", S, len(p.Token), len(p.Choice), len(p.SlotOf))
	}
	kept := 0
	for e := 0; e < E; e++ {
		n := p.Offsets[e+1] - p.Offsets[e]
		if n < 0 {
			t.Fatalf("offsets not monotone: %v", p.Offsets)
		}
		want := hist[e]
		if capacity > 0 && int(want) > capacity {
			want = int32(capacity)
		}
		if n != want {
			t.Fatalf("expert %d holds %d slots, want %d (demand %d, capacity %d)", e, n, want, hist[e], capacity)
		}
		kept += int(n)
		lastKept := int32(-1)
		for s := p.Offsets[e]; s < p.Offsets[e+1]; s++ {
			tok, ch := p.Token[s], p.Choice[s]
			if idxTK[int(tok)*k+int(ch)] != int32(e) {
				t.Fatalf("slot %d of expert %d holds (t=%d, j=%d) routed to %d", s, e, tok, ch, idxTK[int(tok)*k+int(ch)])
			}
			if p.SlotOf[int(tok)*k+int(ch)] != s {
				t.Fatalf("SlotOf[%d,%d] = %d, want %d", tok, ch, p.SlotOf[int(tok)*k+int(ch)], s)
			}
			if s > p.Offsets[e] {
				pt, pc := p.Token[s-1], p.Choice[s-1]
				if pt > tok || (pt == tok && pc >= ch) {
					t.Fatalf("expert %d slots not sorted by token: (%d,%d) before (%d,%d)", e, pt, pc, tok, ch)
				}
			}
			lastKept = tok
		}
		// Drops are the latest tokens: every dropped pair of e comes after every kept one.
		for i, x := range idxTK[:T*k] {
			if x == int32(e) && p.SlotOf[i] < 0 && int32(i/k) < lastKept {
				t.Fatalf("expert %d dropped token %d but kept later token %d", e, i/k, lastKept)
			}
		}
	}
	dropped := 0
	for _, s := range p.SlotOf {
		if s < 0 {
			dropped++
		}
	}
	if dropped != p.Dropped || kept+dropped != T*k {
		t.Fatalf("kept %d dropped %d (Dropped=%d), T*k=%d", kept, dropped, p.Dropped, T*k)
	}
	if capacity <= 0 && dropped != 0 {
		t.Fatalf("dropless plan dropped %d", dropped)
	}
}

func TestPlanInvariants(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	var p Plan // one plan reused across shapes
	for trial := 0; trial < 300; trial++ {
		T := rng.IntN(40)
		E := 1 + rng.IntN(12)
		k := 1 + rng.IntN(E)
		scores := randScores(rng, T*E, 0)
		// Skew the load so capacity bites.
		for tk := 0; tk < T; tk++ {
			scores[tk*E] += 1.5
		}
		idx := make([]int32, T*k)
		TopK(scores, T, E, k, nil, idx)
		capacity := []int{0, -1, 1, Capacity(T, E, k, 1.0), Capacity(T, E, k, 1.25), T}[trial%6]
		if err := p.Build(idx, T, E, k, capacity); err != nil {
			t.Fatal(err)
		}
		checkPlan(t, &p, idx, T, E, k, capacity)
	}
}

func TestPlanDropsLatestTokens(t *testing.T) {
	// Four tokens, all to expert 0 first; capacity 2 keeps tokens 0 and 1.
	idx := []int32{0, 1, 0, 2, 0, 1, 0, 3}
	var p Plan
	if err := p.Build(idx, 4, 4, 2, 2); err != nil {
		t.Fatal(err)
	}
	// Slots: expert 0 -> 0,1 (t0,t1); expert 1 -> 2,3 (t0,t2); expert 2 -> 4; expert 3 -> 5.
	want := []int32{0, 2, 1, 4, -1, 3, -1, 5}
	if !equal32(p.SlotOf, want) || p.Dropped != 2 {
		t.Fatalf("SlotOf %v (dropped %d), want %v", p.SlotOf, p.Dropped, want)
	}
	if !p.Kept(1, 0) || p.Kept(2, 0) {
		t.Fatal("Kept disagrees with SlotOf")
	}
}

func TestPlanRejectsBadExpert(t *testing.T) {
	var p Plan
	err := p.Build([]int32{0, 4}, 2, 4, 1, 0)
	if !errors.Is(err, ErrExpertRange) {
		t.Fatalf("got %v, want ErrExpertRange", err)
	}
	if err := p.Build([]int32{-1}, 1, 4, 1, 0); !errors.Is(err, ErrExpertRange) {
		t.Fatalf("got %v, want ErrExpertRange", err)
	}
}

func TestCapacity(t *testing.T) {
	cases := []struct {
		T, E, k int
		f       float64
		want    int
	}{
		{8, 4, 2, 1.0, 4},
		{8, 4, 2, 1.25, 5},
		{10, 4, 1, 1.0, 3},
		{100, 10, 1, 1.1, 11}, // 1.1*100/10 is 11.000000000000002 in float64
		{3, 8, 1, 1.0, 1},
		{8, 4, 2, 0, 0},
		{8, 4, 2, -1, 0},
	}
	for _, c := range cases {
		if got := Capacity(c.T, c.E, c.k, c.f); got != c.want {
			t.Errorf("Capacity(%d,%d,%d,%g) = %d, want %d", c.T, c.E, c.k, c.f, got, c.want)
		}
	}
}

func TestNoAllocationsAfterWarmUp(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	const T, E, k = 256, 16, 2
	scores := randScores(rng, T*E, 0)
	bias := randScores(rng, E, 0)
	idx := make([]int32, T*k)
	w := make([]float32, T*k)
	dw := make([]float32, T*k)
	dp := make([]float32, T*E)
	var p Plan
	capacity := Capacity(T, E, k, 1.0)
	run := func() {
		TopK(scores, T, E, k, bias, idx)
		Weights(scores, T, E, k, idx, true, w)
		WeightsBackward(scores, T, E, k, idx, w, dw, true, dp)
		if err := p.Build(idx, T, E, k, capacity); err != nil {
			t.Fatal(err)
		}
		if err := p.Build(idx[:T/2*k], T/2, E, k, 0); err != nil { // smaller shape reuses buffers
			t.Fatal(err)
		}
	}
	run()
	if a := testing.AllocsPerRun(20, run); a != 0 {
		t.Fatalf("%v allocations per run, want 0", a)
	}
}

func TestShapePanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("TopK with k > E did not panic")
		}
	}()
	TopK(make([]float32, 4), 1, 4, 5, nil, make([]int32, 5))
}

func BenchmarkTopK(b *testing.B) {
	rng := rand.New(rand.NewPCG(9, 10))
	const T, E, k = 4096, 64, 8
	scores := randScores(rng, T*E, 0)
	idx := make([]int32, T*k)
	for b.Loop() {
		TopK(scores, T, E, k, nil, idx)
	}
}

func BenchmarkPlanBuild(b *testing.B) {
	rng := rand.New(rand.NewPCG(11, 12))
	const T, E, k = 4096, 64, 8
	scores := randScores(rng, T*E, 0)
	idx := make([]int32, T*k)
	TopK(scores, T, E, k, nil, idx)
	var p Plan
	for b.Loop() {
		_ = p.Build(idx, T, E, k, Capacity(T, E, k, 1.25))
	}
}
