package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
	"github.com/switchyard-ml/switchyard/pkg/jobspec"
	"github.com/switchyard-ml/switchyard/pkg/runconfig"
)

// TestCheckpointsCommitQuiet: a commit that succeeds writes its summary,
// retention included, on stdout and nothing on stderr: the rank's stderr
// is where the worker reads why it failed, and an info line there would
// read as the reason.
func TestCheckpointsCommitQuiet(t *testing.T) {
	var logged bytes.Buffer
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(slog.New(slog.NewTextHandler(&logged, nil)))

	r := newCommitRank(t, 1, 0)
	for _, step := range []int64{1, 2} {
		out, errOut, err := r.commit(step)
		if err != nil {
			t.Fatalf("step %d: %v (stderr %q)", step, err, errOut)
		}
		want := fmt.Sprintf("committed the checkpoint of step %d of job j-1: 1 file, 9 B\n", step)
		if step == 2 {
			want = "committed the checkpoint of step 2 of job j-1: 1 file, 9 B (keep_last 1: deleted step 1)\n"
		}
		if out != want || errOut != "" || logged.Len() != 0 {
			t.Fatalf("step %d: stdout %q, want %q; stderr %q; logged %q", step, out, want, errOut, logged.String())
		}
	}
}

// TestCheckpointsCommitKeepBest: the validation loss a trainer gives
// goes into the manifest, and keep_best keeps the best beside the newest.
func TestCheckpointsCommitKeepBest(t *testing.T) {
	r := newCommitRank(t, 1, 1)
	if _, _, err := r.commit(1, "--val-loss", "NaN"); err == nil || !strings.Contains(err.Error(), `--val-loss "NaN": want a finite number`) {
		t.Fatalf("a NaN loss: %v", err)
	}
	var last string
	for _, c := range []struct {
		step int64
		loss string
	}{{1, "3"}, {2, "1.25"}, {3, "2"}, {4, "2.5"}} {
		out, errOut, err := r.commit(c.step, "--val-loss", c.loss)
		if err != nil {
			t.Fatalf("step %d: %v (stderr %q)", c.step, err, errOut)
		}
		last = out
	}
	if want := "(keep_last 1, keep_best 1: deleted step 3)"; !strings.Contains(last, want) {
		t.Fatalf("step 4: %q, want it to say %s", last, want)
	}
	st, err := checkpoint.NewDirStorage(r.cfg.Checkpoint.Dir)
	if err != nil {
		t.Fatal(err)
	}
	ms, err := checkpoint.NewStorageCatalogue(st).List(context.Background(), "j-1")
	if err != nil {
		t.Fatal(err)
	}
	var kept []string
	for _, m := range ms {
		v, _ := m.ValLoss()
		kept = append(kept, fmt.Sprintf("%d:%g", m.Step, v))
	}
	if want := []string{"4:2.5", "2:1.25"}; !slices.Equal(kept, want) {
		t.Fatalf("kept %v, want %v (the newest and the best)", kept, want)
	}
}

// commitRank is rank 0 of a one-rank command job, job j-1, whose
// checkpoints keep their manifests beside them (no coordinator).
type commitRank struct {
	t      *testing.T
	cfg    jobspec.CommandConfig
	config string
}

func newCommitRank(t *testing.T, keepLast, keepBest int) *commitRank {
	root, run := t.TempDir(), t.TempDir()
	cfg := jobspec.CommandConfig{
		Command: "/bin/true", WorkingDir: run, RunDir: run, Job: "j-1", World: 1,
		MasterAddr: "127.0.0.1", MasterPort: 29500,
		Checkpoint: runconfig.Checkpoint{Dir: root, Job: "j-1", KeepLast: keepLast, KeepBest: keepBest},
	}
	raw, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(run, "run.yaml")
	if err := os.WriteFile(config, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	return &commitRank{t: t, cfg: cfg, config: config}
}

// commit writes a checkpoint of step in the attempt's staging directory
// and runs `checkpoints commit` on it with more flags.
func (r *commitRank) commit(step int64, more ...string) (stdout, stderr string, err error) {
	dir := filepath.Join(r.cfg.StagingDir(), fmt.Sprint("step-", step))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		r.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "model.pt"), []byte(fmt.Sprint("weights ", step)), 0o644); err != nil {
		r.t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	c := &cli{out: &out, errOut: &errOut}
	args := append(append([]string{"--step", fmt.Sprint(step), "--config", r.config}, more...), dir)
	err = c.checkpointsCommit(context.Background(), "checkpoints commit", args)
	return out.String(), errOut.String(), err
}
