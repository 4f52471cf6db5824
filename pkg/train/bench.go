package train

import (
	"context"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/data"
	"github.com/switchyard-ml/switchyard/pkg/gpu"
	"github.com/switchyard-ml/switchyard/pkg/kernels"
)

// EngineBench is the result of `switchyard bench engine`: one optimizer
// step per micro-batch (forward, backward, AdamW), median over Steps after
// Warmup, the protocol of ../shared/bench/moe_bench.py.
type EngineBench struct {
	Preset        string  `json:"preset"`
	Device        string  `json:"device"`
	Precision     string  `json:"precision"`
	Recompute     string  `json:"recompute,omitempty"`
	Kernels       string  `json:"kernels"`
	Threads       int     `json:"threads"`
	TokensPerStep int     `json:"tokens_per_step"`
	Steps         int     `json:"steps"`
	MedianStepS   float64 `json:"median_step_s"`
	TokensPerS    float64 `json:"tokens_per_s"`
	FlopsPerToken float64 `json:"flops_per_token"` // 6*(active params - embedding) + 12*layers*d*seq
	GFlops        float64 `json:"gflops"`
	PeakRSSMiB    float64 `json:"peak_rss_mib"`
	AllocsPerStep float64 `json:"allocs_per_step"`
	BytesPerStep  float64 `json:"alloc_bytes_per_step"`
	Params        int64   `json:"params_total"`
	ActiveParams  int64   `json:"params_active"`
	FirstLoss     float64 `json:"first_loss"`
	LastLoss      float64 `json:"last_loss"`
	// SplitS is the mean wall time per step of each part (seconds); on a
	// GPU the parts are timed with device events.
	SplitS map[string]float64 `json:"split_s"`
	// SgemmGFlops is this machine's SGEMM ceiling measured in the same run
	// (n = 1024, the kernels in use); FractionOfSgemm = GFlops / SgemmGFlops.
	SgemmGFlops     float64 `json:"sgemm_ceiling_gflops,omitempty"`
	FractionOfSgemm float64 `json:"fraction_of_sgemm,omitempty"`
	// GPU runs: the device, its memory, and the model FLOP utilisation
	// against the GEMM rate measured in the same run (8192^3 in the run's
	// precision, through the same library) and the datasheet's dense peak.
	GPU            string    `json:"gpu,omitempty"`
	DeviceMemGiB   float64   `json:"device_mem_gib,omitempty"`  // the engine's buffers (= the estimate)
	DeviceUsedGiB  float64   `json:"device_used_gib,omitempty"` // total - free after the run (incl. libraries)
	GemmTFlops     float64   `json:"gemm_ceiling_tflops,omitempty"`
	MFU            float64   `json:"mfu_vs_measured_gemm,omitempty"`
	SpecPeakTFlops float64   `json:"spec_peak_tflops,omitempty"`
	MFUSpec        float64   `json:"mfu_vs_spec_peak,omitempty"`
	DroppedPerStep float64   `json:"dropped_choices_per_step,omitempty"`
	StepTimesS     []float64 `json:"step_times_s"`
}

// BenchOptions choose what BenchEngine measures.
type BenchOptions struct {
	Preset    string
	Device    string // "cpu" (default), "cuda", "cuda:N"
	Precision string // GPU: fp32 or bf16 (default bf16)
	Warmup    int
	Steps     int
	// MicroBatch overrides the preset's (0: the preset's).
	MicroBatch int
	// Recompute is the run config's recompute ("" or "none", "attention").
	Recompute string
}

// BenchEngine trains a preset on a small demo corpus and measures steps.
func BenchEngine(ctx context.Context, o BenchOptions) (*EngineBench, error) {
	cfg, err := PresetConfig(o.Preset)
	if err != nil {
		return nil, err
	}
	cfg.Steps = o.Warmup + o.Steps
	cfg.Optim.WarmupSteps = 0
	cfg.Device, cfg.Precision, cfg.Recompute = o.Device, o.Precision, o.Recompute
	if o.MicroBatch > 0 {
		cfg.MicroBatch = o.MicroBatch
	}
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	tr, err := benchTrainer(cfg)
	if err != nil {
		return nil, err
	}
	defer tr.Close()
	device := cfg.Device
	if device == "" {
		device = "cpu"
	}
	b := &EngineBench{Preset: o.Preset, Device: device, Precision: cfg.PrecisionOrDefault(), Recompute: cfg.Recompute, Kernels: kernels.Name(), Threads: runtime.GOMAXPROCS(0)}
	for i := 0; i < o.Warmup; i++ {
		sm, err := tr.TrainStep(ctx)
		if err != nil {
			return nil, err
		}
		if i == 0 {
			b.FirstLoss = sm.Loss
		}
	}
	times, dropped, err := b.measureSteps(ctx, tr, o.Steps)
	if err != nil {
		return nil, err
	}
	b.StepTimesS = append([]float64(nil), times...)
	sort.Float64s(times)
	med := times[len(times)/2]
	mc := tr.MCfg
	tokens := cfg.MicroBatch * mc.SeqLen
	total, active := mc.ParamCount()
	b.TokensPerStep, b.Steps, b.MedianStepS, b.TokensPerS, b.FlopsPerToken = tokens, o.Steps, med, float64(tokens)/med, mc.FlopsPerToken()
	b.Params, b.ActiveParams, b.PeakRSSMiB = total, active, peakRSSMiB()
	b.GFlops = b.TokensPerS * b.FlopsPerToken / 1e9
	if tr.GPU != nil {
		b.DroppedPerStep = float64(dropped) / float64(o.Steps)
		return b, benchGPU(b, tr.GPU)
	}
	b.SgemmGFlops = sgemmCeiling(1024)
	b.FractionOfSgemm = b.GFlops / b.SgemmGFlops
	return b, nil
}

// measureSteps times n training steps with the engine's profile on, and
// sets the loss, allocation and time-split figures; it returns the step
// times and the GPU's dropped slots.
func (b *EngineBench) measureSteps(ctx context.Context, tr *Trainer, n int) ([]float64, int, error) {
	var ms0, ms1 runtime.MemStats
	tr.eng.enableProfile(true)
	defer tr.eng.enableProfile(false)
	opt0 := tr.optTime
	runtime.ReadMemStats(&ms0)
	times := make([]float64, 0, n)
	dropped := 0
	for range n {
		st := time.Now()
		sm, err := tr.TrainStep(ctx)
		if err != nil {
			return nil, 0, err
		}
		times = append(times, time.Since(st).Seconds())
		b.LastLoss = sm.Loss
		if b.FirstLoss == 0 {
			b.FirstLoss = sm.Loss
		}
		if tr.GPU != nil {
			dropped += tr.GPU.Dropped()
		}
	}
	runtime.ReadMemStats(&ms1)
	b.AllocsPerStep = float64(ms1.Mallocs-ms0.Mallocs) / float64(n)
	b.BytesPerStep = float64(ms1.TotalAlloc-ms0.TotalAlloc) / float64(n)
	var sum float64
	for _, v := range times {
		sum += v
	}
	split := map[string]float64{}
	for k, v := range tr.eng.split() {
		split[k] = v / float64(n)
	}
	if _, ok := split["optimizer"]; !ok {
		split["optimizer"] = (tr.optTime - opt0).Seconds() / float64(n)
	}
	other := sum / float64(n)
	for _, v := range split {
		other -= v
	}
	split["other"] = other
	b.SplitS = split
	return times, dropped, nil
}

// benchGPU adds the device figures: memory, the GEMM ceiling and MFU.
func benchGPU(b *EngineBench, g *gpu.Model) error {
	dev := g.Device()
	b.GPU = dev.Name()
	b.Kernels = "cuda"
	b.DeviceMemGiB = float64(g.DeviceBytes()) / (1 << 30)
	if free, total, err := dev.MemInfo(); err == nil {
		b.DeviceUsedGiB = float64(total-free) / (1 << 30)
	}
	prec := gpu.Precision(b.Precision)
	tf, err := gpu.GemmCeiling(dev, prec, 8192)
	if err != nil {
		return err
	}
	b.GemmTFlops = tf
	b.MFU = b.GFlops / 1e3 / tf
	if peak := gpu.SpecPeakTFlops(b.GPU, prec); peak > 0 {
		b.SpecPeakTFlops = peak
		b.MFUSpec = b.GFlops / 1e3 / peak
	}
	return nil
}

// sgemmCeiling measures the active SGEMM at n x n x n (best of a few runs).
func sgemmCeiling(n int) float64 {
	a := make([]float32, n*n)
	for i := range a {
		a[i] = float32(i%7) * 0.1
	}
	c := make([]float32, n*n)
	blas := kernels.Default()
	best := 0.0
	for i := 0; i < 5; i++ {
		st := time.Now()
		blas.Sgemm(false, false, n, n, n, 1, a, n, a, n, 0, c, n)
		if g := 2 * float64(n) * float64(n) * float64(n) / time.Since(st).Seconds() / 1e9; g > best {
			best = g
		}
	}
	return best
}

// peakRSSMiB reads VmHWM from /proc/self/status (0 where unavailable).
func peakRSSMiB() float64 {
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				kb, _ := strconv.ParseFloat(f[0], 64)
				return kb / 1024
			}
		}
	}
	return 0
}

// CheckpointBench is the result of `switchyard bench checkpoint`.
type CheckpointBench struct {
	Preset     string  `json:"preset"`
	Bytes      int64   `json:"bytes"`       // one rank's checkpoint (params + AdamW moments + meta)
	WriteMBps  float64 `json:"write_mb_s"`  // shards written durably (fsync + rename) incl. SHA-256, best of Repeats
	CommitMBps float64 `json:"commit_mb_s"` // write + commit (re-read and verify) of a whole checkpoint
	SnapshotMS float64 `json:"snapshot_ms"` // copying the state at a step boundary (the synchronous part)
	// StallMSPerSave is the time the trainer spent at save boundaries in a
	// run saving after every step, per save: at each step boundary finish
	// (waiting for the previous write and commit, the shard-list gather,
	// starting the commit) plus the snapshot and start of the next save,
	// and the final finish after the last step (DrainMS).
	StallMSPerSave float64 `json:"stall_ms_per_save"`
	// BoundaryMSPerSave is StallMSPerSave without the final drain: the
	// mean over the boundaries between training steps, what a long run
	// loses per save; BoundaryMaxMS is the worst one. SnapshotMSPerSave
	// and WaitMSPerSave split it into the snapshot and start of the next
	// save, and finish.
	BoundaryMSPerSave float64 `json:"boundary_ms_per_save"`
	BoundaryMaxMS     float64 `json:"boundary_max_ms"`
	SnapshotMSPerSave float64 `json:"boundary_snapshot_ms_per_save"`
	WaitMSPerSave     float64 `json:"boundary_wait_ms_per_save"`
	// DrainMS is the final finish after the last step (end of run, no
	// training left to overlap): the wait for the last write and for the
	// commit before it. FinalCommitMS is the wait for the last commit
	// after that (not counted in any stall).
	DrainMS       float64 `json:"drain_ms"`
	FinalCommitMS float64 `json:"final_commit_ms"`
	Saves         int     `json:"saves"`
	StepS         float64 `json:"median_step_s"`
	Repeats       int     `json:"repeats"`
}

// BenchCheckpoint measures checkpoint writes of preset's state into dir and
// the training stall of background saves (one save after every step).
func BenchCheckpoint(ctx context.Context, preset, dir string, steps int) (*CheckpointBench, error) {
	cfg, err := PresetConfig(preset)
	if err != nil {
		return nil, err
	}
	cfg.Steps = steps
	cfg.Checkpoint = CheckpointConfig{Dir: dir, Every: 1, KeepLast: 2}
	tr, err := benchTrainer(cfg)
	if err != nil {
		return nil, err
	}
	defer tr.Close()
	b := &CheckpointBench{Preset: preset, Repeats: 3}
	st := time.Now()
	snap, err := tr.Snapshot()
	if err != nil {
		return nil, err
	}
	b.SnapshotMS = float64(time.Since(st).Microseconds()) / 1e3
	if err := b.measureWrites(ctx, tr, snap); err != nil {
		return nil, err
	}
	tr.step = 0
	if err := tr.Restore(snapAt(snap, 0)); err != nil {
		return nil, err
	}
	tr.ckpt.cfg.Job = "stall" // a fresh catalogue entry: steps restart at 1
	return b, b.measureStall(ctx, tr, steps)
}

// measureWrites measures the write and the commit throughput of the shards
// of one state, durably, best of b.Repeats.
func (b *CheckpointBench) measureWrites(ctx context.Context, tr *Trainer, snap State) error {
	for i := 0; i < b.Repeats; i++ {
		tr.step = 1000 + i // a fresh step each time
		snap.Step = tr.step
		st := time.Now()
		tr.ckpt.start(snap)
		<-tr.ckpt.pending.done
		w := time.Since(st)
		if err := tr.ckpt.pending.err; err != nil {
			return err
		}
		var n int64
		for _, s := range tr.ckpt.pending.infos {
			n += s.Size
		}
		b.Bytes = n
		if mb := float64(n) / w.Seconds() / 1e6; mb > b.WriteMBps {
			b.WriteMBps = mb
		}
		st = time.Now()
		if err := tr.ckpt.finish(ctx); err != nil {
			return err
		}
		if err := tr.ckpt.waitCommit(); err != nil {
			return err
		}
		if mb := float64(n) / (w + time.Since(st)).Seconds() / 1e6; mb > b.CommitMBps {
			b.CommitMBps = mb
		}
	}
	return nil
}

// measureStall trains steps steps with a save after every one and sets the
// stall figures.
func (b *CheckpointBench) measureStall(ctx context.Context, tr *Trainer, steps int) error {
	var (
		times                     []float64
		snapTotal, wait, boundMax time.Duration
	)
	for range steps {
		s0 := time.Now()
		if _, err := tr.TrainStep(ctx); err != nil {
			return err
		}
		times = append(times, time.Since(s0).Seconds())
		fs := time.Now()
		if err := tr.ckpt.finish(ctx); err != nil {
			return err
		}
		ss := time.Now()
		snap, err := tr.SnapshotInto(tr.ckpt.spare)
		if err != nil {
			return err
		}
		tr.ckpt.start(snap)
		se := time.Now()
		snapTotal += se.Sub(ss)
		wait += ss.Sub(fs)
		boundMax = max(boundMax, se.Sub(fs))
		b.Saves++
	}
	ds := time.Now()
	if err := tr.ckpt.finish(ctx); err != nil {
		return err
	}
	cs := time.Now()
	if err := tr.ckpt.waitCommit(); err != nil {
		return err
	}
	drain, commit := cs.Sub(ds), time.Since(cs)
	sort.Float64s(times)
	b.StepS = times[len(times)/2]
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1e3 }
	perSave := func(d time.Duration) float64 { return ms(d) / float64(b.Saves) }
	b.StallMSPerSave = perSave(snapTotal + wait + drain)
	b.BoundaryMSPerSave = perSave(snapTotal + wait)
	b.BoundaryMaxMS = ms(boundMax)
	b.SnapshotMSPerSave = perSave(snapTotal)
	b.WaitMSPerSave = perSave(wait)
	b.DrainMS = ms(drain)
	b.FinalCommitMS = ms(commit)
	return nil
}

func snapAt(s State, step int) State {
	s.Step = step
	return s
}

// benchTrainer is a trainer for cfg on a 256 KiB-per-domain demo corpus,
// the same for every benchmark.
func benchTrainer(cfg Config) (*Trainer, error) {
	mc, err := cfg.ModelConfig()
	if err != nil {
		return nil, err
	}
	// the generated domains only (the text does not change the timings, and
	// a GPU machine may have no Go source tree)
	docs, err := data.Demo(data.DemoOptions{Seed: 1, BytesPerDomain: 256 << 10, Domains: []string{"arith", "records", "logs"}})
	if err != nil {
		return nil, err
	}
	corpus, err := data.Build(docs, data.BuildConfig{SeqLen: mc.SeqLen, ValFraction: 0.05, Seed: 1})
	if err != nil {
		return nil, err
	}
	return NewWithCorpus(cfg, corpus, nil)
}
