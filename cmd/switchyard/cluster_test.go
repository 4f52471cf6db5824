package main

import (
	"strings"
	"testing"
)

func TestClusterStatus(t *testing.T) {
	addr := startFake(t, newFakeCoordinator())
	r := runAt(t, addr, "cluster", "status")
	wantCode(t, r, exitOK)
	wantContains(t, r.stdout,
		"Answered by: c2", "Leader:      c1", "term=7 commit_index=1234",
		"RAFT ADDRESS", "10.0.0.2:7401", "10.0.0.3:7400", "Follower",
		"HOST", "HEALTH", "gpu-01", "10.0.1.1:7500", "256.0 GiB", "allow_commands=true,gpu=h100,zone=eu-1", "moe-1/0 +2", "3/8", "cpu-07",
		"GPUs:", "NVIDIA H100 80GB HBM3", "GPU-5d1c0a7e", "79.6 GiB", "NV18 to 1-3,5; SYS to 4,7",
		"Paths jobs may use (storage_path, allowed_paths):", "/var/lib/switchyard, /data/corpora",
	)
	var c1, c3, wA, wIdle string
	for _, l := range strings.Split(r.stdout, "\n") {
		switch f := strings.Fields(l); {
		case len(f) > 0 && f[0] == "c1":
			c1 = strings.Join(f, " ")
		case len(f) > 0 && f[0] == "c3":
			c3 = strings.Join(f, " ")
		case len(f) > 0 && f[0] == "w-a" && wA == "": // the workers' table, not the paths
			wA = strings.Join(f, " ")
		case len(f) > 0 && f[0] == "w-idle":
			wIdle = strings.Join(f, " ")
		}
	}
	if c1 != "c1 10.0.0.1:7401 10.0.0.1:7400 * yes yes -" {
		t.Errorf("leader row %q", c1)
	}
	if c3 != "c3 10.0.0.3:7401 10.0.0.3:7400 yes no -" {
		t.Errorf("dead replica row %q", c3)
	}
	// w-a's answer has no health (an older coordinator): its healthy flag
	if wA != "w-a gpu-01 10.0.1.1:7500 32 256.0 GiB 8 3/8 allow_commands=true,gpu=h100,zone=eu-1 healthy moe-1/0 +2" {
		t.Errorf("busy worker row %q", wA)
	}
	if wIdle != "w-idle cpu-07 10.0.1.7:7500 16 64.0 GiB 0 0/1 - silent 4.2s -" {
		t.Errorf("idle worker row %q", wIdle)
	}

	r = runAt(t, addr, "cluster", "status", "-o", "json")
	wantCode(t, r, exitOK)
	m := decodeJSON(t, r.stdout)
	if m["answered_by"] != "c2" || m["leader_id"] != "c1" || len(m["replicas"].([]any)) != 3 {
		t.Fatalf("json: %v", m)
	}
	w := m["workers"].([]any)[0].(map[string]any)
	if w["resources"].(map[string]any)["cpu_cores"] != float64(32) || w["job_id"] != "moe-1" {
		t.Fatalf("json worker: %v", w)
	}
}

func TestClusterReplicas(t *testing.T) {
	addr := startFake(t, newFakeCoordinator())
	r := runAt(t, addr, "cluster", "add-replica", "c4", "10.0.0.4:7401")
	wantCode(t, r, exitOK)
	wantContains(t, r.stdout, "added replica c4", "10.0.0.4:7401")
	r = runAt(t, addr, "cluster", "remove-replica", "c3")
	wantCode(t, r, exitOK)
	if strings.Contains(r.stdout, "10.0.0.3") {
		t.Fatalf("removed replica still listed:\n%s", r.stdout)
	}
	r = runAt(t, addr, "cluster", "remove-replica", "c9")
	wantCode(t, r, exitNotFound)
	r = runAt(t, addr, "cluster", "add-replica", "c4")
	wantCode(t, r, exitUsage)
}
