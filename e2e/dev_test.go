package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
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
	// a corpus of two domains outside the cluster's storage, which the dev
	// workers may read because the spec given to dev names it (no
	// --allow-path needed)
	corpora := filepath.Join(dir, "corpora")
	if err := os.MkdirAll(corpora, 0o755); err != nil {
		t.Fatal(err)
	}
	var lines []string
	for i := range 120 {
		lines = append(lines, fmt.Sprintf(`{"domain": "sums", "text": "%d + %d = %d; %d * 3 = %d. "}`, i, 2*i, 3*i, i, 3*i),
			fmt.Sprintf(`{"domain": "words", "text": "the %s fox number %d jumps over the lazy dog again and again. "}`, []string{"quick", "brown", "red"}[i%3], i))
	}
	corpus := filepath.Join(corpora, "tiny.jsonl")
	if err := os.WriteFile(corpus, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	spec := filepath.Join(dir, "job.yaml")
	job := strings.Replace(jobSpec("e2e-dev", 40, 0, 10), "corpus: demo, demo_bytes: 131072", "corpus: "+corpus, 1)
	if err := os.WriteFile(spec, []byte(job), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	r := runCLI(ctx, nil, "dev", "--workers", "2", "--spec", spec, "--data-dir", filepath.Join(dir, "cluster"))
	if r.code != 0 {
		t.Fatalf("switchyard dev: exit %d\n%s\n%s", r.code, tail(r.stdout, 3000), tail(r.stderr, 3000))
	}
	for _, want := range []string{"SUCCEEDED", "submit to first step", "val bits/byte", "expert selection frequency", "report: ", "sums", "words"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, tail(r.stdout, 3000))
		}
	}
	reports, _ := filepath.Glob(filepath.Join(dir, "cluster", "storage", "jobs", "*", "attempt-0", "rank-0", "report.json"))
	if len(reports) != 1 {
		t.Errorf("report.json files: %v", reports)
	}
}

// TestDevNoJob: `switchyard dev --no-job` starts the cluster and submits
// nothing; a job submitted to it afterwards runs, and Ctrl-C (SIGINT)
// stops it cleanly.
func TestDevNoJob(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: not in -short")
	}
	dir := t.TempDir()
	p := start(t, "dev", nil, bins.switchyard, "dev", "--no-job", "--workers", "1", "--data-dir", filepath.Join(dir, "cluster"))
	var addr string
	eventually(t, 60*time.Second, "the dev cluster's address", func() error {
		out := p.out.String()
		i := strings.Index(out, "switchyard job submit SPEC.yaml --coordinator ")
		if i < 0 || p.exited() {
			return fmt.Errorf("not yet (exited %v)", p.exited())
		}
		addr = strings.Fields(out[i+len("switchyard job submit SPEC.yaml --coordinator "):])[0]
		return nil
	})
	env := []string{"SWITCHYARD_COORDINATOR=" + addr}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if r := runCLI(ctx, env, "job", "list"); r.code != 0 || strings.Contains(r.stdout, "demo") {
		t.Fatalf("job list: exit %d, a job was submitted:\n%s%s", r.code, r.stdout, r.stderr)
	}
	spec := filepath.Join(dir, "job.yaml")
	job := strings.Replace(jobSpec("e2e-nojob", 6, 0, 0), "parallel: {dp: 2, ep: 2}", "parallel: {dp: 1}", 1)
	if err := os.WriteFile(spec, []byte(job), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := runCLI(ctx, env, "job", "submit", spec, "--watch"); r.code != 0 || !strings.Contains(r.stdout+r.stderr, "SUCCEEDED") {
		t.Fatalf("job submit --watch: exit %d\n%s%s", r.code, tail(r.stdout, 2000), tail(r.stderr, 2000))
	}
	p.signal(syscall.SIGINT)
	select {
	case <-p.done:
		if p.err != nil {
			t.Errorf("dev after Ctrl-C: %v", p.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("dev did not stop on Ctrl-C")
	}
}
