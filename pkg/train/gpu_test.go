package train

// The GPU engine inside the trainer: step-for-step equivalence with the CPU
// engine in fp32, bf16 against fp32, and checkpoints that move between
// the engines. On a GPU they use the tiny preset (30 and 200 steps, the
// issue's protocol); under the CPU emulator (build tag cudaemu) a model
// small enough for it; without either they skip with the reason.

import (
	"context"
	"fmt"
	"math"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/cuda"
	"github.com/switchyard-ml/switchyard/pkg/data"
	"github.com/switchyard-ml/switchyard/pkg/gpu"
	"github.com/switchyard-ml/switchyard/pkg/model"
	"github.com/switchyard-ml/switchyard/pkg/parallel"
)

// emuDevice is set by the cudaemu build; nil otherwise.
var emuDevice func() cuda.Device

// gpuDevice returns a device for one trainer (the trainer closes it).
func gpuDevice(t *testing.T) cuda.Device {
	t.Helper()
	if emuDevice != nil {
		return emuDevice()
	}
	d, err := gpu.Open(0)
	if err != nil {
		if os.Getenv("SWITCHYARD_REQUIRE_GPU") != "" {
			t.Fatalf("SWITCHYARD_REQUIRE_GPU is set and the GPU does not open: %v", err)
		}
		t.Skipf("no GPU: %v", err)
	}
	return d
}

// gpuRun is the run the GPU tests compare: tiny on the demo corpus on a
// GPU, a 2-layer d16 model under the emulator.
func gpuRun(t *testing.T, steps int) (Config, *data.Corpus) {
	t.Helper()
	if emuDevice != nil {
		cfg, _ := smallRun(t, "global", steps)
		cfg.Model = &model.Config{Vocab: 256, Dim: 16, Layers: 2, Heads: 2, SeqLen: 16, Experts: 4, TopK: 2, Hidden: 16}
		cfg.MicroBatch, cfg.Accumulation = 2, 2
		cfg.Data.EvalSeqs = 2
		docs, err := data.Demo(data.DemoOptions{Seed: 1, BytesPerDomain: 8 << 10, Domains: []string{"arith", "records", "logs"}})
		if err != nil {
			t.Fatal(err)
		}
		corpus, err := data.Build(docs, data.BuildConfig{SeqLen: 16, ValFraction: 0.1, Seed: 1})
		if err != nil {
			t.Fatal(err)
		}
		return cfg, corpus
	}
	cfg, err := PresetConfig("tiny")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Steps, cfg.Accumulation, cfg.Seed = steps, 2, 3
	cfg.Optim.LR, cfg.Optim.WarmupSteps = 2e-3, 10
	cfg.Data.EvalSeqs = 32
	// the generated domains only: a GPU machine may have no Go source tree
	docs, err := data.Demo(data.DemoOptions{Seed: 1, BytesPerDomain: 512 << 10, Domains: []string{"arith", "records", "logs"}})
	if err != nil {
		t.Fatal(err)
	}
	corpus, err := data.Build(docs, data.BuildConfig{SeqLen: 256, ValFraction: 0.05, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	return cfg, corpus
}

func onDevice(t *testing.T, cfg Config, corpus *data.Corpus, prec string) *Trainer {
	t.Helper()
	cfg.Device, cfg.Precision = "cuda", prec
	tr, err := NewParallelOn(cfg, corpus, nil, nil, gpuDevice(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

// fp32Run is gpuRun for steps in fp32 on the GPU (seed 3 unless set),
// with a source of devices for curveRun.
func fp32Run(t *testing.T, steps int) (func() cuda.Device, Config, *data.Corpus) {
	t.Helper()
	cfg, corpus := gpuRun(t, steps)
	cfg.Device, cfg.Precision = "cuda", "fp32"
	if cfg.Seed == 0 {
		cfg.Seed = 3
	}
	return func() cuda.Device { return gpuDevice(t) }, cfg, corpus
}

func relDiff(a, b float64) float64 { return math.Abs(a-b) / math.Max(math.Abs(b), 1e-12) }

// TestGPUMatchesCPUTraining: fp32 on the GPU and the CPU engine, 30 steps
// of tiny from the same seed and data, two ways.
//
// Step by step: before each step the GPU trainer takes the CPU trainer's
// whole state (parameters, AdamW moments, balancer, data position), so
// every one of the 30 steps starts from the same state on both engines;
// the loss, the weighted auxiliary loss, every layer's LBL and the
// gradient norm agree to 1e-4 relative at every step. One exception, by
// construction: a router near-tie that rounds the other way moves a
// token's choice to another expert, which moves that layer's LBL by up to
// E/(tokens*k) (seen between the CPU engine's own two kernel sets, from
// the same state: 7.2e-5 at step 28 of this run, 1e-7 at the others).
// Where the two engines' expert counts differ, at most 4 choices may
// have moved and that layer's LBL and the aux loss are held to 1e-3.
//
// Free-running: each engine trains on its own from step 1. Two float32
// implementations of the same step cannot stay within 1e-4 here for 30
// steps: measured on the CPU alone, the engine with its AVX-512 kernels
// and with its portable Go kernels (same model, same run) agree to 1e-6
// through step 8, then the differences grow as the warm-up reaches the
// peak learning rate: LBL 1.9e-4 at step 11, 7e-3 at step 14, up to 6e-2
// by step 30, the loss up to 6e-3. The GPU run shows the same (LBL 1.9e-4
// at step 11 on an H200). So the free-running runs are held to 1e-4
// through step 8 and afterwards the loss to 2e-2, which a wrong update or
// optimizer state would break.
func TestGPUMatchesCPUTraining(t *testing.T) {
	steps := 30
	if emuDevice != nil {
		steps = 4
	}
	cfg, corpus := gpuRun(t, steps)
	forced := onDevice(t, cfg, corpus, "fp32")
	free := onDevice(t, cfg, corpus, "fp32")
	cpu, err := NewWithCorpus(cfg, corpus, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cpu.Close()
	cpuFree, err := NewWithCorpus(cfg, corpus, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cpuFree.Close()
	mc, err := cfg.ModelConfig()
	if err != nil {
		t.Fatal(err)
	}
	choices := float64(cfg.Accumulation * cfg.MicroBatch * mc.SeqLen * mc.TopK) // per layer and step
	ctx := context.Background()
	step := func(tr *Trainer) StepMetrics {
		t.Helper()
		sm, err := tr.TrainStep(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return sm
	}
	var worstForced, worstFree, worstFreeLoss float64
	tieSteps := 0
	for s := 1; s <= steps; s++ {
		st, err := cpu.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		if err := forced.Restore(st); err != nil {
			t.Fatal(err)
		}
		g, c := step(forced), step(cpu)
		moved := movedChoices(g, c, choices)
		anyMoved := 0
		for _, m := range moved {
			anyMoved += m
		}
		if anyMoved > 0 {
			tieSteps++
			t.Logf("step %d: router near-ties moved %v choices per layer (of %.0f)", s, moved, choices)
		}
		for _, v := range stepDiffs(g, c) {
			tol := 1e-4
			if (v.layer >= 0 && moved[v.layer] > 0) || (v.what == "aux" && anyMoved > 0) {
				tol = 1e-3
				m := anyMoved
				if v.layer >= 0 {
					m = moved[v.layer]
				}
				if m > 4 {
					t.Fatalf("step %d from the same state: %d choices went to other experts (%s)", s, m, v.what)
				}
			} else {
				worstForced = max(worstForced, v.d)
			}
			if v.d > tol {
				t.Fatalf("step %d from the same state: %s GPU %.9g CPU %.9g (relative %.2g)", s, v.what, v.a, v.b, v.d)
			}
		}
		gf, cf := step(free), step(cpuFree)
		if cf.Loss != c.Loss {
			t.Fatalf("step %d: the CPU engine is not deterministic: loss %v then %v", s, c.Loss, cf.Loss)
		}
		for _, v := range stepDiffs(gf, cf) {
			switch {
			case s <= 8 && v.d > 1e-4:
				t.Fatalf("free-running step %d: %s GPU %.9g CPU %.9g (relative %.2g)", s, v.what, v.a, v.b, v.d)
			case v.what == "loss" && v.d > 2e-2:
				t.Fatalf("free-running step %d: loss GPU %.9g CPU %.9g (relative %.2g)", s, v.a, v.b, v.d)
			}
			if s <= 8 {
				worstFree = max(worstFree, v.d)
			}
			if v.what == "loss" {
				worstFreeLoss = max(worstFreeLoss, v.d)
			}
		}
	}
	t.Logf("%d steps from the same state: worst relative difference %.3g (loss, aux, LBL per layer, grad norm; %d steps with near-ties excepted for their LBL)",
		steps, worstForced, tieSteps)
	t.Logf("free-running: worst %.3g through step %d, loss worst %.3g over %d steps", worstFree, min(8, steps), worstFreeLoss, steps)
}

type stepDiff struct {
	what    string
	layer   int // the MoE layer of an LBL, else -1
	a, b, d float64
}

// stepDiffs are the relative differences of two engines' step metrics.
func stepDiffs(g, c StepMetrics) []stepDiff {
	out := []stepDiff{{"loss", -1, g.Loss, c.Loss, 0}, {"aux", -1, g.Aux, c.Aux, 0}, {"grad norm", -1, g.GradNorm, c.GradNorm, 0}}
	for l := range c.LBL {
		out = append(out, stepDiff{fmt.Sprintf("LBL of layer %d", l), l, g.LBL[l], c.LBL[l], 0})
	}
	for i := range out {
		out[i].d = relDiff(out[i].a, out[i].b)
	}
	return out
}

// movedChoices is, per MoE layer, how many top-k choices went to another
// expert on one engine than on the other (from the step's expert shares).
func movedChoices(g, c StepMetrics, choices float64) []int {
	out := make([]int, len(c.ExpertLoad))
	for l := range c.ExpertLoad {
		var sum float64
		for e := range c.ExpertLoad[l] {
			sum += math.Abs(g.ExpertLoad[l][e] - c.ExpertLoad[l][e])
		}
		out[l] = int(math.Ceil(sum * choices / 2))
	}
	return out
}

// TestGPUBF16TracksFP32: mixed precision trains like fp32: the loss after
// the run is within 2% (200 steps of tiny on a GPU).
func TestGPUBF16TracksFP32(t *testing.T) {
	steps := 200
	if emuDevice != nil {
		steps = 4
	}
	cfg, corpus := gpuRun(t, steps)
	losses := map[string]float64{}
	for _, prec := range []string{"fp32", "bf16"} {
		tr := onDevice(t, cfg, corpus, prec)
		var last float64
		for s := 0; s < steps; s++ {
			sm, err := tr.TrainStep(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			// the mean over the last 10 steps smooths the batch noise
			if s >= steps-10 {
				last += sm.Loss / float64(min(10, steps))
			}
		}
		losses[prec] = last
	}
	if losses["bf16"] == losses["fp32"] {
		t.Fatalf("bf16 and fp32 runs gave the same loss %v: the precision switch is not in effect", losses["fp32"])
	}
	d := relDiff(losses["bf16"], losses["fp32"])
	t.Logf("final loss (mean of the last steps): fp32 %.6f bf16 %.6f (relative %.2g)", losses["fp32"], losses["bf16"], d)
	if d > 0.02 {
		t.Fatalf("bf16 loss %.4f is %.1f%% from fp32 %.4f", losses["bf16"], 100*d, losses["fp32"])
	}
}

// TestGPUCheckpointInterchange: a checkpoint saved by the GPU engine
// resumes on the CPU engine with the same validation loss (1e-5), and one
// saved on the CPU resumes on the GPU.
func TestGPUCheckpointInterchange(t *testing.T) {
	steps := 6
	if emuDevice != nil {
		steps = 2
	}
	for _, dir := range []struct{ from, to string }{{"cuda", "cpu"}, {"cpu", "cuda"}} {
		t.Run(dir.from+"-to-"+dir.to, func(t *testing.T) {
			cfg, corpus := gpuRun(t, steps)
			cfg.Checkpoint = CheckpointConfig{Dir: t.TempDir(), Every: steps}
			build := func(device string, resume bool) *Trainer {
				c := cfg
				c.Resume = resume
				if device == "cpu" {
					tr, err := NewWithCorpus(c, corpus, nil)
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { tr.Close() })
					return tr
				}
				return onDevice(t, c, corpus, "fp32")
			}
			first := build(dir.from, false)
			if _, err := first.Run(context.Background()); err != nil {
				t.Fatal(err)
			}
			want, err := first.Evaluate(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			second := build(dir.to, true)
			if second.Step() != steps {
				t.Fatalf("resumed at step %d, want %d", second.Step(), steps)
			}
			got, err := second.Evaluate(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			for d := range want.BitsPerByte {
				if r := relDiff(got.BitsPerByte[d], want.BitsPerByte[d]); r > 1e-5 {
					t.Fatalf("domain %d: validation bits/byte %.9g after resuming on %s, %.9g on %s (relative %.2g)",
						d, got.BitsPerByte[d], dir.to, want.BitsPerByte[d], dir.from, r)
				}
			}
			t.Logf("validation bits/byte %v (%s) = %v (%s)", want.BitsPerByte, dir.from, got.BitsPerByte, dir.to)
		})
	}
}

// TestGPUDataParallelMatchesOneProcess: data and expert parallelism on
// the GPU engine (gradients all-reduced on the device buffers, the
// experts' rows exchanged between the ranks that own them, the
// global-batch LBL counts all-reduced every micro-batch) is the
// one-process run of the same global batch: 2 ranks of micro-batch B/2
// (dp 2, and dp 2 with ep 2) against 1 rank of B, fp32, the same
// accumulation; loss and LBL per step within 1e-4, the gradient norm
// within 2e-5, and data-parallel
// ranks end with the same parameters. On a GPU both ranks share it
// (several ranks on one GPU: the host-staged collectives).
func TestGPUDataParallelMatchesOneProcess(t *testing.T) {
	dev, cfg, corpus := fp32Run(t, 10)
	one := cfg
	two := cfg
	two.MicroBatch = cfg.MicroBatch / 2
	if two.MicroBatch < 1 || two.MicroBatch*2 != cfg.MicroBatch {
		t.Fatalf("micro-batch %d does not split over 2 ranks", cfg.MicroBatch)
	}
	ref := curveRun(t, one, corpus, 1, 1, 1, parallel.BalanceDP, dev)
	for _, ep := range []int{1, 2} {
		t.Run(fmt.Sprintf("dp2-ep%d", ep), func(t *testing.T) {
			c := curveRun(t, two, corpus, 1, 2, ep, parallel.BalanceDP, dev)
			closeCurves(t, "loss", c.loss, ref.loss, 1e-4)
			closeCurves(t, "global-batch LBL", c.lbl, ref.lbl, 1e-4)
			// tighter: the experts' share of the norm is small at this size,
			// and leaving it out moves the norm by 5e-5
			closeCurves(t, "gradient norm", c.gnorm, ref.gnorm, 2e-5)
			if ep > 1 {
				return // the ranks hold different experts
			}
			params := c.params
			for i := range params[0] {
				if params[1][i] != params[0][i] {
					t.Fatalf("rank 1 parameter %d differs from rank 0: %v vs %v", i, params[1][i], params[0][i])
				}
			}
		})
	}
}

// TestGPURecomputeAttention: recompute: attention reaches the engine (it
// holds less device memory) and changes nothing trained: the same loss,
// LBL and gradient norm at every step, bit for bit.
func TestGPURecomputeAttention(t *testing.T) {
	dev := func() cuda.Device { return gpuDevice(t) }
	cfg, corpus := gpuRun(t, 4)
	cfg.Device, cfg.Precision = "cuda", "fp32"
	kept := curveRun(t, cfg, corpus, 1, 1, 1, parallel.BalanceDP, dev)
	cfg.Recompute = "attention"
	re := curveRun(t, cfg, corpus, 1, 1, 1, parallel.BalanceDP, dev)
	if !slices.Equal(kept.loss, re.loss) || !slices.Equal(kept.lbl, re.lbl) || !slices.Equal(kept.gnorm, re.gnorm) {
		t.Fatalf("recomputed: loss %v lbl %v gnorm %v\nkept: loss %v lbl %v gnorm %v", re.loss, re.lbl, re.gnorm, kept.loss, kept.lbl, kept.gnorm)
	}
	a := onDevice(t, withRecompute(cfg, ""), corpus, "fp32")
	b := onDevice(t, cfg, corpus, "fp32")
	if a.GPU.DeviceBytes() <= b.GPU.DeviceBytes() {
		t.Errorf("device memory: %d kept, %d recomputed", a.GPU.DeviceBytes(), b.GPU.DeviceBytes())
	}
}

func withRecompute(c Config, r string) Config {
	c.Recompute = r
	return c
}

// TestGPUTensorParallelMatchesOneProcess: tensor parallelism on the GPU
// engine (each TP rank its heads of every attention layer and its token
// slice of every MoE layer, the activations summed and gathered over the
// TP group on the device) computes what one process computes: tp 2, and
// tp 2 x dp 2 with ep 2, against one process of the same global batch;
// loss, LBL and gradient norm per step; each rank holds its slices.
func TestGPUTensorParallelMatchesOneProcess(t *testing.T) {
	dev, cfg, corpus := fp32Run(t, 5)
	micro := cfg.MicroBatch
	one := withMicro(cfg, 2*micro)
	ref := curveRun(t, one, corpus, 1, 1, 1, parallel.BalanceDP, dev)
	mc := *cfg.Model
	mc.Defaults()
	for _, tc := range []struct{ tp, dp, ep, micro int }{{2, 1, 1, 2 * micro}, {2, 2, 2, micro}} {
		t.Run(fmt.Sprintf("tp%d-dp%d-ep%d", tc.tp, tc.dp, tc.ep), func(t *testing.T) {
			c := curveRun(t, withMicro(cfg, tc.micro), corpus, tc.tp, tc.dp, tc.ep, parallel.BalanceDP, dev)
			closeCurves(t, "loss", c.loss, ref.loss, 1e-4)
			closeCurves(t, "global-batch LBL", c.lbl, ref.lbl, 1e-4)
			closeCurves(t, "gradient norm", c.gnorm, ref.gnorm, 1e-4)
			want := model.CountParams(mc, 0, mc.Experts/tc.ep, tc.tp)
			whole := model.CountParams(mc, 0, mc.Experts, 1)
			for r, p := range c.params {
				if len(p) != want || want >= whole {
					t.Fatalf("rank %d holds %d parameters, want %d (of %d)", r, len(p), want, whole)
				}
			}
		})
	}
	// with a capacity (each TP rank's token slice has its own, as on the
	// CPU), a shared expert, a dense layer and the attention recomputed:
	// the GPU ranks compute what the CPU engine's TP ranks compute; in
	// bf16 the same as one process within bf16's rounding
	t.Run("tp2-capacity-shared-dense-recompute-vs-cpu", func(t *testing.T) {
		c := withMicro(cfg, 2*micro)
		m := *c.Model
		m.CapacityFactor, m.Shared, m.MoEEvery, m.Layers = 0.5, 1, 2, 3
		c.Model, c.Recompute = &m, "attention"
		cpu := c
		cpu.Device, cpu.Precision, cpu.Recompute = "cpu", "", ""
		g := curveRun(t, c, corpus, 2, 1, 1, parallel.BalanceDP, dev)
		h := curveRun(t, cpu, corpus, 2, 1, 1, parallel.BalanceDP, nil)
		closeCurves(t, "loss", g.loss, h.loss, 1e-4)
		closeCurves(t, "global-batch LBL", g.lbl, h.lbl, 1e-4)
		closeCurves(t, "gradient norm", g.gnorm, h.gnorm, 1e-4)
	})
	// evaluation: the expert selections each TP rank records of its
	// token slice add up to one process's
	t.Run("tp2-eval-stats", func(t *testing.T) {
		c := withMicro(cfg, 2*micro)
		var stats [2]*model.ExpertStats
		for i, tp := range []int{1, 2} {
			ranks, closeAll := ranksOn(t, tp, 1, 1, c, corpus, dev)
			onAll(t, ranks, func(tr *Trainer) error {
				ev, err := tr.Evaluate(context.Background())
				if err == nil && tr.Dist.Rank == 0 {
					stats[i] = ev.Stats
				}
				return err
			})
			closeAll()
		}
		if stats[0] == nil || !reflect.DeepEqual(stats[0].Counts, stats[1].Counts) || !reflect.DeepEqual(stats[0].Tokens, stats[1].Tokens) {
			t.Fatalf("expert selections: one process %+v, tp 2 %+v", stats[0], stats[1])
		}
	})
	t.Run("tp2-bf16", func(t *testing.T) {
		c := withMicro(cfg, 2*micro)
		c.Precision, c.Steps = "bf16", 3
		one := curveRun(t, c, corpus, 1, 1, 1, parallel.BalanceDP, dev)
		two := curveRun(t, c, corpus, 2, 1, 1, parallel.BalanceDP, dev)
		closeCurves(t, "loss", two.loss, one.loss, 1e-2)
		closeCurves(t, "global-batch LBL", two.lbl, one.lbl, 1e-2)
	})
	// a micro-batch that does not split into whole sequences per TP rank
	// is refused before any collective, naming it
	layout, err := parallel.NewLayout(2, 2, 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	trs := parallel.NewMemTransports(2, parallel.DefaultOptions())
	defer func() {
		for _, tr := range trs {
			tr.Close()
		}
	}()
	world, err := parallel.NewComm(trs[0], []int{0, 1}, parallel.CommOptions{Name: "world"})
	if err != nil {
		t.Fatal(err)
	}
	dist, err := NewDist(layout, 0, world)
	if err != nil {
		t.Fatal(err)
	}
	odd := withMicro(cfg, 1)
	if _, err := NewParallelOn(odd, corpus, nil, dist, nil); err == nil || !strings.Contains(err.Error(), "micro-batch = 1: tensor parallelism over 2 ranks") {
		t.Errorf("micro-batch 1 with tp 2 on the GPU: %v", err)
	}
}

// TestGPUReshardCheckpoint: a checkpoint saved by GPU ranks under dp 2
// ep 2 (each rank wrote its experts from device memory), and one saved
// under tp 2 (each rank its slices of the attention projections), load on
// the CPU in one process, on the GPU under dp 2 ep 1 (the experts
// gathered from both ranks' files) and on the GPU under tp 2 (the
// attention projections sliced), and give the saved run's validation
// loss (1e-5 relative).
func TestGPUReshardCheckpoint(t *testing.T) {
	const steps = 3
	dev := func() cuda.Device { return gpuDevice(t) }
	base, corpus := gpuRun(t, 10)
	base.Device, base.Precision = "cuda", "fp32"
	ctx := context.Background()
	micro := base.MicroBatch
	half := max(micro/2, 1)
	for _, from := range []struct {
		name           string
		tp, dp, ep, mb int
	}{{"dp2 ep2", 1, 2, 2, half}, {"tp2", 2, 1, 1, micro}} {
		cfg := base
		cfg.Checkpoint = CheckpointConfig{Dir: t.TempDir(), Every: steps}
		src, closeSrc := ranksOn(t, from.tp, from.dp, from.ep, withMicro(cfg, from.mb), corpus, dev)
		want := trainAndSave(t, src, steps)
		closeSrc()

		cfg.Resume = true
		cpu := cfg
		cpu.Device, cpu.Precision = "cpu", ""
		for _, tc := range []struct {
			name       string
			cfg        Config
			tp, dp, ep int
			dev        func() cuda.Device
		}{{"cpu dp1", cpu, 1, 1, 1, nil}, {"gpu dp2 ep1", withMicro(cfg, half), 1, 2, 1, dev}, {"gpu tp2", cfg, 2, 1, 1, dev}} {
			dst, closeDst := ranksOn(t, tc.tp, tc.dp, tc.ep, tc.cfg, corpus, tc.dev)
			var got float64
			onAll(t, dst, func(tr *Trainer) error {
				if tr.Step() != steps {
					t.Errorf("%s resumed at step %d, want %d", tc.name, tr.Step(), steps)
				}
				ev, err := tr.Evaluate(ctx)
				if err == nil && tr.Dist.Rank == 0 {
					got = meanBits(ev)
				}
				return err
			})
			closeDst()
			t.Logf("%s: validation %.7f bits/byte, saved under GPU %s: %.7f", tc.name, got, from.name, want)
			if math.Abs(got-want) > 1e-5*want {
				t.Errorf("%s from GPU %s: validation %.7f, saved run %.7f", tc.name, from.name, got, want)
			}
		}
	}
}

// TestGPUExpertParallelMatchesDataParallel: expert parallelism changes
// where the experts run, not what is computed: the same data-parallel run
// without and with ep 2 gives the same loss, LBL and gradient norm, with
// a capacity factor (fewer rows than P*T*k can arrive), with replicas of
// every expert (dp 4: the expert-DP all-reduce) and in bf16.
func TestGPUExpertParallelMatchesDataParallel(t *testing.T) {
	if err := gpuDevice(t).Close(); err != nil { // skips without a GPU
		t.Fatal(err)
	}
	dev := func() cuda.Device { return gpuDevice(t) }
	base, corpus := gpuRun(t, 6)
	base.Device, base.Precision = "cuda", "fp32"
	if base.Seed == 0 {
		base.Seed = 3
	}
	base.MicroBatch = max(base.MicroBatch/2, 1)
	for _, tc := range []struct {
		name     string
		dp       int
		capacity float64
		prec     string
		tol      float64
	}{
		{"dp2-ep2-capacity0.5", 2, 0.5, "fp32", 1e-5},
		{"dp4-ep2", 4, 0, "fp32", 1e-5},
		{"dp2-ep2-bf16", 2, 0, "bf16", 1e-2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base
			cfg.Precision = tc.prec
			m, err := cfg.ModelConfig() // the preset's, or the emulator's small model
			if err != nil {
				t.Fatal(err)
			}
			m.CapacityFactor = tc.capacity
			cfg.Model = &m
			ref := curveRun(t, cfg, corpus, 1, tc.dp, 1, parallel.BalanceDP, dev)
			c := curveRun(t, cfg, corpus, 1, tc.dp, 2, parallel.BalanceDP, dev)
			closeCurves(t, "loss", c.loss, ref.loss, tc.tol)
			closeCurves(t, "global-batch LBL", c.lbl, ref.lbl, tc.tol)
			closeCurves(t, "gradient norm", c.gnorm, ref.gnorm, tc.tol)
		})
	}
}
