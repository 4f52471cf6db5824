package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/jobspec"
	"github.com/switchyard-ml/switchyard/pkg/workerconfig"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// TestDevWorkerMemory: a dev worker declares its share of the machine's
// memory (a GPU rank needs GiBs of host memory; with 1 GiB the worker
// killed it), never under a job's default memory a slot.
func TestDevWorkerMemory(t *testing.T) {
	total, err := workerconfig.SystemDetector().MemoryMiB()
	if err != nil {
		t.Fatal(err)
	}
	if total < 16384 {
		t.Fatalf("this machine has %d MiB: the test needs 16 GiB to tell a share from the floor", total)
	}
	if got := devWorkerMemoryMiB(1, 1); got != total {
		t.Errorf("one worker: %d MiB, want the machine's %d", got, total)
	}
	if got := devWorkerMemoryMiB(1, 4); got != total/4 {
		t.Errorf("four workers: %d MiB each, want %d", got, total/4)
	}
	if got := devWorkerMemoryMiB(1, 1<<20); got != jobspec.DefaultMemoryMiB {
		t.Errorf("a million workers: %d MiB each, want the floor, %d", got, jobspec.DefaultMemoryMiB)
	}
	if got := devWorkerMemoryMiB(1<<10, 1); got != 1<<10*jobspec.DefaultMemoryMiB {
		t.Errorf("1024 slots: %d MiB, want %d a slot", got, jobspec.DefaultMemoryMiB)
	}
}

// TestDevSummaryCommandOutput: the summary of a command job names rank
// 0's output only where it stays: a temporary data directory is removed
// when dev ends, and the summary says so instead.
func TestDevSummaryCommandOutput(t *testing.T) {
	j := &pb.Job{Id: "c-1", State: pb.JobState_JOB_STATE_FAILED, Message: "exit status 1",
		Spec: []byte("name: c\nruntime: command\ncommand: /bin/false\n")}
	storage := t.TempDir()
	var kept, temporary bytes.Buffer
	printDevSummary(&kept, j, storage, time.Second, true)
	printDevSummary(&temporary, j, storage, time.Second, false)
	if want := "rank 0's output: " + filepath.Join(storage, "jobs", "c-1", "attempt-0", "rank-0", "stdout.log"); !strings.Contains(kept.String(), want) {
		t.Errorf("kept: %q lacks %q", kept.String(), want)
	}
	if s := temporary.String(); strings.Contains(s, storage) || !strings.Contains(s, "--data-dir DIR keeps it") {
		t.Errorf("temporary: %q names the removed directory or not --data-dir", s)
	}
}
