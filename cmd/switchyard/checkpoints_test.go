package main

import (
	"slices"
	"strings"
	"testing"

	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
)

func TestCheckpointsList(t *testing.T) {
	addr := startFake(t, newFakeCoordinator())
	r := runAt(t, addr, "checkpoints", "list", "moe-1")
	wantCode(t, r, exitOK)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 3 {
		t.Fatalf("want header and 2 checkpoints:\n%s", r.stdout)
	}
	wantContains(t, lines[0], "STEP", "STATUS", "SIZE", "LAYOUT", "SHARDS")
	wantContains(t, lines[1], "100", "committed", "3.0 GiB", "tp1 dp2 ep2", "2.5000")
	if f := strings.Fields(lines[1]); f[len(f)-1] != "2" {
		t.Errorf("shard count in %q", lines[1])
	}

	r = runAt(t, addr, "checkpoints", "list", "-o", "json", "moe-1")
	wantCode(t, r, exitOK)
	cks := decodeJSON(t, r.stdout)["checkpoints"].([]any)
	if len(cks) != 2 || cks[1].(map[string]any)["step"] != "200" {
		t.Fatalf("json: %v", cks)
	}

	r = runAt(t, addr, "checkpoints", "list", "nope")
	wantCode(t, r, exitNotFound)

	// one being deleted: its step and status, no zeros that read as data
	f := newFakeCoordinator()
	f.checkpoints["moe-1"] = append(f.checkpoints["moe-1"], &apiv1.Checkpoint{JobId: "moe-1", Step: 30, Status: "deleting"})
	r = runAt(t, startFake(t, f), "checkpoints", "list", "moe-1")
	wantCode(t, r, exitOK)
	lines = strings.Split(strings.TrimSpace(r.stdout), "\n")
	if got := strings.Fields(lines[len(lines)-1]); !slices.Equal(got, []string{"30", "deleting", "-", "-", "-", "-", "-"}) {
		t.Fatalf("the deleting checkpoint's row: %q", got)
	}
}

func TestCheckpointsShow(t *testing.T) {
	addr := startFake(t, newFakeCoordinator())
	r := runAt(t, addr, "checkpoints", "show", "moe-1", "100")
	wantCode(t, r, exitOK)
	wantContains(t, r.stdout, "Step:       100", "Layout:     tp1 dp2 ep2",
		"rank-0.bin", "1.5 GiB", "aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11",
		"rank-1.bin", "bb22bb22")
	if strings.Contains(r.stdout, "Step:       200") {
		t.Fatalf("shows another step:\n%s", r.stdout)
	}

	r = runAt(t, addr, "checkpoints", "show", "moe-1", "100", "-o", "json")
	wantCode(t, r, exitOK)
	m := decodeJSON(t, r.stdout)
	sh := m["shards"].([]any)[0].(map[string]any)
	if m["step"] != "100" || sh["sha256"] == nil || sh["size"] != "1610612736" {
		t.Fatalf("json: %v", m)
	}

	r = runAt(t, addr, "checkpoints", "show", "moe-1", "150")
	wantCode(t, r, exitNotFound)
	wantContains(t, r.stderr, "no checkpoint at step 150")
}

func TestCheckpointsDelete(t *testing.T) {
	f := newFakeCoordinator()
	addr := startFake(t, f)
	r := runAt(t, addr, "checkpoints", "delete", "moe-1", "100")
	wantCode(t, r, exitOK)
	deleted := locked(f, func() []*apiv1.DeleteCheckpointRequest { return f.deleted })
	if len(deleted) != 1 || deleted[0].GetJobId() != "moe-1" || deleted[0].GetStep() != 100 {
		t.Fatalf("deleted %v", deleted)
	}
}
