package main

import (
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/jobspec"
	"github.com/switchyard-ml/switchyard/pkg/workerconfig"
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
