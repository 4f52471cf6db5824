package train

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
	"github.com/switchyard-ml/switchyard/pkg/cuda"
	"github.com/switchyard-ml/switchyard/pkg/data"
	"github.com/switchyard-ml/switchyard/pkg/gpu"
	"github.com/switchyard-ml/switchyard/pkg/lbl"
	"github.com/switchyard-ml/switchyard/pkg/model"
	"github.com/switchyard-ml/switchyard/pkg/optim"
	"github.com/switchyard-ml/switchyard/pkg/runconfig"
)

// Trainer runs one configured training job in this process.
type Trainer struct {
	Cfg    Config
	MCfg   model.Config
	Corpus *data.Corpus
	// Model and Opt are the CPU engine's model and optimizer (nil when the
	// run is on a GPU); GPU is the GPU engine (nil on the CPU).
	Model  *model.Model
	Opt    *optim.AdamW
	GPU    *gpu.Model
	Bal    *lbl.Balancer
	Loader *data.Loader

	eng engine

	Dist *Dist // nil: one process

	progress *progress
	// collectives describes the GPU ranks' gradient all-reduce ("" : none)
	collectives string
	metrics     io.WriteCloser
	global      []int // scratch: the global micro-batch's sequence indices
	step        int
	startStep   int // the step this run began at (a resumed run's)
	seqIdx      []int
	stepSeqs    []int          // the step's sequences (data.order domain_mixed)
	optTime     time.Duration  // clipping, AdamW and zeroing, summed over steps
	ckpt        *checkpointer  // nil: no checkpoints
	syncTime    *time.Duration // LBL count synchronisation, summed over steps
	// failed: a step or an evaluation failed (Close aborts the device
	// collectives)
	failed bool
}

// StepMetrics is one line of metrics.jsonl.
type StepMetrics struct {
	Step       int         `json:"step"`
	Loss       float64     `json:"loss"`      // mean cross-entropy (nats/token) over the step's micro-batches
	Aux        float64     `json:"aux"`       // weighted auxiliary loss (all LBL terms, z-loss) summed over layers
	LBL        []float64   `json:"lbl"`       // per MoE layer: LBL of the configured mode (unweighted)
	LR         float64     `json:"lr"`        // learning rate used
	GradNorm   float64     `json:"grad_norm"` // before clipping
	TokensPerS float64     `json:"tokens_per_s"`
	ElapsedS   float64     `json:"elapsed_s"`
	ExpertLoad [][]float64 `json:"expert_load"` // per MoE layer, share of the step's (global) selections per expert
	LBLSyncS   float64     `json:"lbl_sync_s"`  // duration of the step's expert-count all-reduces (started in the background after the last MoE layer; only the part the backward waits for costs step time)
	GradSyncS  float64     `json:"grad_sync_s"` // time of the gradient all-reduces after backward
	StepS      float64     `json:"step_s"`      // wall time of the step
	// The run's training time spent waiting for checkpoint writes so far,
	// and the write rate of the last checkpoint (MB/s); 0 without
	// checkpoints.
	CheckpointStallS    float64 `json:"checkpoint_stall_s,omitempty"`
	CheckpointWriteMBps float64 `json:"checkpoint_write_mb_per_s,omitempty"`
	// DeviceMemBytes is the GPU memory the engine's buffers hold (0: CPU).
	DeviceMemBytes int64 `json:"device_mem_bytes,omitempty"`
	// GPUs is every GPU rank's device as NVML read it after the step
	// (utilisation over its last sample period, memory in use by every
	// process); ranks without NVML are left out, CPU runs have none.
	GPUs []GPUStat `json:"gpus,omitempty"`
	// ValBPB is the validation bits/byte by domain of an evaluation after
	// this step (eval_every, and the final one on a repeated line of the
	// last step); nil between evaluations.
	ValBPB map[string]float64 `json:"val_bits_per_byte,omitempty"`
}

// New prepares a run: corpus, model, optimizer, balancer, loader. Progress
// goes to w (a progress bar if w is a terminal, plain lines otherwise).
func New(cfg Config, w io.Writer, opts ...Option) (*Trainer, error) {
	return NewRun(cfg, w, nil, opts...)
}

// Option configures a trainer beyond its Config: what the process that
// runs it provides.
type Option func(*options)

type options struct {
	catalogue checkpoint.Catalogue
}

// WithCatalogue keeps the run's checkpoint manifests in cat instead of
// beside the shards in the checkpoint storage: the cluster's etcd
// catalogue, or the cluster's reached through the coordinator
// (client.Catalogue). The caller closes what cat holds, after the trainer.
func WithCatalogue(cat checkpoint.Catalogue) Option {
	return func(o *options) { o.catalogue = cat }
}

// NewRun is New for one rank of a parallel run (dist nil: one process).
func NewRun(cfg Config, w io.Writer, dist *Dist, opts ...Option) (*Trainer, error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	mc, err := cfg.ModelConfig()
	if err != nil {
		return nil, err
	}
	docs, err := loadDocs(cfg)
	if err != nil {
		return nil, err
	}
	corpus, err := data.Build(docs, data.BuildConfig{SeqLen: mc.SeqLen, ValFraction: cfg.Data.ValFraction, Seed: cfg.Seed})
	if err != nil {
		return nil, fmt.Errorf("train: corpus: %w", err)
	}
	return NewParallel(cfg, corpus, w, dist, opts...)
}

func loadDocs(cfg Config) ([]data.Document, error) {
	if cfg.Data.Corpus != "" {
		return data.ReadFile(cfg.Data.Corpus)
	}
	return data.Demo(data.DemoOptions{Seed: cfg.Seed, BytesPerDomain: cfg.Data.DemoBytes})
}

// balancerConfig maps the run's LBL settings onto pkg/lbl.
func balancerConfig(c Config) lbl.Config {
	bc := lbl.Config{MicroCoef: c.LBL.MicroCoef, SeqCoef: c.LBL.SeqCoef, ZCoef: c.LBL.ZCoef, LayerCoef: c.LBL.LayerCoef, BiasRate: c.LBL.BiasRate, Window: c.LBL.Window}
	if c.LBL.Mode == "micro" {
		bc.MicroCoef += c.LBL.Coef
	} else {
		bc.GlobalCoef = c.LBL.Coef
	}
	return bc
}

// NewWithCorpus is New over an already built corpus (tests, benchmarks).
func NewWithCorpus(cfg Config, corpus *data.Corpus, w io.Writer) (*Trainer, error) {
	return NewParallel(cfg, corpus, w, nil)
}

// NewParallel is NewWithCorpus for one rank of a parallel run (dist nil:
// one process). MicroBatch is per rank: a global micro-batch holds
// MicroBatch x DP sequences. Only the leader rank writes progress, metrics
// and the report. A run on a GPU (Device "cuda[:N]") opens that GPU.
func NewParallel(cfg Config, corpus *data.Corpus, w io.Writer, dist *Dist, opts ...Option) (*Trainer, error) {
	return NewParallelOn(cfg, corpus, w, dist, nil, opts...)
}

// NewParallelOn is NewParallel on a given GPU device (nil: open the one
// cfg.Device names, if any); the trainer closes it.
func NewParallelOn(cfg Config, corpus *data.Corpus, w io.Writer, dist *Dist, dev cuda.Device, opts ...Option) (*Trainer, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	mc, _ := cfg.ModelConfig()
	if err := dist.check(cfg); err != nil {
		return nil, err
	}
	if corpus.SeqLen != mc.SeqLen {
		return nil, fmt.Errorf("%w: corpus packed for seq_len %d, model has %d", ErrConfig, corpus.SeqLen, mc.SeqLen)
	}
	syncTime := new(time.Duration)
	bal, err := lbl.NewBalancer(balancerConfig(cfg), mc.MoELayers(), mc.Experts, mc.TopK, timedReducer{dist.reducer(), syncTime})
	if err != nil {
		return nil, fmt.Errorf("%w: lbl: %w", ErrConfig, err)
	}
	t := &Trainer{Cfg: cfg, MCfg: mc, Corpus: corpus, Bal: bal, Dist: dist, syncTime: syncTime}
	if err := t.newEngine(corpus, dev); err != nil {
		return nil, err
	}
	t.eng.params().Init(mc, uint64(cfg.Seed))
	if t.GPU != nil {
		if err := t.GPU.Upload(); err != nil {
			t.eng.close()
			return nil, err
		}
	}
	loader, err := newLoader(corpus, cfg)
	if err != nil {
		t.eng.close()
		return nil, fmt.Errorf("train: loader: %w", err)
	}
	t.Loader = loader
	if w != nil && dist.Leader() {
		t.progress = newProgress(w, cfg.Steps)
		if t.collectives != "" {
			fmt.Fprintf(w, "GPU collectives: %s\n", t.collectives)
		}
	}
	if cfg.Checkpoint.Dir != "" {
		if t.ckpt, err = newCheckpointer(cfg.Checkpoint, o.catalogue, dist, t.eng.params(), mc); err != nil {
			t.eng.close()
			return nil, err
		}
		if t.progress != nil {
			t.ckpt.events = t.progress.w
		}
		if cfg.Resume {
			found, err := t.ckpt.load(context.Background(), t)
			if err != nil {
				t.eng.close()
				return nil, err
			}
			if found && t.progress != nil {
				t.progress.resumed(t.step)
			}
		}
	}
	if cfg.OutDir != "" && dist.Leader() {
		if err := os.MkdirAll(cfg.OutDir, 0o755); err != nil {
			t.eng.close()
			return nil, fmt.Errorf("train: out dir: %w", err)
		}
		f, err := os.Create(filepath.Join(cfg.OutDir, "metrics.jsonl"))
		if err != nil {
			t.eng.close()
			return nil, fmt.Errorf("train: metrics: %w", err)
		}
		t.metrics = f
	}
	return t, nil
}

// newEngine builds the run's compute on the CPU or on the GPU cfg.Device
// names (dev, when given, is that GPU).
func (t *Trainer) newEngine(corpus *data.Corpus, dev cuda.Device) error {
	cfg, mc := t.Cfg, t.MCfg
	kind, ordinal, _ := ParseDevice(cfg.Device)
	if kind == "cpu" && dev == nil {
		m, err := model.New(mc, cfg.MicroBatch, t.Bal, len(corpus.Domains), t.Dist.modelOptions()...)
		if err != nil {
			return err
		}
		m.SetGradScale(1 / float32(cfg.Accumulation))
		var ranges []optim.Range
		for _, q := range m.P.List {
			ranges = append(ranges, optim.Range{Off: q.Offset, Len: q.Size, Decay: q.Decay})
		}
		opt, err := optim.NewAdamW(cfg.Optim, m.P.Len(), ranges)
		if err != nil {
			m.Close()
			return fmt.Errorf("%w: %w", ErrConfig, err)
		}
		t.Model, t.Opt = m, opt
		t.eng = &cpuEngine{m: m, opt: opt, dist: t.Dist, t: &t.optTime}
		return nil
	}
	prec, err := gpu.ParsePrecision(cfg.PrecisionOrDefault())
	if err != nil {
		return fmt.Errorf("%w: precision: %w", ErrConfig, err)
	}
	if t.Dist != nil && t.Dist.tp != nil {
		// before any collective is opened: every rank refuses alike
		if err := gpu.SupportedTP(mc, cfg.MicroBatch, t.Dist.tp.Size()); err != nil {
			return err
		}
	}
	opened := false
	if dev == nil {
		if dev, err = gpu.Open(ordinal); err != nil {
			return err
		}
		opened = true
	}
	colls, err := openCollectives(dev, t.Dist, cfg.Collectives)
	if err != nil {
		if opened {
			err = errors.Join(err, dev.Close())
		}
		return err
	}
	o := gpu.Options{MicroBatch: cfg.MicroBatch, Precision: prec, Balancer: t.Bal, RecomputeAttention: cfg.RecomputeAttention()}
	if colls.ep != nil {
		o.Experts = &gpu.ExpertGroup{Counts: t.Dist.ep, Rows: colls.ep}
	}
	if colls.tp != nil {
		o.Tensor = colls.tp
	}
	g, err := gpu.New(dev, mc, o)
	if err != nil {
		err = errors.Join(err, colls.close())
		if opened {
			err = errors.Join(err, dev.Close())
		}
		return err
	}
	t.collectives = colls.describe()
	var nvml *cuda.NVML
	if _, ok := dev.(*cuda.Context); ok {
		// without NVML the step metrics have no utilisation, nothing else
		nvml, _ = cuda.OpenNVML()
	}
	t.GPU = g
	t.eng = &gpuEngine{m: g, dist: t.Dist, colls: colls, nvml: nvml, cfg: cfg.Optim, gradScale: 1 / float32(cfg.Accumulation), t: &t.optTime,
		train: model.NewBatch(cfg.MicroBatch, mc.SeqLen), eval: model.NewBatch(cfg.MicroBatch, mc.SeqLen),
		stats: model.NewExpertStats(mc.MoELayers(), max(len(corpus.Domains), 1), mc.Experts)}
	return nil
}

// failedIf marks the trainer failed when *err is set: a step or an
// evaluation that failed may have left peers inside a collective.
func (t *Trainer) failedIf(err *error) {
	if *err != nil {
		t.failed = true
	}
}

// Close releases the model and the metrics file. After a failed step or
// evaluation the device collectives are aborted first (NCCL: peers may
// still wait in a collective, which a destroy would wait for).
func (t *Trainer) Close() error {
	var err error
	if t.failed {
		t.eng.abort()
	}
	if t.ckpt != nil {
		// a background write or commit must not outlive the trainer
		if t.ckpt.pending != nil {
			<-t.ckpt.pending.done
		}
		err = t.ckpt.waitCommit()
	}
	if t.metrics != nil {
		if cerr := t.metrics.Close(); err == nil {
			err = cerr
		}
		t.metrics = nil
	}
	if cerr := t.eng.close(); err == nil {
		err = cerr
	}
	return err
}

// GPUStat is one rank's GPU after a step.
type GPUStat struct {
	Rank int `json:"rank"`
	cuda.GPUSample
}

// gpuStats samples this rank's GPU and gathers every rank's sample (a
// collective over the world: every rank of a GPU run calls it).
func (t *Trainer) gpuStats(ctx context.Context) ([]GPUStat, error) {
	var mine []byte
	g, _ := t.eng.(*gpuEngine)
	if c, ok := t.GPU.Device().(*cuda.Context); ok && g != nil && g.nvml != nil {
		if s, err := g.nvml.Sample(c.UUID()); err == nil {
			mine, _ = json.Marshal(s)
		}
	}
	all := [][]byte{mine}
	if t.Dist != nil && t.Dist.World.Size() > 1 {
		var err error
		if all, err = t.Dist.World.AllGatherBytes(ctx, mine); err != nil {
			return nil, fmt.Errorf("train: GPU statistics: %w", err)
		}
	}
	var out []GPUStat
	for r, b := range all {
		var s cuda.GPUSample
		if len(b) > 0 && json.Unmarshal(b, &s) == nil {
			out = append(out, GPUStat{Rank: r, GPUSample: s})
		}
	}
	return out, nil
}

// newLoader is the run's stream of training sequences: shuffled over all
// domains, or in blocks of one domain a micro-batch long (data.order).
func newLoader(c *data.Corpus, cfg Config) (*data.Loader, error) {
	if cfg.Data.Order != runconfig.OrderDomain && cfg.Data.Order != runconfig.OrderMixed {
		return data.NewLoader(c.NumSeqs(data.Train), cfg.Seed)
	}
	domains := make([][]int, len(c.Domains))
	for d := range domains {
		domains[d] = c.Seqs(data.Train, d)
	}
	return data.NewDomainLoader(domains, cfg.MicroBatch, cfg.Seed)
}

// fillTrain loads micro-batch m of the step from the global stream into
// the training batch. With data.order domain_mixed the step's sequences
// are drawn at m = 0 and dealt at random to its micro-batches.
func (t *Trainer) fillTrain(m int) {
	b := t.eng.trainBatch()
	dp := t.Dist.dpSize()
	if t.Cfg.Data.Order == runconfig.OrderMixed {
		n := b.B * dp
		if m == 0 {
			t.stepSeqs = t.Loader.Next(n*t.Cfg.Accumulation, t.stepSeqs[:0])
			data.DealStep(t.stepSeqs, t.Cfg.Seed, int64(t.step))
		}
		t.global = append(t.global[:0], t.stepSeqs[m*n:(m+1)*n]...)
	} else {
		t.global = t.Loader.Next(b.B*dp, t.global[:0])
	}
	t.seqIdx = t.global
	if dp > 1 {
		t.seqIdx = data.Shard(t.global, t.Dist.dpRank, dp)
	}
	S := b.S
	for i, s := range t.seqIdx {
		_, dom := t.Corpus.Fill(data.Train, s, b.Tokens[i*S:(i+1)*S], b.Targets[i*S:(i+1)*S])
		b.Domain[i] = dom
	}
}

// TrainStep runs one optimizer step (Accumulation micro-batches) and
// returns its metrics.
func (t *Trainer) TrainStep(ctx context.Context) (_ StepMetrics, err error) {
	defer t.failedIf(&err)
	start := time.Now()
	sync0 := *t.syncTime
	M := t.Cfg.Accumulation
	var loss, aux float64
	lblL := make([]float64, t.MCfg.MoELayers())
	for m := 0; m < M; m++ {
		if err := ctx.Err(); err != nil {
			return StepMetrics{}, err
		}
		t.fillTrain(m)
		l, err := t.eng.step(ctx)
		if err != nil {
			return StepMetrics{}, err
		}
		loss += l / float64(M)
		ls := t.Bal.Losses()
		aux += ls.Total / float64(M)
		for i, ll := range ls.Layers {
			v := ll.Global
			if t.Cfg.LBL.Mode == "micro" {
				v = ll.Micro
			}
			lblL[i] += v / float64(M)
		}
	}
	lr := t.Cfg.Optim.LRAt(t.step, t.Cfg.Steps)
	opt0, updStart := t.optTime, time.Now()
	gnorm, err := t.eng.update(ctx, lr)
	if err != nil {
		return StepMetrics{}, err
	}
	// the engines time clipping and AdamW; the rest of the update is the
	// gradient all-reduce
	gradSyncS := max(0, time.Since(updStart).Seconds()-(t.optTime-opt0).Seconds())
	load := make([][]float64, t.MCfg.MoELayers())
	for l := range load {
		c := t.Bal.StepCounts(l)
		var n float64
		for _, v := range c {
			n += v
		}
		load[l] = make([]float64, len(c))
		for e, v := range c {
			if n > 0 {
				load[l][e] = v / n
			}
		}
	}
	t.Bal.StepDone()
	t.step++
	// the step's loss and LBL are means over the data-parallel ranks
	vals := append([]float64{loss, aux}, lblL...)
	if err := t.Dist.meanAll(ctx, vals); err != nil {
		return StepMetrics{}, err
	}
	loss, aux = vals[0], vals[1]
	copy(lblL, vals[2:])
	el := time.Since(start).Seconds()
	tokens := float64(M * t.Cfg.MicroBatch * t.Dist.dpSize() * t.MCfg.SeqLen)
	sm := StepMetrics{Step: t.step, Loss: loss, Aux: aux, LBL: lblL, LR: lr, GradNorm: gnorm, TokensPerS: tokens / el, ElapsedS: el, ExpertLoad: load,
		LBLSyncS: (*t.syncTime - sync0).Seconds(), GradSyncS: gradSyncS, StepS: el}
	if math.IsNaN(loss) || math.IsInf(loss, 0) {
		return sm, fmt.Errorf("train: step %d: loss is %v", t.step, loss)
	}
	return sm, nil
}

// writeMetrics appends sm to the metrics file (when the run has one).
func (t *Trainer) writeMetrics(sm StepMetrics) error {
	if t.metrics == nil {
		return nil
	}
	line, _ := json.Marshal(sm)
	if _, err := t.metrics.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("train: write metrics: %w", err)
	}
	return nil
}

// valBPB is an evaluation's validation bits/byte by domain name.
func (t *Trainer) valBPB(ev *Eval) map[string]float64 {
	out := make(map[string]float64, len(ev.BitsPerByte))
	for d, b := range ev.BitsPerByte {
		if d < len(t.Corpus.Domains) {
			out[t.Corpus.Domains[d]] = b
		}
	}
	return out
}

// Run trains for Cfg.Steps steps, evaluating every EvalEvery steps and at
// the end, and returns the final report.
func (t *Trainer) Run(ctx context.Context) (*Report, error) {
	start := time.Now()
	var last StepMetrics
	stopped := ""
	for t.step < t.Cfg.Steps {
		if t.step > 0 {
			up, err := t.timeUp(ctx, start)
			if err != nil {
				return nil, err
			}
			if up {
				stopped = fmt.Sprintf("max_seconds %g reached after %d of %d steps", t.Cfg.MaxSeconds, t.step, t.Cfg.Steps)
				break
			}
		}
		sm, err := t.TrainStep(ctx)
		if err != nil {
			return nil, err
		}
		sm.ElapsedS = time.Since(start).Seconds()
		if t.ckpt != nil {
			sm.CheckpointStallS, sm.CheckpointWriteMBps = t.ckpt.Stall.Seconds(), t.ckpt.WriteMBps
		}
		if t.GPU != nil {
			sm.DeviceMemBytes = t.GPU.DeviceBytes()
			if sm.GPUs, err = t.gpuStats(ctx); err != nil {
				return nil, err
			}
		}
		last = sm
		if t.progress != nil {
			t.progress.update(sm)
		}
		if err := t.checkpointAfterStep(ctx); err != nil {
			return nil, err
		}
		if t.Cfg.EvalEvery > 0 && t.step%t.Cfg.EvalEvery == 0 && t.step < t.Cfg.Steps {
			ev, err := t.Evaluate(ctx)
			if err != nil {
				return nil, err
			}
			if t.ckpt != nil {
				t.ckpt.noteEval(int64(t.step), ev)
			}
			if t.progress != nil {
				t.progress.eval(t.step, ev, t.Corpus.Domains)
			}
			sm.ValBPB = t.valBPB(ev)
		}
		if err := t.writeMetrics(sm); err != nil {
			return nil, err
		}
	}
	if t.progress != nil {
		t.progress.done()
	}
	// the final evaluation before the final checkpoint's commit, whose
	// manifest carries it (keep_best can then keep the final model); a run
	// stopped by max_seconds saves first (its time box may be enforced
	// from outside, and the evaluation takes time)
	if stopped != "" {
		if err := t.checkpointAtEnd(ctx); err != nil {
			return nil, err
		}
	}
	ev, err := t.Evaluate(ctx)
	if err != nil {
		return nil, err
	}
	if stopped == "" {
		if t.ckpt != nil {
			t.ckpt.noteEval(int64(t.step), ev)
		}
		if err := t.checkpointAtEnd(ctx); err != nil {
			return nil, err
		}
	}
	if last.Step > 0 {
		// the last step again, with the final evaluation (readers keep the
		// last line of a step)
		last.ValBPB = t.valBPB(ev)
		if err := t.writeMetrics(last); err != nil {
			return nil, err
		}
	}
	rep := t.report(ev, last, time.Since(start))
	rep.Stopped = stopped
	if t.Cfg.OutDir != "" && t.Dist.Leader() {
		if err := rep.WriteJSON(filepath.Join(t.Cfg.OutDir, "report.json")); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// timeUp says whether MaxSeconds have passed since start. Every rank must
// stop at the same step: any rank whose clock says so decides.
func (t *Trainer) timeUp(ctx context.Context, start time.Time) (bool, error) {
	if t.Cfg.MaxSeconds <= 0 {
		return false, nil
	}
	flag := []float64{0}
	if time.Since(start).Seconds() >= t.Cfg.MaxSeconds {
		flag[0] = 1
	}
	if err := t.Dist.sumAll(ctx, flag); err != nil {
		return false, fmt.Errorf("train: max_seconds timer: %w", err)
	}
	return flag[0] > 0, nil
}

// checkpointAfterStep commits the save started at the previous boundary
// and starts a new one when the interval says so.
func (t *Trainer) checkpointAfterStep(ctx context.Context) error {
	if t.ckpt == nil {
		return nil
	}
	if err := t.ckpt.finish(ctx); err != nil {
		return err
	}
	due := false
	if every := t.Cfg.Checkpoint.Every; every > 0 && t.step%every == 0 {
		due = true
	}
	if min := t.Cfg.Checkpoint.EveryMinutes; min > 0 && !due {
		// every rank must agree: any rank whose clock says so decides
		flag := []float64{0}
		if time.Since(t.ckpt.lastSave) >= time.Duration(min*float64(time.Minute)) {
			flag[0] = 1
		}
		if err := t.Dist.sumAll(ctx, flag); err != nil {
			return fmt.Errorf("train: checkpoint timer: %w", err)
		}
		due = flag[0] > 0
	}
	if due {
		s, err := t.SnapshotInto(t.ckpt.spare)
		if err != nil {
			return err
		}
		t.ckpt.start(s)
	}
	return nil
}

// checkpointAtEnd commits what is in flight and saves the final state if
// it is not saved yet.
func (t *Trainer) checkpointAtEnd(ctx context.Context) error {
	if t.ckpt == nil {
		return nil
	}
	inflight := t.ckpt.pending != nil && t.ckpt.pending.step == int64(t.step)
	if err := t.ckpt.finish(ctx); err != nil {
		return err
	}
	// the state of the run's resumed checkpoint is committed already (a
	// run resumed at its last step trains nothing)
	saved := inflight || t.ckpt.committingStep == int64(t.step) || (len(t.ckpt.Saved) > 0 && t.ckpt.Saved[len(t.ckpt.Saved)-1] == int64(t.step)) ||
		(t.ckpt.loaded > 0 && t.ckpt.loaded == int64(t.step))
	if !saved {
		s, err := t.SnapshotInto(t.ckpt.spare)
		if err != nil {
			return err
		}
		t.ckpt.start(s)
		if err := t.ckpt.finish(ctx); err != nil {
			return err
		}
	}
	return t.ckpt.waitCommit()
}

// CheckpointStall is the training time spent waiting for checkpoint writes.
func (t *Trainer) CheckpointStall() time.Duration {
	if t.ckpt == nil {
		return 0
	}
	return t.ckpt.Stall
}

// Step is the number of optimizer steps taken.
func (t *Trainer) Step() int { return t.step }
