package model

import (
	"context"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/lbl"
)

// testConfig is a model small enough for finite differences: two blocks,
// the second one MoE (MoEEvery 2), so both feed-forward kinds are covered.
func testConfig() Config {
	c := Config{Vocab: 11, Dim: 8, Layers: 2, Heads: 2, SeqLen: 5, Experts: 4, TopK: 2, Hidden: 6, MoEEvery: 2, InitStd: 0.3}
	c.Defaults()
	return c
}

type fdHarness struct {
	t   *testing.T
	m   *Model
	bal *lbl.Balancer
}

func newHarness(t *testing.T, c Config, bc lbl.Config, B int, seed uint64) *fdHarness {
	t.Helper()
	bal, err := lbl.NewBalancer(bc, c.MoELayers(), c.Experts, c.TopK, lbl.Identity{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(c, B, bal, 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	m.P.Init(c, seed)
	rng := rand.New(rand.NewPCG(seed, 7))
	// perturb the norm gains too so their gradients are not at a symmetric point
	for _, q := range m.P.List {
		if !q.Decay {
			for i := q.Offset; i < q.Offset+q.Size; i++ {
				m.P.Data[i] = float32(0.5 + rng.Float64())
			}
		}
	}
	b := m.Train.Batch
	for i := range b.Tokens {
		b.Tokens[i] = int32(rng.IntN(c.Vocab))
		b.Targets[i] = int32(rng.IntN(c.Vocab))
	}
	// pad the tail of the last sequence: padding must not count anywhere
	b.Targets[len(b.Targets)-1] = -1
	b.Targets[len(b.Targets)-2] = -1
	return &fdHarness{t: t, m: m, bal: bal}
}

// loss runs one step and returns cross-entropy + weighted auxiliary loss
// (the function whose gradient Step accumulates), and the routing choices.
func (h *fdHarness) loss() (float64, [][]int32) {
	h.t.Helper()
	ce, err := h.m.Step(context.Background())
	if err != nil {
		h.t.Fatal(err)
	}
	total := ce + h.bal.Losses().Total
	var routes [][]int32
	for _, op := range h.m.Train.moes {
		routes = append(routes, slices.Clone(op.r.idxTK))
	}
	h.bal.StepDone()
	return total, routes
}

func sameRoutes(a, b [][]int32) bool {
	for i := range a {
		if !slices.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

// checkGrads compares Step's gradient with central differences on a sample
// of every parameter tensor. Float32 model: eps 1e-2, and the agreement
// required is |a-n| <= 1e-3 + 3e-2*max(|a|,|n|) (float32 rounding of a loss
// near 2.4 is ~2e-7, i.e. ~1e-5 in a difference quotient with eps 1e-2; the
// remaining slack covers the O(eps^2) truncation). Coordinates whose
// perturbation changes a top-k choice are skipped (the loss is not
// differentiable there) and counted.
func (h *fdHarness) checkGrads(perTensor int) {
	t := h.t
	p := h.m.P
	p.ZeroGrad()
	_, base := h.loss()
	ana := slices.Clone(p.Grad)
	p.ZeroGrad()
	rng := rand.New(rand.NewPCG(3, 4))
	const eps = 1e-2
	skipped, checked := 0, 0
	for _, q := range p.List {
		for s := 0; s < perTensor; s++ {
			i := q.Offset + rng.IntN(q.Size)
			orig := p.Data[i]
			p.Data[i] = orig + eps
			lp, rp := h.loss()
			p.Data[i] = orig - eps
			lm, rm := h.loss()
			p.Data[i] = orig
			p.ZeroGrad()
			if !sameRoutes(rp, base) || !sameRoutes(rm, base) {
				skipped++
				continue
			}
			num := (lp - lm) / (2 * eps)
			a := float64(ana[i])
			checked++
			if math.Abs(a-num) > 1e-3+3e-2*math.Max(math.Abs(a), math.Abs(num)) {
				t.Errorf("%s[%d]: analytic %.6g, numeric %.6g", q.Name, i-q.Offset, a, num)
			}
		}
	}
	if skipped > checked/4 {
		t.Errorf("too many coordinates skipped for routing flips: %d of %d", skipped, skipped+checked)
	}
	t.Logf("checked %d coordinates, skipped %d (routing flips)", checked, skipped)
}

func TestGradFiniteDifferences(t *testing.T) {
	cases := []struct {
		name string
		cfg  func(*Config)
		bc   lbl.Config
	}{
		{"global-lbl", nil, lbl.Config{GlobalCoef: 0.5}},
		{"micro-lbl", nil, lbl.Config{MicroCoef: 0.5}},
		{"sequence-lbl", nil, lbl.Config{SeqCoef: 0.5}},
		{"z-loss", nil, lbl.Config{ZCoef: 0.1}},
		{"mix-layer-coef", nil, lbl.Config{GlobalCoef: 0.3, MicroCoef: 0.05, ZCoef: 0.01, LayerCoef: []float64{2}}},
		{"shared-experts", func(c *Config) { c.Shared = 1 }, lbl.Config{GlobalCoef: 0.1}},
		{"renormalize", func(c *Config) { c.Renormalize = true }, lbl.Config{GlobalCoef: 0.1}},
		{"capacity-drop", func(c *Config) { c.CapacityFactor = 0.5 }, lbl.Config{GlobalCoef: 0.1}},
		{"all-moe-k1", func(c *Config) { c.MoEEvery = 1; c.TopK = 1 }, lbl.Config{GlobalCoef: 0.1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := testConfig()
			if tc.cfg != nil {
				tc.cfg(&c)
			}
			h := newHarness(t, c, tc.bc, 3, 11)
			h.checkGrads(6)
		})
	}
}

// Causal attention in blocks smaller than the sequence (5 = 2+2+1) must
// give exactly the gradients finite differences say, and the same loss as
// one block.
func TestAttentionBlocks(t *testing.T) {
	one := newHarness(t, testConfig(), lbl.Config{GlobalCoef: 0.1}, 2, 13)
	l1, _ := one.loss()
	defer func(b int) { attnBlock = b }(attnBlock)
	attnBlock = 2
	h := newHarness(t, testConfig(), lbl.Config{GlobalCoef: 0.1}, 2, 13)
	l2, _ := h.loss()
	if math.Abs(l1-l2) > 1e-6*math.Abs(l1) {
		t.Fatalf("blocked attention loss %v, unblocked %v", l2, l1)
	}
	h.checkGrads(6)
}

// A capacity below demand must actually drop pairs in the capacity case,
// or the test above would not cover dropping.
func TestCapacityDrops(t *testing.T) {
	c := testConfig()
	c.CapacityFactor = 0.5
	h := newHarness(t, c, lbl.Config{GlobalCoef: 0.1}, 3, 11)
	h.loss()
	if d := h.m.Train.moes[0].r.plan.Dropped; d == 0 {
		t.Fatal("capacity factor 0.5 dropped nothing")
	}
}

func TestDeterministicSteps(t *testing.T) {
	run := func() []float64 {
		h := newHarness(t, testConfig(), lbl.Config{GlobalCoef: 0.1}, 2, 5)
		var out []float64
		for i := 0; i < 3; i++ {
			l, _ := h.loss()
			out = append(out, l)
			for j := range h.m.P.Data {
				h.m.P.Data[j] -= 0.01 * h.m.P.Grad[j]
			}
			h.m.P.ZeroGrad()
		}
		return out
	}
	a, b := run(), run()
	if !slices.Equal(a, b) {
		t.Fatalf("same seed, different losses: %v vs %v", a, b)
	}
}

func TestConfigValidate(t *testing.T) {
	c := testConfig()
	c.Heads = 3
	if err := c.Validate(); err == nil {
		t.Fatal("heads not dividing dim accepted")
	}
	c = testConfig()
	c.TopK = 9
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "top_k") {
		t.Fatalf("top_k > experts: %v", err)
	}
	for name := range Presets {
		p, err := Preset(name)
		if err != nil || p.Validate() != nil {
			t.Fatalf("preset %s: %v", name, err)
		}
	}
	if _, err := Preset("huge"); err == nil {
		t.Fatal("unknown preset accepted")
	}
}

// The presets match ../shared/bench's reference model: tiny 13.8 M / 4.3 M
// parameters and 28.8 MFLOP per token, small 210 M / 33.9 M and 227.7 M.
func TestPresetSizes(t *testing.T) {
	for _, tc := range []struct {
		name          string
		total, active float64
		flops         float64
	}{{"tiny", 13.8e6, 4.3e6, 28.8e6}, {"small", 210e6, 33.9e6, 227.7e6}} {
		c, _ := Preset(tc.name)
		total, active := c.ParamCount()
		f := c.FlopsPerToken()
		if math.Abs(float64(total)-tc.total) > 0.06e6*tc.total/13.8e6 || math.Abs(float64(active)-tc.active) > 0.06e6*tc.active/4.3e6 ||
			math.Abs(f-tc.flops) > 0.005*tc.flops {
			t.Errorf("%s: total %d active %d flops %.4g", tc.name, total, active, f)
		}
		p := buildParams(c, 0, c.Experts, 0, 1)
		if int64(p.Len()) != total {
			t.Errorf("%s: Params holds %d, ParamCount says %d", tc.name, p.Len(), total)
		}
	}
}

// Keeping gorgonia's registers across runs (rewind) must compute exactly
// what re-allocating them (Reset) computes, step after step, and must
// actually be in effect (else the allocation figures would be wrong).
func TestRewoundMachineMatchesReset(t *testing.T) {
	run := func(keep bool) ([]float64, []float32) {
		h := newHarness(t, testConfig(), lbl.Config{GlobalCoef: 0.1, ZCoef: 0.01}, 2, 9)
		h.m.Train.KeepRegisters = keep
		var losses []float64
		for i := 0; i < 4; i++ {
			l, _ := h.loss()
			losses = append(losses, l)
			for j := range h.m.P.Data {
				h.m.P.Data[j] -= 0.05 * h.m.P.Grad[j]
			}
			if i < 3 {
				h.m.P.ZeroGrad()
			}
		}
		return losses, slices.Clone(h.m.P.Grad)
	}
	lk, gk := run(true)
	lr, gr := run(false)
	if !slices.Equal(lk, lr) || !slices.Equal(gk, gr) {
		t.Fatalf("rewound machine differs from reset one: losses %v vs %v", lk, lr)
	}
	h := newHarness(t, testConfig(), lbl.Config{GlobalCoef: 0.1}, 2, 9)
	if !rewind(h.m.Train.vm) {
		t.Fatal("rewind is not in effect for this gorgonia version")
	}
}
