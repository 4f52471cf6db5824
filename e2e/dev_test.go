package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDevCommand runs the README's main command, `switchyard dev`, with a
// small job: an in-process dev coordinator (embedded etcd and NATS), two
// workers whose ranks are real processes, the job to the end and its
// report.
func TestDevCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: not in -short")
	}
	dir := t.TempDir()
	spec := filepath.Join(dir, "job.yaml")
	if err := os.WriteFile(spec, []byte(jobSpec("e2e-dev", 40, 0, 10)), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	r := runCLI(ctx, nil, "dev", "--workers", "2", "--spec", spec, "--data-dir", filepath.Join(dir, "cluster"))
	if r.code != 0 {
		t.Fatalf("switchyard dev: exit %d\n%s\n%s", r.code, tail(r.stdout, 3000), tail(r.stderr, 3000))
	}
	for _, want := range []string{"SUCCEEDED", "submit to first step", "val bits/byte", "expert selection frequency", "report: "} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, tail(r.stdout, 3000))
		}
	}
	reports, _ := filepath.Glob(filepath.Join(dir, "cluster", "storage", "jobs", "*", "attempt-0", "rank-0", "report.json"))
	if len(reports) != 1 {
		t.Errorf("report.json files: %v", reports)
	}
}
