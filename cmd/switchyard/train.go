package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/switchyard-ml/switchyard/pkg/kernels"
	"github.com/switchyard-ml/switchyard/pkg/security"
	"github.com/switchyard-ml/switchyard/pkg/train"
)

func cmdTrain(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("train", flag.ContinueOnError)
	var (
		config  = fs.String("config", "", "YAML run config (see README); flags below override it")
		preset  = fs.String("preset", "", "model preset: tiny, small, medium or science")
		steps   = fs.Int("steps", 0, "optimizer steps")
		maxTime = fs.Duration("max-time", 0, "end the run at the first step after this much training time (e.g. 5m; evaluation, checkpoint and report follow; the LR schedule still spans --steps)")
		corpus  = fs.String("corpus", "", `JSON Lines corpus {"domain","text"} (default: built-in demo corpus)`)
		out     = fs.String("out", "", "directory for metrics.jsonl and report.json")
		drawIt  = fs.Bool("plots", false, "after the run, draw its pictures into --out: loss, LBL, tokens/s, expert load per layer, domain x expert heat maps (PNG and SVG)")
		mode    = fs.String("lbl", "", "load-balancing loss: global or micro")
		window  = fs.Int("lbl-window", -1, "global LBL: micro-batches its counts cover (0: the whole step)")
		order   = fs.String("data-order", "", "training order: shuffled (domains mixed in every micro-batch), domain (one domain per micro-batch) or domain_mixed (domain's global batches, each step dealt at random to its micro-batches)")
		accum   = fs.Int("accum", 0, "micro-batches per optimizer step")
		micro   = fs.Int("micro-batch", 0, "sequences per micro-batch")
		seed    = fs.Int64("seed", 0, "random seed")
		evalEv  = fs.Int("eval-every", -1, "steps between evaluations (0: only at the end)")
		lr      = fs.Float64("lr", 0, "peak learning rate")
		warmup  = fs.Int("warmup", -1, "warmup steps")
		evalN   = fs.Int("eval-seqs", -1, "validation sequences per domain per evaluation (0: all)")
		demoMB  = fs.Float64("demo-mb", 0, "demo corpus size per domain in MiB")
		jsonOut = fs.Bool("json", false, "print the final report as JSON instead of tables")
		kern    = fs.String("kernels", "auto", "compute kernels: auto (fastest for this CPU), generic (portable Go) or reference (slow oracle)")
		device  = fs.String("device", "", "cpu (default), cuda or cuda:N: train on that GPU")
		prec    = fs.String("precision", "", "GPU arithmetic: bf16 (mixed, default on cuda) or fp32 (the CPU engine's numbers)")
		colls   = fs.String("collectives", "", "GPU ranks' gradient all-reduce (under launch): auto (NCCL when every rank has its own GPU, else host-staged), nccl or host")
		recomp  = fs.String("recompute", "", "GPU: none (default) or attention (recompute the attention probabilities in the backward: less memory, a little more compute)")
		ckDir   = fs.String("checkpoint-dir", "", "save checkpoints under this directory")
		ckEvery = fs.Int("checkpoint-every", -1, "save after every N steps (0: only at the end)")
		resume  = fs.Bool("resume", false, "continue from the newest committed checkpoint in --checkpoint-dir")
		resStep = fs.Int64("resume-step", 0, "with --resume: continue from exactly this committed step (newer checkpoints are deleted)")
		ckJob   = fs.String("checkpoint-job", "", "catalogue name of the run's checkpoints (default \"run\"; the coordinator passes the job id)")
		ckEtcd  = fs.String("checkpoint-etcd", "", "comma-separated etcd endpoints: keep the checkpoint catalogue in etcd")
		via     = fs.String("commit-via", "", "comma-separated coordinator API addresses: read, commit and retire checkpoints through the coordinator, not etcd (token from $SWITCHYARD_TOKEN; set by the worker)")
		attempt = fs.Int("attempt", 0, "the job's attempt this run is (set by the worker; the coordinator refuses commits of an attempt that is over)")
		viaCA   = fs.String("commit-tls-ca", "", "CA (PEM) for --commit-via")
		viaCert = fs.String("commit-tls-cert", "", "client certificate (PEM) for --commit-via")
		viaKey  = fs.String("commit-tls-key", "", "client key (PEM) for --commit-via")
		df      distFlags
	)
	df.register(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return usageError{err}
	}
	if err := kernels.Use(*kern); err != nil {
		return usageError{err}
	}
	var cfg train.Config
	var err error
	switch {
	case *config != "":
		if cfg, err = train.Load(*config); err != nil {
			return usageError{err}
		}
	default:
		name := *preset
		if name == "" {
			name = "tiny"
		}
		if cfg, err = train.PresetConfig(name); err != nil {
			return usageError{err}
		}
		cfg.Optim.WarmupSteps = 10
		cfg.Data.EvalSeqs = 64
	}
	if *preset != "" && *config != "" {
		p, err := train.PresetConfig(*preset)
		if err != nil {
			return usageError{err}
		}
		cfg.Preset, cfg.MicroBatch = p.Preset, p.MicroBatch
	}
	// a count given as 0 (or less) is refused naming the flag, not taken
	// for "not given" (the file's or the default)
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	for _, c := range []struct {
		name string
		v    int
	}{{"steps", *steps}, {"accum", *accum}, {"micro-batch", *micro}} {
		if given[c.name] && c.v < 1 {
			return usageError{fmt.Errorf("train: --%s %d: must be >= 1", c.name, c.v)}
		}
	}
	if given["max-time"] && *maxTime <= 0 {
		return usageError{fmt.Errorf("train: --max-time %s: must be > 0 (e.g. 5m)", *maxTime)}
	}
	setInt := func(dst *int, v, unset int) {
		if v != unset {
			*dst = v
		}
	}
	setInt(&cfg.Steps, *steps, 0)
	if *maxTime != 0 {
		cfg.MaxSeconds = maxTime.Seconds()
	}
	setInt(&cfg.Accumulation, *accum, 0)
	setInt(&cfg.MicroBatch, *micro, 0)
	setInt(&cfg.EvalEvery, *evalEv, -1)
	setInt(&cfg.Optim.WarmupSteps, *warmup, -1)
	setInt(&cfg.Data.EvalSeqs, *evalN, -1)
	if *corpus != "" {
		cfg.Data.Corpus = *corpus
	}
	if *out != "" {
		cfg.OutDir = *out
	}
	if *ckDir != "" {
		cfg.Checkpoint.Dir = *ckDir
	}
	setInt(&cfg.Checkpoint.Every, *ckEvery, -1)
	if *resume {
		cfg.Resume = true
	}
	if *resStep != 0 {
		cfg.Checkpoint.ResumeStep = *resStep
	}
	if *ckJob != "" {
		cfg.Checkpoint.Job = *ckJob
	}
	if *ckEtcd != "" {
		cfg.Checkpoint.Etcd = strings.Split(*ckEtcd, ",")
	}
	if *via != "" {
		cfg.Checkpoint.CommitVia = strings.Split(*via, ",")
		cfg.Checkpoint.Attempt = *attempt
		cfg.Checkpoint.CommitTLS = security.TLSFiles{CA: *viaCA, Cert: *viaCert, Key: *viaKey}
	}
	if *mode != "" {
		cfg.LBL.Mode = *mode
	}
	setInt(&cfg.LBL.Window, *window, -1)
	if *order != "" {
		cfg.Data.Order = *order
	}
	if *seed != 0 {
		cfg.Seed = *seed
	}
	if *lr != 0 {
		cfg.Optim.LR = *lr
	}
	if *demoMB != 0 {
		cfg.Data.DemoBytes = int(*demoMB * (1 << 20))
	}
	if *device != "" {
		cfg.Device = *device
	}
	if *prec != "" {
		cfg.Precision = *prec
	}
	if *colls != "" {
		cfg.Collectives = *colls
	}
	if *recomp != "" {
		cfg.Recompute = *recomp
	}
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return usageError{err}
	}
	if *drawIt && cfg.OutDir == "" {
		return usageError{errors.New("--plots needs --out DIR (or out_dir in the config): the pictures go beside metrics.jsonl")}
	}
	df.useConfig(cfg.Dist, fs)
	if err := df.check(); err != nil {
		return usageError{err}
	}
	dist, closeDist, err := df.connect(ctx)
	if err != nil {
		return err
	}
	defer closeDist()
	cat, closeCat, err := openCatalogue(cfg.Checkpoint)
	if err != nil {
		return err
	}
	defer closeCat()
	var opts []train.Option
	if cat != nil {
		opts = append(opts, train.WithCatalogue(cat))
	}
	tr, err := train.NewRun(cfg, os.Stderr, dist, opts...)
	if err != nil {
		if errors.Is(err, train.ErrConfig) {
			return usageError{err}
		}
		return err
	}
	defer tr.Close()
	if !dist.Leader() {
		_, err := tr.Run(ctx)
		return err
	}
	mc := tr.MCfg
	total, active := mc.ParamCount()
	balance := ""
	if dist != nil && dist.Layout.World() > 1 {
		// the ranks whose expert counts each rank's LBL sums
		balance = fmt.Sprintf(" (balance %s: %d ranks)", dist.Layout.Balance(), len(dist.Layout.BalanceGroup(0)))
	}
	fmt.Fprintf(os.Stderr, "training %s: d%d L%d H%d E%d k%d h%d seq %d, %.1fM params (%.1fM active); %d steps x %d micro-batches x %d seqs; LBL %s coef %g%s; %d domains %v\n",
		cfg.Preset, mc.Dim, mc.Layers, mc.Heads, mc.Experts, mc.TopK, mc.Hidden, mc.SeqLen, float64(total)/1e6, float64(active)/1e6,
		cfg.Steps, cfg.Accumulation, cfg.MicroBatch, cfg.LBL.Mode, cfg.LBL.Coef, balance, len(tr.Corpus.Domains), tr.Corpus.Domains)
	rep, err := tr.Run(ctx)
	if err != nil {
		return err
	}
	var pictures []string
	if *drawIt {
		title := fmt.Sprintf("%s, %s LBL", cfg.Preset, cfg.LBL.Mode)
		if pictures, err = plotRunDir(cfg.OutDir, title, rep); err != nil {
			return fmt.Errorf("train --plots: %w", err)
		}
	}
	if *jsonOut {
		return printJSON(rep)
	}
	rep.Print(os.Stdout)
	if cfg.OutDir != "" {
		fmt.Printf("\nmetrics: %s/metrics.jsonl  report: %s/report.json\n", cfg.OutDir, cfg.OutDir)
	}
	if len(pictures) > 0 {
		fmt.Printf("plots:\n")
		printPaths(os.Stdout, pictures)
	}
	return nil
}
