package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/jobspec"
	"github.com/switchyard-ml/switchyard/pkg/train"
	coordinatorv1 "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

const testExperiment = `name: sweep
base:
  model: {preset: science}
  data: {order: domain}
  accumulation: 4
  steps: 10
axes:
  lbl.mode: [micro, global]
  seed: [1, 2]
`

// TestExperimentSubmitAndReport: the axes become four jobs with ids from
// the file; the report reads rank 0's reports and summarises over seeds.
// TestExperimentSubmitAfterDelete: a variant whose job was deleted cannot
// be submitted again under its ID, and the error says how to run the
// experiment again.
func TestExperimentSubmitAfterDelete(t *testing.T) {
	f, addr, _, exp, e := experimentSetup(t)
	wantCode(t, runAt(t, addr, "experiment", "submit", exp), exitOK)
	f.mu.Lock()
	f.jobs[e.Variants[0].JobID].State = coordinatorv1.JobState_JOB_STATE_CANCELLED
	f.mu.Unlock()
	wantCode(t, runAt(t, addr, "job", "delete", e.Variants[0].JobID), exitOK)
	r := runAt(t, addr, "experiment", "submit", exp)
	if r.code == exitOK {
		t.Fatal("submitted a variant whose job was deleted")
	}
	wantContains(t, r.stderr, "is the ID of a deleted job", "name the experiment anew to run it again")
}

func TestExperimentSubmitAndReport(t *testing.T) {
	f, addr, dir, exp, e := experimentSetup(t)
	r := runCmd(t, false, "experiment", "submit", exp, "--dry-run")
	wantCode(t, r, exitOK)
	wantContains(t, r.stdout, e.Variants[0].JobID, "lbl.mode=global seed=2")
	if len(f.submitted) != 0 {
		t.Fatal("--dry-run submitted")
	}
	r = runAt(t, addr, "experiment", "submit", exp)
	wantCode(t, r, exitOK)
	if len(f.submitted) != 4 || f.submitted[3].GetJobId() != e.Variants[3].JobID || !strings.Contains(string(f.submitted[3].GetSpec()), "mode: global") {
		t.Fatalf("submitted %v", f.submitted)
	}
	// reports for the two micro runs and one global run
	storage := filepath.Join(dir, "storage")
	for i, bpb := range map[int][2]float64{0: {2.0, 3.0}, 1: {2.2, 3.2}, 2: {1.5, 2.5}} {
		v := e.Variants[i]
		f.mu.Lock()
		f.jobs[v.JobID].State = coordinatorv1.JobState_JOB_STATE_SUCCEEDED
		f.mu.Unlock()
		rep := train.Report{MeanTopShare: 0.1 * float64(i+1), MaxLoad: 0.05, Tokens: 1000,
			Domains: []train.DomainReport{{Domain: "code", BitsPerByte: bpb[0]}, {Domain: "english", BitsPerByte: bpb[1]}},
			// run 2 routes the domains to disjoint experts (1 bit), the others alike (0)
			Experts: []train.Specialisation{{Layer: 0, Domain: "code", Frequency: []float64{0.5, 0.5}}, {Layer: 0, Domain: "english", Frequency: []float64{0.5, 0.5}}}}
		if i == 2 {
			rep.Experts[0].Frequency, rep.Experts[1].Frequency = []float64{1, 0}, []float64{0, 1}
		}
		raw, _ := json.Marshal(rep)
		p := filepath.Join(storage, "jobs", v.JobID, "attempt-0", "rank-0", "report.json")
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, raw, 0o644); err != nil {
			t.Fatal(err)
		}
		if i == 0 { // 20 steps of loss = step: the last tenth is steps 19 and 20
			var lines []string
			for s := 1; s <= 20; s++ {
				lines = append(lines, fmt.Sprintf(`{"step":%d,"loss":%d}`, s, s))
			}
			if err := os.WriteFile(filepath.Join(filepath.Dir(p), "metrics.jsonl"), []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	r = runAt(t, addr, "experiment", "report", exp, "--storage", storage)
	wantCode(t, r, exitOK)
	// micro: mean over domains 2.5 and 2.7 -> 2.6 ± 0.1414
	wantContains(t, r.stdout, "lbl.mode=micro   8        2", "2.6000 ± 0.1414", "0.1500 ± 0.0707", "lbl.mode=global  32       1 of 2", "2.0000 (n=1)", "LAYER 0 MI", "paired by seed against lbl.mode=micro", "-0.5000 (n=1)",
		"no report yet at "+filepath.Join(storage, "jobs", e.Variants[3].JobID), "code", "english")
	r = runAt(t, addr, "experiment", "report", exp, "--storage", storage, "-o", "json")
	wantCode(t, r, exitOK)
	var out struct {
		Variants []variantResult `json:"variants"`
		Groups   []groupSummary  `json:"groups"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil || len(out.Groups) != 2 || out.Groups[0].Runs != 2 || out.Groups[0].Domains["english"].Mean != 3.1 {
		t.Fatalf("json report %v: %s", err, r.stdout)
	}
	if g := out.Groups; g[0].Balance != 8 || g[1].Balance != 32 || g[0].Random || g[0].MI.Mean != 0 || g[1].MI.Mean != 1 || len(g[1].LayerMI) != 1 {
		t.Errorf("balance batches %d, %d; MI %v, %v (want 8, 32; 0, 1 bit)", g[0].Balance, g[1].Balance, g[0].MI, g[1].MI)
	}
	// paired by seed: global seed 1 (mean 2.0) against micro seed 1 (2.5)
	if d := out.Groups[1].DeltaBPB; d.N != 1 || math.Abs(d.Mean+0.5) > 1e-12 || out.Groups[1].DeltaLate.N != 0 || out.Groups[0].DeltaBPB.N != 0 {
		t.Errorf("paired differences %v, late %v; the first's %v", d, out.Groups[1].DeltaLate, out.Groups[0].DeltaBPB)
	}
	if v := out.Variants; v[0].LateLoss == nil || *v[0].LateLoss != 19.5 || v[1].LateLoss != nil || out.Groups[0].LateLoss.N != 1 {
		t.Errorf("late loss %v, %v; group %v (want 19.5 from steps 19 and 20, none without metrics)", v[0].LateLoss, v[1].LateLoss, out.Groups[0].LateLoss)
	}
	// a job the experiment names but nobody submitted
	delete(f.jobs, e.Variants[3].JobID)
	r = runAt(t, addr, "experiment", "report", exp)
	wantCode(t, r, exitOK)
	wantContains(t, r.stdout, "NOT SUBMITTED", "no --storage given")
	r = runCmd(t, false, "experiment", "submit", filepath.Join(dir, "missing.yaml"))
	wantCode(t, r, exitUsage)
}

// TestExperimentReportHonest: a variant whose seeds have not all
// reported says how many did, one run shows no "± 0", a job that ended
// without a report says how it ended (a succeeded one points at
// --storage), and runs of unequal tokens or without seeds are warned of.
func TestExperimentReportHonest(t *testing.T) {
	f, addr, dir, exp, e := experimentSetup(t)
	wantCode(t, runAt(t, addr, "experiment", "submit", exp), exitOK)
	storage := filepath.Join(dir, "storage")
	f.mu.Lock()
	for i, st := range []coordinatorv1.JobState{coordinatorv1.JobState_JOB_STATE_SUCCEEDED, coordinatorv1.JobState_JOB_STATE_SUCCEEDED,
		coordinatorv1.JobState_JOB_STATE_FAILED, coordinatorv1.JobState_JOB_STATE_SUCCEEDED} {
		f.jobs[e.Variants[i].JobID].State = st
	}
	f.jobs[e.Variants[2].JobID].Reason, f.jobs[e.Variants[2].JobID].Message = "OutOfMemory", "rank 0 used 3000 MiB"
	f.mu.Unlock()
	// reports of micro seed 1 (variant 0) and global seed 2 (variant 3), of unequal tokens
	for i, tokens := range map[int]int64{0: 1000, 3: 2000} {
		raw, _ := json.Marshal(train.Report{Tokens: tokens, Domains: []train.DomainReport{{Domain: "code", BitsPerByte: 2}}})
		p := filepath.Join(storage, "jobs", e.Variants[i].JobID, "attempt-0", "rank-0", "report.json")
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, raw, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r := runAt(t, addr, "experiment", "report", exp, "--storage", storage)
	wantCode(t, r, exitOK)
	wantContains(t, r.stdout, "lbl.mode=micro   8        1 of 2", "lbl.mode=global  32       1 of 2", "2.0000 (n=1)",
		"no report at "+filepath.Join(storage, "jobs", e.Variants[1].JobID), "(the job succeeded: is --storage the workers' storage_path?)",
		"no report: failed (OutOfMemory: rank 0 used 3000 MiB)",
		"warning: 2 of 4 jobs have no report", "warning: the runs trained on different numbers of tokens (1000 to 2000)",
		"warning: 2 of 2 variants have one run with a report")
	if strings.Contains(r.stdout, "± 0.0000") || strings.Contains(r.stdout, "no report yet") {
		t.Errorf("a spread of one run, or a finished job's report still to come:\n%s", r.stdout)
	}
	r = runAt(t, addr, "experiment", "report", exp, "--storage", storage, "-o", "json")
	wantCode(t, r, exitOK)
	var out struct {
		Groups   []groupSummary `json:"groups"`
		Warnings []string       `json:"warnings"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil || len(out.Warnings) != 3 || out.Groups[0].Jobs != 2 || out.Groups[0].Runs != 1 {
		t.Fatalf("json report %v: %s", err, r.stdout)
	}
}

// TestExperimentFileErrors: a key typo in an axis names the axis and its
// line in the file (not a line of a generated variant), and an axis that
// lists a value twice is refused; both before anything is submitted.
func TestExperimentFileErrors(t *testing.T) {
	dir := t.TempDir()
	for name, tc := range map[string]struct{ file, want string }{
		"typo.yaml": {strings.Replace(testExperiment, "lbl.mode:", "lbl.moed:", 1),
			`typo.yaml: experiment: axes.lbl.moed (line 8): unknown key; lbl has bias_rate, coef, layer_coef, micro_coef, mode, seq_coef, window, z_coef; did you mean "mode"?`},
		"twice.yaml": {strings.Replace(testExperiment, "seed: [1, 2]", "seed: [1, 2, 1]", 1),
			"twice.yaml: experiment: axes.seed (line 9): 1 is a value twice (first on line 9): its variants would be the same job"},
	} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(tc.file), 0o644); err != nil {
			t.Fatal(err)
		}
		r := runCmd(t, false, "experiment", "submit", p, "--dry-run")
		wantCode(t, r, exitUsage)
		wantContains(t, r.stderr, tc.want)
		if strings.Contains(r.stderr, "variant 0") || strings.Contains(r.stderr, "jobspec.") {
			t.Errorf("%s: %s", name, r.stderr)
		}
	}
}

// experimentSetup is a fake coordinator, a directory holding
// testExperiment as exp.yaml, and the experiment parsed.
func experimentSetup(t *testing.T) (f *fakeCoordinator, addr, dir, exp string, e *jobspec.Experiment) {
	t.Helper()
	f = newFakeCoordinator()
	addr = startFake(t, f)
	dir = t.TempDir()
	exp = filepath.Join(dir, "exp.yaml")
	if err := os.WriteFile(exp, []byte(testExperiment), 0o644); err != nil {
		t.Fatal(err)
	}
	e, err := jobspec.ParseExperiment([]byte(testExperiment))
	if err != nil {
		t.Fatal(err)
	}
	return f, addr, dir, exp, e
}
