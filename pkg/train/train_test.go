package train

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/data"
	"github.com/switchyard-ml/switchyard/pkg/kernels"
	"github.com/switchyard-ml/switchyard/pkg/model"
)

// smallRun is a run small enough for a unit test: a 2-layer model on a
// 3-domain generated corpus.
func smallRun(t *testing.T, mode string, steps int) (Config, *data.Corpus) {
	t.Helper()
	cfg := Config{
		Model:        &model.Config{Vocab: 256, Dim: 32, Layers: 2, Heads: 2, SeqLen: 32, Experts: 4, TopK: 2, Hidden: 32},
		LBL:          LBLConfig{Mode: mode, Coef: 0.01},
		MicroBatch:   4,
		Accumulation: 2,
		Steps:        steps,
		Seed:         7,
	}
	cfg.Optim.LR = 3e-3
	cfg.Optim.WarmupSteps = 2
	cfg.Data.EvalSeqs = 8
	cfg.Defaults()
	docs, err := data.Demo(data.DemoOptions{Seed: 1, BytesPerDomain: 16 << 10, Domains: []string{"arith", "records", "logs"}})
	if err != nil {
		t.Fatal(err)
	}
	corpus, err := data.Build(docs, data.BuildConfig{SeqLen: 32, ValFraction: 0.1, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	return cfg, corpus
}

func TestTrainingLearnsAndReports(t *testing.T) {
	cfg, corpus := smallRun(t, "global", 30)
	cfg.OutDir = t.TempDir()
	cfg.EvalEvery = 10
	var progress bytes.Buffer
	tr, err := NewWithCorpus(cfg, corpus, &progress)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	first, err := tr.TrainStep(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	rep, err := tr.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if rep.Steps != 30 || rep.FinalLoss >= first.Loss-0.5 {
		t.Fatalf("loss did not fall: first %.3f final %.3f after %d steps", first.Loss, rep.FinalLoss, rep.Steps)
	}
	for _, d := range rep.Domains {
		if d.Tokens == 0 || d.BitsPerByte <= 0 || d.BitsPerByte > 8.5 || d.UnigramBits <= 0 {
			t.Errorf("domain report %+v", d)
		}
	}
	if len(rep.Experts) != 2*3 || len(rep.GlobalLoad) != 2 {
		t.Fatalf("expert report: %d rows, %d layers", len(rep.Experts), len(rep.GlobalLoad))
	}
	for _, s := range rep.Experts {
		var sum float64
		for _, f := range s.Frequency {
			sum += f
		}
		if sum < 0.999 || sum > 1.001 {
			t.Errorf("layer %d %s: frequencies sum to %v", s.Layer, s.Domain, sum)
		}
	}
	var out bytes.Buffer
	rep.Print(&out)
	if !strings.Contains(out.String(), "val bits/byte") || !strings.Contains(out.String(), "top-expert share") {
		t.Fatalf("printed report lacks its tables:\n%s", out.String())
	}
	if !strings.Contains(progress.String(), "step 30/30") {
		t.Fatalf("progress lacks the last step:\n%s", progress.String())
	}
	lines, err := os.ReadFile(filepath.Join(cfg.OutDir, "metrics.jsonl"))
	// Run wrote one line per step it took (the first step was taken by
	// hand) and the last again with the final evaluation
	ls := strings.Split(strings.TrimSuffix(string(lines), "\n"), "\n")
	if err != nil || len(ls) != 30 {
		t.Fatalf("metrics.jsonl: %v, %d lines", err, len(ls))
	}
	var evals []int
	for i, l := range ls {
		var m StepMetrics
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatal(err)
		}
		if m.ValBPB != nil {
			evals = append(evals, m.Step)
			if len(m.ValBPB) != 3 || m.ValBPB["arith"] <= 0 {
				t.Errorf("line %d: val bits/byte %v", i+1, m.ValBPB)
			}
		}
		if i == 29 && (m.Step != 30 || m.ValBPB["logs"] != rep.Domains[slices.IndexFunc(rep.Domains, func(d DomainReport) bool { return d.Domain == "logs" })].BitsPerByte) {
			t.Errorf("the last line (step %d) does not carry the final evaluation %v", m.Step, m.ValBPB)
		}
	}
	if !slices.Equal(evals, []int{10, 20, 30}) {
		t.Errorf("evaluations at steps %v, want 10, 20 and the final one at 30", evals)
	}
	if _, err := os.Stat(filepath.Join(cfg.OutDir, "report.json")); err != nil {
		t.Fatal(err)
	}
}

func TestSameSeedSameLossCurve(t *testing.T) {
	curve := func(mode string) []float64 {
		cfg, corpus := smallRun(t, mode, 4)
		tr, err := NewWithCorpus(cfg, corpus, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		var out []float64
		for i := 0; i < 4; i++ {
			sm, err := tr.TrainStep(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, sm.Loss, sm.Aux)
		}
		return out
	}
	a, b := curve("global"), curve("global")
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("run 1 %v\nrun 2 %v", a, b)
		}
	}
	if m := curve("micro"); m[1] == a[1] {
		t.Fatalf("micro and global LBL gave the same auxiliary loss %v", m[1])
	}
}

// The fast kernels (assembly SGEMM, vectorised element-wise) and the
// reference kernels (float64-accumulating triple-loop SGEMM, plain loops)
// give the same loss curve over 50 steps within float32 tolerance: the
// curves differ only by rounding, which training does not amplify beyond
// 1e-3 relative here (measured: see the log line).
func TestFastAndReferenceKernelsSameCurve(t *testing.T) {
	if testing.Short() {
		t.Skip("50 steps with reference kernels")
	}
	curve := func(k string) []float64 {
		if err := kernels.Use(k); err != nil {
			t.Fatal(err)
		}
		defer kernels.Use("auto")
		cfg, corpus := smallRun(t, "global", 50)
		cfg.Model.Dim, cfg.Model.Hidden, cfg.MicroBatch, cfg.Accumulation = 16, 16, 2, 2
		tr, err := NewWithCorpus(cfg, corpus, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		var out []float64
		for i := 0; i < 50; i++ {
			sm, err := tr.TrainStep(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, sm.Loss)
		}
		return out
	}
	fast, ref := curve("auto"), curve("reference")
	worst := 0.0
	for i := range fast {
		worst = max(worst, math.Abs(fast[i]-ref[i])/ref[i])
	}
	t.Logf("worst relative difference over 50 steps: %.2e (loss %.4f -> %.4f)", worst, ref[0], ref[49])
	if worst == 0 {
		t.Fatal("fast and reference kernels gave bitwise-identical curves: the switch is not in effect")
	}
	if worst > 1e-3 || ref[49] > ref[0]-0.3 {
		t.Fatalf("curves: fast %v\nreference %v", fast, ref)
	}
}

// max_seconds ends a run at a step boundary with the usual evaluation and
// report, saying why it stopped; the schedule still spans Steps.
func TestMaxSecondsStopsAtAStepWithAReport(t *testing.T) {
	cfg, corpus := smallRun(t, "global", 100000)
	cfg.MaxSeconds = 0.2
	tr, err := NewWithCorpus(cfg, corpus, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	start := time.Now()
	rep, err := tr.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if rep.Steps < 1 || rep.Steps >= cfg.Steps || !strings.Contains(rep.Stopped, "max_seconds 0.2") {
		t.Fatalf("steps %d of %d, stopped %q", rep.Steps, cfg.Steps, rep.Stopped)
	}
	if len(rep.Domains) == 0 || rep.Domains[0].BitsPerByte <= 0 {
		t.Fatalf("no evaluation in the report: %+v", rep.Domains)
	}
	if el := time.Since(start); el < 200*time.Millisecond {
		t.Fatalf("stopped after %v, before max_seconds", el)
	}
	t.Logf("%d steps in %.2f s: %s", rep.Steps, rep.Seconds, rep.Stopped)
}

// TestDomainOrder: with data.order domain every micro-batch holds one
// domain and the steps still visit them all; a checkpointed run resumes
// the same stream (the loader's position is all it needs).
func TestDomainOrder(t *testing.T) {
	cfg, corpus := smallRun(t, "micro", 4)
	cfg.Data.Order = "domain"
	tr, err := NewWithCorpus(cfg, corpus, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	seen := map[int]bool{}
	for i := range 12 {
		tr.fillTrain(i % cfg.Accumulation)
		b := tr.eng.trainBatch()
		for _, d := range b.Domain[:b.B] {
			if d != b.Domain[0] {
				t.Fatalf("a micro-batch of domains %v", b.Domain[:b.B])
			}
		}
		seen[b.Domain[0]] = true
	}
	if len(seen) != 3 {
		t.Errorf("12 micro-batches saw domains %v of 3", seen)
	}
	cfg.Data.Order = "sorted"
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "data.order") {
		t.Errorf("data.order sorted: %v", err)
	}
}

// TestDomainMixedOrder: data.order domain_mixed draws the global batches
// of domain order and deals each step's sequences to its micro-batches at
// random: the same sequences per step, micro-batches that mix domains,
// the same deal for the same seed and step, and a step that trains.
func TestDomainMixedOrder(t *testing.T) {
	steps := func(order string, n int) [][][]int { // [step][micro-batch]seqs
		cfg, corpus := smallRun(t, "micro", 4)
		cfg.Accumulation = 4
		cfg.Data.Order = order
		tr, err := NewWithCorpus(cfg, corpus, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		var out [][][]int
		for s := range n {
			var step [][]int
			for m := range cfg.Accumulation {
				tr.fillTrain(m)
				step = append(step, append([]int(nil), tr.seqIdx...))
			}
			out = append(out, step)
			tr.step = s + 1
		}
		return out
	}
	domain, mixed, again := steps("domain", 6), steps("domain_mixed", 6), steps("domain_mixed", 6)
	cfg, corpus := smallRun(t, "micro", 4)
	domainOf := func(seq int) int {
		_, d := corpus.Fill(data.Train, seq, make([]int32, cfg.Model.SeqLen), make([]int32, cfg.Model.SeqLen))
		return d
	}
	mixedMicro := 0
	for s := range domain {
		var a, b []int
		for m := range domain[s] {
			a, b = append(a, domain[s][m]...), append(b, mixed[s][m]...)
			doms := map[int]bool{}
			for _, q := range mixed[s][m] {
				doms[domainOf(q)] = true
			}
			if len(doms) > 1 {
				mixedMicro++
			}
		}
		if !slices.Equal(slices.Sorted(slices.Values(a)), slices.Sorted(slices.Values(b))) {
			t.Fatalf("step %d: domain_mixed drew %v, domain order %v", s, b, a)
		}
		if slices.Equal(a, b) {
			t.Errorf("step %d: not dealt anew: %v", s, b)
		}
	}
	if mixedMicro < 12 {
		t.Errorf("%d of 24 micro-batches mix domains", mixedMicro)
	}
	if !reflect.DeepEqual(mixed, again) {
		t.Error("the same seed dealt the steps differently")
	}
	cfg.Data.Order = "domain_mixed"
	tr, err := NewWithCorpus(cfg, corpus, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	sm, err := tr.TrainStep(context.Background())
	if err != nil || !(sm.Loss > 0) {
		t.Fatalf("a domain_mixed step: %v, loss %v", err, sm.Loss)
	}
}
