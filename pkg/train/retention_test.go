package train

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
	"github.com/switchyard-ml/switchyard/pkg/data"
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
	cfg.Checkpoint = CheckpointConfig{Dir: t.TempDir(), Every: 2, KeepLast: 2, KeepBest: 1}
	trainToEnd(t, cfg, corpus)
	// saved 2, 4, 6, 8; 4 and 8 were evaluated (8 by the final
	// evaluation, which comes before the final commit); 6 and 8 are the
	// newest, 4 is kept only if its loss is the lower
	st, err := checkpoint.NewDirStorage(cfg.Checkpoint.Dir)
	if err != nil {
		t.Fatal(err)
	}
	ms, err := checkpoint.NewStorageCatalogue(st).List(context.Background(), "run")
	if err != nil {
		t.Fatal(err)
	}
	loss := map[int64]float64{}
	var got []int64
	for _, m := range ms {
		got = append(got, m.Step)
		if v, ok := m.ValLoss(); ok {
			loss[m.Step] = v
		}
	}
	if _, ok := loss[8]; !ok || len(loss) < 1 {
		t.Fatalf("the final checkpoint has no validation loss: %v", loss)
	}
	if _, ok := loss[6]; ok {
		t.Errorf("step 6, never evaluated, has a validation loss: %v", loss)
	}
	want := []int64{8, 6}
	if v4, ok := loss[4]; ok && v4 < loss[8] {
		want = []int64{8, 6, 4}
	} else if ok {
		t.Errorf("step 4 kept with loss %v, not below the final %v", v4, loss[8])
	}
	if !slices.Equal(got, want) {
		t.Fatalf("kept %v (losses %v), want %v", got, loss, want)
	}
}

// every_minutes saves on time alone; with a tiny interval, every step.
func TestCheckpointEveryMinutes(t *testing.T) {
	cfg, corpus := smallRun(t, "global", 4)
	cfg.Checkpoint = CheckpointConfig{Dir: t.TempDir(), EveryMinutes: 1e-9, KeepLast: 10}
	trainToEnd(t, cfg, corpus)
	if got := committedSteps(t, cfg.Checkpoint.Dir); !slices.Equal(got, []int64{4, 3, 2, 1}) {
		t.Fatalf("saved %v, want every step", got)
	}
}

// A resumed run first removes the shards of a save that never committed
// (an attempt that died mid-save) and keeps every committed checkpoint.
func TestResumeCollectsUncommittedShards(t *testing.T) {
	cfg, corpus := smallRun(t, "global", 4)
	cfg.Checkpoint = CheckpointConfig{Dir: t.TempDir(), Every: 2, KeepLast: 5}
	trainToEnd(t, cfg, corpus)
	junk := filepath.Join(cfg.Checkpoint.Dir, "run", "step-000000000006", "rank-0000", "state.bin")
	if err := os.MkdirAll(filepath.Dir(junk), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(junk, []byte("half a shard"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.Resume, cfg.Steps = true, 6
	tr, err := NewWithCorpus(cfg, corpus, nil)
	if err != nil {
		t.Fatal(err)
	}
	if tr.Step() != 4 {
		t.Fatalf("resumed at step %d, want 4", tr.Step())
	}
	if _, err := os.Stat(junk); !os.IsNotExist(err) {
		t.Fatalf("the uncommitted shard is still there: %v", err)
	}
	if _, err := tr.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if got := committedSteps(t, cfg.Checkpoint.Dir); !slices.Equal(got, []int64{6, 4, 2}) {
		t.Fatalf("committed %v", got)
	}
}

// trainToEnd runs cfg to its last step and closes the trainer.
func trainToEnd(t *testing.T, cfg Config, corpus *data.Corpus) {
	t.Helper()
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
}
