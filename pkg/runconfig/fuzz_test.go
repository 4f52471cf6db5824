package runconfig

import (
	"bytes"
	"encoding/json"
	"testing"

	"gopkg.in/yaml.v3"
)

// TestLayerCoefHugeLayers: validation counts the MoE layers without a
// loop over model.layers (a run config with layers 2^62 and a layer_coef
// hung Parse, here and in a job spec's validation, until the test's
// timeout).
func TestLayerCoefHugeLayers(t *testing.T) {
	_, err := Parse([]byte("preset: tiny\nmodel: {layers: 4611686018427387904}\nlbl: {layer_coef: [1]}\n"))
	if err == nil {
		t.Fatal("a layer_coef of one value for 2^62 MoE layers accepted")
	}
	m := Model{Layers: 1 << 62, MoEEvery: 3, Dim: 2, Hidden: 1, Experts: 1, TopK: 1}
	if got, want := m.MoELayers(), (1<<62)/3; got != want {
		t.Fatalf("MoELayers %d, want %d", got, want)
	}
	m.ParamCount()
}

// TestMoELayersCounted: the counted MoE layers and parameters are the
// ones a loop over the layers finds.
func TestMoELayersCounted(t *testing.T) {
	for layers := -2; layers <= 13; layers++ {
		for every := -2; every <= 5; every++ {
			m := Model{Vocab: 256, Dim: 8, Layers: layers, Experts: 4, TopK: 2, Hidden: 6, Shared: 1, MoEEvery: every, DenseHidden: 10}
			moe := 0
			var total, active int64 = 2*256*8 + 8, 2*256*8 + 8
			for l := 0; l < layers; l++ {
				total += 4*8*8 + 2*8
				active += 4*8*8 + 2*8
				if every != 0 && m.IsMoE(l) {
					moe++
					total += 8*4 + (4+1)*3*8*6
					active += 8*4 + (2+1)*3*8*6
				} else {
					total += 3 * 8 * 10
					active += 3 * 8 * 10
				}
			}
			if got := m.MoELayers(); got != moe {
				t.Errorf("layers %d, moe_every %d: MoELayers %d, want %d", layers, every, got, moe)
			}
			if gt, ga := m.ParamCount(); gt != total || ga != active {
				t.Errorf("layers %d, moe_every %d: ParamCount %d, %d, want %d, %d", layers, every, gt, ga, total, active)
			}
		}
	}
}

// FuzzParse: Parse never panics or hangs, and a config it accepts is
// valid, survives a YAML round trip unchanged and has only finite numbers.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"",
		"preset: tiny\n",
		"preset: small\nsteps: 5\nlbl: {mode: micro, window: 0, coef: 0}\n",
		"preset: tiny\nlbl: {layer_coef: [1, 1, 1, 1], mode: global, window: 2}\noptim: {lr: 1e-3, beta1: 0, warmup_steps: 3}\n",
		"model: {dim: 64, layers: 2, heads: 2, seq_len: 16, experts: 4, top_k: 1, hidden: 32, moe_every: 2}\nmicro_batch: 2\n",
		"preset: tiny\ndevice: cuda:1\nprecision: bf16\ncollectives: nccl\nrecompute: attention\n",
		"preset: tiny\ndist: {world: 4, tp: 2, dp: 2, ep: 2, balance: node}\n",
		"preset: tiny\ncheckpoint: {dir: /tmp/c, every: 5, keep_last: 2, keep_best: 1, etcd: [a:1]}\nresume: true\n",
		"preset: tiny\ndata: {corpus: c.jsonl, order: domain_mixed, val_fraction: 0.5}\nmax_seconds: 10\n",
		"preset: tiny\nmodel: {layers: 4611686018427387904}\nlbl: {layer_coef: [1]}\n",
		"preset: tiny\nlbl: {coef: .nan}\n",
		"a: &a [*a]\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		c, err := Parse(raw)
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("accepted an invalid config: %v", err)
		}
		out, err := yaml.Marshal(c)
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		c2, err := Parse(out)
		if err != nil {
			t.Fatalf("re-parse: %v\n%s", err, out)
		}
		if out2, _ := yaml.Marshal(c2); !bytes.Equal(out, out2) {
			t.Fatalf("round trip changed the config:\n%s\n%s", out, out2)
		}
		// the run's report carries it as JSON, which has no NaN or Inf
		if _, err := json.Marshal(c); err != nil {
			t.Fatalf("accepted config has no JSON: %v\n%s", err, out)
		}
	})
}
