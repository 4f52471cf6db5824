package main

import (
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/workerconfig"
)

// TestDevWorkerMemory: a dev worker declares its share of the machine's
// memory (a GPU rank needs GiBs of host memory; with 1 GiB the worker
// killed it), never under 1 GiB a slot.
func TestDevWorkerMemory(t *testing.T) {
	total, err := workerconfig.SystemDetector().MemoryMiB()
	if err != nil {
		t.Fatal(err)
	}
	if total < 4096 {
		t.Fatalf("this machine has %d MiB: the test needs 4 GiB to tell a share from the floor", total)
	}
	if got := devWorkerMemoryMiB(1, 1); got != total {
		t.Errorf("one worker: %d MiB, want the machine's %d", got, total)
	}
	if got := devWorkerMemoryMiB(1, 4); got != total/4 {
		t.Errorf("four workers: %d MiB each, want %d", got, total/4)
	}
	if got := devWorkerMemoryMiB(1, 1<<20); got != 1024 {
		t.Errorf("a million workers: %d MiB each, want the 1024 floor", got)
	}
	if got := devWorkerMemoryMiB(1<<10, 1); got != 1<<20 {
		t.Errorf("1024 slots: %d MiB, want 1 GiB a slot", got)
	}
}
