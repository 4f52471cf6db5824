package jobspec

import (
	"os"
	"strings"
	"testing"
)

const sweep = `name: lbl-sweep
base:
  model: {preset: science}
  data: {order: domain}
  accumulation: 4
  steps: 20
axes:
  lbl.mode: [micro, global]
  seed: [1, 2, 3]
`

func TestExperimentVariants(t *testing.T) {
	e, err := ParseExperiment([]byte(sweep))
	if err != nil {
		t.Fatal(err)
	}
	if len(e.Variants) != 6 || len(e.Axes) != 2 {
		t.Fatalf("%d variants over %d axes, want 6 over 2", len(e.Variants), len(e.Axes))
	}
	ids := map[string]bool{}
	for i, v := range e.Variants {
		mode, seed := []string{"micro", "global"}[i/3], int64(i%3+1)
		if v.Parsed.LBL.Mode != mode || v.Parsed.Seed != seed || v.Parsed.Name != "lbl-sweep" || v.Parsed.Data.Order != "domain" || v.Parsed.Model.Preset != "science" {
			t.Errorf("variant %d: mode %s seed %d name %s order %s preset %s", i, v.Parsed.LBL.Mode, v.Parsed.Seed, v.Parsed.Name, v.Parsed.Data.Order, v.Parsed.Model.Preset)
		}
		if err := ValidJobID(v.JobID); err != nil || !strings.HasPrefix(v.JobID, "lbl-sweep-0") || ids[v.JobID] {
			t.Errorf("variant %d: job id %q (%v)", i, v.JobID, err)
		}
		ids[v.JobID] = true
	}
	if got := e.Variants[4].Label(e.Axes, "seed"); got != "lbl.mode=global" {
		t.Errorf("label %q", got)
	}
	// the same file gives the same ids; another base, other ids
	again, _ := ParseExperiment([]byte(sweep))
	other, _ := ParseExperiment([]byte(strings.Replace(sweep, "steps: 20", "steps: 21", 1)))
	if again.Variants[5].JobID != e.Variants[5].JobID || other.Variants[5].JobID == e.Variants[5].JobID {
		t.Errorf("ids %s, again %s, changed base %s", e.Variants[5].JobID, again.Variants[5].JobID, other.Variants[5].JobID)
	}
}

func TestExperimentErrors(t *testing.T) {
	for _, tc := range []struct{ file, want string }{
		{"", "empty file"},
		{"name: Sweep\nbase: {}\naxes: {seed: [1]}\n", `name = "Sweep"`},
		{"name: s\nbase: [1]\naxes: {seed: [1]}\n", "base: want a job spec"},
		{"name: s\nbase: {name: x}\naxes: {seed: [1]}\n", "base.name: leave it out"},
		{"name: s\nbase: {}\n", "axes: want at least one"},
		{"name: s\nbase: {}\naxes: {seed: []}\n", "axes.seed: want a non-empty list"},
		{"name: s\nbase: {}\naxes: {seed: [[1]]}\n", "axes.seed: values must be scalars"},
		{"name: s\nbase: {}\naxes: {\"../x\": [1]}\n", `"../x" is not a spec path`},
		{"name: s\nbase: {model: tiny}\naxes: {model.dim: [64]}\n", "model is not a mapping"},
		{"name: s\nbase: {}\naxes: {lbl.mode: [micro, sideways]}\n", `variant 1 (lbl.mode=sideways): jobspec: lbl.mode = "sideways"`},
		{"name: s\nbase: {}\naxes: {seed: [1]}\nextra: 1\n", "field extra not found"},
		{"name: s\nbase: {}\naxes: {seed: [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16], lbl.coef: [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17]}\n", "more than 256 variants"},
	} {
		_, err := ParseExperiment([]byte(tc.file))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.file, err, tc.want)
		}
	}
}

// TestExperimentExample: the example in deploy/ expands into its 8 jobs.
func TestExperimentExample(t *testing.T) {
	raw, err := os.ReadFile("../../deploy/examples/experiment.yaml")
	if err != nil {
		t.Fatal(err)
	}
	e, err := ParseExperiment(raw)
	if err != nil {
		t.Fatal(err)
	}
	if len(e.Variants) != 8 || e.Variants[7].Parsed.LBL.Mode != "global" || e.Variants[7].Parsed.Data.Order != "shuffled" || e.Variants[7].Parsed.Seed != 2 {
		t.Fatalf("%d variants, the last %s", len(e.Variants), e.Variants[len(e.Variants)-1].Label(e.Axes))
	}
}
