package train

import (
	"context"
	"errors"
	"testing"
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
	snap := first.Snapshot()
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
	s := tr.Snapshot()
	s.Params = s.Params[:10]
	if err := tr.Restore(s); !errors.Is(err, ErrState) {
		t.Fatalf("short params: %v", err)
	}
	s = tr.Snapshot()
	s.Step = 99
	if err := tr.Restore(s); !errors.Is(err, ErrState) {
		t.Fatalf("step past the run: %v", err)
	}
}
