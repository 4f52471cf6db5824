package jobspec

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/switchyard-ml/switchyard/internal/yamlcheck"
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
	var vals []string
	for i := range 100 {
		vals = append(vals, fmt.Sprint(i+1))
	}
	hundred := "[" + strings.Join(vals, ", ") + "]"
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
		{"name: s\nbase: {}\naxes: {seed: [1]}\nextra: 1\n", "experiment: extra (line 4): unknown key; the top level has axes, base, name, variants"},
		{"nmae: s\nbase: {}\naxes: {seed: [1]}\n", `experiment: nmae (line 1): unknown key; the top level has axes, base, name, variants; did you mean "name"?`},
		// a value of the wrong type: its line in the file, not in the variant
		{"name: s\nbase:\n  steps: 3\naxes:\n  lbl.mode: [micro, global]\n  seed:\n    - 1\n    - two\n", "experiment: axes.seed: line 8: cannot unmarshal !!str `two` into int64"},
		{"name: s\nbase: {steps: 3}\nvariants:\n  a: {seed: 1}\n  b:\n    lbl: {mode: global}\n    steps: many\n", "experiment: variants.b: line 7: cannot unmarshal !!str `many` into int"},
		{"name: s\nbase: {}\naxes: {seed: [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16], lbl.coef: [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17]}\n", "axes: 272 variants (16 x 17); the limit is 256"},
		{"name: s\nbase: {}\naxes: {seed: " + hundred + ", steps: " + hundred + "}\n", "axes: 10000 variants (100 x 100); the limit is 256"},
		// a variant setting an axis's field overrides the axis
		{"name: s\nbase: {}\naxes: {lbl.mode: [micro, global]}\nvariants:\n  b: {lbl: {coef: 0.1}}\n  a: {lbl: {mode: micro}}\n",
			"experiment: variants.a sets lbl.mode, which is an axis of 2 values: the variant would override them all"},
	} {
		_, err := ParseExperiment([]byte(tc.file))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.file, err, tc.want)
		}
	}
}

// TestExperimentUnknownKeys: an unknown key in base, an axis or a variant
// is named by its path and its line in the file, not as a key of the
// generated variant (whose lines are none of the file's).
func TestExperimentUnknownKeys(t *testing.T) {
	for _, tc := range []struct{ file, want string }{
		{"name: s\nbase: {}\naxes:\n  seed: [1, 2]\n  lbl.moed: [micro, global]\n",
			`experiment: axes.lbl.moed (line 5): unknown key; lbl has bias_rate, coef, layer_coef, micro_coef, mode, seq_coef, window, z_coef; did you mean "mode"?`},
		{"name: s\nbase: {}\naxes:\n  sed: [1, 2]\n", `experiment: axes.sed (line 4): unknown key; a job spec has accumulation, `},
		{"name: s\nbase: {}\naxes:\n  sed: [1, 2]\n", `; did you mean "seed"?`},
		{"name: s\nbase: {}\naxes:\n  parallel.pp.x: [1, 2]\n", `experiment: axes.parallel.pp (line 4): unknown key; parallel has balance, dp, ep, tp`},
		{"name: s\nbase:\n  steps: 3\n  lbl:\n    moed: micro\naxes: {seed: [1]}\n",
			`experiment: base.lbl.moed (line 5): unknown key; base.lbl has bias_rate, coef, layer_coef, micro_coef, mode, seq_coef, window, z_coef; did you mean "mode"?`},
		{"name: s\nbase:\n  stpes: 3\naxes: {seed: [1]}\n", `experiment: base.stpes (line 3): unknown key; base has accumulation, `},
		{"name: s\nbase: {}\nvariants:\n  a: {seed: 1}\n  b: {lbl: {mode: global, widnow: 2}}\n",
			`experiment: variants.b.lbl.widnow (line 5): unknown key; variants.b.lbl has bias_rate, coef, layer_coef, micro_coef, mode, seq_coef, window, z_coef; did you mean "window"?`},
	} {
		_, err := ParseExperiment([]byte(tc.file))
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "variant 0") {
			t.Errorf("%q:\n got %v\nwant %q", tc.file, err, tc.want)
		}
		var u *yamlcheck.UnknownKeyError
		if !errors.As(err, &u) {
			t.Errorf("%q: %v is no UnknownKeyError", tc.file, err)
		}
	}
	// a known path into a map takes any key
	if _, err := ParseExperiment([]byte("name: s\nbase: {}\naxes: {placement.host_labels.rack: [a, b]}\n")); err != nil {
		t.Errorf("an axis into a map: %v", err)
	}
}

// TestExperimentDuplicates: an axis that lists a value twice, or two
// variants that are the same job, are refused, naming them.
func TestExperimentDuplicates(t *testing.T) {
	for _, tc := range []struct{ file, want string }{
		{"name: s\nbase: {}\naxes: {seed: [1, 1]}\n", "experiment: axes.seed (line 3): 1 is a value twice (first on line 3): its variants would be the same job"},
		{"name: s\nbase: {}\naxes:\n  lbl.mode: [micro, global]\n  seed:\n    - 1\n    - 2\n    - 1.0\n", "experiment: axes.seed (line 8): 1.0 is a value twice (first on line 6)"},
		{"name: s\nbase: {}\naxes: {lbl.mode: [micro, \"micro\"]}\n", "experiment: axes.lbl.mode (line 3): micro is a value twice"},
		{"name: s\nbase: {}\naxes: {placement.host_labels.rack: [1, \"1\"]}\n", "experiment: variant 1 (placement.host_labels.rack=1) is variant 0 (placement.host_labels.rack=1) again: the same job spec"},
		{"name: s\nbase: {}\naxes: {seed: [1, 2]}\nvariants:\n  a: {lbl: {mode: micro}}\n  b: {lbl: {mode: micro}}\n", "experiment: variant 1 (seed=1 variant=b) is variant 0 (seed=1 variant=a) again: the same job spec"},
		{"name: s\nbase: {lbl: {mode: micro}}\nvariants:\n  a: {seed: 1}\n  b: {seed: 1}\n", "experiment: variant 1 (variant=b) is variant 0 (variant=a) again"},
		{"name: s\nbase: {}\nvariants:\n  a: {seed: 1}\n  a: {seed: 2}\n", "experiment: variants: a twice"},
	} {
		_, err := ParseExperiment([]byte(tc.file))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q:\n got %v\nwant %q", tc.file, err, tc.want)
		}
	}
	// values alike but for case are not the same
	if _, err := ParseExperiment([]byte("name: s\nbase: {}\naxes: {placement.host_labels.rack: [a, A]}\n")); err != nil {
		t.Errorf("a and A: %v", err)
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

const variantSweep = `name: balance
base:
  model: {preset: science}
  data: {order: domain}
  lbl: {coef: 0.02}
  micro_batch: 8
  accumulation: 16
  steps: 20
axes:
  seed: [1, 2]
  lbl.coef: [0.01]
variants:
  micro-8:    {lbl: {mode: micro}}
  global-32:  {lbl: {mode: global, window: 4}}
  global-128: {lbl: {mode: global, window: 0, coef: 0.03}}
  random-8:   {lbl: {mode: micro}, data: {order: domain_mixed}}
`

// TestExperimentNamedVariants: named variants are one more axis, last,
// crossed with the others; their fields merge into base and win over an
// axis's value.
func TestExperimentNamedVariants(t *testing.T) {
	e, err := ParseExperiment([]byte(variantSweep))
	if err != nil {
		t.Fatal(err)
	}
	if len(e.Variants) != 8 || len(e.Axes) != 3 || e.Axes[2].Path != VariantAxis {
		t.Fatalf("%d variants over %d axes, want 8 over 3 with the variants last", len(e.Variants), len(e.Axes))
	}
	type want struct {
		mode, order string
		window      int
		coef        float64
		balance     int
		random      bool
	}
	wants := []want{
		{"micro", "domain", 0, 0.01, 8, false},
		{"global", "domain", 4, 0.01, 32, false},
		{"global", "domain", 0, 0.03, 128, false},
		{"micro", "domain_mixed", 0, 0.01, 8, true},
	}
	for i, v := range e.Variants {
		w, p := wants[i%4], v.Parsed
		if p.LBL.Mode != w.mode || p.Data.Order != w.order || p.LBL.Window != w.window || p.LBL.Coef != w.coef ||
			p.Seed != int64(i/4+1) || p.Model.Preset != "science" || p.Accumulation != 16 {
			t.Errorf("variant %d (%s): mode %s order %s window %d coef %v seed %d", i, v.Label(e.Axes), p.LBL.Mode, p.Data.Order, p.LBL.Window, p.LBL.Coef, p.Seed)
		}
		if n, random := p.BalanceBatch(); n != w.balance || random != w.random {
			t.Errorf("variant %d (%s): balance batch %d random %v, want %d %v", i, v.Label(e.Axes), n, random, w.balance, w.random)
		}
	}
	if got := e.Variants[5].Label(e.Axes, "seed"); got != "lbl.coef=0.01 variant=global-32" {
		t.Errorf("label %q", got)
	}
	// the base is not changed by a variant's merge
	if e.Variants[4].Parsed.LBL.Coef != 0.01 || e.Variants[4].Parsed.Data.Order != "domain" {
		t.Errorf("variant 4 sees another variant's fields: %+v", e.Variants[4].Parsed.LBL)
	}
	// variants alone, without axes
	only, err := ParseExperiment([]byte("name: v\nbase: {model: {preset: tiny}}\nvariants:\n  a: {seed: 3}\n  b: {seed: 4}\n"))
	if err != nil || len(only.Variants) != 2 || only.Variants[1].Parsed.Seed != 4 || only.Variants[1].Label(only.Axes) != "variant=b" {
		t.Fatalf("variants alone: %v %+v", err, only)
	}
}

func TestExperimentVariantErrors(t *testing.T) {
	for _, tc := range []struct{ file, want string }{
		{"name: s\nbase: {}\nvariants: {}\n", "variants: want named overlays"},
		{"name: s\nbase: {}\nvariants: {A: {seed: 1}}\n", `variants: name "A"`},
		{"name: s\nbase: {}\nvariants: {a: 1}\n", "variants.a: want spec fields"},
		{"name: s\nbase: {}\nvariants: {a: {name: x}}\n", "variants.a.name: leave it out"},
		{"name: s\nbase: {model: tiny}\nvariants: {a: {model: {dim: 64}}}\n", "variants.a: model is not a mapping"},
		{"name: s\nbase: {}\nvariants: {a: {lbl: {window: 2, mode: micro}}}\n", "variant 0 (variant=a): jobspec: lbl.window"},
		{"name: s\nbase: {}\nvariants: {a: {data: {order: sideways}}}\n", `data.order = "sideways": must be "shuffled", "domain" or "domain_mixed"`},
		{"name: s\nbase: {}\naxes: {variant: [1]}\n", `"variant" is not a spec path`},
	} {
		_, err := ParseExperiment([]byte(tc.file))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.file, err, tc.want)
		}
	}
}

// TestBalanceSweepExample: the balance-batch sweep in deploy/ is 4
// variants x 2 seeds with the global batch fixed at 128 sequences and
// balance batches 8, 32, 128 and 8 at random.
func TestBalanceSweepExample(t *testing.T) {
	raw, err := os.ReadFile("../../deploy/examples/experiment-balance-sweep.yaml")
	if err != nil {
		t.Fatal(err)
	}
	e, err := ParseExperiment(raw)
	if err != nil {
		t.Fatal(err)
	}
	if len(e.Variants) != 8 {
		t.Fatalf("%d variants, want 8", len(e.Variants))
	}
	want := []struct {
		n      int
		random bool
	}{{8, false}, {32, false}, {128, false}, {8, true}}
	for i, v := range e.Variants {
		p := v.Parsed
		n, random := p.BalanceBatch()
		if p.MicroBatch*p.Accumulation != 128 || n != want[i%4].n || random != want[i%4].random || p.Seed != int64(i/4+1) {
			t.Errorf("variant %d (%s): global batch %d, balance batch %d random %v", i, v.Label(e.Axes), p.MicroBatch*p.Accumulation, n, random)
		}
	}
}

// TestAliasesExpandBounded: a spec or an experiment whose aliases expand
// it past twice MaxSize is refused before it is decoded (800 KiB of
// "args: [&a <4000 bytes>, *a, ...]" was a spec of 200000 arguments,
// 800 MB in each rank's run.yaml; the same base in an experiment was
// encoded whole for each variant).
func TestAliasesExpandBounded(t *testing.T) {
	args := "[&a " + strings.Repeat("x", 4000) + strings.Repeat(", *a", 200000) + "]"
	_, err := Parse([]byte("name: a\nruntime: command\ncommand: t\nargs: " + args + "\n"))
	if !errors.Is(err, ErrSyntax) || !strings.Contains(err.Error(), "aliases") {
		t.Fatalf("spec: got %v, want refused for its aliases", err)
	}
	_, err = ParseExperiment([]byte("name: e\nbase: {runtime: command, command: t, args: " + args + "}\naxes: {ranks: [1, 2]}\n"))
	if !errors.Is(err, ErrSyntax) || !strings.Contains(err.Error(), "aliases") {
		t.Fatalf("experiment: got %v, want refused for its aliases", err)
	}
	// a few aliases are fine
	if _, err := Parse([]byte("name: a\nruntime: command\ncommand: t\nargs: [&a x, *a, *a]\n")); err != nil {
		t.Fatal(err)
	}
	// an anchor that holds itself ends the count
	if _, err := Parse([]byte("name: a\nargs: &a [*a]\n")); err == nil {
		t.Fatal("a recursive alias accepted")
	}
}

// TestExperimentBytesBounded: a file within MaxSize cannot expand into
// more than MaxExperimentBytes of specs (it made 256 specs of nearly
// MaxSize each, all submitted).
func TestExperimentBytesBounded(t *testing.T) {
	raw := "name: e\nbase: {runtime: command, command: t, args: [" + strings.Repeat("x", MaxSize-200) + "]}\naxes: {ranks: [1, 2, 3, 4, 5]}\n"
	_, err := ParseExperiment([]byte(raw))
	if err == nil || !strings.Contains(err.Error(), "together") {
		t.Fatalf("got %v, want refused for its specs' bytes together", err)
	}
}
