package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
	"github.com/switchyard-ml/switchyard/pkg/fsutil"
	"github.com/switchyard-ml/switchyard/pkg/jobspec"
	"github.com/switchyard-ml/switchyard/pkg/runconfig"
)

func TestRankEnv(t *testing.T) {
	cfg := &jobspec.CommandConfig{
		Command: "python3", Env: map[string]string{"OMP_NUM_THREADS": "2", "FOO": "spec"},
		WorkingDir: "/w", RunDir: "/run/r1", Job: "j-1", Attempt: 2, Rank: 3, World: 4, Node: jobspec.Node{Rank: 1, Nodes: 2, LocalRank: 1, LocalWorld: 2},
		MasterAddr: "10.0.0.1", MasterPort: 7070, CUDAVisibleDevices: "", MaxRestarts: 3,
		Checkpoint:   runconfig.Checkpoint{Dir: "/ck", Job: "j-1"},
		Coordinators: []string{"c1:7000", "c2:7000"},
	}
	base := []string{"PATH=/usr/bin", "FOO=worker", "RANK=99", "SWITCHYARD_RESUME_DIR=/stale", "HOME=/root"}
	env := rankEnv(cfg, "/run/r1/run.yaml", "/opt/sy/switchyard", resumeAt{}, base)
	got := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		if _, dup := got[k]; dup {
			t.Fatalf("%s twice", k)
		}
		got[k] = v
	}
	for k, want := range map[string]string{
		"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1", "NODE_RANK": "1", "GROUP_WORLD_SIZE": "2",
		"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "7070", "TORCHELASTIC_RESTART_COUNT": "2", "TORCHELASTIC_MAX_RESTARTS": "3",
		"CUDA_VISIBLE_DEVICES": "", "SWITCHYARD_JOB_ID": "j-1", "SWITCHYARD_ATTEMPT": "2",
		"SWITCHYARD_CHECKPOINT_DIR": "/ck/j-1/staging/attempt-2", "SWITCHYARD_RUN_CONFIG": "/run/r1/run.yaml",
		"SWITCHYARD_METRICS_FILE": "/run/r1/metrics.jsonl", "SWITCHYARD_BIN": "/opt/sy/switchyard",
		"PATH": "/usr/bin:/opt/sy", "SWITCHYARD_COORDINATOR": "c1:7000,c2:7000", "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
		"OMP_NUM_THREADS": "2", "FOO": "spec", "HOME": "/root",
	} {
		if v, ok := got[k]; !ok || v != want {
			t.Errorf("%s = %q (set %v), want %q", k, v, ok, want)
		}
	}
	for _, k := range []string{"SWITCHYARD_RESUME_DIR", "SWITCHYARD_RESUME_STEP"} {
		if _, ok := got[k]; ok {
			t.Errorf("%s set without a checkpoint to resume from", k)
		}
	}
	// an attempt a user resumed past the spec's restarts: the count stays
	// within the maximum, as under torchrun
	resumed := *cfg
	resumed.Attempt = 5
	if env := rankEnv(&resumed, "/r", "/s", resumeAt{}, base); !slices.Contains(env, "TORCHELASTIC_RESTART_COUNT=5") || !slices.Contains(env, "TORCHELASTIC_MAX_RESTARTS=5") {
		t.Errorf("attempt 5 of a job of 3 restarts: %v", env)
	}
	env = rankEnv(cfg, "/r", "/s", resumeAt{step: 40, dir: "/ck/j-1/step-000000000040/"}, base)
	if !slices.Contains(env, "SWITCHYARD_RESUME_STEP=40") || !slices.Contains(env, "SWITCHYARD_RESUME_DIR=/ck/j-1/step-000000000040/") {
		t.Errorf("resume variables missing: %v", env)
	}
}

// A program switchyard exec cannot find exits 127, one it cannot run 126,
// as from a shell.
func TestLookExitCode(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "plain"), []byte("x"), 0o644)
	for cmd, want := range map[string]int{"missing": exitCommandNotFound, "plain": exitNotExecutable} {
		if _, err := fsutil.LookProgram(cmd, dir, dir); err == nil || lookExitCode(err) != want {
			t.Errorf("%s: %v, exit %d, want %d", cmd, err, lookExitCode(err), want)
		}
	}
}

// Rank 0 decides the resume point (the newest committed checkpoint that
// verifies, dropping a damaged newer one) and the other ranks follow its
// decision; a rank whose rank 0 never decides says why.
func TestResumePointAgreed(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	st, err := checkpoint.NewDirStorage(root)
	if err != nil {
		t.Fatal(err)
	}
	mgr := checkpoint.NewManager(st, checkpoint.NewStorageCatalogue(st), nil)
	for _, step := range []int64{5, 10} {
		dir := filepath.Join(t.TempDir(), "ck")
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "model.pt"), []byte(fmt.Sprint("weights ", step)), 0o644)
		shards, _, err := checkpoint.AdoptDir(ctx, st, checkpoint.StepPrefix("j-1", step), dir, "")
		if err != nil {
			t.Fatal(err)
		}
		if err := mgr.Commit(ctx, checkpoint.Manifest{Job: "j-1", Step: step, Layout: checkpoint.Layout{TP: 1, DP: 2, EP: 1}, Shards: shards}); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(root, "j-1", "step-000000000010", "model.pt"), []byte("damaged"), 0o644)
	cfg := func(rank, attempt int) *jobspec.CommandConfig {
		c := &jobspec.CommandConfig{Job: "j-1", Rank: rank, World: 2, Attempt: attempt, Checkpoint: runconfig.Checkpoint{Dir: root, Job: "j-1"}}
		os.MkdirAll(c.StagingDir(), 0o755)
		return c
	}
	var events bytes.Buffer
	r0, err := resumePoint(ctx, cfg(0, 1), &events)
	if err != nil {
		t.Fatal(err)
	}
	r1, err := resumePoint(ctx, cfg(1, 1), &events)
	if err != nil {
		t.Fatal(err)
	}
	if r0.step != 5 || r1 != r0 || !strings.HasSuffix(r0.dir, "step-000000000005") {
		t.Fatalf("rank 0 resumes from %+v, rank 1 from %+v: want step 5 both", r0, r1)
	}
	if ms, _ := mgr.Catalogue().List(ctx, "j-1"); len(ms) != 1 || ms[0].Step != 5 {
		t.Fatalf("the damaged step 10 was not dropped: %v", ms)
	}
	resumeWait = 300 * time.Millisecond
	if _, err := resumePoint(ctx, cfg(1, 2), &events); err == nil || !strings.Contains(err.Error(), "must share its checkpoint storage") {
		t.Fatalf("no decision: %v", err)
	}
}

// TestLoadCommandConfigUnknownKey: a key run.yaml's type lacks is named by
// its path and line.
func TestLoadCommandConfigUnknownKey(t *testing.T) {
	p := filepath.Join(t.TempDir(), "run.yaml")
	if err := os.WriteFile(p, []byte("command: python3\nnode: {rank: 0, nodez: 1}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := loadCommandConfig(p)
	if err == nil || !strings.Contains(err.Error(), p+`: node.nodez (line 2): unknown key; node has `) || !strings.HasSuffix(err.Error(), `; did you mean "nodes"?`) {
		t.Fatalf("err = %v", err)
	}
}

// A program whose #! interpreter is missing is named as such, not as a
// program that does not exist.
func TestMissingInterpreter(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{"bad": "#!/nonexistent/python3 -u\nprint(1)\n", "good": "#!/bin/sh\n", "plain": "echo\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	err := syscall.Exec(filepath.Join(dir, "bad"), nil, nil) // fails: ENOENT, nothing replaced
	if got := missingInterpreter(filepath.Join(dir, "bad"), err); !strings.Contains(got, "its interpreter /nonexistent/python3, named by its #! line, does not exist on this worker") {
		t.Fatalf("%v: %q", err, got)
	}
	for _, name := range []string{"good", "plain", "absent"} {
		if got := missingInterpreter(filepath.Join(dir, name), os.ErrNotExist); got != "" {
			t.Errorf("%s: %q", name, got)
		}
	}
}
