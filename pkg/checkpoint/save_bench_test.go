package checkpoint_test

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
)

// benchTensors is about the size of the tiny preset's state on one rank
// (params + AdamW moments, about 160 MB) in tensors of mixed sizes.
func benchTensors() []checkpoint.Tensor {
	var ts []checkpoint.Tensor
	sizes := []int{1 << 20, 3 << 20, 64 << 10, 4 << 10, 2 << 20}
	total := 0
	for i := 0; total < 40<<20; i++ {
		n := sizes[i%len(sizes)]
		d := make([]float32, n)
		for j := range d {
			d[j] = float32(i*j) * 1e-3
		}
		for _, pre := range []string{"", "adam_m/", "adam_v/"} {
			ts = append(ts, checkpoint.Tensor{Name: fmt.Sprintf("%sw%d", pre, i), Shape: []int{n}, Data: d})
		}
		total += 3 * n
	}
	return ts
}

// benchDir is where the write benchmarks put their files: $CKPT_BENCH_DIR
// (to measure a particular filesystem) or a temporary directory.
func benchDir(b *testing.B) string {
	if d := os.Getenv("CKPT_BENCH_DIR"); d != "" {
		dir, err := os.MkdirTemp(d, "bench-")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(dir) })
		return dir
	}
	return b.TempDir()
}

// BenchmarkSaveShardsDir writes one rank's tensor shard durably, as a
// background save does.
func BenchmarkSaveShardsDir(b *testing.B) {
	st, err := checkpoint.NewDirStorage(benchDir(b))
	if err != nil {
		b.Fatal(err)
	}
	ts := benchTensors()
	var n int64
	for _, t := range ts {
		n += 4 * int64(len(t.Data))
	}
	b.SetBytes(n)
	step := int64(0)
	for b.Loop() {
		step++
		prefix := checkpoint.StepPrefix("bench", step)
		shards := []checkpoint.ShardSource{checkpoint.TensorShard("rank-0000/state.bin", 0, checkpoint.KindParams, ts)}
		if _, err := checkpoint.SaveShards(context.Background(), st, prefix, shards); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		_ = st.Delete(context.Background(), prefix+"rank-0000/state.bin")
		b.StartTimer()
	}
}

// BenchmarkVerifyDir re-reads and hashes a freshly written shard, as
// rank 0's commit does.
func BenchmarkVerifyDir(b *testing.B) {
	st, err := checkpoint.NewDirStorage(benchDir(b))
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	prefix := checkpoint.StepPrefix("bench", 1)
	infos, err := checkpoint.SaveShards(ctx, st, prefix, []checkpoint.ShardSource{checkpoint.TensorShard("rank-0000/state.bin", 0, checkpoint.KindParams, benchTensors())})
	if err != nil {
		b.Fatal(err)
	}
	m := checkpoint.Manifest{Job: "bench", Step: 1, Layout: checkpoint.Layout{TP: 1, DP: 1, EP: 1}, Shards: infos}
	b.SetBytes(infos[0].Size)
	for b.Loop() {
		if err := checkpoint.Verify(ctx, st, prefix, m); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSaveShardsDirSplit writes the same tensors as two shards side
// by side (one SaveShards each), so two cores hash.
func BenchmarkSaveShardsDirSplit(b *testing.B) {
	st, err := checkpoint.NewDirStorage(benchDir(b))
	if err != nil {
		b.Fatal(err)
	}
	ts := benchTensors()
	var n int64
	for _, t := range ts {
		n += 4 * int64(len(t.Data))
	}
	b.SetBytes(n)
	step := int64(0)
	for b.Loop() {
		step++
		prefix := checkpoint.StepPrefix("bench", step)
		errs := make(chan error, 2)
		for i, part := range [][]checkpoint.Tensor{ts[:len(ts)/2], ts[len(ts)/2:]} {
			go func() {
				_, err := checkpoint.SaveShards(context.Background(), st, prefix, []checkpoint.ShardSource{checkpoint.TensorShard(fmt.Sprintf("rank-0000/state-%d.bin", i), 0, checkpoint.KindParams, part)})
				errs <- err
			}()
		}
		for range 2 {
			if err := <-errs; err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		_ = st.Delete(context.Background(), prefix+"rank-0000/state-0.bin")
		_ = st.Delete(context.Background(), prefix+"rank-0000/state-1.bin")
		b.StartTimer()
	}
}
