package main

// switchyard checkpoints commit: a command job's trainer commits the
// checkpoint it wrote, whatever its format, exactly as the engine commits
// its own: every file hashed into a manifest, verified, committed through
// the coordinator under the attempt's fence, then retention.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
	"github.com/switchyard-ml/switchyard/pkg/fsutil"
	"github.com/switchyard-ml/switchyard/pkg/jobspec"
)

func (c *cli) checkpointsCommit(ctx context.Context, name string, args []string) error {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(c.errOut)
	step := fs.Int64("step", 0, "the trainer's step the checkpoint was taken after, >= 1 (required)")
	config := fs.String("config", os.Getenv(envRunConfig), "the rank's run.yaml (env "+envRunConfig+", set for every rank of a command job)")
	valLoss := fs.String("val-loss", "", "the trainer's validation loss at this step (lower is better): recorded in the manifest, shown by checkpoints list, and what checkpoint.keep_best keeps by")
	retryFor := fs.Duration("retry-for", 5*time.Minute, "retry a commit that fails for want of etcd or the coordinator (a restart, an election, an outage) for this long (0: no retry)")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	switch {
	case fs.NArg() != 1:
		return usageError{fmt.Errorf("%s: want one DIR, got %d arguments", name, fs.NArg())}
	case *step < 1:
		return usageError{fmt.Errorf("%s: --step N (>= 1: the optimizer steps taken) is required", name)}
	case *retryFor < 0:
		return usageError{fmt.Errorf("%s: --retry-for %s: must be >= 0", name, *retryFor)}
	case *config == "":
		return usageError{fmt.Errorf("%s runs inside a rank of a command job (runtime: command): %s is not set", name, envRunConfig)}
	}
	var meta map[string]string
	if *valLoss != "" {
		v, err := strconv.ParseFloat(*valLoss, 64)
		if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
			return usageError{fmt.Errorf("%s: --val-loss %q: want a finite number", name, *valLoss)}
		}
		meta = map[string]string{checkpoint.MetaValLoss: strconv.FormatFloat(v, 'g', -1, 64)}
	}
	cfg, err := loadCommandConfig(*config)
	if err != nil {
		return usageError{err}
	}
	if cfg.Rank != 0 {
		return usageError{fmt.Errorf("%s: rank %d: only rank 0 commits (after every rank wrote its files)", name, cfg.Rank)}
	}
	retry := checkpoint.Retry{
		For: *retryFor,
		Failing: func(err error) {
			fmt.Fprintf(c.errOut, "switchyard: checkpoints commit: step %d: the commit failed (%v); retrying for up to %s\n", *step, err, *retryFor)
		},
		Recovered: func(tries int, took time.Duration) {
			fmt.Fprintf(c.errOut, "switchyard: checkpoints commit: step %d committed after %d tries (%s)\n", *step, tries, took.Round(time.Second))
		},
	}
	// warnings only: the rank's stderr is where its failure is read
	// from, and the summary below says what an info line would
	log := slog.New(slog.NewTextHandler(c.errOut, &slog.HandlerOptions{Level: slog.LevelWarn}))
	m, deleted, err := commitDir(ctx, cfg, *step, fs.Arg(0), meta, retry, log)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.out, "committed the checkpoint of step %d of job %s: %s, %s", m.Step, m.Job, plural(len(m.Shards), "file"), fsutil.Size(m.TotalSize()))
	if len(deleted) > 0 {
		kept := fmt.Sprintf("keep_last %d", max(cfg.Checkpoint.KeepLast, 1))
		if cfg.Checkpoint.KeepBest > 0 {
			kept += fmt.Sprintf(", keep_best %d", cfg.Checkpoint.KeepBest)
		}
		fmt.Fprintf(c.out, " (%s: deleted %s)", kept, joinSteps(deleted))
	}
	fmt.Fprintln(c.out)
	return nil
}

// plural reads "1 file" or "2 files".
func plural(n int, unit string) string {
	if n == 1 {
		return "1 " + unit
	}
	return fmt.Sprintf("%d %ss", n, unit)
}

// joinSteps reads "step 10" or "steps 10, 20".
func joinSteps(steps []int64) string {
	s := make([]string, len(steps))
	for i, st := range steps {
		s[i] = strconv.FormatInt(st, 10)
	}
	if len(s) == 1 {
		return "step " + s[0]
	}
	return "steps " + strings.Join(s, ", ")
}

// commitDir makes dir the job's checkpoint of step and commits it (see
// checkpoint.AdoptDir: moved when it lies in the job's checkpoint storage,
// copied otherwise) with meta in its manifest (the validation loss), then
// applies keep_last and keep_best and returns the steps it deleted. A
// commit that fails for want of etcd or the coordinator is retried as
// retry says.
func commitDir(ctx context.Context, cfg *jobspec.CommandConfig, step int64, dir string, meta map[string]string, retry checkpoint.Retry, log *slog.Logger) (checkpoint.Manifest, []int64, error) {
	st, err := checkpoint.NewDirStorage(cfg.Checkpoint.Dir)
	if err != nil {
		return checkpoint.Manifest{}, nil, err
	}
	cat, closeCat, err := openCatalogue(cfg.Checkpoint)
	if err != nil {
		return checkpoint.Manifest{}, nil, err
	}
	defer closeCat()
	if cat == nil {
		cat = checkpoint.NewStorageCatalogue(st)
	}
	mgr := checkpoint.NewManager(st, cat, log)
	job := cfg.Job
	prefix := checkpoint.StepPrefix(job, step)
	// only a newer step can be committed: refuse before touching DIR
	switch latest, err := cat.Latest(ctx, job); {
	case err == nil && latest.Step >= step:
		return checkpoint.Manifest{}, nil, fmt.Errorf("step %d of job %s: the newest committed checkpoint is of step %d; commit a later step", step, job, latest.Step)
	case err != nil && !errors.Is(err, checkpoint.ErrNoCheckpoint):
		return checkpoint.Manifest{}, nil, fmt.Errorf("checkpoint catalogue: %w", err)
	}
	end := mgr.BeginSave(job, step)
	defer end()
	// moved (no copy) when it is the attempt's own staged directory
	shards, undo, err := checkpoint.AdoptDir(ctx, st, prefix, dir, cfg.StagingDir())
	if errors.Is(err, checkpoint.ErrStepExists) {
		// files of a commit of this step that never completed: nothing
		// references them
		if err = removePrefix(ctx, st, prefix); err == nil {
			shards, undo, err = checkpoint.AdoptDir(ctx, st, prefix, dir, cfg.StagingDir())
		}
	}
	if err != nil {
		return checkpoint.Manifest{}, nil, err
	}
	m := checkpoint.Manifest{
		Job: job, Step: step, CreatedUnixNano: time.Now().UnixNano(),
		Layout: checkpoint.Layout{TP: 1, DP: cfg.World, EP: 1},
		Shards: shards,
		Meta:   map[string]string{"runtime": jobspec.RuntimeCommand},
	}
	maps.Copy(m.Meta, meta)
	if err := mgr.CommitRetrying(ctx, m, retry); err != nil {
		// DIR goes back where the trainer wrote it, for a retry
		return checkpoint.Manifest{}, nil, errors.Join(err, undo())
	}
	deleted, err := mgr.Retain(ctx, job, max(cfg.Checkpoint.KeepLast, 1), cfg.Checkpoint.KeepBest, checkpoint.Manifest.ValLoss)
	if err != nil {
		log.Warn("checkpoint retention failed", "job-id", job, "error", err)
	}
	return m, deleted, nil
}

func removePrefix(ctx context.Context, st checkpoint.Storage, prefix string) error {
	keys, err := st.List(ctx, prefix)
	if err != nil {
		return err
	}
	for _, k := range keys {
		if err := st.Delete(ctx, k); err != nil {
			return err
		}
	}
	return nil
}
