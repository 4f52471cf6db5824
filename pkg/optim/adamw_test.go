package optim

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/kernels"
)

func TestScheduleWarmupAndCosine(t *testing.T) {
	c := Config{LR: 1, MinLR: 0.1, WarmupSteps: 4}
	c.Defaults()
	want := map[int]float64{0: 0.25, 3: 1, 4: 1, 103: 0.1}
	for step, w := range want {
		if got := c.LRAt(step, 104); math.Abs(got-w) > 1e-12 {
			t.Errorf("LRAt(%d) = %v, want %v", step, got, w)
		}
	}
	mid := c.LRAt(4+99/2, 104)
	if math.Abs(mid-0.55) > 0.01 {
		t.Errorf("cosine midpoint %v, want about 0.55", mid)
	}
	for s := 5; s < 104; s++ {
		if c.LRAt(s, 104) > c.LRAt(s-1, 104) {
			t.Fatalf("schedule rises after warmup at %d", s)
		}
	}
}

// The parallel, chunked update equals one reference AdamW pass per range,
// with decay only where the range says so.
func TestAdamWMatchesReference(t *testing.T) {
	n := 3*chunkLen + 1234
	ranges := []Range{{0, 1000, false}, {1000, n - 1000, true}}
	o, err := NewAdamW(Config{LR: 1e-2, WeightDecay: 0.1}, n, ranges)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	p := make([]float32, n)
	g := make([]float32, n)
	for i := range p {
		p[i] = float32(rng.NormFloat64())
		g[i] = float32(rng.NormFloat64())
	}
	rp := append([]float32(nil), p...)
	m, v := make([]float32, n), make([]float32, n)
	for step := 1; step <= 3; step++ {
		o.Step(p, g, 1e-2)
		bc1 := float32(1 - math.Pow(0.9, float64(step)))
		bc2 := float32(1 - math.Pow(0.999, float64(step)))
		for _, r := range ranges {
			wd := float32(0)
			if r.Decay {
				wd = 0.1
			}
			s, e := r.Off, r.Off+r.Len
			kernels.RefAdamW(rp[s:e], g[s:e], m[s:e], v[s:e], 1e-2, 0.9, 0.999, 1e-8, wd, bc1, bc2)
		}
	}
	for i := range p {
		if d := math.Abs(float64(p[i] - rp[i])); d > 1e-6 {
			t.Fatalf("p[%d] = %v, reference %v", i, p[i], rp[i])
		}
	}
}

func TestValidateNamesField(t *testing.T) {
	for _, c := range []Config{{LR: -1}, {LR: 1, Beta1: 1}, {LR: 1, ClipNorm: -1}, {LR: 1, MinLR: 2}} {
		c2 := c
		c2.Defaults()
		if err := c2.Validate(); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	if s := (&AdamW{Cfg: Config{ClipNorm: 1}}).ClipScale(4); math.Abs(s-0.25) > 1e-6 {
		t.Errorf("clip scale %v", s)
	}
}
