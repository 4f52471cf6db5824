package fsutil

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestReadFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("12345"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := ReadFile(p, 5); err != nil || string(b) != "12345" {
		t.Errorf("at the limit: %q %v", b, err)
	}
	if _, err := ReadFile(p, 4); !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "4 B") {
		t.Errorf("over the limit: %v", err)
	}
	if _, err := ReadFile(filepath.Join(dir, "nope"), 5); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing: %v", err)
	}
	// a device that never ends: read max+1 bytes, then refused
	if _, err := ReadFile("/dev/zero", 1<<20); !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "1 MiB") {
		t.Errorf("/dev/zero: %v", err)
	}
}

func TestSize(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 100: "100 B", 1 << 10: "1 KiB", 1536: "1.5 KiB", 1 << 20: "1 MiB", 3 << 30: "3 GiB", 1 << 40: "1 TiB", 1<<62 + 1<<61: "6 EiB"} {
		if got := Size(n); got != want {
			t.Errorf("Size(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestWithin(t *testing.T) {
	root := t.TempDir()
	other := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "ckpt"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(other, filepath.Join(root, "escape")); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]bool{
		root:                                true,
		filepath.Join(root, "ckpt"):         true,
		filepath.Join(root, "not/made/yet"): true,
		filepath.Join(root, "ckpt/../../x"): false,
		filepath.Join(root, "escape/x"):     false, // a link out of the root
		filepath.Join(root + "-sibling"):    false, // a prefix, not a parent
		"/etc":                              false,
		"/etc/shadow":                       false,
		filepath.Join(other, "x"):           false,
	} {
		got, err := Within(path, []string{root})
		if err != nil || got != want {
			t.Errorf("Within(%s) = %v, %v; want %v", path, got, err, want)
		}
	}
	if ok, err := Within(filepath.Join(other, "x"), []string{root, other}); !ok || err != nil {
		t.Errorf("in the second root: %v %v", ok, err)
	}
	if _, err := Within("relative/x", []string{root}); err == nil {
		t.Error("a relative path was judged")
	}
}

// TestRootForms: roots as named, then the resolved form of those a link
// makes differ, each once.
func TestRootForms(t *testing.T) {
	real := t.TempDir()
	link := filepath.Join(t.TempDir(), "data")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	realResolved, err := filepath.EvalSymlinks(real)
	if err != nil {
		t.Fatal(err)
	}
	got := RootForms([]string{real + "/", link, realResolved, "/not/made/yet"})
	want := []string{filepath.Clean(real), link}
	if realResolved != filepath.Clean(real) {
		want = append(want, realResolved)
	}
	want = append(want, "/not/made/yet")
	if !slices.Equal(got, want) {
		t.Errorf("RootForms = %q, want %q", got, want)
	}
}

func TestWriteFileAtomic(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f.json")
	for _, body := range []string{"first", "second"} {
		if err := WriteFileAtomic(p, []byte(body)); err != nil {
			t.Fatal(err)
		}
		if raw, err := os.ReadFile(p); err != nil || string(raw) != body {
			t.Fatalf("%q, %v: want %q", raw, err, body)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(p), ".*")); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
	if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o644 {
		t.Fatalf("mode %v, %v: want 0644", st.Mode(), err)
	}
	// a link where the file goes is replaced, not followed
	target := filepath.Join(t.TempDir(), "elsewhere")
	if err := os.WriteFile(target, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
	if err := WriteFileAtomic(p, []byte("third")); err != nil {
		t.Fatal(err)
	}
	if raw, _ := os.ReadFile(target); string(raw) != "keep" {
		t.Fatalf("the write followed the link: %q", raw)
	}
	if st, err := os.Lstat(p); err != nil || !st.Mode().IsRegular() {
		t.Fatalf("%s is not a file: %v", p, err)
	}
	if err := WriteFileAtomic(filepath.Join(t.TempDir(), "missing", "f"), nil); err == nil {
		t.Fatal("no error for a missing directory")
	}
}

// LookProgram finds a command as a shell would (a name on PATH, a relative
// path from the working directory) and says why it cannot: not found, or
// not executable, each a sentinel.
func TestLookProgram(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	os.MkdirAll(filepath.Join(bin, "adir"), 0o755)
	os.WriteFile(filepath.Join(bin, "trainer"), []byte("#!/bin/sh\n"), 0o755)
	os.WriteFile(filepath.Join(bin, "plain"), []byte("x"), 0o644)
	os.Symlink("loop", filepath.Join(bin, "loop"))
	path := bin + ":/nonexistent:" + filepath.Join(bin, "trainer") // a file as a PATH entry: ENOTDIR
	for _, c := range []struct {
		cmd, wd string
		kind    error
		want    string
	}{
		{"trainer", dir, nil, filepath.Join(bin, "trainer")},
		{"bin/trainer", dir, nil, filepath.Join(bin, "trainer")},
		{filepath.Join(bin, "trainer"), "/", nil, filepath.Join(bin, "trainer")},
		{"missing", dir, ErrProgramNotFound, `command "missing" not found in the rank's PATH (` + path + ")"},
		{"adir", dir, ErrProgramNotFound, `command "adir" not found in the rank's PATH`},
		{"loop", dir, ErrProgramNotFound, `command "loop" not found in the rank's PATH`},
		{"bin/missing", dir, ErrProgramNotFound, `command "bin/missing" not found: ` + filepath.Join(bin, "missing") + " does not exist on worker"},
		{"bin/adir", dir, ErrProgramNotExecutable, `command "bin/adir": ` + filepath.Join(bin, "adir") + " is a directory on worker, not a program"},
		{"plain", dir, ErrProgramNotExecutable, `command "plain": ` + filepath.Join(bin, "plain") + " is not executable (mode -rw-r--r--)"},
	} {
		got, err := LookProgram(c.cmd, c.wd, path)
		if c.kind == nil {
			if err != nil || got != c.want {
				t.Errorf("%s: %q, %v; want %s", c.cmd, got, err, c.want)
			}
			continue
		}
		if !errors.Is(err, c.kind) || !strings.HasPrefix(err.Error(), c.want) {
			t.Errorf("%s: %v; want %v saying %q", c.cmd, err, c.kind, c.want)
		}
	}
	// an empty PATH entry is the working directory
	if got, err := LookProgram("trainer", bin, ":/nonexistent"); err != nil || got != filepath.Join(bin, "trainer") {
		t.Errorf("empty PATH entry: %q, %v", got, err)
	}
}
