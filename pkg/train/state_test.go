package train

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
)

// A run stopped after step 4 and resumed from its snapshot in a fresh
// trainer produces bitwise the loss curve of the uninterrupted run.
func TestResumeIsBitwiseDeterministic(t *testing.T) {
	const total, stop = 8, 4
	run := func(tr *Trainer, n int) []float64 {
		var out []float64
		for i := 0; i < n; i++ {
			sm, err := tr.TrainStep(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, sm.Loss, sm.Aux, sm.GradNorm)
		}
		return out
	}
	cfg, corpus := smallRun(t, "global", total)
	cfg.LBL.BiasRate = 1e-3 // expert bias state must survive too
	cfg.Optim.ClipNorm = 1
	whole, err := NewWithCorpus(cfg, corpus, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer whole.Close()
	want := run(whole, total)

	first, err := NewWithCorpus(cfg, corpus, nil)
	if err != nil {
		t.Fatal(err)
	}
	run(first, stop)
	snap, err := first.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	first.Close()
	second, err := NewWithCorpus(cfg, corpus, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if err := second.Restore(snap); err != nil {
		t.Fatal(err)
	}
	got := run(second, total-stop)
	for i := range got {
		if got[i] != want[stop*3+i] {
			t.Fatalf("resumed value %d = %v, uninterrupted %v", i, got[i], want[stop*3+i])
		}
	}
}

func TestRestoreRefusesMismatch(t *testing.T) {
	cfg, corpus := smallRun(t, "global", 4)
	tr, err := NewWithCorpus(cfg, corpus, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	s, err := tr.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	s.Params = s.Params[:10]
	if err := tr.Restore(s); !errors.Is(err, ErrState) {
		t.Fatalf("short params: %v", err)
	}
	if s, err = tr.Snapshot(); err != nil {
		t.Fatal(err)
	}
	s.Step = 99
	if err := tr.Restore(s); !errors.Is(err, ErrState) {
		t.Fatalf("step past the run: %v", err)
	}
}

// Through real checkpoint files: a run that dies after step 5 (its save of
// step 4 committed, nothing after) resumes from step 4 and reproduces the
// uninterrupted run bitwise. Corrupting the newest checkpoint makes resume
// fall back to the previous one.
func TestCheckpointResumeFromFiles(t *testing.T) {
	cfg, corpus := smallRun(t, "global", 8)
	whole, err := NewWithCorpus(cfg, corpus, nil)
	if err != nil {
		t.Fatal(err)
	}
	var want []float64
	for i := 0; i < 8; i++ {
		sm, err := whole.TrainStep(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, sm.Loss)
	}
	whole.Close()

	cfg.Checkpoint = CheckpointConfig{Dir: t.TempDir(), Every: 2, KeepLast: 5}
	crashed, err := NewWithCorpus(cfg, corpus, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		if _, err := crashed.TrainStep(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := crashed.checkpointAfterStep(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if err := crashed.ckpt.waitCommit(); err != nil { // step 4's commit runs in the background
		t.Fatal(err)
	}
	if got := crashed.ckpt.Saved; len(got) != 2 || got[1] != 4 {
		t.Fatalf("committed checkpoints %v, want [2 4]", got)
	}
	crashed.Close() // dies after step 5: no save of step 5 exists

	cfg.Resume = true
	resumed, err := NewWithCorpus(cfg, corpus, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resumed.Step() != 4 {
		t.Fatalf("resumed at step %d, want 4", resumed.Step())
	}
	for i := 4; i < 8; i++ {
		sm, err := resumed.TrainStep(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if sm.Loss != want[i] {
			t.Fatalf("step %d after resume: loss %v, uninterrupted %v", i+1, sm.Loss, want[i])
		}
	}
	resumed.Close()

	// flip a byte in the newest checkpoint's state shard
	path := filepath.Join(cfg.Checkpoint.Dir, "run", "step-000000000004", "rank-0000", "state.bin")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	raw[len(raw)/2] ^= 0x40
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	fallback, err := NewWithCorpus(cfg, corpus, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer fallback.Close()
	if fallback.Step() != 2 {
		t.Fatalf("with step 4 corrupt, resumed at step %d, want 2", fallback.Step())
	}
}

// TestResumeFallsBackPastUnusableState: a checkpoint whose shards hash as
// the catalogue says but whose state cannot be restored (the hostile
// tester's forged entry: tensors missing, NaNs, bytes that do not decode)
// is passed over for the previous one, as a corrupt shard is.
func TestResumeFallsBackPastUnusableState(t *testing.T) {
	t.Setenv(EventsEnv, "1")
	cfg, corpus := smallRun(t, "global", 8)
	cfg.Checkpoint = CheckpointConfig{Dir: t.TempDir(), Every: 2, KeepLast: 5}
	tr, err := NewWithCorpus(cfg, corpus, nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 4 {
		if _, err := tr.TrainStep(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := tr.checkpointAfterStep(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if err := tr.ckpt.finish(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := tr.ckpt.waitCommit(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	mgr := tr.ckpt.mgr
	m4, err := mgr.Catalogue().Get(ctx, "run", 4)
	if err != nil {
		t.Fatal(err)
	}
	state := rankShards(0).state(0, 1)
	raw, err := checkpoint.ReadShardVerified(ctx, mgr.Storage(), checkpoint.StepPrefix("run", 4), m4, state)
	if err != nil {
		t.Fatal(err)
	}
	good, err := checkpoint.DecodeShard(raw)
	if err != nil {
		t.Fatal(err)
	}
	tr.Close()

	// each forgery is committed as a newer step whose hashes match
	step := int64(4)
	forge := func(state []byte) int64 {
		step += 2
		m := m4
		m.Step, m.Shards = step, nil
		for _, sh := range m4.Shards {
			b, err := checkpoint.ReadShardVerified(ctx, mgr.Storage(), checkpoint.StepPrefix("run", 4), m4, sh.Name)
			if err != nil {
				t.Fatal(err)
			}
			if sh.Name == rankShards(0).state(0, 1) {
				b = state
			}
			n, sum, err := mgr.Storage().Put(ctx, checkpoint.StepPrefix("run", step)+sh.Name, bytes.NewReader(b))
			if err != nil {
				t.Fatal(err)
			}
			sh.Size, sh.SHA256 = n, sum
			m.Shards = append(m.Shards, sh)
		}
		if err := mgr.Catalogue().Commit(ctx, m); err != nil {
			t.Fatal(err)
		}
		return step
	}
	encode := func(ts []checkpoint.Tensor) []byte {
		b, err := checkpoint.EncodeShard(ts)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	withNaN := slices.Clone(good)
	withNaN[0].Data = slices.Clone(withNaN[0].Data)
	withNaN[0].Data[3] = float32(math.NaN())
	for name, forged := range map[string][]byte{
		"a tensor missing":   encode(good[1:]),
		"a NaN":              encode(withNaN),
		"bytes not a shard":  []byte("not a tensor file at all"),
		"a tensor cut short": encode(append([]checkpoint.Tensor{{Name: good[0].Name, Shape: []int{1}, Data: good[0].Data[:1]}}, good[1:]...)),
	} {
		t.Run(name, func(t *testing.T) {
			bad := forge(forged)
			cfg.Resume = true
			var events bytes.Buffer
			resumed, err := NewWithCorpus(cfg, corpus, &events)
			if err != nil {
				t.Fatalf("resume past a forged step %d: %v", bad, err)
			}
			defer resumed.Close()
			if resumed.Step() != 4 {
				t.Fatalf("resumed at step %d, want 4 (step %d is forged)", resumed.Step(), bad)
			}
			if !strings.Contains(events.String(), fmt.Sprintf("checkpoint of step %d unusable", bad)) {
				t.Errorf("no CheckpointUnusable event for step %d: %q", bad, events.String())
			}
			// dropped, so that the resumed run may commit that step again
			if _, err := mgr.Catalogue().Get(ctx, "run", bad); err == nil {
				t.Errorf("the unusable step %d is still in the catalogue", bad)
			}
		})
	}
}

// TestResumeAtTheLastStep: a run resumed from the checkpoint of its last
// step has nothing to train: it evaluates and reports (no new save, which
// the catalogue would refuse as not newer), and a run resumed mid-way
// reports the rate of its own steps, its tokens counting every step.
func TestResumeAtTheLastStep(t *testing.T) {
	cfg, corpus := smallRun(t, "global", 4)
	cfg.Checkpoint = CheckpointConfig{Dir: t.TempDir(), Every: 2, KeepLast: 5}
	first, err := NewWithCorpus(cfg, corpus, nil)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := first.Run(context.Background())
	first.Close()
	if err != nil {
		t.Fatal(err)
	}
	perStep := int64(cfg.Accumulation * cfg.MicroBatch * cfg.Model.SeqLen)
	if rep.ResumedFrom != 0 || rep.Tokens != 4*perStep || math.Abs(rep.TokensPerS*rep.Seconds-float64(rep.Tokens)) > 1e-6*float64(rep.Tokens) {
		t.Fatalf("first run's report: resumed from %d, %d tokens, %v tokens/s over %v s", rep.ResumedFrom, rep.Tokens, rep.TokensPerS, rep.Seconds)
	}

	cfg.Resume = true
	again, err := NewWithCorpus(cfg, corpus, nil)
	if err != nil {
		t.Fatal(err)
	}
	rep2, err := again.Run(context.Background())
	if err != nil {
		t.Fatalf("a run resumed at its last step: %v", err)
	}
	if got := again.ckpt.Saved; len(got) != 0 {
		t.Errorf("a run that trained nothing saved %v", got)
	}
	again.Close()
	if rep2.Steps != 4 || rep2.ResumedFrom != 4 || rep2.Tokens != 4*perStep || rep2.TokensPerS != 0 {
		t.Errorf("report of a run resumed at its last step: %d steps, resumed from %d, %d tokens, %v tokens/s", rep2.Steps, rep2.ResumedFrom, rep2.Tokens, rep2.TokensPerS)
	}
	if math.Abs(rep2.Domains[0].BitsPerByte-rep.Domains[0].BitsPerByte) > 1e-9 {
		t.Errorf("the resumed model's validation bits/byte %v, the saved run's %v", rep2.Domains[0].BitsPerByte, rep.Domains[0].BitsPerByte)
	}
	var out bytes.Buffer
	rep2.Print(&out)
	if !strings.Contains(out.String(), "resumed at step 4: nothing left to train") {
		t.Errorf("the report says:\n%s", out.String())
	}

	// from step 2 of 6: 4 steps of its own
	cfg.Steps, cfg.Checkpoint.ResumeStep = 6, 2
	mid, err := NewWithCorpus(cfg, corpus, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer mid.Close()
	rep3, err := mid.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if rep3.ResumedFrom != 2 || rep3.Tokens != 6*perStep || math.Abs(rep3.TokensPerS*rep3.Seconds-float64(4*perStep)) > 1e-6*float64(rep3.Tokens) {
		t.Errorf("run resumed from step 2 of 6: resumed from %d, %d tokens, %v tokens/s over %v s (want the rate of 4 steps' %d tokens)",
			rep3.ResumedFrom, rep3.Tokens, rep3.TokensPerS, rep3.Seconds, 4*perStep)
	}
}
