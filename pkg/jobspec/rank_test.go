package jobspec

import (
	"reflect"
	"strings"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/runconfig"
	"github.com/switchyard-ml/switchyard/pkg/security"
)

func mustParse(t *testing.T, yaml string) *Spec {
	t.Helper()
	s, err := Parse([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestValidJobID(t *testing.T) {
	for _, id := range []string{"a", "demo-1f2e3d4c", "0", strings.Repeat("a", 63)} {
		if err := ValidJobID(id); err != nil {
			t.Errorf("%q refused: %v", id, err)
		}
	}
	for _, id := range []string{"", "-a", "a-", "A", "a_b", "a.b", "a/b", "a b", strings.Repeat("a", 64), "a*", "a>"} {
		if err := ValidJobID(id); err == nil || !strings.Contains(err.Error(), "job id") {
			t.Errorf("%q accepted (%v)", id, err)
		}
	}
	// a spec name is a job id, and NewJobID makes one from any name
	long := strings.Repeat("n", 63)
	if err := ValidJobID(NewJobID(long)); err != nil {
		t.Errorf("NewJobID(63 chars): %v", err)
	}
}

// The elastic arithmetic: the spec's layout, or the placed dp/ep with the
// accumulation scaled to keep the global batch when it divides.
func TestAttemptLayout(t *testing.T) {
	s := mustParse(t, "name: x\nparallel: {tp: 2, dp: 4, ep: 1, balance: none}\naccumulation: 3\nelastic: {min_dp: 1, max_dp: 8}\n")
	for _, tc := range []struct {
		dp, ep int
		want   Layout
	}{
		{0, 0, Layout{TP: 2, DP: 4, EP: 1, Accumulation: 3, Balance: "none"}},
		{4, 2, Layout{TP: 2, DP: 4, EP: 2, Accumulation: 3, Balance: "none"}},
		{2, 2, Layout{TP: 2, DP: 2, EP: 2, Accumulation: 6, Balance: "none"}},
		{1, 1, Layout{TP: 2, DP: 1, EP: 1, Accumulation: 12, Balance: "none"}},
		{3, 1, Layout{TP: 2, DP: 3, EP: 1, Accumulation: 4, Balance: "none"}},
		{8, 2, Layout{TP: 2, DP: 8, EP: 2, Accumulation: 3, Balance: "none"}}, // 12 % 8 != 0: the batch grows
		{6, 0, Layout{TP: 2, DP: 6, EP: 1, Accumulation: 2, Balance: "none"}},
	} {
		got := s.AttemptLayout(tc.dp, tc.ep)
		if got != tc.want {
			t.Errorf("AttemptLayout(%d, %d) = %+v, want %+v", tc.dp, tc.ep, got, tc.want)
		}
		if global := got.DP * got.Accumulation; 12%got.DP == 0 && global != 12 {
			t.Errorf("dp %d: global batch %d micro-batches, want 12", got.DP, global)
		}
	}
	if l := s.AttemptLayout(2, 2); l.World() != 4 || s.TokensPerStep(l) != 8*6*2*256 {
		t.Errorf("world %d, tokens per step %v", l.World(), s.TokensPerStep(l))
	}
}

// RankConfig is the whole run.yaml of a rank: the spec's training
// settings, the attempt's layout, the checkpoint policy and catalogue.
func TestRankConfig(t *testing.T) {
	s := mustParse(t, `name: big
model: {preset: tiny, experts: 16}
parallel: {dp: 4, ep: 2}
lbl: {coef: 0, bias_rate: 0.001}
accumulation: 2
steps: 50
eval_every: 10
checkpoint: {interval_steps: 5, interval_minutes: 3, keep_last: 2, keep_best: 1}
elastic: {min_dp: 2}
`)
	tlsFiles := security.TLSFiles{CA: "/ca.pem", Cert: "/w.pem", Key: "/w.key"}
	host := Host{RunDir: "/s/jobs/big-1/attempt-2/rank-1", CheckpointRoot: "/s/checkpoints", CommitVia: []string{"c1:7000", "c2:7000"}, CommitTLS: tlsFiles}
	task := Task{JobID: "big-1", Attempt: 2, Layout: s.AttemptLayout(2, 2), ResumeStep: 40}
	c, err := s.RankConfig(task, host)
	if err != nil {
		t.Fatal(err)
	}
	want := runconfig.Checkpoint{Dir: "/s/checkpoints", Job: "big-1", Every: 5, KeepLast: 2, KeepBest: 1, EveryMinutes: 3,
		ResumeStep: 40, CommitVia: []string{"c1:7000", "c2:7000"}, Attempt: 2, CommitTLS: tlsFiles}
	if !reflect.DeepEqual(c.Checkpoint, want) {
		t.Errorf("checkpoint %+v\nwant %+v", c.Checkpoint, want)
	}
	if c.Dist != (runconfig.Dist{World: 2, TP: 1, DP: 2, EP: 2, Balance: "dp"}) || c.Accumulation != 4 {
		t.Errorf("dist %+v accumulation %d, want world 2 dp 2 ep 2 and accumulation 4", c.Dist, c.Accumulation)
	}
	m, err := c.ModelConfig()
	if err != nil || m.Experts != 16 || m.Dim != 256 {
		t.Errorf("model %+v %v", m, err)
	}
	if c.OutDir != host.RunDir || !c.Resume || c.Steps != 50 || c.EvalEvery != 10 || c.LBL.Coef != 0 || c.LBL.BiasRate != 0.001 {
		t.Errorf("config %+v", c)
	}
	// a worker with data_plane_tls gives its ranks its TLS files
	tlsHost := host
	tlsHost.DataPlaneTLS = tlsFiles
	if c, err := s.RankConfig(task, tlsHost); err != nil || c.Dist.TLS != tlsFiles {
		t.Errorf("data plane TLS: %+v %v", c.Dist.TLS, err)
	}
	// the spec's own checkpoint path wins over the worker's
	s.Checkpoint.Storage, s.Checkpoint.Path = StorageS3, "s3://bucket/runs"
	if c, err := s.RankConfig(task, host); err != nil || c.Checkpoint.Dir != "s3://bucket/runs" {
		t.Errorf("s3 path: %q %v", c.Checkpoint.Dir, err)
	}
	for _, tc := range []struct {
		task Task
		want string
	}{
		{Task{JobID: "Big", Layout: task.Layout}, "job id"},
		{Task{JobID: "big-1", Attempt: -1, Layout: task.Layout}, "attempt -1"},
		{Task{JobID: "big-1", Layout: Layout{TP: 1, DP: 3, EP: 2, Accumulation: 1}}, "ep 2: must divide dp 3"},
		{Task{JobID: "big-1", Layout: Layout{TP: 1, DP: 2, EP: 1}}, "accumulation 0"},
		{Task{JobID: "big-1", Layout: task.Layout, ResumeStep: -1}, "resume step -1"},
	} {
		if _, err := s.RankConfig(tc.task, host); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want an error containing %q", tc.task, err, tc.want)
		}
	}
}

// The spec's model section is its own struct; every field of the engine's
// model config has a spec field with the same YAML name, and fields()
// carries each one across (a field added to runconfig.Model and not to
// the spec fails here).
func TestSpecModelCoversEveryModelField(t *testing.T) {
	spec := map[string]reflect.StructField{}
	st := reflect.TypeOf(Model{})
	for i := range st.NumField() {
		f := st.Field(i)
		spec[strings.Split(f.Tag.Get("yaml"), ",")[0]] = f
	}
	var in Model
	iv := reflect.ValueOf(&in).Elem()
	rt := reflect.TypeOf(runconfig.Model{})
	for i := range rt.NumField() {
		name := strings.Split(rt.Field(i).Tag.Get("yaml"), ",")[0]
		f, ok := spec[name]
		if !ok {
			t.Errorf("runconfig.Model's %s (yaml %q) has no field in the spec's model section", rt.Field(i).Name, name)
			continue
		}
		if f.Type != rt.Field(i).Type {
			t.Errorf("model.%s: spec %v, engine %v", name, f.Type, rt.Field(i).Type)
			continue
		}
		// a distinct non-zero value per field, to see it arrive
		v := iv.FieldByIndex(f.Index)
		switch v.Kind() {
		case reflect.Int:
			v.SetInt(int64(i + 1))
		case reflect.Float32, reflect.Float64:
			v.SetFloat(float64(i) + 0.5)
		case reflect.Bool:
			v.SetBool(true)
		default:
			t.Fatalf("model.%s: kind %v not covered by this test", name, v.Kind())
		}
	}
	out := reflect.ValueOf(in.fields())
	for i := range rt.NumField() {
		name := strings.Split(rt.Field(i).Tag.Get("yaml"), ",")[0]
		f, ok := spec[name]
		if !ok {
			continue
		}
		if got, want := out.Field(i).Interface(), iv.FieldByIndex(f.Index).Interface(); got != want {
			t.Errorf("model.%s: fields() gives %v, the spec says %v", name, got, want)
		}
	}
	if len(spec) != rt.NumField()+1 { // + preset
		t.Errorf("the spec's model section has %d fields, the engine's %d (+ preset)", len(spec), rt.NumField())
	}
}

func TestVersionAndZeroCoef(t *testing.T) {
	s := mustParse(t, "version: 1\nname: x\nlbl: {coef: 0, bias_rate: 0.001}\n")
	if s.LBL.Coef != 0 {
		t.Fatalf("lbl.coef 0 read as %v", s.LBL.Coef)
	}
	c, err := s.TrainConfig()
	if err != nil || c.LBL.Coef != 0 {
		t.Fatalf("train config lbl %+v %v", c.LBL, err)
	}
	if s := mustParse(t, "name: x\n"); s.LBL.Coef != DefaultLBLCoef {
		t.Fatalf("absent lbl.coef read as %v", s.LBL.Coef)
	}
	if _, err := Parse([]byte("version: 2\nname: x\n")); err == nil || !strings.Contains(err.Error(), "version = 2") {
		t.Fatalf("version 2: %v", err)
	}
}
