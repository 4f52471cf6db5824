package checkpoint_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
)

// Shards written side by side come back in the order given, with the size
// and SHA-256 of what was written (large writes are hashed beside the
// file write; small ones inline), and verify.
func TestSaveShardsParallel(t *testing.T) {
	ctx := context.Background()
	for _, name := range []string{"dir", "mem"} {
		t.Run(name, func(t *testing.T) {
			var st checkpoint.Storage = checkpoint.NewMemStorage()
			if name == "dir" {
				d, err := checkpoint.NewDirStorage(t.TempDir())
				if err != nil {
					t.Fatal(err)
				}
				st = d
			}
			var shards []checkpoint.ShardSource
			var want [][]byte
			for i, n := range []int{0, 10, 300 << 10, 9 << 20, 1 << 20} {
				data := make([]float32, n)
				for j := range data {
					data[j] = float32(i*j) + 0.5
				}
				ts := []checkpoint.Tensor{{Name: "t", Shape: []int{n}, Data: data}}
				enc, err := checkpoint.EncodeShard(ts)
				if err != nil {
					t.Fatal(err)
				}
				want = append(want, enc)
				shards = append(shards, checkpoint.TensorShard(fmt.Sprintf("rank-0000/state-%d.bin", i), 0, checkpoint.KindParams, ts))
			}
			prefix := checkpoint.StepPrefix("j", 1)
			infos, err := checkpoint.SaveShardsParallel(ctx, st, prefix, shards, 3)
			if err != nil {
				t.Fatal(err)
			}
			for i, in := range infos {
				sum := sha256.Sum256(want[i])
				if in.Name != shards[i].Name || in.Size != int64(len(want[i])) || in.SHA256 != hex.EncodeToString(sum[:]) {
					t.Fatalf("shard %d: %+v, want %s of %d bytes", i, in, shards[i].Name, len(want[i]))
				}
			}
			m := checkpoint.Manifest{Job: "j", Step: 1, Layout: checkpoint.Layout{TP: 1, DP: 1, EP: 1}, Shards: infos}
			if err := checkpoint.Verify(ctx, st, prefix, m); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A shard whose writer fails after streaming megabytes stores nothing,
// leaves no temporary file, and fails the whole save.
func TestSaveShardsParallelWriterFails(t *testing.T) {
	ctx := context.Background()
	st, err := checkpoint.NewDirStorage(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	big := make([]byte, 12<<20)
	good := checkpoint.BytesShard("rank-0000/a.bin", 0, checkpoint.KindParams, big)
	bad := checkpoint.ShardSource{Name: "rank-0000/b.bin", Kind: checkpoint.KindParams, Write: func(w io.Writer) error {
		if _, err := w.Write(big); err != nil {
			return err
		}
		return boom
	}}
	for _, par := range []int{1, 2} {
		prefix := checkpoint.StepPrefix("j", int64(par))
		_, err := checkpoint.SaveShardsParallel(ctx, st, prefix, []checkpoint.ShardSource{good, bad}, par)
		if !errors.Is(err, boom) {
			t.Fatalf("parallel %d: %v, want boom", par, err)
		}
		if _, err := st.Stat(ctx, prefix+"rank-0000/b.bin"); !errors.Is(err, checkpoint.ErrNotFound) {
			t.Fatalf("parallel %d: failed shard stored: %v", par, err)
		}
	}
	if tf := tempFiles(t, st.Root()); len(tf) != 0 {
		t.Fatalf("temporary files left: %v", tf)
	}
}

// A cancelled context stops a streaming put and stores nothing.
func TestDirStoragePutCancelled(t *testing.T) {
	st, err := checkpoint.NewDirStorage(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	src := checkpoint.ShardSource{Name: "x.bin", Write: func(w io.Writer) error {
		if _, err := w.Write(make([]byte, 1<<20)); err != nil {
			return err
		}
		cancel()
		_, err := w.Write(make([]byte, 1<<20))
		return err
	}}
	if _, err := checkpoint.SaveShards(ctx, st, "j/", []checkpoint.ShardSource{src}); !errors.Is(err, context.Canceled) {
		t.Fatalf("%v, want context.Canceled", err)
	}
	if _, err := st.Stat(context.Background(), "j/x.bin"); !errors.Is(err, checkpoint.ErrNotFound) {
		t.Fatalf("stored after cancel: %v", err)
	}
	if tf := tempFiles(t, st.Root()); len(tf) != 0 {
		t.Fatalf("temporary files left: %v", tf)
	}
}
