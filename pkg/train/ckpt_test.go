package train

import (
	"context"
	"fmt"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
)

// splitTensors keeps every tensor once, in order, in at most n non-empty
// runs.
func TestSplitTensors(t *testing.T) {
	var ts []checkpoint.Tensor
	for i, n := range []int{5, 100, 1, 1, 40, 40, 3, 70, 2} {
		ts = append(ts, checkpoint.Tensor{Name: fmt.Sprint(i), Data: make([]float32, n)})
	}
	for n := 1; n <= 12; n++ {
		parts := splitTensors(ts, n)
		if len(parts) < 1 || len(parts) > n {
			t.Fatalf("n=%d: %d parts", n, len(parts))
		}
		k := 0
		for _, p := range parts {
			if len(p) == 0 {
				t.Fatalf("n=%d: empty part in %v", n, parts)
			}
			for _, tn := range p {
				if tn.Name != fmt.Sprint(k) {
					t.Fatalf("n=%d: tensor %s at position %d", n, tn.Name, k)
				}
				k++
			}
		}
		if k != len(ts) {
			t.Fatalf("n=%d: %d tensors, want %d", n, k, len(ts))
		}
	}
}

// A state saved in several parts (state-I.bin, written side by side)
// resumes bitwise like one saved whole.
func TestCheckpointSplitStateResume(t *testing.T) {
	saved := stateParts
	stateParts = func(int) int { return 3 }
	t.Cleanup(func() { stateParts = saved })

	cfg, corpus := smallRun(t, "global", 6)
	whole, err := NewWithCorpus(cfg, corpus, nil)
	if err != nil {
		t.Fatal(err)
	}
	var want []float64
	for i := 0; i < 6; i++ {
		sm, err := whole.TrainStep(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, sm.Loss)
	}
	whole.Close()

	cfg.Checkpoint = CheckpointConfig{Dir: t.TempDir(), Every: 3, KeepLast: 2}
	first, err := NewWithCorpus(cfg, corpus, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := first.TrainStep(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := first.checkpointAfterStep(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if err := first.ckpt.finish(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := first.ckpt.waitCommit(); err != nil {
		t.Fatal(err)
	}
	m, err := first.ckpt.mgr.Catalogue().Latest(context.Background(), "run")
	if err != nil || m.Step != 3 {
		t.Fatalf("latest: step %d, %v", m.Step, err)
	}
	if got := rankShards(0).statesIn(m); fmt.Sprint(got) != "[rank-0000/state-0.bin rank-0000/state-1.bin rank-0000/state-2.bin]" {
		t.Fatalf("state shards %v", got)
	}
	first.Close()

	stateParts = saved
	cfg.Resume = true
	resumed, err := NewWithCorpus(cfg, corpus, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resumed.Close()
	if resumed.Step() != 3 {
		t.Fatalf("resumed at step %d, want 3", resumed.Step())
	}
	for i := 3; i < 6; i++ {
		sm, err := resumed.TrainStep(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if sm.Loss != want[i] {
			t.Fatalf("step %d after resume: loss %v, uninterrupted %v", i+1, sm.Loss, want[i])
		}
	}
}

func TestStateShardNames(t *testing.T) {
	m := checkpoint.Manifest{Shards: []checkpoint.ShardInfo{
		{Name: "rank-0001/state-10.bin", Kind: checkpoint.KindParams},
		{Name: "rank-0001/state-2.bin", Kind: checkpoint.KindParams},
		{Name: "rank-0001/meta.json", Kind: checkpoint.KindData},
		{Name: "rank-0000/state.bin", Kind: checkpoint.KindParams},
		{Name: "rank-0001/state-x.bin", Kind: checkpoint.KindParams},
		{Name: "rank-0001/state-3.bin", Kind: checkpoint.KindData},
	}}
	if got := fmt.Sprint(rankShards(1).statesIn(m)); got != "[rank-0001/state-2.bin rank-0001/state-10.bin]" {
		t.Fatalf("rank 1: %s", got)
	}
	if got := fmt.Sprint(rankShards(0).statesIn(m)); got != "[rank-0000/state.bin]" {
		t.Fatalf("rank 0: %s", got)
	}
}

// copyParallel is copy, pair by pair, whatever the split across
// goroutines.
func TestCopyParallel(t *testing.T) {
	for _, sizes := range [][]int{{}, {0}, {5, 0, 7}, {3 << 20, 1, 2<<20 + 5}, {copyParallelMin, copyParallelMin - 1, 9}} {
		var pairs [][2][]float32
		var want [][]float32
		for i, n := range sizes {
			src := make([]float32, n)
			for j := range src {
				src[j] = float32(i*1000003 + j)
			}
			dst := make([]float32, n)
			pairs = append(pairs, [2][]float32{dst, src})
			want = append(want, append([]float32(nil), src...))
		}
		copyParallel(pairs)
		for i, p := range pairs {
			for j := range p[0] {
				if p[0][j] != want[i][j] {
					t.Fatalf("sizes %v: pair %d value %d: %v, want %v", sizes, i, j, p[0][j], want[i][j])
				}
			}
		}
	}
}

// BenchmarkSnapshotCopy copies a tiny-preset-sized state (params and both
// moments, about 165 MB) into reused buffers: plain copies against
// copyParallel.
func BenchmarkSnapshotCopy(b *testing.B) {
	const n = 13_800_000
	var pairs [][2][]float32
	for range 3 {
		pairs = append(pairs, [2][]float32{make([]float32, n), make([]float32, n)})
	}
	copyParallel(pairs) // touch every page first
	b.Run("serial", func(b *testing.B) {
		b.SetBytes(3 * 4 * n)
		for b.Loop() {
			for _, p := range pairs {
				copy(p[0], p[1])
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.SetBytes(3 * 4 * n)
		for b.Loop() {
			copyParallel(pairs)
		}
	})
}
