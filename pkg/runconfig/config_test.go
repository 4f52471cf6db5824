package runconfig

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/switchyard-ml/switchyard/internal/yamlcheck"
)

func TestConfigErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"preset: huge", "preset"},
		{"preset: tiny\nlbl: {mode: sideways}", "lbl.mode"},
		{"preset: tiny\nsteps: -3", "steps"},
		{"preset: tiny\nmicro_batch: -1", "micro_batch"},
		{"preset: tiny\nmodel: {heads: 3}", "train: invalid config: model.heads = 3: "},
		{"preset: tiny\nstepz: 3", "stepz"},
		{"preset: tiny\noptim: {lr: -1}", "train: invalid config: optim.lr = -1: must be a positive number"},
		{"preset: tiny\nlbl: {layer_coef: [1, 2]}", "lbl.layer_coef"},
		{"preset: tiny\ndata: {val_fraction: 0.9}", "data.val_fraction"},
		{"preset: tiny\nmax_seconds: -1", "max_seconds"},
		{"preset: tiny\nmax_seconds: .nan", "max_seconds"},
		// NaN passes every comparison: each number must be finite
		{"preset: tiny\nlbl: {coef: .nan}", "lbl.coef = NaN"},
		{"preset: tiny\nlbl: {z_coef: .inf}", "lbl.z_coef = +Inf"},
		{"preset: tiny\nlbl: {layer_coef: [1, 1, .nan, 1]}", "lbl.layer_coef[2] = NaN"},
		{"preset: tiny\nlbl: {layer_coef: [1, 1, 1, -1]}", "lbl.layer_coef[3] = -1"},
		{"preset: tiny\ndata: {val_fraction: .nan}", "data.val_fraction"},
		{"preset: tiny\ncheckpoint: {every_minutes: .inf}", "checkpoint.every_minutes"},
		{"preset: tiny\nmodel: {capacity_factor: .nan}", "model.capacity_factor = NaN"},
		{"preset: tiny\nmodel: {init_std: .inf}", "model.init_std = +Inf"},
		{"preset: tiny\noptim: {min_lr: .nan}", "optim.min_lr = NaN"},
		{"preset: tiny\noptim: {beta2: .nan}", "optim.beta2 = NaN"},
		{"preset: tiny\noptim: {eps: .inf}", "optim.eps = +Inf"},
		{"preset: tiny\noptim: {weight_decay: .nan}", "optim.weight_decay = NaN"},
		{"preset: tiny\noptim: {clip_norm: .inf}", "optim.clip_norm = +Inf"},
		{"preset: tiny\ndevice: cuda\ncollectives: mpi", `collectives = mpi: must be "auto", "nccl" or "host"`},
		{"preset: tiny\ncollectives: host", `collectives = host: chooses the GPU ranks' collectives: needs device cuda`},
		{"preset: tiny\ndevice: cuda\nrecompute: everything", `recompute = everything: must be "none" or "attention"`},
		{"preset: tiny\nrecompute: attention", `recompute = attention: is the GPU engine's (device cuda)`},
	} {
		_, err := Parse([]byte(tc.yaml))
		if err == nil || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want an error naming %q", tc.yaml, err, tc.want)
		}
	}
	// a section's error is its sentinel too
	if _, err := Parse([]byte("preset: tiny\noptim: {lr: -1}")); !errors.Is(err, ErrOptim) {
		t.Errorf("optim.lr: %v is not ErrOptim", err)
	}
	if _, err := Parse([]byte("preset: tiny\nmodel: {heads: 3}")); !errors.Is(err, ErrModel) {
		t.Errorf("model.heads: %v is not ErrModel", err)
	}
	c, err := Parse([]byte("preset: small\nsteps: 5\nlbl: {mode: micro}"))
	if err != nil || c.MicroBatch != 4 || c.Steps != 5 || c.LBL.Mode != "micro" {
		t.Fatalf("valid config: %+v %v", c, err)
	}
	if _, err := Parse(nil); err != nil {
		t.Fatalf("empty config should mean defaults: %v", err)
	}
}

// TestUnknownKeyNamesItsPath: an unknown key is named by its path and
// line, with the keys its mapping has and the one it was likely meant to
// be (not yaml.v3's "field cof not found in type runconfig.LBL").
func TestUnknownKeyNamesItsPath(t *testing.T) {
	_, err := Parse([]byte("preset: tiny\nsteps: 3\nlbl:\n  mode: micro\n  cof: 0.1\n"))
	var u *yamlcheck.UnknownKeyError
	if !errors.Is(err, ErrConfig) || !errors.As(err, &u) {
		t.Fatalf("err = %v, want ErrConfig and an UnknownKeyError", err)
	}
	if msg := err.Error(); !strings.HasPrefix(msg, "train: invalid config: lbl.cof (line 5): unknown key; lbl has ") ||
		!strings.Contains(msg, "coef, ") || !strings.HasSuffix(msg, `; did you mean "coef"?`) || strings.Contains(msg, "runconfig.") {
		t.Errorf("err = %v", err)
	}
}

// An explicit zero is a value: lbl.coef 0 (an aux-loss-free run balanced
// by the expert bias alone) and beta1 0 stay 0; absent keys take the
// defaults.
func TestZeroIsNotUnset(t *testing.T) {
	c, err := Parse([]byte("lbl: {coef: 0, bias_rate: 0.001}\noptim: {beta1: 0}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.LBL.Coef != 0 || c.LBL.BiasRate != 0.001 || c.Optim.Beta1 != 0 || c.Optim.Beta2 != DefaultBeta2 {
		t.Fatalf("explicit zeros: lbl %+v optim %+v", c.LBL, c.Optim)
	}
	c, err = Parse([]byte("steps: 3\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.LBL.Coef != DefaultLBLCoef || c.Optim.Beta1 != DefaultBeta1 || c.Optim.Beta2 != DefaultBeta2 {
		t.Fatalf("absent keys: lbl %+v optim %+v", c.LBL, c.Optim)
	}
}

// The dist section: a rank's layout, checked for consistency.
func TestDistSection(t *testing.T) {
	c, err := Parse([]byte("dist: {world: 4, tp: 2, dp: 2, ep: 2, balance: node}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Dist != (Dist{World: 4, TP: 2, DP: 2, EP: 2, Balance: "node"}) {
		t.Fatalf("dist %+v", c.Dist)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"dist: {world: 4, tp: 2, dp: 3}", "dist.world = 4: must be tp * dp = 6"},
		{"dist: {world: 4, dp: 4, ep: 3}", "dist.ep = 3: must divide dp = 4"},
		{"dist: {world: -1}", "dist.world"},
		{"dist: {balance: rack}", "dist.balance"},
		{"dist: {world: 2.5}", "dist.world = 2.5: must be a whole number"},
	} {
		if _, err := Parse([]byte(tc.yaml)); err == nil || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want an error containing %q", tc.yaml, err, tc.want)
		}
	}
}

// What a worker writes is what a rank reads: a full config survives YAML
// and Load unchanged.
func TestConfigRoundTrip(t *testing.T) {
	c, err := PresetConfig("small")
	if err != nil {
		t.Fatal(err)
	}
	c.LBL.Coef, c.LBL.BiasRate = 0, 1e-3
	c.Dist = Dist{World: 2, TP: 1, DP: 2, EP: 2, Balance: "dp"}
	c.Checkpoint = Checkpoint{Dir: "/ck", Job: "j-1", Every: 5, KeepLast: 2, Etcd: []string{"e:1"}, CommitVia: []string{"c:1"}, Attempt: 3, ResumeStep: 40}
	c.Resume, c.OutDir = true, "/run"
	raw, err := yaml.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "run.yaml")
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := yaml.Marshal(got)
	if string(a) != string(raw) {
		t.Fatalf("round trip changed the config:\n%s\nwant\n%s", a, raw)
	}
}
