package jobspec

import (
	"errors"
	"math"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/model"
	"github.com/switchyard-ml/switchyard/pkg/runconfig"
	"github.com/switchyard-ml/switchyard/pkg/scheduler"
	"github.com/switchyard-ml/switchyard/pkg/train"
)

func TestParseMinimalDefaults(t *testing.T) {
	s, err := Parse([]byte("name: demo\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := Spec{
		Name:         "demo",
		Model:        Model{Preset: "tiny"},
		Parallel:     Parallel{TP: 1, DP: 1, EP: 1, Balance: "dp"},
		LBL:          LBL{Mode: "global", Coef: 0.01},
		Data:         Data{Corpus: "demo", DemoBytes: 1 << 20, ValFraction: 0.05, Order: "shuffled"},
		Optim:        Optim{LR: 3e-4, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8},
		MicroBatch:   8,
		Accumulation: 1,
		Steps:        100,
		Seed:         1,
		Resources:    Resources{CPUCores: 1, MemoryMiB: 2048},
		Checkpoint:   Checkpoint{KeepLast: 3, Storage: "dir"},
		Restart:      Restart{MaxRestarts: ptr(3), BackoffSeconds: ptr(10)},
		Elastic:      Elastic{MinDP: 1, MaxDP: 1},
	}
	if !reflect.DeepEqual(*s, want) {
		t.Fatalf("got  %+v\nwant %+v", *s, want)
	}
	if s.World() != 1 || s.GlobalBatch() != 8 {
		t.Fatalf("world %d, global batch %d", s.World(), s.GlobalBatch())
	}
	tc, err := s.TrainConfig()
	if err != nil {
		t.Fatal(err)
	}
	// The spec's defaults are pkg/train's: defaulting again changes nothing.
	again := tc
	again.Defaults()
	if !reflect.DeepEqual(tc, again) {
		t.Fatalf("train defaults differ:\n%+v\n%+v", tc, again)
	}
	if tc.Data.Corpus != "" || tc.Preset != "tiny" || tc.Model != nil {
		t.Fatalf("%+v", tc)
	}
	p, err := train.PresetConfig("tiny")
	if err != nil {
		t.Fatal(err)
	}
	if tc.MicroBatch != p.MicroBatch {
		t.Fatalf("micro_batch %d, train's tiny preset %d", tc.MicroBatch, p.MicroBatch)
	}
}

func TestParseFull(t *testing.T) {
	s, err := Load("testdata/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if s.World() != 8 || s.GlobalBatch() != 4*8*4 || *s.Restart.BackoffSeconds != 0 || s.Checkpoint.Storage != StorageS3 {
		t.Fatalf("%+v", s)
	}
	m, err := s.ModelConfig()
	if err != nil {
		t.Fatal(err)
	}
	if m.Dim != 512 || m.Experts != 8 || m.Shared != 1 || !m.Renormalize || m.CapacityFactor != 1.25 {
		t.Fatalf("model %+v", m)
	}
	tc, err := s.TrainConfig()
	if err != nil {
		t.Fatal(err)
	}
	tm, err := tc.ModelConfig()
	if err != nil {
		t.Fatal(err)
	}
	// The worker resolves the same model as the spec validated.
	if tm != m {
		t.Fatalf("train resolves %+v, spec %+v", tm, m)
	}
	if tc.Data.Corpus != "/srv/corpus/multi.jsonl" || tc.Optim.LR != 0.002 || tc.Optim.WarmupSteps != 20 ||
		tc.LBL.ZCoef != 0.001 || len(tc.LBL.LayerCoef) != 8 || tc.Accumulation != 8 || tc.EvalEvery != 100 || tc.Seed != 7 {
		t.Fatalf("%+v", tc)
	}
	j := s.SchedulerJob("job-1", 42)
	want := scheduler.Job{ID: "job-1", Priority: 5, Seq: 42, Layout: scheduler.Layout{TP: 2, DP: 4, EP: 2},
		PerRank: scheduler.Resources{CPUCores: 8, MemoryMiB: 32768, GPUs: 1}, Labels: map[string]string{"zone": "eu-1", "gpu": "h100"},
		Paths: s.WorkerPaths()}
	if got := s.WorkerPaths(); len(got) == 0 || got[0] != "/srv/corpus/multi.jsonl" {
		t.Fatalf("worker paths %v, want the corpus first", got)
	}
	if !reflect.DeepEqual(j, want) {
		t.Fatalf("%+v", j)
	}
	if err := j.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestExplicitModelWithoutPreset(t *testing.T) {
	s, err := Parse([]byte(`
name: custom
model: {dim: 64, layers: 2, heads: 2, seq_len: 32, experts: 4, top_k: 1, hidden: 128}
micro_batch: 2
`))
	if err != nil {
		t.Fatal(err)
	}
	if s.Model.Preset != "" {
		t.Fatalf("preset %q", s.Model.Preset)
	}
	tc, err := s.TrainConfig()
	if err != nil {
		t.Fatal(err)
	}
	m, _ := tc.ModelConfig()
	want := model.Config{Vocab: 256, Dim: 64, Layers: 2, Heads: 2, SeqLen: 32, Experts: 4, TopK: 1, Hidden: 128}
	want.Defaults()
	if m != want {
		t.Fatalf("%+v", m)
	}
}

func TestExamplesInRepoParse(t *testing.T) {
	raw, err := os.ReadFile("testdata/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s, err := Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	out, err := s.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	s2, err := Parse(out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !reflect.DeepEqual(s, s2) {
		t.Fatalf("round trip changed the spec:\n%+v\n%+v", s, s2)
	}
}

func TestSyntaxErrors(t *testing.T) {
	tests := []struct{ name, in, msg string }{
		{"unknown field", "name: a\nparallel: {tp: 1, pp: 2}\n", "jobspec: malformed spec: parallel.pp (line 2): unknown key; parallel has balance, dp, ep, tp"},
		{"unknown top-level field", "name: a\nsteps_total: 3\n", "steps_total (line 2): unknown key; the top level has accumulation, "},
		{"unknown field, suggestion", "name: a\nlbl:\n  mode: micro\n  windw: 2\n", `lbl.windw (line 4): unknown key; lbl has `},
		{"unknown field, suggestion", "name: a\nlbl:\n  mode: micro\n  windw: 2\n", `, window, z_coef; did you mean "window"?`},
		{"unknown field after a map", "name: a\nplacement: {host_labels: {a: b}}\nstpes: 2\n", `stpes (line 3): unknown key; the top level has `},
		{"duplicate key", "name: a\nname: b\n", `mapping key "name" already defined`},
		{"two documents", "name: a\n---\nname: b\n", "one YAML document"},
		{"wrong type", "name: a\nsteps: many\n", `steps (line 2): "many" is a string; want an integer`},
		{"scalar document", "hello\n", "cannot unmarshal"},
		{"too large", "name: a\n#" + strings.Repeat("x", MaxSize), "limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.in))
			if !errors.Is(err, ErrSyntax) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("err = %v, want ErrSyntax containing %q", err, tt.msg)
			}
		})
	}
}

func TestValidationErrors(t *testing.T) {
	tests := []struct{ in, msg string }{
		{"", `jobspec: name = "": must be 1-63 of a-z, 0-9 and '-', starting and ending with a letter or digit`},
		{"name: Bad_Name", `jobspec: name = "Bad_Name": must be 1-63`},
		{"priority: 5000", "jobspec: priority = 5000: must be in [-1000, 1000]"},
		{"parallel: {dp: 4, ep: 3}", "jobspec: parallel.ep = 3: must divide parallel.dp = 4"},
		{"parallel: {dp: 6, ep: 3}", "jobspec: parallel.ep = 3: must divide model.experts = 8 (each EP rank holds experts/ep experts)"},
		{"parallel: {tp: 3}", "jobspec: parallel.tp = 3: must divide model.heads = 4"},
		{"parallel: {tp: -1}", "jobspec: parallel.tp = -1: must be in [1, 65536]"},
		{"parallel: {tp: 4, dp: 65536}", "jobspec: parallel.dp = 65536: world size parallel.tp*parallel.dp = 262144 must be <= 65536"},
		{"parallel: {balance: rack}", `jobspec: parallel.balance = "rack": must be "dp", "node" or "none"`},
		{"model: {preset: huge}", `jobspec: model.preset = "huge": must be "tiny", "small", "medium" or "science"`},
		{"model: {dim: 64, layers: 2, heads: 3, seq_len: 8, experts: 4, top_k: 1, hidden: 8}\nmicro_batch: 1", "jobspec: model.heads = 3: must be >= 1 and divide model.dim = 64"},
		{"model: {preset: tiny, top_k: 9}", "jobspec: model.top_k = 9: must be in [1, model.experts = 8]"},
		{"model: {preset: tiny, capacity_factor: .nan}", "jobspec: model.capacity_factor = NaN: must be a finite number >= 0 (0 = dropless)"},
		{"model: {dim: 64, layers: 2, heads: 2, seq_len: 8, experts: 4, top_k: 1, hidden: 8}", "jobspec: micro_batch = 0: must be >= 1 (required when the model has no preset)"},
		{"lbl: {mode: local}", `jobspec: lbl.mode = "local": must be "global" or "micro"`},
		{"lbl: {z_coef: -1}", "jobspec: lbl.z_coef = -1: must be a finite number >= 0"},
		{"lbl: {coef: .inf}", "jobspec: lbl.coef = +Inf: must be a finite number >= 0"},
		{"lbl: {layer_coef: [1, 2]}", "jobspec: lbl.layer_coef = [1 2]: needs one value per MoE layer (4)"},
		{"data: {corpus: corpus.jsonl}", `jobspec: data.corpus = "corpus.jsonl": must be "demo" or an absolute path (workers read it on their own machines)`},
		{"data: {val_fraction: 0.9}", "jobspec: data.val_fraction = 0.9: must be in (0, 0.5]"},
		{"lbl: {mode: micro, window: 2}", "jobspec: lbl.window = 2: needs lbl.mode global (the micro-batch LBL balances each micro-batch alone)"},
		{"lbl: {window: -1}", "jobspec: lbl.window = -1: must be >= 0"},
		{"data: {order: random}", `jobspec: data.order = "random": must be "shuffled", "domain" or "domain_mixed"`},
		{"optim: {lr: -1}", "jobspec: optim.lr = -1: must be a finite number > 0"},
		{"optim: {lr: 0.001, min_lr: 0.01}", "jobspec: optim.min_lr = 0.01: must be in [0, optim.lr = 0.001]"},
		{"optim: {lr: -1, min_lr: -2}", "jobspec: optim.min_lr = -2: must be >= 0"},
		{"steps: 10\noptim: {warmup_steps: 20}", "jobspec: optim.warmup_steps = 20: must be in [0, steps = 10]"},
		{"micro_batch: -2", "jobspec: micro_batch = -2: must be >= 1"},
		{"accumulation: -1", "jobspec: accumulation = -1: must be >= 1"},
		{"steps: -5", "jobspec: steps = -5: must be >= 1"},
		// yaml.v3 would truncate these to 2 and 4
		{"steps: 2.7", `jobspec: steps = "2.7": must be a whole number`},
		{"optim: {warmup_steps: 4.5}", `jobspec: optim.warmup_steps = "4.5": must be a whole number`},
		{"eval_every: -1", "jobspec: eval_every = -1: must be >= 0 (0 = only at the end)"},
		{"resources: {gpus: -1}", "jobspec: resources.gpus = -1: must be >= 0"},
		{"resources: {memory_mib: -1}", "jobspec: resources.memory_mib = -1: must be >= 0"},
		// an explicit 0 is not the default
		{"parallel: {dp: 0}", "jobspec: parallel.dp = 0: must be >= 1 (omit the field for its default)"},
		{"micro_batch: 0", "jobspec: micro_batch = 0: must be >= 1 (omit the field for its default)"},
		{"steps: 00", "jobspec: steps = 0: must be >= 1 (omit the field for its default)"},
		{"checkpoint: {keep_last: 0}", "jobspec: checkpoint.keep_last = 0: must be >= 1 (omit the field for its default)"},
		// sizes a rank cannot hold (the hostile tester's: each crashed or
		// exhausted a rank before these rules)
		{"model: {preset: tiny, dim: 2000000000}", "jobspec: model.dim = 2000000000: must be <= 131072"},
		{"micro_batch: 2000000000", "jobspec: micro_batch = 2000000000: must be <= 65536"},
		{"accumulation: 2000000000", "jobspec: accumulation = 2000000000: must be <= 65536"},
		{"data: {demo_bytes: 9000000000000}", "jobspec: data.demo_bytes = 9000000000000: must be <= 4294967296"},
		{"resources: {cpu_cores: 1000000000000}", "jobspec: resources.cpu_cores = 1000000000000: must be <= 4096"},
		{"resources: {memory_mib: 64}", "jobspec: resources.memory_mib = 64: a rank needs at least 226.2 MiB"},
		{"model: {preset: medium}\nmicro_batch: 1\nresources: {memory_mib: 4096}", "jobspec: resources.memory_mib = 4096: a rank needs at least 18.8 GiB"},
		{"model: {preset: tiny, dim: 131072, hidden: 1048576, experts: 4096, top_k: 1}\nresources: {cpu_cores: 1}", "jobspec: resources.memory_mib = 0: a rank needs at least 96.0 PiB (parameters x 16 bytes for weights, gradients and Adam moments, one activation per layer and token, the logits, the demo corpus): more than the 1 TiB any rank is given"},
		{"placement: {host_labels: {'-x': a}}", `jobspec: placement.host_labels = "-x": label keys must be`},
		{"placement: {host_labels: {zone: 'a b'}}", `jobspec: placement.host_labels.zone = "a b": label values must be`},
		{"checkpoint: {keep_last: -1}", "jobspec: checkpoint.keep_last = -1: must be >= 1"},
		{"checkpoint: {keep_best: 1}", "jobspec: checkpoint.keep_best = 1: needs eval_every > 0 (the best checkpoints are chosen by validation loss)"},
		{"checkpoint: {interval_steps: -1}", "jobspec: checkpoint.interval_steps = -1: must be >= 0 (0 = not by steps)"},
		{"checkpoint: {storage: gcs}", `jobspec: checkpoint.storage = "gcs": must be "dir" or "s3"`},
		{"checkpoint: {storage: s3}", `jobspec: checkpoint.path = "": must be s3://bucket[/prefix] for storage "s3"`},
		{"checkpoint: {path: /srv/ckpt/../../etc}", `jobspec: checkpoint.path = "/srv/ckpt/../../etc": must be a clean path (no '..', '.' or '//'; it reads as /etc)`},
		{"data: {corpus: /data/../etc/shadow}", `jobspec: data.corpus = "/data/../etc/shadow": must be a clean path (no '..', '.' or '//'; it reads as /etc/shadow)`},
		{"checkpoint: {storage: s3, path: 's3://bucket/../../x'}", `jobspec: checkpoint.path = "s3://bucket/../../x": the prefix must not have '.', '..' or empty segments`},
		{"checkpoint: {path: ckpt}", `jobspec: checkpoint.path = "ckpt": must be empty (the worker's storage path) or an absolute path for storage "dir"`},
		{"restart: {max_restarts: -1}", "jobspec: restart.max_restarts = -1: must be in [0, 1000]"},
		{"restart: {backoff_seconds: 100000}", "jobspec: restart.backoff_seconds = 100000: must be in [0, 86400]"},
		{"parallel: {dp: 4, ep: 2}\nelastic: {min_dp: 3}", "jobspec: elastic.min_dp = 3: must be a multiple of parallel.ep = 2"},
		{"parallel: {dp: 4}\nelastic: {min_dp: 5}", "jobspec: elastic.min_dp = 5: must be in [1, parallel.dp = 4]"},
		{"parallel: {dp: 4}\nelastic: {max_dp: 2}", "jobspec: elastic.max_dp = 2: must be in [parallel.dp = 4, 65536]"},
		{"parallel: {dp: 4, ep: 2}\nelastic: {max_dp: 6, min_dp: 2}", ""}, // fine
		{"parallel: {dp: 4, ep: 4}\nelastic: {max_dp: 6}", "jobspec: elastic.max_dp = 6: must be a multiple of parallel.ep = 4"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			in := tt.in
			if !strings.HasPrefix(in, "name:") && in != "" {
				in = "name: job\n" + in
			}
			_, err := Parse([]byte(in))
			if tt.msg == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("err = %v, not a FieldError", err)
			}
			found := false
			for _, line := range strings.Split(err.Error(), "\n") {
				if strings.HasPrefix(line, tt.msg) {
					found = true
				}
			}
			if !found {
				t.Fatalf("err = %v\nwant a line starting %q", err, tt.msg)
			}
		})
	}
}

// Rules of fields the spec does not write (elastic's, defaulting to dp)
// do not repeat what is wrong with the one it does.
func TestValidateBlamesWhatTheSpecWrites(t *testing.T) {
	_, err := Parse([]byte("name: x\nsteps: 5\nparallel: {dp: 2, ep: 3}\n"))
	if err == nil || !strings.Contains(err.Error(), "parallel.ep = 3: must divide parallel.dp = 2") || strings.Contains(err.Error(), "elastic") {
		t.Fatalf("err = %v", err)
	}
}

func TestValidateReportsEveryRule(t *testing.T) {
	_, err := Parse([]byte("name: x\nsteps: -1\nmicro_batch: -1\nresources: {gpus: -1}\n"))
	if got := strings.Count(err.Error(), "\n") + 1; got != 3 {
		t.Fatalf("%d errors:\n%v", got, err)
	}
}

func TestTrainConfigRejectsWhatTrainRejects(t *testing.T) {
	// A spec built in Go without Parse still goes through pkg/train's checks.
	s := &Spec{Name: "x"}
	s.Defaults()
	s.Data.ValFraction = 0.9
	if _, err := s.TrainConfig(); !errors.Is(err, ErrInvalid) || !errors.Is(err, train.ErrConfig) {
		t.Fatalf("err = %v", err)
	}
}

// TestDeviceRules: a GPU job gets a GPU per rank and is one rank for now;
// precision bf16 needs cuda; bad names are refused by their path.
func TestDeviceRules(t *testing.T) {
	s, err := Parse([]byte("name: g\ndevice: cuda\nmodel: {preset: medium}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s.Resources.GPUs != 1 || s.MicroBatch != 16 {
		t.Fatalf("gpus %d micro-batch %d, want 1 and 16", s.Resources.GPUs, s.MicroBatch)
	}
	c, err := s.TrainConfig()
	if err != nil || c.Device != "cuda" || c.PrecisionOrDefault() != "bf16" {
		t.Fatalf("train config device %q precision %q: %v", c.Device, c.PrecisionOrDefault(), err)
	}
	// the collectives reach the rank's run config
	if s, err := Parse([]byte("name: g\ndevice: cuda\ncollectives: host\nparallel: {dp: 2}\n")); err != nil {
		t.Fatal(err)
	} else if c, err := s.TrainConfig(); err != nil || c.Collectives != "host" {
		t.Fatalf("collectives %q: %v", c.Collectives, err)
	}
	// expert parallelism on GPUs
	if s, err := Parse([]byte("name: g\ndevice: cuda\nparallel: {dp: 2, ep: 2}\n")); err != nil || s.Parallel.EP != 2 {
		t.Fatalf("dp 2 ep 2 on GPUs: %v %+v", err, s)
	}
	// tensor parallelism on GPUs
	if s, err := Parse([]byte("name: g\ndevice: cuda\nparallel: {tp: 2, dp: 2, ep: 2}\n")); err != nil || s.Parallel.TP != 2 {
		t.Fatalf("tp 2 dp 2 ep 2 on GPUs: %v %+v", err, s)
	}
	// the experts and dense layers are not split by tensor parallelism
	// (the MoE tokens are): their widths need not divide by tp
	if _, err := Parse([]byte("name: g\nmodel: {preset: tiny, heads: 2, hidden: 511, moe_every: 2, dense_hidden: 513}\nparallel: {tp: 2}\n")); err != nil {
		t.Fatalf("tp 2 with odd expert and dense widths: %v", err)
	}
	// data parallelism on GPUs: one GPU a rank
	if s, err := Parse([]byte("name: g\ndevice: cuda\nparallel: {dp: 4}\n")); err != nil || s.Parallel.DP != 4 || s.Resources.GPUs != 1 {
		t.Fatalf("dp 4 on GPUs: %v %+v", err, s)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"device: tpu", "jobspec: device = \"tpu\": must be cpu or cuda"},
		{"device: cuda\nparallel: {tp: 2}\nmicro_batch: 3", "jobspec: micro_batch = 3: must be a multiple of parallel.tp = 2"},
		{"parallel: {tp: 2}\nlbl: {mode: micro}", "jobspec: lbl.mode = \"micro\": micro-batch LBL needs a whole micro-batch on one rank"},
		{"parallel: {tp: 2}\nlbl: {micro_coef: 0.001}", "jobspec: lbl.mode = \"global\": micro-batch LBL needs a whole micro-batch on one rank"},
		{"parallel: {tp: 2}\nlbl: {seq_coef: 0.001}", "jobspec: lbl.seq_coef = 0.001: sequence-level LBL is not supported with parallel.tp = 2"},
		{"parallel: {tp: 2, dp: 2, balance: node}", "jobspec: parallel.balance = \"node\": with parallel.tp = 2"},
		{"device: cuda\nresources: {gpus: 0}\nprecision: fp16", "jobspec: precision = \"fp16\""},
		{"precision: bf16", "jobspec: precision = \"bf16\": bf16 needs device cuda"},
		{"device: cuda\ncollectives: gloo", "jobspec: collectives = \"gloo\": must be \"auto\", \"nccl\" or \"host\""},
		{"collectives: nccl", "jobspec: collectives = \"nccl\": chooses the GPU ranks' collectives: needs device cuda"},
		{"device: cuda\nrecompute: all", "jobspec: recompute = \"all\": must be \"none\" or \"attention\""},
		{"recompute: attention", "jobspec: recompute = \"attention\": is the GPU engine's (device cuda)"},
	} {
		_, err := Parse([]byte("name: g\n" + tc.yaml + "\n"))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.yaml, err, tc.want)
		}
	}
}

// The paths a worker must allow: the corpus of an engine job, a dir
// checkpoint.path; never the demo corpus, a command job's data (its own
// business) or an S3 location.
func TestWorkerPaths(t *testing.T) {
	for _, c := range []struct {
		spec string
		want []string
	}{
		{"name: a\n", nil},
		{"name: a\ndata: {corpus: /data/c.jsonl}\n", []string{"/data/c.jsonl"}},
		{"name: a\ndata: {corpus: /data/c.jsonl}\ncheckpoint: {path: /shared/ckpt}\n", []string{"/data/c.jsonl", "/shared/ckpt"}},
		{"name: a\ncheckpoint: {storage: s3, path: s3://bucket/p}\n", nil},
		{"name: a\nruntime: command\ncommand: /usr/bin/python3\ncheckpoint: {path: /shared/ckpt}\n", []string{"/shared/ckpt"}},
	} {
		s, err := Parse([]byte(c.spec))
		if err != nil {
			t.Fatalf("%q: %v", c.spec, err)
		}
		if got := s.WorkerPaths(); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%q: worker paths %v, want %v", c.spec, got, c.want)
		}
		if err := s.SchedulerJob("j", 1).Validate(); err != nil {
			t.Errorf("%q: %v", c.spec, err)
		}
	}
}

// TestGPUMemoryForPlacement: an engine job on cuda asks each GPU for at
// least runconfig's bound on what the GPU engine needs (less with tensor
// and expert parallelism, more in fp32), a declared
// resources.gpu_memory_mib above it wins, a command job asks what it
// declares, and a CPU job asks nothing.
func TestGPUMemoryForPlacement(t *testing.T) {
	need := func(yaml string) int64 {
		t.Helper()
		s, err := Parse([]byte("name: g\n" + yaml + "\n"))
		if err != nil {
			t.Fatal(err)
		}
		return s.SchedulerJob("j", 1).GPUMemoryMiB
	}
	medium := need("device: cuda\nmodel: {preset: medium}\nmicro_batch: 16")
	m, _ := runconfig.ModelPreset("medium")
	if want := int64(math.Ceil(m.MinGPURankBytes(16, 1, 1, true, false) / (1 << 20))); medium != want || medium < 30<<10 {
		t.Fatalf("medium bf16 on cuda asks %d MiB a GPU, want %d (over 30 GiB)", medium, want)
	}
	split := need("device: cuda\nmodel: {preset: medium}\nmicro_batch: 16\nparallel: {tp: 2, dp: 2, ep: 2}")
	fp32 := need("device: cuda\nprecision: fp32\nmodel: {preset: medium}\nmicro_batch: 16")
	re := need("device: cuda\nrecompute: attention\nmodel: {preset: medium}\nmicro_batch: 16")
	if !(split < medium && medium < fp32 && re < medium) {
		t.Errorf("GPU memory: tp 2 ep 2 %d, bf16 %d, fp32 %d, attention recomputed %d MiB", split, medium, fp32, re)
	}
	s, _ := Parse([]byte("name: g\ndevice: cuda\nrecompute: attention\n"))
	if tc, err := s.TrainConfig(); err != nil || !tc.RecomputeAttention() {
		t.Errorf("recompute does not reach the training config: %+v %v", tc, err)
	}
	if got := need("device: cuda\nmodel: {preset: medium}\nmicro_batch: 16\nresources: {gpus: 1, gpu_memory_mib: 1000000}"); got != 1000000 {
		t.Errorf("declared above the bound: %d", got)
	}
	if got := need("device: cuda\nmodel: {preset: medium}\nmicro_batch: 16\nresources: {gpus: 1, gpu_memory_mib: 1024}"); got != medium {
		t.Errorf("declared below the bound: %d, want the bound %d", got, medium)
	}
	if got := need("runtime: command\ncommand: python3\nranks: 2\nresources: {gpus: 1, gpu_memory_mib: 40960}"); got != 40960 {
		t.Errorf("command job: %d", got)
	}
	if got := need("model: {preset: tiny}"); got != 0 {
		t.Errorf("CPU job: %d", got)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"resources: {gpus: 1, gpu_memory_mib: -1}", "resources.gpu_memory_mib = -1: must be >= 0"},
		{"resources: {gpus: 0, gpu_memory_mib: 1024}", "resources.gpu_memory_mib = 1024: needs resources.gpus >= 1"},
	} {
		if _, err := Parse([]byte("name: g\n" + tc.yaml + "\n")); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.yaml, err, tc.want)
		}
	}
}

// TestParseDoesNotPanic: YAML on which yaml.v3's decoder panics (a merge
// key beside a mapping used as a key in a map field) is a malformed spec,
// not a crash of the CLI or the worker.
func TestParseDoesNotPanic(t *testing.T) {
	for _, in := range []string{
		"name: x\nd: &d {a: 0}\nenv: {<<, *d}\n",
		"name: x\nlabels: &d {a: b}\nenv: {<<: [*d], *d: 1}\n",
		"name: x\nenv: {<<: {a: 1}, ? {a: 1} : 2}\n",
	} {
		if _, err := Parse([]byte(in)); !errors.Is(err, ErrSyntax) {
			t.Errorf("%q: %v, want a malformed spec", in, err)
		}
	}
}

// TestLayerCoefHugeLayers: validating a spec with a layer_coef counts the
// MoE layers without a loop over model.layers, which is checked against
// its bound only afterwards (model.layers 2^62 hung job check and the
// coordinator's submit until the test's timeout).
func TestLayerCoefHugeLayers(t *testing.T) {
	_, err := Parse([]byte("name: a\nmodel: {preset: tiny, layers: 4611686018427387904}\nlbl: {layer_coef: [1]}\n"))
	if err == nil || !strings.Contains(err.Error(), "model.layers") {
		t.Fatalf("got %v, want model.layers refused", err)
	}
}

// A bad lr is one error: min_lr is not checked against it too.
func TestBadLROneError(t *testing.T) {
	_, err := Parse([]byte("name: job\noptim: {lr: -1}\n"))
	if err == nil || err.Error() != "jobspec: optim.lr = -1: must be a finite number > 0" {
		t.Fatalf("got %v, want only the lr's error", err)
	}
}
