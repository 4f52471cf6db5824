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
	"os"
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
	m, err := commitDir(ctx, cfg, *step, fs.Arg(0), retry)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.out, "committed the checkpoint of step %d of job %s: %d files, %s\n", m.Step, m.Job, len(m.Shards), fsutil.Size(m.TotalSize()))
	return nil
}

// commitDir makes dir the job's checkpoint of step and commits it (see
// checkpoint.AdoptDir: moved when it lies in the job's checkpoint storage,
// copied otherwise), then applies keep_last. A commit that fails for want
// of etcd or the coordinator is retried as retry says.
func commitDir(ctx context.Context, cfg *jobspec.CommandConfig, step int64, dir string, retry checkpoint.Retry) (checkpoint.Manifest, error) {
	st, err := checkpoint.NewDirStorage(cfg.Checkpoint.Dir)
	if err != nil {
		return checkpoint.Manifest{}, err
	}
	cat, closeCat, err := openCatalogue(cfg.Checkpoint)
	if err != nil {
		return checkpoint.Manifest{}, err
	}
	defer closeCat()
	if cat == nil {
		cat = checkpoint.NewStorageCatalogue(st)
	}
	mgr := checkpoint.NewManager(st, cat, slog.Default())
	job := cfg.Job
	prefix := checkpoint.StepPrefix(job, step)
	// only a newer step can be committed: refuse before touching DIR
	switch latest, err := cat.Latest(ctx, job); {
	case err == nil && latest.Step >= step:
		return checkpoint.Manifest{}, fmt.Errorf("step %d of job %s: the newest committed checkpoint is of step %d; commit a later step", step, job, latest.Step)
	case err != nil && !errors.Is(err, checkpoint.ErrNoCheckpoint):
		return checkpoint.Manifest{}, fmt.Errorf("checkpoint catalogue: %w", err)
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
		return checkpoint.Manifest{}, err
	}
	m := checkpoint.Manifest{
		Job: job, Step: step, CreatedUnixNano: time.Now().UnixNano(),
		Layout: checkpoint.Layout{TP: 1, DP: cfg.World, EP: 1},
		Shards: shards,
		Meta:   map[string]string{"runtime": jobspec.RuntimeCommand},
	}
	if err := mgr.CommitRetrying(ctx, m, retry); err != nil {
		// DIR goes back where the trainer wrote it, for a retry
		return checkpoint.Manifest{}, errors.Join(err, undo())
	}
	if deleted, err := mgr.Retain(ctx, job, max(cfg.Checkpoint.KeepLast, 1), 0, nil); err != nil {
		slog.Warn("checkpoint retention failed", "job-id", job, "error", err)
	} else if len(deleted) > 0 {
		slog.Info("checkpoints deleted by retention", "job-id", job, "steps", deleted)
	}
	return m, nil
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
