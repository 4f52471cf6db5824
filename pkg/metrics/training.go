package metrics

import (
	"slices"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Step is one optimizer step of a job as its rank 0 reported it.
type Step struct {
	Step       int
	Loss       float64
	LBL        []float64   // per MoE layer
	TokensPerS float64     // the step's throughput
	StepS      float64     // wall time of the step
	ExpertLoad [][]float64 // per MoE layer, share of the layer's selections per expert
	LBLSyncS   float64     // the step's expert-count all-reduces
	GradSyncS  float64     // the step's gradient all-reduces
	// CheckpointStallS is the run's training time spent waiting for
	// checkpoint writes so far (cumulative); CheckpointWriteMBps the rate
	// of the last checkpoint write (0: none yet).
	CheckpointStallS    float64
	CheckpointWriteMBps float64
	// DeviceMemBytes is the GPU memory rank 0's engine holds (0: a CPU run).
	DeviceMemBytes int64
	// GPUs are the ranks' GPUs after the step (NVML).
	GPUs []GPU
}

// GPU is one rank's GPU after a step.
type GPU struct {
	Rank          int
	UUID          string
	UtilPct       float64
	MemUsedBytes  int64
	MemTotalBytes int64
}

// maxUUID bounds a GPU's UUID as a step reports it ("GPU-" and 36
// characters, "MIG-..." a little more).
const maxUUID = 64

// BoundGPUs is what may be kept of a step's GPU samples, which a command
// job's own trainer writes: one per rank (the first), ranks in [0, world)
// and under MaxRanks, UUIDs cut to 64 bytes, in rank order. world <= 0:
// MaxRanks.
func BoundGPUs(gs []GPU, world int) []GPU {
	if world <= 0 || world > MaxRanks {
		world = MaxRanks
	}
	out := make([]GPU, 0, min(len(gs), world))
	seen := map[int]bool{}
	for _, g := range gs {
		if g.Rank < 0 || g.Rank >= world || seen[g.Rank] {
			continue
		}
		seen[g.Rank] = true
		if len(g.UUID) > maxUUID {
			g.UUID = g.UUID[:maxUUID]
		}
		out = append(out, g)
	}
	slices.SortFunc(out, func(a, b GPU) int { return a.Rank - b.Rank })
	return out
}

// MaxRanks bounds the per-rank series of one job (and the ranks a step
// event carries).
const MaxRanks = 4096

// The largest expert-load shape exported per job: MoE layers, experts,
// and both together (DeepSeek-V3's 58 MoE layers of 256 experts fit).
// maxLayers also bounds the per-layer LBL series.
const (
	maxLayers      = 256
	maxExperts     = 1024
	maxExpertCells = 1 << 14
)

// BoundExpertLoad is load if its shape is within the bounds of what is
// exported per step (MoE layers, experts per layer, and the two
// together), else nil. A command job's own metrics lines set the shape:
// beyond the bounds no series per layer and expert (the label sets stay
// bounded) and no step event carrying the table (4096 of them may wait in
// the bus's buffer).
func BoundExpertLoad(load [][]float64) [][]float64 {
	if len(load) > maxLayers {
		return nil
	}
	cells := 0
	for _, row := range load {
		if len(row) > maxExperts {
			return nil
		}
		cells += len(row)
	}
	if cells > maxExpertCells {
		return nil
	}
	return load
}

// Training holds the metrics of the jobs whose rank 0 runs on this
// worker. A nil *Training records nothing.
type Training struct {
	step       *prometheus.GaugeVec
	loss       *prometheus.GaugeVec
	tokens     *prometheus.GaugeVec
	lbl        *prometheus.GaugeVec
	share      *prometheus.GaugeVec
	imbalance  *prometheus.GaugeVec
	stepTime   *prometheus.HistogramVec
	collective *prometheus.CounterVec
	stall      *prometheus.CounterVec
	write      *prometheus.GaugeVec
	deviceMem  *prometheus.GaugeVec
	gpuUtil    *prometheus.GaugeVec
	gpuMem     *prometheus.GaugeVec

	mu        sync.Mutex
	lastStall map[string]float64 // per job: the cumulative stall already counted
	gpuRanks  map[string][]int   // per job: the ranks of its last GPU samples
}

// NewTraining registers the training metrics in reg.
func NewTraining(reg prometheus.Registerer) *Training {
	job := []string{"job_id"}
	t := &Training{
		step: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "switchyard_train_step", Help: "Last optimizer step the job's rank 0 reported.",
		}, job),
		loss: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "switchyard_train_loss", Help: "Training cross-entropy of the last step (nats per token).",
		}, job),
		tokens: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "switchyard_train_tokens_per_second", Help: "Tokens trained per second in the last step, all data-parallel ranks together.",
		}, job),
		lbl: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "switchyard_train_lbl", Help: "Load-balancing loss of the last step (unweighted, the job's LBL mode), per MoE layer.",
		}, []string{"job_id", "layer"}),
		share: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "switchyard_train_expert_load_share", Help: "Share of the layer's routed tokens that went to the expert in the last step (1/experts is balanced).",
		}, []string{"job_id", "layer", "expert"}),
		imbalance: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "switchyard_train_expert_load_imbalance_ratio", Help: "Largest expert share over the mean share in the last step, per layer (1 is balanced).",
		}, []string{"job_id", "layer"}),
		stepTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "switchyard_train_step_duration_seconds", Help: "Wall time of an optimizer step on rank 0.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 15), // 5ms .. 82s
		}, job),
		collective: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_train_collective_seconds_total", Help: "Time rank 0 spent in collectives, by operation (lbl_sync: the expert-count all-reduces; grad_sync: the gradient all-reduces).",
		}, []string{"job_id", "op"}),
		stall: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_train_checkpoint_stall_seconds_total", Help: "Training time rank 0 spent waiting for checkpoint writes.",
		}, job),
		write: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "switchyard_train_checkpoint_write_bytes_per_second", Help: "Rate of rank 0's last checkpoint write.",
		}, job),
		deviceMem: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "switchyard_train_device_memory_bytes", Help: "GPU memory rank 0's engine holds (only for a run on a GPU).",
		}, job),
		gpuUtil: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "switchyard_train_gpu_utilization_percent", Help: "Percent of the last sample period a kernel ran on each rank's GPU (NVML; any process's kernels).",
		}, []string{"job_id", "rank"}),
		gpuMem: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "switchyard_train_gpu_memory_used_bytes", Help: "Memory in use on each rank's GPU (NVML; every process's).",
		}, []string{"job_id", "rank"}),
		lastStall: map[string]float64{},
		gpuRanks:  map[string][]int{},
	}
	reg.MustRegister(t.step, t.loss, t.tokens, t.lbl, t.share, t.imbalance, t.stepTime, t.collective, t.stall, t.write, t.deviceMem, t.gpuUtil, t.gpuMem)
	return t
}

// Observe records one step of job.
func (t *Training) Observe(job string, s Step) {
	if t == nil {
		return
	}
	t.step.WithLabelValues(job).Set(float64(s.Step))
	t.loss.WithLabelValues(job).Set(s.Loss)
	t.tokens.WithLabelValues(job).Set(s.TokensPerS)
	if s.StepS > 0 {
		t.stepTime.WithLabelValues(job).Observe(s.StepS)
	}
	t.collective.WithLabelValues(job, "lbl_sync").Add(max(s.LBLSyncS, 0))
	t.collective.WithLabelValues(job, "grad_sync").Add(max(s.GradSyncS, 0))
	// a command job's own metrics lines set these shapes: past the bounds
	// no series per layer (and expert), so that the label sets stay
	// bounded; the rest is recorded
	if len(s.LBL) <= maxLayers {
		for l, v := range s.LBL {
			t.lbl.WithLabelValues(job, strconv.Itoa(l)).Set(v)
		}
	}
	for l, row := range BoundExpertLoad(s.ExpertLoad) {
		layer := strconv.Itoa(l)
		var sum, top float64
		for e, v := range row {
			t.share.WithLabelValues(job, layer, strconv.Itoa(e)).Set(v)
			sum += v
			top = max(top, v)
		}
		if sum > 0 {
			t.imbalance.WithLabelValues(job, layer).Set(top / (sum / float64(len(row))))
		}
	}
	if s.DeviceMemBytes > 0 {
		t.deviceMem.WithLabelValues(job).Set(float64(s.DeviceMemBytes))
	}
	if len(s.GPUs) > 0 {
		gs := BoundGPUs(s.GPUs, MaxRanks)
		ranks := make([]int, 0, len(gs))
		for _, g := range gs {
			r := strconv.Itoa(g.Rank)
			t.gpuUtil.WithLabelValues(job, r).Set(g.UtilPct)
			t.gpuMem.WithLabelValues(job, r).Set(float64(g.MemUsedBytes))
			ranks = append(ranks, g.Rank)
		}
		// ranks no longer sampled (a smaller world after an elastic
		// restart) leave
		t.mu.Lock()
		for _, r := range t.gpuRanks[job] {
			if !slices.Contains(ranks, r) {
				l := prometheus.Labels{"job_id": job, "rank": strconv.Itoa(r)}
				t.gpuUtil.Delete(l)
				t.gpuMem.Delete(l)
			}
		}
		t.gpuRanks[job] = ranks
		t.mu.Unlock()
	}
	if s.CheckpointWriteMBps > 0 {
		t.write.WithLabelValues(job).Set(s.CheckpointWriteMBps * 1e6)
	}
	t.mu.Lock()
	// the stall is cumulative over a run; a new attempt starts again at 0
	d := s.CheckpointStallS - t.lastStall[job]
	if d < 0 {
		d = s.CheckpointStallS
	}
	t.lastStall[job] = s.CheckpointStallS
	t.mu.Unlock()
	t.stall.WithLabelValues(job).Add(max(d, 0))
}

// Forget removes every series of job (its rank 0 ended here).
func (t *Training) Forget(job string) {
	if t == nil {
		return
	}
	l := prometheus.Labels{"job_id": job}
	for _, v := range []interface{ DeletePartialMatch(prometheus.Labels) int }{
		t.step, t.loss, t.tokens, t.lbl, t.share, t.imbalance, t.stepTime, t.collective, t.stall, t.write, t.deviceMem, t.gpuUtil, t.gpuMem,
	} {
		v.DeletePartialMatch(l)
	}
	t.mu.Lock()
	delete(t.lastStall, job)
	delete(t.gpuRanks, job)
	t.mu.Unlock()
}
