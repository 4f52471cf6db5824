package main

import (
	"encoding/json"
	"image/png"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/train"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	coordinatorv1 "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// wantPNGs checks that each name.png in dir decodes and name.svg exists.
func wantPNGs(t *testing.T, dir string, names ...string) {
	t.Helper()
	for _, n := range names {
		f, err := os.Open(filepath.Join(dir, n+".png"))
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(f)
		f.Close()
		if err != nil {
			t.Fatalf("%s.png: %v", n, err)
		}
		if b := img.Bounds(); b.Dx() < 400 || b.Dy() < 300 {
			t.Fatalf("%s.png is %v", n, b)
		}
		if _, err := os.Stat(filepath.Join(dir, n+".svg")); err != nil {
			t.Fatal(err)
		}
	}
}

func TestTrainPlots(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "run.yaml")
	if err := os.WriteFile(cfg, []byte(smallRunYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	r := runCmd(t, false, "train", "--config", cfg, "--steps", "4", "--warmup", "1", "--out", out, "--plots")
	wantCode(t, r, exitOK)
	// smallRunYAML: 2 MoE layers
	wantPNGs(t, out, "loss", "lbl", "tokens_per_s", "expert_load_layer0", "expert_load_layer1", "specialisation_layer0", "specialisation_layer1")

	r = runCmd(t, false, "train", "--config", cfg, "--steps", "4", "--plots")
	wantCode(t, r, exitUsage)
	wantContains(t, r.stderr, "--plots needs --out DIR")
}

func TestJobPlot(t *testing.T) {
	f := newFakeCoordinator()
	script := watchScript(coordinatorv1.JobState_JOB_STATE_RUNNING, "", "")[:3] // the record, steps 10 and 20
	script = append(script, &apiv1.WatchJobResponse{Replayed: true},
		&apiv1.WatchJobResponse{Metrics: &apiv1.StepMetrics{Step: 30, Loss: 4}}) // live: not waited for
	f.watch["moe-1"] = script
	addr := startFake(t, f)
	dir := t.TempDir()
	out := filepath.Join(dir, "plots")
	r := runAt(t, addr, "job", "plot", "moe-1", "--out", out)
	wantCode(t, r, exitOK)
	wantPNGs(t, out, "loss", "lbl", "tokens_per_s", "expert_load_layer0", "expert_load_layer1")
	wantContains(t, r.stdout, filepath.Join(out, "loss.png"), filepath.Join(out, "expert_load_layer1.svg"))
	wantContains(t, r.stderr, "job moe-1 (RUNNING): 2 steps of rank 0's metrics, up to step 20", "add --storage DIR")
	if rep := locked(f, func() []bool { return f.watchReplay }); !slices.Equal(rep, []bool{true}) {
		t.Fatalf("WatchJob replay flags %v, want [true]", rep)
	}

	// a --storage that is not there is named, not read as "no report yet"
	r = runAt(t, addr, "job", "plot", "moe-1", "--out", out, "--storage", filepath.Join(dir, "nowhere"))
	wantCode(t, r, exitUsage)
	wantContains(t, r.stderr, "--storage "+filepath.Join(dir, "nowhere")+": no such file or directory")

	// With the workers' storage: rank 0's report gives the heat maps of
	// domain x expert.
	storage := filepath.Join(dir, "storage")
	rep := train.Report{Experts: []train.Specialisation{
		{Layer: 0, Domain: "code", Frequency: []float64{0.7, 0.1, 0.1, 0.1}},
		{Layer: 0, Domain: "prose", Frequency: []float64{0.1, 0.1, 0.1, 0.7}},
	}}
	writeJSON(t, filepath.Join(storage, "jobs", "moe-1", "attempt-0", "rank-0", "report.json"), rep)
	r = runAt(t, addr, "job", "plot", "moe-1", "--out", out, "--storage", storage)
	wantCode(t, r, exitOK)
	wantPNGs(t, out, "specialisation_layer0")
	if strings.Contains(r.stderr, "--storage") {
		t.Fatalf("a note about --storage although it was given:\n%s", r.stderr)
	}

	r = runAt(t, addr, "job", "plot", "moe-1")
	wantCode(t, r, exitUsage)
	wantContains(t, r.stderr, "--out DIR is required")
	r = runAt(t, addr, "job", "plot", "nope", "--out", out)
	wantCode(t, r, exitNotFound)
	// a job with no metrics yet
	f.watch["queued"] = []*apiv1.WatchJobResponse{{Job: f.jobs["queued"]}, {Replayed: true}}
	r = runAt(t, addr, "job", "plot", "queued", "--out", out)
	wantCode(t, r, exitFailure)
	wantContains(t, r.stderr, "no step metrics yet (the job is PENDING)")
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		t.Fatal(err)
	}
}

// experiment report --plots: the variants (less their seed) side by side
// from rank 0's metrics.jsonl and report.json under the storage.
func TestExperimentReportPlots(t *testing.T) {
	_, addr, dir, exp, e := experimentSetup(t)
	wantCode(t, runAt(t, addr, "experiment", "submit", exp), exitOK)
	storage := filepath.Join(dir, "storage")
	for i, v := range e.Variants[:3] { // the fourth has not run
		run := filepath.Join(storage, "jobs", v.JobID, "attempt-0", "rank-0")
		writeJSON(t, filepath.Join(run, "report.json"), train.Report{Domains: []train.DomainReport{
			{Domain: "code", BitsPerByte: 2 + 0.1*float64(i)}, {Domain: "english", BitsPerByte: 3 - 0.1*float64(i)}}})
		var lines []string
		for s := 1; s <= 10; s++ {
			raw, _ := json.Marshal(train.StepMetrics{Step: s, Loss: 5 - 0.1*float64(s*(i+1)), ExpertLoad: [][]float64{{0.5, 0.5}}})
			lines = append(lines, string(raw))
		}
		if err := os.WriteFile(filepath.Join(run, "metrics.jsonl"), []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	plotDir := filepath.Join(dir, "plots")
	r := runAt(t, addr, "experiment", "report", exp, "--storage", storage, "--plots", plotDir)
	wantCode(t, r, exitOK)
	wantPNGs(t, plotDir, "compare_loss", "compare_val_bpb")
	wantContains(t, r.stdout, "plots:", filepath.Join(plotDir, "compare_val_bpb.svg"))

	r = runAt(t, addr, "experiment", "report", exp, "--plots", plotDir)
	wantCode(t, r, exitUsage)
	wantContains(t, r.stderr, "--plots needs --storage")
}

// TestTrainRefusesBadCounts: a count given as 0 or less, a time box that
// is not positive, a parallel degree or an unknown balance group in one
// process are refused naming the flag (before, 0 meant "not given" and
// the others were ignored).
func TestTrainRefusesBadCounts(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--steps", "0"}, "--steps 0: must be >= 1"},
		{[]string{"--accum", "0"}, "--accum 0: must be >= 1"},
		{[]string{"--micro-batch", "-2"}, "--micro-batch -2: must be >= 1"},
		{[]string{"--max-time", "-5m"}, "--max-time -5m0s: must be > 0"},
		{[]string{"--tp", "2"}, "one process (--world 1) runs without parallelism"},
		{[]string{"--balance", "foo"}, `--balance "foo" is not one of dp, node, none`},
	} {
		r := runCmd(t, false, append([]string{"train", "--preset", "tiny"}, tc.args...)...)
		wantCode(t, r, exitUsage)
		wantContains(t, r.stderr, tc.want)
	}
}
