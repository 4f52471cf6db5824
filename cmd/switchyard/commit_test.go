package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"gopkg.in/yaml.v3"

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

	root, run := t.TempDir(), t.TempDir()
	cfg := jobspec.CommandConfig{
		Command: "/bin/true", WorkingDir: run, RunDir: run, Job: "j-1", World: 1,
		MasterAddr: "127.0.0.1", MasterPort: 29500,
		Checkpoint: runconfig.Checkpoint{Dir: root, Job: "j-1", KeepLast: 1},
	}
	raw, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(run, "run.yaml")
	if err := os.WriteFile(config, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, step := range []int64{1, 2} {
		dir := filepath.Join(cfg.StagingDir(), fmt.Sprint("step-", step))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "model.pt"), []byte(fmt.Sprint("weights ", step)), 0o644); err != nil {
			t.Fatal(err)
		}
		var out, errOut bytes.Buffer
		c := &cli{out: &out, errOut: &errOut}
		if err := c.checkpointsCommit(context.Background(), "checkpoints commit", []string{"--step", fmt.Sprint(step), "--config", config, dir}); err != nil {
			t.Fatalf("step %d: %v (stderr %q)", step, err, errOut.String())
		}
		want := fmt.Sprintf("committed the checkpoint of step %d of job j-1: 1 file, 9 B\n", step)
		if step == 2 {
			want = "committed the checkpoint of step 2 of job j-1: 1 file, 9 B (keep_last 1: deleted step 1)\n"
		}
		if out.String() != want || errOut.Len() != 0 || logged.Len() != 0 {
			t.Fatalf("step %d: stdout %q, want %q; stderr %q; logged %q", step, out.String(), want, errOut.String(), logged.String())
		}
	}
}
