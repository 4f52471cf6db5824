package jobspec

import (
	"bytes"
	"os"
	"reflect"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/switchyard-ml/switchyard/pkg/runconfig"
)

// FuzzParse: Parse never panics, and a spec that parses survives a YAML
// round trip unchanged, maps onto a valid training config, and gives the
// scheduler a valid job.
func FuzzParse(f *testing.F) {
	full, err := os.ReadFile("testdata/full.yaml")
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range []string{
		string(full),
		"name: demo\n",
		"name: a\nparallel: {tp: 2, dp: 4, ep: 2, balance: node}\nlbl: {mode: micro}\n",
		"name: a\nmodel: {dim: 64, layers: 2, heads: 2, seq_len: 16, experts: 4, top_k: 1, hidden: 32, moe_every: 2}\nmicro_batch: 2\n",
		"name: a\nlbl: {layer_coef: []}\nplacement: {host_labels: {}}\n",
		"name: a\nmodel: {preset: tiny, norm_eps: 1e-6, capacity_factor: 1.5}\nrestart: {max_restarts: 0}\n",
		"name: a\nparallel: {dp: 4, ep: 3}\n",
		"name: a\nruntime: command\ncommand: /usr/bin/python3\nargs: [t.py, --x]\nenv: {A: b}\nranks: 2\nsteps: 5\n",
		"name: a\nruntime: command\ncommand: t\nmodel: {preset: tiny}\n",
		"name: a\nruntime: command\ncommand: t\nargs: []\nenv: {}\n",
		"a: &a [*a]\n",
		"name: [x]\n",
		"{}",
		"",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		s, err := Parse(raw)
		if err != nil {
			return
		}
		out, err := s.Marshal()
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		s2, err := Parse(out)
		if err != nil {
			t.Fatalf("re-parse: %v\n%s", err, out)
		}
		if !reflect.DeepEqual(s, s2) {
			t.Fatalf("round trip changed the spec:\n%+v\n%+v\n%s", s, s2, out)
		}
		if _, err := s.TrainConfig(); err != nil && s.Runtime != RuntimeCommand {
			t.Fatalf("valid spec, invalid training config: %v", err)
		}
		if err := s.SchedulerJob("j", 1).Validate(); err != nil {
			t.Fatalf("valid spec, invalid scheduler job: %v", err)
		}
	})
}

// FuzzParseExperiment: ParseExperiment never panics or hangs, and an
// experiment it accepts is within its limits (variants, their specs'
// bytes together), every variant is a spec that parses again into its
// Parsed, is named after the experiment, and has its own job id.
func FuzzParseExperiment(f *testing.F) {
	for _, seed := range []string{
		sweep,
		"name: e\nbase: {model: {preset: tiny}}\naxes: {lbl.mode: [micro, global], seed: [1, 2]}\n",
		"name: e\nbase: {steps: 5}\naxes: {seed: [1, 2]}\nvariants:\n  m: {lbl: {mode: micro}}\n  g: {lbl: {mode: global, window: 2}}\n",
		"name: e\nbase: {runtime: command, command: t, args: [a]}\naxes: {ranks: [1, 2]}\n",
		"name: e\nbase: {model: {preset: tiny}}\nvariants: {a: {steps: 3}, b: {steps: 4}}\n",
		"name: e\nbase: {}\naxes: {seed: [1, '1']}\n",
		"name: e\nbase: &b {steps: 2}\naxes: {seed: [1, 2]}\nvariants: {a: *b}\n",
		"name: e\nbase: {}\naxes: {a: &a [*a]}\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		e, err := ParseExperiment(raw)
		if err != nil {
			return
		}
		if len(e.Variants) < 1 || len(e.Variants) > MaxVariants {
			t.Fatalf("%d variants", len(e.Variants))
		}
		total := 0
		ids := map[string]bool{}
		for i, v := range e.Variants {
			total += len(v.Spec)
			if v.Index != i || len(v.Values) != len(e.Axes) || ids[v.JobID] {
				t.Fatalf("variant %d: index %d, %d values for %d axes, id %s (seen: %v)", i, v.Index, len(v.Values), len(e.Axes), v.JobID, ids[v.JobID])
			}
			ids[v.JobID] = true
			s, err := Parse(v.Spec)
			if err != nil {
				t.Fatalf("variant %d does not parse again: %v\n%s", i, err, v.Spec)
			}
			if !reflect.DeepEqual(s, v.Parsed) || s.Name != e.Name {
				t.Fatalf("variant %d parses into another spec:\n%+v\n%+v", i, s, v.Parsed)
			}
		}
		if total > MaxExperimentBytes {
			t.Fatalf("%d bytes of specs from %d bytes", total, len(raw))
		}
	})
}

// FuzzParseCommandConfig: a rank's run.yaml never panics or hangs the
// parser (switchyard exec, switchyard checkpoints commit); one it accepts
// is valid and survives a YAML round trip unchanged.
func FuzzParseCommandConfig(f *testing.F) {
	valid := CommandConfig{
		Command: "python3", Args: []string{"train.py", "--x"}, Env: map[string]string{"A": "b"},
		WorkingDir: "/w", RunDir: "/r", Job: "j", Attempt: 1, Rank: 1, World: 2,
		Node: Node{Rank: 0, Nodes: 1, LocalRank: 1, LocalWorld: 2}, Steps: 5,
		MasterAddr: "10.0.0.1", MasterPort: 29500, CUDAVisibleDevices: "0,1", MaxRestarts: 3,
		Checkpoint:   runconfig.Checkpoint{Dir: "/c", Job: "j", KeepLast: 3, Etcd: []string{"e:2379"}},
		Coordinators: []string{"c:7000"},
	}
	if err := valid.Validate(); err != nil {
		f.Fatal(err)
	}
	raw, err := yaml.Marshal(valid)
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range []string{
		string(raw),
		"job: j\ncommand: t\nworld: 1\nmaster_addr: h\nmaster_port: 1\nworking_dir: /w\nrun_dir: /r\ncheckpoint: {dir: /c, job: j}\n",
		"job: j\nargs: &a [*a]\n",
		"env: {<<: {a: 1}, ? {a: 1} : 2}\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		c, err := ParseCommandConfig(raw)
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("accepted an invalid run config: %v", err)
		}
		out, err := yaml.Marshal(c)
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		c2, err := ParseCommandConfig(out)
		if err != nil {
			t.Fatalf("re-parse: %v\n%s", err, out)
		}
		if out2, _ := yaml.Marshal(c2); !bytes.Equal(out, out2) {
			t.Fatalf("round trip changed the run config:\n%s\n%s", out, out2)
		}
	})
}
