package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/jobspec"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

const e2eExperiment = `name: e2e-exp
base:
  model: {preset: tiny, dim: 64, layers: 2, heads: 2, experts: 4, top_k: 2, hidden: 64, seq_len: 64}
  data: {corpus: demo, demo_bytes: 131072, eval_seqs: 4, order: domain}
  micro_batch: 4
  accumulation: 4
  steps: 12
  eval_every: 6
  resources: {cpu_cores: 1, memory_mib: 512}
axes:
  seed: [3]
variants:
  micro-4:   {lbl: {mode: micro}}
  global-16: {lbl: {mode: global}}
  random-4:  {lbl: {mode: micro}, data: {order: domain_mixed}}
`

// TestExperimentOnCluster: an experiment of named variants (the
// micro-batch LBL, the global LBL, the random-subset control) runs as
// ordinary jobs on a real cluster, and its report compares them: the
// balance batch of each, validation bits/byte, the domain-expert mutual
// information, the late training loss, and the pictures.
func TestExperimentOnCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: not in -short")
	}
	c := startCluster(t, 1, "w1", "w2")
	exp := filepath.Join(c.dir, "exp.yaml")
	if err := os.WriteFile(exp, []byte(e2eExperiment), 0o644); err != nil {
		t.Fatal(err)
	}
	e, err := jobspec.ParseExperiment([]byte(e2eExperiment))
	if err != nil {
		t.Fatal(err)
	}
	r := c.mustCLI("experiment", "submit", exp)
	for _, v := range e.Variants {
		if !strings.Contains(r.stdout, v.JobID) {
			t.Fatalf("submit output lacks %s:\n%s", v.JobID, r.stdout)
		}
	}
	for _, v := range e.Variants {
		j := c.waitJob(v.JobID, 3*time.Minute, "succeeded", func(j *pb.Job) bool {
			return j.State != pb.JobState_JOB_STATE_PENDING && j.State != pb.JobState_JOB_STATE_PLACED && j.State != pb.JobState_JOB_STATE_RUNNING
		})
		if j.State != pb.JobState_JOB_STATE_SUCCEEDED || j.Progress.GetStep() != 12 {
			t.Fatalf("%s (%s): %s at step %d: %s", v.JobID, v.Label(e.Axes), j.State, j.Progress.GetStep(), j.Message)
		}
	}
	plots := filepath.Join(c.dir, "plots")
	r = c.mustCLI("experiment", "report", exp, "--storage", c.storage, "--plots", plots, "-o", "json")
	var out struct {
		Variants []struct {
			JobID    string   `json:"job_id"`
			LateLoss *float64 `json:"late_train_loss"`
		} `json:"variants"`
		Groups []struct {
			Variant string  `json:"variant"`
			Balance int     `json:"balance_batch"`
			Random  bool    `json:"balance_random"`
			Runs    int     `json:"runs"`
			BPB     meanSDJ `json:"val_bits_per_byte"`
			MI      meanSDJ `json:"domain_expert_mi_bits"`
			Layers  []any   `json:"layer_mi_bits"`
			Late    meanSDJ `json:"late_train_loss"`
		} `json:"groups"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("report: %v\n%s", err, r.stdout)
	}
	want := []struct {
		variant string
		balance int
		random  bool
	}{{"variant=micro-4", 4, false}, {"variant=global-16", 16, false}, {"variant=random-4", 4, true}}
	if len(out.Groups) != len(want) {
		t.Fatalf("%d groups, want %d:\n%s", len(out.Groups), len(want), r.stdout)
	}
	for i, g := range out.Groups {
		w := want[i]
		if g.Variant != w.variant || g.Balance != w.balance || g.Random != w.random || g.Runs != 1 {
			t.Errorf("group %d: %s balance %d random %v runs %d, want %s %d %v 1", i, g.Variant, g.Balance, g.Random, g.Runs, w.variant, w.balance, w.random)
		}
		// tiny runs: learning has started (a byte costs 8 bits untrained)
		if !(g.BPB.Mean > 1 && g.BPB.Mean < 8) || !(g.MI.Mean >= 0 && g.MI.Mean <= 2) || len(g.Layers) != 2 || !(g.Late.Mean > 0) || g.Late.N != 1 {
			t.Errorf("group %s: val bpb %v, MI %v over %d layers, late loss %v", g.Variant, g.BPB, g.MI, len(g.Layers), g.Late)
		}
	}
	for _, name := range []string{"compare_loss", "compare_loss_delta", "compare_val_curve", "compare_val_bpb", "compare_experts_layer0", "compare_experts_layer1", "compare_balance_bpb", "compare_balance_mi"} {
		if st, err := os.Stat(filepath.Join(plots, name+".png")); err != nil || st.Size() < 1000 {
			t.Errorf("%s.png: %v", name, err)
		}
	}
	// the control's rank ran the domain_mixed order
	runYAML, err := os.ReadFile(filepath.Join(c.storage, "jobs", e.Variants[2].JobID, "attempt-0", "rank-0", "run.yaml"))
	if err != nil || !strings.Contains(string(runYAML), "order: domain_mixed") {
		t.Errorf("the control's run.yaml (%v):\n%s", err, runYAML)
	}
}

type meanSDJ struct {
	N    int     `json:"n"`
	Mean float64 `json:"mean"`
	SD   float64 `json:"sd"`
}
