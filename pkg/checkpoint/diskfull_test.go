package checkpoint_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"syscall"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
)

// mountSmallTmpfs mounts a 1 MiB tmpfs, or skips the test where that is
// not allowed (not root, no mount binary). TestSimulatedDiskFull covers
// the same paths with an injected ENOSPC everywhere.
func mountSmallTmpfs(t *testing.T) string {
	dir := t.TempDir()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", dir).CombinedOutput()
	if err != nil {
		t.Skipf("cannot mount a tmpfs (%v: %s); the simulated disk-full test covers this", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

func TestRealDiskFull(t *testing.T) {
	ctx := context.Background()
	dir := mountSmallTmpfs(t)
	g, st, cat := openDir(t, dir) // shards and catalogue both on the 1 MiB disk
	save(t, g, 100, 1)

	// Step 200 has a 2 MiB shard: the disk fills while it is written.
	shards := shardsFor(200)
	big := make([]float32, 512<<10)
	shards[2] = checkpoint.TensorShard("rank-0001/params.bin", 1, checkpoint.KindParams,
		[]checkpoint.Tensor{{Name: "w", Shape: []int{len(big)}, Data: big}})
	_, err := g.Save(ctx, checkpoint.Manifest{Job: job, Step: 200, Layout: layout}, shards)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Save on a full disk = %v, want ENOSPC", err)
	}
	t.Logf("save on a full disk: %v", err)
	if tf := tempFiles(t, st.Root()); len(tf) != 0 {
		t.Fatalf("failed Put left temporary files: %v", tf)
	}
	if got := liveSteps(t, cat); !reflect.DeepEqual(got, []int64{100}) {
		t.Fatalf("live = %v, want [100]", got)
	}
	if m, err := g.LoadLatestVerified(ctx, job, nil); err != nil || m.Step != 100 {
		t.Fatalf("LoadLatestVerified = %d, %v", m.Step, err)
	}
	removed, err := g.CollectGarbage(ctx, job)
	if err != nil || len(removed) != 2 { // the two rank-0000 shards of step 200
		t.Fatalf("GC removed %v, %v", removed, err)
	}
	checkInvariants(t, st, cat)

	// Fill the disk to the last byte, then save: whichever write fails
	// first (a shard or the catalogue), nothing is committed and the old
	// catalogue still reads.
	filler, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 4096)
	for {
		if _, err := filler.Write(chunk); err != nil {
			break
		}
	}
	for {
		if _, err := filler.Write(chunk[:1]); err != nil {
			break
		}
	}
	filler.Close()
	if _, err := g.Save(ctx, checkpoint.Manifest{Job: job, Step: 300, Layout: layout}, shardsFor(300)); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Save on a full disk = %v, want ENOSPC", err)
	}
	if got := liveSteps(t, cat); !reflect.DeepEqual(got, []int64{100}) {
		t.Fatalf("live = %v, want [100]", got)
	}
	if err := os.Remove(filepath.Join(dir, "filler")); err != nil {
		t.Fatal(err)
	}
	if _, err := g.CollectGarbage(ctx, job); err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, st, cat)
	// With space back, saving works again.
	save(t, g, 400, 1)
	checkInvariants(t, st, cat)
}
