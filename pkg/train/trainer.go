package train

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/data"
	"github.com/switchyard-ml/switchyard/pkg/lbl"
	"github.com/switchyard-ml/switchyard/pkg/model"
	"github.com/switchyard-ml/switchyard/pkg/optim"
)

// Trainer runs one configured training job in this process.
type Trainer struct {
	Cfg    Config
	MCfg   model.Config
	Corpus *data.Corpus
	Model  *model.Model
	Opt    *optim.AdamW
	Bal    *lbl.Balancer
	Loader *data.Loader

	Dist *Dist // nil: one process

	progress *progress
	metrics  io.WriteCloser
	global   []int // scratch: the global micro-batch's sequence indices
	step     int
	seqIdx   []int
	optTime  time.Duration  // clipping, AdamW and zeroing, summed over steps
	ckpt     *checkpointer  // nil: no checkpoints
	syncTime *time.Duration // LBL count synchronisation, summed over steps
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
}

// New prepares a run: corpus, model, optimizer, balancer, loader. Progress
// goes to w (a progress bar if w is a terminal, plain lines otherwise).
func New(cfg Config, w io.Writer) (*Trainer, error) { return NewRun(cfg, w, nil) }

// NewRun is New for one rank of a parallel run (dist nil: one process).
func NewRun(cfg Config, w io.Writer, dist *Dist) (*Trainer, error) {
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
	return NewParallel(cfg, corpus, w, dist)
}

func loadDocs(cfg Config) ([]data.Document, error) {
	if cfg.Data.Corpus != "" {
		return data.ReadFile(cfg.Data.Corpus)
	}
	return data.Demo(data.DemoOptions{Seed: cfg.Seed, BytesPerDomain: cfg.Data.DemoBytes})
}

// BalancerConfig maps the run's LBL settings onto pkg/lbl.
func (c Config) BalancerConfig() lbl.Config {
	bc := lbl.Config{MicroCoef: c.LBL.MicroCoef, SeqCoef: c.LBL.SeqCoef, ZCoef: c.LBL.ZCoef, LayerCoef: c.LBL.LayerCoef, BiasRate: c.LBL.BiasRate}
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
// and the report.
func NewParallel(cfg Config, corpus *data.Corpus, w io.Writer, dist *Dist) (*Trainer, error) {
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
	bal, err := lbl.NewBalancer(cfg.BalancerConfig(), mc.MoELayers(), mc.Experts, mc.TopK, timedReducer{dist.reducer(), syncTime})
	if err != nil {
		return nil, fmt.Errorf("%w: lbl: %w", ErrConfig, err)
	}
	m, err := model.New(mc, cfg.MicroBatch, bal, len(corpus.Domains), dist.modelOptions()...)
	if err != nil {
		return nil, err
	}
	m.P.Init(mc, uint64(cfg.Seed))
	m.SetGradScale(1 / float32(cfg.Accumulation))
	var ranges []optim.Range
	for _, q := range m.P.List {
		ranges = append(ranges, optim.Range{Off: q.Offset, Len: q.Size, Decay: q.Decay})
	}
	opt, err := optim.NewAdamW(cfg.Optim, m.P.Len(), ranges)
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	loader, err := data.NewLoader(corpus.NumSeqs(data.Train), cfg.Seed)
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("train: loader: %w", err)
	}
	t := &Trainer{Cfg: cfg, MCfg: mc, Corpus: corpus, Model: m, Opt: opt, Bal: bal, Loader: loader, Dist: dist, syncTime: syncTime}
	if w != nil && dist.Leader() {
		t.progress = newProgress(w, cfg.Steps)
	}
	if cfg.Checkpoint.Dir != "" {
		if t.ckpt, err = newCheckpointer(cfg.Checkpoint, dist, m.P, mc); err != nil {
			m.Close()
			return nil, err
		}
		if t.progress != nil {
			t.ckpt.events = t.progress.w
		}
		if cfg.Resume {
			found, err := t.ckpt.load(context.Background(), t)
			if err != nil {
				t.ckpt.close()
				m.Close()
				return nil, err
			}
			if found && t.progress != nil {
				t.progress.resumed(t.step)
			}
		}
	}
	if cfg.OutDir != "" && dist.Leader() {
		if err := os.MkdirAll(cfg.OutDir, 0o755); err != nil {
			m.Close()
			return nil, fmt.Errorf("train: out dir: %w", err)
		}
		f, err := os.Create(filepath.Join(cfg.OutDir, "metrics.jsonl"))
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("train: metrics: %w", err)
		}
		t.metrics = f
	}
	return t, nil
}

// Close releases the model and the metrics file.
func (t *Trainer) Close() error {
	var err error
	if t.ckpt != nil {
		// a background write or commit must not outlive the trainer
		if t.ckpt.pending != nil {
			<-t.ckpt.pending.done
		}
		err = t.ckpt.waitCommit()
		if cerr := t.ckpt.close(); err == nil {
			err = cerr
		}
	}
	if t.metrics != nil {
		if cerr := t.metrics.Close(); err == nil {
			err = cerr
		}
		t.metrics = nil
	}
	t.Model.Close()
	return err
}

// fillTrain loads the next micro-batch of the global stream into the
// training batch.
func (t *Trainer) fillTrain() {
	b := t.Model.Train.Batch
	dp := t.Dist.dpSize()
	t.global = t.Loader.Next(b.B*dp, t.global[:0])
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
func (t *Trainer) TrainStep(ctx context.Context) (StepMetrics, error) {
	start := time.Now()
	sync0 := *t.syncTime
	M := t.Cfg.Accumulation
	var loss, aux float64
	lblL := make([]float64, t.MCfg.MoELayers())
	for m := 0; m < M; m++ {
		if err := ctx.Err(); err != nil {
			return StepMetrics{}, err
		}
		t.fillTrain()
		l, err := t.Model.Step()
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
	optStart := time.Now()
	gradSync := time.Now()
	if err := t.Dist.reduceGrads(ctx, t.Model.P); err != nil {
		return StepMetrics{}, err
	}
	gradSyncS := time.Since(gradSync).Seconds()
	gnorm, err := t.Dist.gradNorm(ctx, t.Model.P)
	if err != nil {
		return StepMetrics{}, err
	}
	if s := t.Opt.ClipScale(gnorm); s < 1 {
		for i := range t.Model.P.Grad {
			t.Model.P.Grad[i] *= float32(s)
		}
	}
	lr := t.Cfg.Optim.LRAt(t.step, t.Cfg.Steps)
	t.Opt.Step(t.Model.P.Data, t.Model.P.Grad, lr)
	t.Model.P.ZeroGrad()
	t.optTime += time.Since(optStart)
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

// Run trains for Cfg.Steps steps, evaluating every EvalEvery steps and at
// the end, and returns the final report.
func (t *Trainer) Run(ctx context.Context) (*Report, error) {
	start := time.Now()
	var last StepMetrics
	var lastEval *Eval
	for t.step < t.Cfg.Steps {
		sm, err := t.TrainStep(ctx)
		if err != nil {
			return nil, err
		}
		sm.ElapsedS = time.Since(start).Seconds()
		last = sm
		if t.metrics != nil {
			line, _ := json.Marshal(sm)
			if _, err := t.metrics.Write(append(line, '\n')); err != nil {
				return nil, fmt.Errorf("train: write metrics: %w", err)
			}
		}
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
			lastEval = ev
			if t.ckpt != nil {
				t.ckpt.noteEval(int64(t.step), ev)
			}
			if t.progress != nil {
				t.progress.eval(t.step, ev)
			}
		}
	}
	if err := t.checkpointAtEnd(ctx); err != nil {
		return nil, err
	}
	if t.progress != nil {
		t.progress.done()
	}
	ev, err := t.Evaluate(ctx)
	if err != nil {
		return nil, err
	}
	_ = lastEval
	rep := t.report(ev, last, time.Since(start))
	if t.Cfg.OutDir != "" && t.Dist.Leader() {
		if err := rep.WriteJSON(filepath.Join(t.Cfg.OutDir, "report.json")); err != nil {
			return rep, err
		}
	}
	return rep, nil
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
		t.ckpt.start(t.SnapshotInto(t.ckpt.spare))
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
	saved := inflight || t.ckpt.committingStep == int64(t.step) || (len(t.ckpt.Saved) > 0 && t.ckpt.Saved[len(t.ckpt.Saved)-1] == int64(t.step))
	if !saved {
		t.ckpt.start(t.SnapshotInto(t.ckpt.spare))
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
