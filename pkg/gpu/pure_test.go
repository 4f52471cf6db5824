package gpu

// Tests that need no GPU and no emulator: the bf16 conversion against an
// independent reference, the launch-configuration arithmetic and the
// memory estimate.

import (
	"errors"
	"math"
	"math/big"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/cuda"
	"github.com/switchyard-ml/switchyard/pkg/model"
	"github.com/switchyard-ml/switchyard/pkg/router"
	"github.com/switchyard-ml/switchyard/pkg/runconfig"
)

// refBF16 rounds f to the nearest bfloat16 (8 significant bits) with ties
// to even, through math/big: an implementation that shares nothing with
// the bit trick of F32ToBF16.
func refBF16(f float32) float32 {
	if math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) || f == 0 {
		return f
	}
	x := new(big.Float).SetPrec(8).SetMode(big.ToNearestEven)
	x.SetFloat64(float64(f))
	r, _ := x.Float64()
	if math.Abs(r) > math.MaxFloat32 {
		return float32(math.Copysign(math.Inf(1), r))
	}
	return float32(r)
}

func TestBF16MatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	check := func(f float32) {
		t.Helper()
		got := RoundBF16(f)
		if math.IsNaN(float64(f)) {
			if !math.IsNaN(float64(got)) {
				t.Fatalf("bf16(NaN %#08x) = %v", math.Float32bits(f), got)
			}
			return
		}
		want := refBF16(f)
		// below the normal range bf16 keeps fewer bits: compare the
		// subnormals by the bit rule only (they round like the bits)
		if math.Abs(float64(f)) < 1.1754944e-38 {
			return
		}
		if math.Float32bits(got) != math.Float32bits(want) {
			t.Fatalf("bf16(%v = %#08x) = %v, reference %v", f, math.Float32bits(f), got, want)
		}
	}
	for i := 0; i < 200000; i++ {
		check(math.Float32frombits(rng.Uint32()))
	}
	for _, f := range []float32{1, -1, 1.00390625, 1.01171875, 1.0078125, 3.4028235e38, 65504, 1e-30, -2.5} {
		check(f)
	}
	if h := F32ToBF16(float32(math.NaN())); h&0x7f80 != 0x7f80 || h&0x7f == 0 {
		t.Fatalf("NaN became %#04x", h)
	}
	for i := 0; i < 1<<16; i++ {
		f := BF16ToF32(uint16(i))
		if !math.IsNaN(float64(f)) && F32ToBF16(f) != uint16(i) {
			t.Fatalf("bf16 %#04x does not round-trip", i)
		}
	}
}

func TestLaunchConfigurations(t *testing.T) {
	for _, c := range []struct{ n, want int }{{1, 32}, {32, 32}, {33, 64}, {255, 256}, {256, 256}, {4096, 256}} {
		if got := rowBlock(c.n); got != c.want {
			t.Errorf("rowBlock(%d) = %d, want %d", c.n, got, c.want)
		}
	}
	for _, c := range []struct {
		n    int64
		want int
	}{{0, 1}, {1, 1}, {256, 1}, {257, 2}, {1 << 40, maxGridStride}} {
		if got := strideGrid(c.n, 256); got != c.want {
			t.Errorf("strideGrid(%d) = %d, want %d", c.n, got, c.want)
		}
	}
	// normParts covers every row exactly once with at most 512 blocks
	for _, rows := range []int{1, 7, 511, 512, 513, 16384, 100003} {
		nblk, rpb := normParts(rows)
		if nblk < 1 || nblk > 512 || nblk*rpb < rows || (nblk-1)*rpb >= rows {
			t.Errorf("normParts(%d) = %d blocks of %d rows", rows, nblk, rpb)
		}
	}
	if planChunks(0) != 0 || planChunks(1) != 1 || planChunks(256) != 1 || planChunks(257) != 2 {
		t.Error("planChunks")
	}
	if sumsqBlocks(1) != 1 || sumsqBlocks(1<<40) != 1024 {
		t.Error("sumsqBlocks")
	}
}

// TestMemoryEstimate: the parameter-sized parts are exactly what the
// precision needs per parameter, activations grow with the micro-batch,
// and New refuses an oversized run before allocating, with the estimate.
func TestMemoryEstimate(t *testing.T) {
	c, _ := model.Preset("medium")
	P, _ := c.ParamCount()
	bf, err := Estimate(c, 16, BF16)
	if err != nil {
		t.Fatal(err)
	}
	fp, _ := Estimate(c, 16, FP32)
	if bf.Parameters != 6*P || fp.Parameters != 4*P || bf.Gradients != 4*P || bf.Optimizer != 8*P {
		t.Fatalf("per-parameter bytes: bf16 %+v fp32 %+v for %d parameters", bf, fp, P)
	}
	half, _ := Estimate(c, 8, BF16)
	if !(half.Activations < bf.Activations && fp.Activations > bf.Activations) {
		t.Fatalf("activations: mb8 bf16 %d, mb16 bf16 %d, mb16 fp32 %d", half.Activations, bf.Activations, fp.Activations)
	}
	if sum := bf.Parameters + bf.Gradients + bf.Optimizer + bf.Activations + bf.Scratch; sum != bf.Total {
		t.Fatalf("parts %d != total %d", sum, bf.Total)
	}
	t.Logf("medium, micro-batch 16: bf16 %.1f GiB (%s), fp32 %.1f GiB", gib(bf.Total), bf, gib(fp.Total))
	re, _ := EstimateRecompute(c, 16, BF16, 1, 1)
	probs := int64(c.Layers-1) * 16 * int64(c.Heads) * int64(c.SeqLen) * int64(c.SeqLen) * 2
	if bf.Total-re.Total != probs {
		t.Fatalf("recomputing the attention saves %d bytes, want %d", bf.Total-re.Total, probs)
	}
	t.Logf("medium bf16, micro-batch 16, attention recomputed: %.1f GiB", gib(re.Total))
	dev := &tinyDevice{free: 1 << 30, total: 2 << 30}
	_, err = New(dev, c, Options{MicroBatch: 16, Precision: BF16})
	var me *MemoryError
	if !errors.As(err, &me) || !errors.Is(err, cuda.ErrOutOfMemory) || dev.allocs != 0 {
		t.Fatalf("oversized run: %v (allocations %d)", err, dev.allocs)
	}
	if !strings.Contains(err.Error(), "the run needs 4") || !strings.Contains(err.Error(), "GiB free") ||
		!strings.Contains(err.Error(), "(recompute: attention would still need 37.5 GiB)") {
		t.Fatalf("message: %v", err)
	}
	_, err = New(&tinyDevice{free: 40 << 30, total: 80 << 30}, c, Options{MicroBatch: 16, Precision: BF16})
	if err == nil || !strings.Contains(err.Error(), "set recompute: attention (it would need 37.5 GiB), or lower micro_batch") {
		t.Fatalf("a run that fits with the attention recomputed: %v", err)
	}
	_, err = New(dev, c, Options{MicroBatch: 16, Precision: BF16, RecomputeAttention: true})
	if err == nil || strings.Contains(err.Error(), "or recompute") {
		t.Fatalf("oversized run that recomputes: %v", err)
	}
	t.Logf("refused: %v", err)
	if _, err := Estimate(c, 0, BF16); err == nil {
		t.Fatal("micro-batch 0 accepted")
	}
	if _, err := Estimate(c, 1, "fp16"); err == nil {
		t.Fatal("precision fp16 accepted")
	}
}

// tinyDevice answers MemInfo and counts allocations; nothing else is used
// before New refuses a run.
type tinyDevice struct {
	cuda.Device
	free, total int64
	allocs      int
}

func (d *tinyDevice) Name() string                       { return "test GPU" }
func (d *tinyDevice) MemInfo() (int64, int64, error)     { return d.free, d.total, nil }
func (d *tinyDevice) Alloc(int64) (cuda.DevPtr, error)   { d.allocs++; return 0, errors.New("no") }
func (d *tinyDevice) Kernel(string) (cuda.Kernel, error) { return nil, errors.New("no") }

// TestMemoryEstimateEP: an expert-parallel rank holds its share of the
// experts' parameters (the layout of pkg/model's rank with those
// experts), and room for the rows other ranks may send: P*T*k without a
// capacity, E*capacity with one.
func TestMemoryEstimateEP(t *testing.T) {
	for _, name := range []string{"tiny", "small"} {
		c, _ := model.Preset(name)
		c.Defaults()
		one, err := EstimateEP(c, 4, BF16, 1)
		if err != nil {
			t.Fatal(err)
		}
		two, err := EstimateEP(c, 4, BF16, 2)
		if err != nil {
			t.Fatal(err)
		}
		local := int64(len(model.NewHostParamsExperts(c, 0, c.Experts/2).Data))
		if two.Gradients != 4*local || two.Optimizer != 8*local || one.Gradients <= two.Gradients {
			t.Errorf("%s: ep 2 gradients %d bytes for %d local parameters (ep 1: %d)", name, two.Gradients, local, one.Gradients)
		}
		T := 4 * c.SeqLen
		if got := epRows(c, T, 2); c.CapacityFactor > 0 {
			if want := min(2*T*c.TopK, c.Experts*router.Capacity(T, c.Experts, c.TopK, c.CapacityFactor)); got != want {
				t.Errorf("%s: rows %d, want %d", name, got, want)
			}
		} else if got != 2*T*c.TopK {
			t.Errorf("%s: rows %d, want %d", name, got, 2*T*c.TopK)
		}
	}
	c, _ := model.Preset("tiny")
	if _, err := EstimateEP(c, 4, BF16, 3); err == nil || !strings.Contains(err.Error(), "expert parallelism over 3 ranks needs a multiple of 3") {
		t.Errorf("ep 3 over %d experts: %v", c.Experts, err)
	}
}

// TestMemoryEstimateTP: a tensor-parallel rank holds its slices of the
// attention projections (pkg/model's TP rank's layout), 1/tp of the
// attention activations (its heads) and of the MoE activations (its
// tokens), and everything else whole; configurations tp cannot split are
// refused naming why.
func TestMemoryEstimateTP(t *testing.T) {
	c, _ := model.Preset("small")
	c.Defaults()
	one, err := EstimateParallel(c, 4, FP32, 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	two, err := EstimateParallel(c, 4, FP32, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	local := int64(len(model.NewHostParamsTP(c, 0, c.Experts, 1, 2).Data))
	attn := int64(c.Layers) * 4 * int64(c.Dim) * int64(c.Dim) // wqkv and wo
	if two.Gradients != 4*local || one.Gradients-two.Gradients != 4*attn/2 {
		t.Errorf("tp 2 gradients %d bytes for %d local parameters (tp 1: %d; attention %d)", two.Gradients, local, one.Gradients, attn)
	}
	// per layer: the probabilities [B][H][S][S] and q, k, v, attention
	// output [T][d] halve with the heads; the MoE's per-token buffers with
	// the tokens
	if !(two.Activations < one.Activations && two.Scratch < one.Scratch) {
		t.Errorf("tp 2 activations %d, scratch %d; tp 1: %d, %d", two.Activations, two.Scratch, one.Activations, one.Scratch)
	}
	for _, tc := range []struct {
		micro, tp int
		want      string
	}{
		{4, 3, "heads = 8: tensor parallelism over 3 ranks needs a multiple of 3"},
		{3, 2, "micro-batch = 3: tensor parallelism over 2 ranks splits the MoE tokens by whole sequences"},
	} {
		if _, err := EstimateParallel(c, tc.micro, FP32, 1, tc.tp); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("micro %d tp %d: %v, want %q", tc.micro, tc.tp, err, tc.want)
		}
	}
}

// TestMinGPURankBytes: runconfig's lower bound on a rank's GPU memory
// (what the coordinator places by, without linking the engine) is never
// above what New needs (its estimate plus the reserve) and never below
// 85% of it, for every preset, precision and tensor/expert split.
func TestMinGPURankBytes(t *testing.T) {
	worst := 1.0
	defer func() { t.Logf("the bound is at least %.0f%% of the engine's need", 100*worst) }()
	for _, name := range []string{"tiny", "small", "medium", "science", "small+capacity+shared"} {
		c, _ := model.Preset(strings.Split(name, "+")[0])
		if strings.Contains(name, "+") {
			c.CapacityFactor, c.Shared = 1.25, 1
		}
		c.Defaults()
		micro := map[string]int{"tiny": 8, "small": 4, "medium": 16, "science": 8}[strings.Split(name, "+")[0]]
		for _, prec := range []Precision{FP32, BF16} {
			for _, par := range []struct {
				tp, ep int
				re     bool
			}{{1, 1, false}, {2, 1, false}, {1, 2, false}, {2, 2, false}, {1, 4, false}, {1, 1, true}, {2, 2, true}} {
				est, err := estimate(c, micro, prec, par.ep, par.tp, par.re)
				if err != nil {
					t.Fatal(err)
				}
				need := float64(est.Total + runconfig.GPUReserveBytes)
				bound := c.MinGPURankBytes(micro, par.tp, par.ep, prec == BF16, par.re)
				worst = min(worst, bound/need)
				if bound > need || bound < 0.85*need {
					t.Errorf("%s %s tp %d ep %d recompute %v: bound %.2f GiB, the engine needs %.2f GiB (%.0f%%)", name, prec, par.tp, par.ep, par.re,
						bound/(1<<30), need/(1<<30), 100*bound/need)
				}
			}
		}
	}
}

// TestMinGPURankBytesNeverAbove: over random models and layouts (dense
// layers, shared experts, capacity factors below 1 and above ep, tensor
// and expert parallelism, recomputation, both precisions) runconfig's
// bound never exceeds what the engine allocates: placement by it never
// keeps a rank off a GPU it fits.
func TestMinGPURankBytesNeverAbove(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 5))
	for i := range 20000 {
		tp := []int{1, 2, 4}[r.IntN(3)]
		ep := 1 + r.IntN(4)
		hd := 2 * (1 + r.IntN(16))
		c := model.Config{Vocab: 1 + r.IntN(4096), Heads: tp * (1 + r.IntN(4)), Layers: 1 + r.IntN(4), SeqLen: 1 + r.IntN(96),
			Experts: ep * (1 + r.IntN(8)), Hidden: 1 + r.IntN(128), MoEEvery: 1 + r.IntN(3), DenseHidden: 1 + r.IntN(128),
			Shared: r.IntN(2)}
		c.Dim = c.Heads * hd
		c.TopK = 1 + r.IntN(min(c.Experts, 4))
		if r.IntN(2) == 0 {
			c.CapacityFactor = []float64{0.1, 0.75, 1, 1.25, 3, 100}[r.IntN(6)]
		}
		c.Defaults()
		if c.Validate() != nil {
			continue
		}
		micro := tp * (1 + r.IntN(4))
		prec, re := []Precision{FP32, BF16}[r.IntN(2)], r.IntN(2) == 0
		est, err := estimate(c, micro, prec, ep, tp, re)
		if err != nil {
			t.Fatalf("%d: %+v: %v", i, c, err)
		}
		if bound := c.MinGPURankBytes(micro, tp, ep, prec == BF16, re) - runconfig.GPUReserveBytes; bound > float64(est.Total) {
			t.Fatalf("%d: %+v micro %d tp %d ep %d %s recompute %v: bound %.0f bytes above the engine's %d", i, c, micro, tp, ep, prec, re, bound, est.Total)
		}
	}
}
