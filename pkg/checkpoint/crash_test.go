package checkpoint_test

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
)

// The crash tests re-run this test binary as a child process that saves or
// deletes a checkpoint and dies abruptly: at a failpoint (os.Exit(137), no
// deferred code, nothing flushed), or by SIGKILL from the parent in the
// middle of writing a shard. The parent then reopens the same directories
// and checks the invariants.

const (
	childModeEnv = "SWYD_CHECKPOINT_CHILD"
	childDirEnv  = "SWYD_CHECKPOINT_DIR"
)

// openDir returns a manager over dir/shards with its catalogue in
// dir/catalogue, as a process restarting on the same disk would.
func openDir(t testing.TB, dir string) (*checkpoint.Manager, *checkpoint.DirStorage, checkpoint.Catalogue) {
	st, err := checkpoint.NewDirStorage(filepath.Join(dir, "shards"))
	if err != nil {
		t.Fatal(err)
	}
	cs, err := checkpoint.NewDirStorage(filepath.Join(dir, "catalogue"))
	if err != nil {
		t.Fatal(err)
	}
	cat := checkpoint.NewStorageCatalogue(cs)
	return checkpoint.NewManager(st, cat, nil), st, cat
}

// TestCrashChild is the child's body; it is skipped in a normal run.
func TestCrashChild(t *testing.T) {
	mode := os.Getenv(childModeEnv)
	if mode == "" {
		t.Skip("helper for the crash tests")
	}
	ctx := context.Background()
	g, _, _ := openDir(t, os.Getenv(childDirEnv))
	var err error
	switch mode {
	case "save":
		_, err = g.Save(ctx, checkpoint.Manifest{Job: job, Step: 200, Layout: layout}, shardsFor(200))
	case "slow-save":
		shards := shardsFor(200)
		shards[1].Write = func(w io.Writer) error {
			w.Write(make([]byte, 64<<10))
			select {} // wait for SIGKILL
		}
		_, err = g.Save(ctx, checkpoint.Manifest{Job: job, Step: 200, Layout: layout}, shards)
	case "delete":
		err = g.Delete(ctx, job, 100)
	}
	// Reaching here means the failpoint did not fire.
	t.Logf("child finished without crashing: %v", err)
	os.Exit(3)
}

func startChild(t *testing.T, mode, dir, failpoints string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), childModeEnv+"="+mode, childDirEnv+"="+dir, checkpoint.FailpointEnv+"="+failpoints)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd
}

func exitCode(t *testing.T, err error) int {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("child: %v", err)
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ee.ExitCode()
}

func tempFiles(t *testing.T, root string) []string {
	var out []string
	filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(e.Name(), ".tmp-") {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// recoverAndCheck is what a restarted coordinator does: finish deletions,
// load the newest verified checkpoint, collect garbage; it checks the
// invariants and that saving can continue.
func recoverAndCheck(t *testing.T, dir string, wantStep int64, wantGarbage bool) {
	t.Helper()
	ctx := context.Background()
	g, st, cat := openDir(t, dir)
	if _, err := g.ResumeDeletions(ctx, job); err != nil {
		t.Fatal(err)
	}
	// No manifest points at a missing or corrupt shard.
	ms, err := cat.List(ctx, job)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if err := checkpoint.Verify(ctx, st, checkpoint.StepPrefix(job, m.Step), m); err != nil {
			t.Fatalf("committed step %d does not verify after the crash: %v", m.Step, err)
		}
	}
	m, err := g.LoadLatestVerified(ctx, job, func(step int64, err error) {
		t.Errorf("step %d unusable: %v", step, err)
	})
	if err != nil || m.Step != wantStep {
		t.Fatalf("LoadLatestVerified = step %d, %v; want %d", m.Step, err, wantStep)
	}
	removed, err := g.CollectGarbage(ctx, job)
	if err != nil {
		t.Fatal(err)
	}
	if wantGarbage != (len(removed) > 0) {
		t.Fatalf("GC removed %v, want garbage: %v", removed, wantGarbage)
	}
	if _, err := st.CleanTemp(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if tf := tempFiles(t, st.Root()); len(tf) != 0 {
		t.Fatalf("temporary files left: %v", tf)
	}
	checkInvariants(t, st, cat)
	// Training goes on: the next save commits.
	save(t, g, 300, 1)
	checkInvariants(t, st, cat)
}

func TestCrashDuringSave(t *testing.T) {
	for _, tc := range []struct {
		failpoint   string
		wantStep    int64
		wantGarbage bool
	}{
		{checkpoint.FailBeforeShardWrite, 100, false},
		{checkpoint.FailAfterFirstShard, 100, true},
		{checkpoint.FailAfterShardWrite, 100, true},
		{checkpoint.FailAfterCommit, 200, false},
	} {
		t.Run(tc.failpoint, func(t *testing.T) {
			dir := t.TempDir()
			g, _, _ := openDir(t, dir)
			save(t, g, 100, 1)
			err := startChild(t, "save", dir, tc.failpoint+"=exit").Wait()
			if code := exitCode(t, err); code != 137 {
				t.Fatalf("child exit code %d, want 137 from the failpoint", code)
			}
			recoverAndCheck(t, dir, tc.wantStep, tc.wantGarbage)
		})
	}
}

func TestKill9MidShardWrite(t *testing.T) {
	dir := t.TempDir()
	g, st, _ := openDir(t, dir)
	save(t, g, 100, 1)
	cmd := startChild(t, "slow-save", dir, "")
	deadline := time.Now().Add(20 * time.Second)
	// Wait until the first shard is durable and the second is being written.
	first := checkpoint.ShardKey(job, 200, "rank-0000/params.bin")
	for {
		if _, err := st.Stat(context.Background(), first); err == nil && len(tempFiles(t, st.Root())) > 0 {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatal("child never started writing a shard")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := cmd.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	if code := exitCode(t, cmd.Wait()); code != 128+int(syscall.SIGKILL) {
		t.Fatalf("child exit code %d, want SIGKILL", code)
	}
	if len(tempFiles(t, st.Root())) == 0 {
		t.Fatal("expected the killed Put's temporary file")
	}
	recoverAndCheck(t, dir, 100, true) // rank-0000/params.bin of step 200 was complete
}

func TestCrashDuringDelete(t *testing.T) {
	for _, fp := range []string{checkpoint.FailAfterMarkDeleting, checkpoint.FailAfterDeleteFiles} {
		t.Run(fp, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			g, st, cat := openDir(t, dir)
			save(t, g, 100, 1)
			save(t, g, 200, 1)
			if code := exitCode(t, startChild(t, "delete", dir, fp+"=exit").Wait()); code != 137 {
				t.Fatalf("child exit code %d, want 137", code)
			}
			if d, err := cat.Deleting(ctx, job); err != nil || !reflect.DeepEqual(d, []int64{100}) {
				t.Fatalf("Deleting after the crash = %v, %v; want [100]", d, err)
			}
			recoverAndCheck(t, dir, 200, false)
			if keys, _ := st.List(ctx, checkpoint.StepPrefix(job, 100)); len(keys) != 0 {
				t.Fatalf("files of the deleted step left: %v", keys)
			}
			if _, err := cat.Get(ctx, job, 100); !errors.Is(err, checkpoint.ErrNotFound) {
				t.Fatalf("entry of the deleted step left: %v", err)
			}
		})
	}
}
