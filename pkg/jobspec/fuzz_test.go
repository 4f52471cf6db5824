package jobspec

import (
	"os"
	"reflect"
	"testing"
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
