package train

import (
	"context"
	"slices"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
)

func committedSteps(t *testing.T, dir string) []int64 {
	t.Helper()
	st, err := checkpoint.NewDirStorage(dir)
	if err != nil {
		t.Fatal(err)
	}
	ms, err := checkpoint.NewStorageCatalogue(st).List(context.Background(), "run")
	if err != nil {
		t.Fatal(err)
	}
	var steps []int64
	for _, m := range ms {
		steps = append(steps, m.Step)
	}
	return steps
}

// keep_best keeps the checkpoint with the lowest validation loss besides
// the newest keep_last; checkpoints taken without an evaluation have no
// loss and are kept only by recency.
func TestRetentionKeepsBest(t *testing.T) {
	cfg, corpus := smallRun(t, "global", 8)
	cfg.EvalEvery = 4
	cfg.Checkpoint = CheckpointConfig{Dir: t.TempDir(), Every: 2, KeepLast: 1, KeepBest: 1}
	tr, err := NewWithCorpus(cfg, corpus, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	// saved 2, 4, 6, 8; only 4 was evaluated (8's evaluation comes after
	// the final save)
	if got := committedSteps(t, cfg.Checkpoint.Dir); !slices.Equal(got, []int64{8, 4}) {
		t.Fatalf("kept %v, want [8 4] (newest, and best of the evaluated)", got)
	}
}

// every_minutes saves on time alone; with a tiny interval, every step.
func TestCheckpointEveryMinutes(t *testing.T) {
	cfg, corpus := smallRun(t, "global", 4)
	cfg.Checkpoint = CheckpointConfig{Dir: t.TempDir(), EveryMinutes: 1e-9, KeepLast: 10}
	tr, err := NewWithCorpus(cfg, corpus, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if got := committedSteps(t, cfg.Checkpoint.Dir); !slices.Equal(got, []int64{4, 3, 2, 1}) {
		t.Fatalf("saved %v, want every step", got)
	}
}
