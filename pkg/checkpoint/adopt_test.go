package checkpoint

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, body := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// A directory inside the storage is moved into place; one outside is
// copied; either way the shards verify and a commit takes them.
func TestAdoptDir(t *testing.T) {
	ctx := context.Background()
	files := map[string]string{"model.pt": "weights", "optim/state.pt": "moments", "meta.json": "{}"}
	root := t.TempDir()
	st, err := NewDirStorage(root)
	if err != nil {
		t.Fatal(err)
	}
	staging := filepath.Join(root, "job-1", "staging", "attempt-0")
	inside := filepath.Join(staging, "s5")
	outside := filepath.Join(t.TempDir(), "s6")
	writeTree(t, inside, files)
	writeTree(t, outside, files)
	mgr := NewManager(st, NewMemCatalogue(), nil)
	for _, c := range []struct {
		dir   string
		step  int64
		moved bool
	}{{inside, 5, true}, {outside, 6, false}} {
		prefix := StepPrefix("job-1", c.step)
		shards, _, err := AdoptDir(ctx, st, prefix, c.dir, staging)
		if err != nil {
			t.Fatal(err)
		}
		if len(shards) != 3 || shards[0].Name != "meta.json" || shards[2].Name != "optim/state.pt" || shards[1].Size != 7 || shards[0].Kind != KindFile {
			t.Fatalf("shards %+v", shards)
		}
		if _, err := os.Stat(c.dir); os.IsNotExist(err) != c.moved {
			t.Fatalf("%s: exists after adopt: %v (moved %v)", c.dir, err, c.moved)
		}
		m := Manifest{Job: "job-1", Step: c.step, Layout: Layout{TP: 1, DP: 2, EP: 1}, Shards: shards}
		if err := mgr.Commit(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	// the prefix holds files now: a second adopt of step 5 is refused
	writeTree(t, inside, files)
	if _, _, err := AdoptDir(ctx, st, StepPrefix("job-1", 5), inside, staging); !errors.Is(err, ErrStepExists) {
		t.Fatalf("adopt over a stored step: %v", err)
	}
	// a committed checkpoint named as the directory is copied, never moved
	committed := filepath.Join(root, "job-1", "step-000000000005")
	if _, _, err := AdoptDir(ctx, st, StepPrefix("job-1", 7), committed, staging); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(committed, "model.pt")); err != nil {
		t.Fatalf("the committed checkpoint lost a file: %v", err)
	}
	// undo puts a moved directory back, for a retry
	_, undo, err := AdoptDir(ctx, st, StepPrefix("job-1", 8), inside, staging)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(inside); !os.IsNotExist(err) {
		t.Fatalf("not moved: %v", err)
	}
	if err := undo(); err != nil {
		t.Fatal(err)
	}
	if raw, err := os.ReadFile(filepath.Join(inside, "optim", "state.pt")); err != nil || string(raw) != "moments" {
		t.Fatalf("after undo: %q %v", raw, err)
	}
	// and removes the copies of one copied in: the storage keeps nothing
	// of a commit that failed, the directory is as it was
	_, undo, err = AdoptDir(ctx, st, StepPrefix("job-1", 9), outside, staging)
	if err != nil {
		t.Fatal(err)
	}
	if err := undo(); err != nil {
		t.Fatal(err)
	}
	if keys, err := st.List(ctx, StepPrefix("job-1", 9)); err != nil || len(keys) != 0 {
		t.Fatalf("step 9 after undoing a copy: %v %v", keys, err)
	}
	if _, err := os.Stat(filepath.Join(root, "job-1", "step-000000000009")); !os.IsNotExist(err) {
		t.Fatalf("the copy's directory is left: %v", err)
	}
	if raw, err := os.ReadFile(filepath.Join(outside, "optim", "state.pt")); err != nil || string(raw) != "moments" {
		t.Fatalf("the copied directory after undo: %q %v", raw, err)
	}
	// a changed file fails verification (resume falls back)
	os.WriteFile(filepath.Join(root, "job-1", "step-000000000006", "model.pt"), []byte("changed"), 0o644)
	m, err := mgr.LoadLatestVerified(ctx, "job-1", nil)
	if err != nil || m.Step != 5 {
		t.Fatalf("latest verified %d, %v: want 5", m.Step, err)
	}
}

func TestAdoptDirRefuses(t *testing.T) {
	ctx := context.Background()
	st, _ := NewDirStorage(t.TempDir())
	empty := t.TempDir()
	if _, _, err := AdoptDir(ctx, st, StepPrefix("j", 1), empty, ""); err == nil || !strings.Contains(err.Error(), "no files") {
		t.Errorf("empty dir: %v", err)
	}
	if _, _, err := AdoptDir(ctx, st, StepPrefix("j", 1), filepath.Join(empty, "missing"), ""); err == nil {
		t.Error("missing dir accepted")
	}
	link := t.TempDir()
	writeTree(t, link, map[string]string{"a.pt": "x"})
	os.Symlink("/etc/passwd", filepath.Join(link, "b.pt"))
	if _, _, err := AdoptDir(ctx, st, StepPrefix("j", 1), link, ""); err == nil || !strings.Contains(err.Error(), "b.pt is not a regular file") {
		t.Errorf("symlink: %v", err)
	}
	// the staging area itself, or what holds it or the storage: refused
	// before anything moves
	base := t.TempDir()
	root := filepath.Join(base, "checkpoints")
	staging := filepath.Join(root, "staging", "j", "attempt-0")
	writeTree(t, staging, map[string]string{"step-10/model.pt": "w", "resume.json": "{}"})
	st2, _ := NewDirStorage(root)
	for dir, says := range map[string]string{
		staging: "it holds the staging directory", filepath.Dir(staging): "it holds the staging directory",
		root: "it holds the staging directory", base: "it holds the staging directory",
	} {
		if _, _, err := AdoptDir(ctx, st2, StepPrefix("j", 20), dir, staging); err == nil || !strings.Contains(err.Error(), says) {
			t.Errorf("%s: %v, want %q", dir, err, says)
		}
	}
	if _, _, err := AdoptDir(ctx, st2, StepPrefix("j", 20), base, ""); err == nil || !strings.Contains(err.Error(), "it holds the checkpoint storage") {
		t.Errorf("what holds the storage: %v", err)
	}
	if _, err := os.Stat(filepath.Join(staging, "step-10", "model.pt")); err != nil {
		t.Fatalf("a refused commit moved the staging area: %v", err)
	}
	// a directory inside the staging area is what a commit takes
	if _, _, err := AdoptDir(ctx, st2, StepPrefix("j", 10), filepath.Join(staging, "step-10"), staging); err != nil {
		t.Fatal(err)
	}
}

// A DCP-style checkpoint (".metadata" beside "__0_0.distcp") is committed
// whole; a name the storage reserves is refused, naming it.
func TestAdoptDirDotNames(t *testing.T) {
	ctx := context.Background()
	st, _ := NewDirStorage(t.TempDir())
	dcp := t.TempDir()
	writeTree(t, dcp, map[string]string{".metadata": "meta", "__0_0.distcp": "shard"})
	shards, _, err := AdoptDir(ctx, st, StepPrefix("j", 1), dcp, "")
	if err != nil || len(shards) != 2 || shards[0].Name != ".metadata" {
		t.Fatalf("shards %+v, %v", shards, err)
	}
	m := Manifest{Job: "j", Step: 1, Layout: Layout{TP: 1, DP: 1, EP: 1}, Shards: shards}
	mgr := NewManager(st, NewMemCatalogue(), nil)
	if err := mgr.Commit(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := mgr.Delete(ctx, "j", 1); err != nil {
		t.Fatal(err)
	}
	if keys, _ := st.List(ctx, ""); len(keys) != 0 {
		t.Fatalf("after delete: %v", keys)
	}
	bad := t.TempDir()
	writeTree(t, bad, map[string]string{".tmp-x": "x"})
	if _, _, err := AdoptDir(ctx, st, StepPrefix("j", 2), bad, ""); err == nil || !strings.Contains(err.Error(), ".tmp-x") {
		t.Fatalf("reserved name: %v", err)
	}
}
