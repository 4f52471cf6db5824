// Package fsutil handles paths and files a user names without trusting
// them: ReadFile reads files whose size the reader does not control (job
// specs, configs named on a command line), so that /dev/zero or a 10 GB
// file gives an error naming the limit, not an out-of-memory crash;
// Within tells whether a path a job names stays inside the directories a
// worker allows, links resolved; WriteFileAtomic replaces a small file so
// that a reader sees the old or the new content, never a part;
// LookProgram finds the program a command job names, as a shell would.
package fsutil

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// ErrTooLarge is wrapped by ReadFile's error for a file over its limit.
var ErrTooLarge = errors.New("file too large")

// ReadFile reads the file at path, at most max bytes of it: a longer
// file (or a device that never ends) is an error wrapping ErrTooLarge
// after reading max+1 bytes. The os errors are wrapped as os.ReadFile's
// are, so errors.Is(err, fs.ErrNotExist) works.
func ReadFile(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s: %w: over the limit of %s", path, ErrTooLarge, Size(max))
	}
	return b, nil
}

// Size formats n bytes for people in the largest binary unit it reaches:
// "1 MiB", "1.5 GiB", "100 B".
func Size(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	u := 0
	for u+1 < len(units) && n>>(10*(u+1)) > 0 {
		u++
	}
	if n%(1<<(10*u)) == 0 {
		return fmt.Sprintf("%d %s", n>>(10*u), units[u])
	}
	return fmt.Sprintf("%.1f %s", float64(n)/float64(int64(1)<<(10*u)), units[u])
}

// Within reports whether path lies inside one of roots (or is one), after
// symbolic links are resolved in the part of each that exists, so that a
// link inside a root that points out of it does not count as inside. The
// paths must be absolute.
func Within(path string, roots []string) (bool, error) {
	real, err := resolve(path)
	if err != nil {
		return false, err
	}
	for _, r := range roots {
		rr, err := resolve(r)
		if err != nil {
			return false, err
		}
		if rel, err := filepath.Rel(rr, real); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
			return true, nil
		}
	}
	return false, nil
}

// RootForms are roots as named and, where links make them differ, as
// resolved (each once, in that order): the names under which a path
// Within them may be spelled without resolving it.
func RootForms(roots []string) []string {
	out := make([]string, 0, 2*len(roots))
	add := func(p string) {
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	for _, r := range roots {
		add(filepath.Clean(r))
	}
	for _, r := range roots {
		if rr, err := resolve(r); err == nil {
			add(rr)
		}
	}
	return out
}

// resolve is filepath.EvalSymlinks of the longest part of path that
// exists, with the rest appended (a checkpoint directory not made yet).
func resolve(path string) (string, error) {
	if !filepath.IsAbs(path) {
		return "", fmt.Errorf("%s: not an absolute path", path)
	}
	path = filepath.Clean(path)
	var rest []string
	for {
		real, err := filepath.EvalSymlinks(path)
		if err == nil {
			return filepath.Join(append([]string{real}, rest...)...), nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		parent := filepath.Dir(path)
		if parent == path {
			return "", err
		}
		rest = append([]string{filepath.Base(path)}, rest...)
		path = parent
	}
}

// WriteFileAtomic writes data to path (mode 0644, whatever the umask) through a temporary
// file beside it and a rename: a concurrent reader sees the old file or
// the new one. The temporary file is new (O_EXCL, a random name) and the
// rename replaces a link at path rather than following it, so a
// directory another user can write to cannot send the write elsewhere.
func WriteFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// LookProgram's errors: no file of the command's name where it is looked
// for, or only files without an execute bit. Either is the same on the
// next try (unlike ErrNotExist of a path on storage that fails), so the
// error says what to fix.
var (
	ErrProgramNotFound      = errors.New("fsutil: command not found")
	ErrProgramNotExecutable = errors.New("fsutil: command not executable")
)

// absent says whether err of a stat means that nothing usable is there,
// for good: no such file, a file where a directory is expected, no
// permission, a loop of links, a name too long.
func absent(err error) bool {
	for _, e := range []error{fs.ErrNotExist, fs.ErrPermission, syscall.ENOTDIR, syscall.ELOOP, syscall.ENAMETOOLONG} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// programError is LookProgram's error: its message names the command and
// where it was looked for; it wraps one of the sentinels above.
type programError struct {
	msg  string
	kind error
}

func (e *programError) Error() string { return e.msg }
func (e *programError) Unwrap() error { return e.kind }

// LookProgram resolves a command job's command as a shell would: a name
// through path (the rank's PATH; an empty or relative entry is taken from
// wd), a relative path from wd (the working directory), an absolute path
// as it is. The first candidate that is a file with an execute bit is
// returned. Otherwise, when a candidate could not be examined (an I/O
// error: storage that may come back) that error is returned; else the
// error wraps ErrProgramNotExecutable when a candidate lacks the bit (or
// the one path given is a directory), and ErrProgramNotFound when none
// exists.
func LookProgram(command, wd, path string) (string, error) {
	var candidates []string
	switch {
	case filepath.IsAbs(command):
		candidates = []string{command}
	case strings.ContainsRune(command, '/'):
		candidates = []string{filepath.Join(wd, command)}
	default:
		for _, d := range filepath.SplitList(path) {
			if d == "" {
				d = "."
			}
			if !filepath.IsAbs(d) {
				d = filepath.Join(wd, d)
			}
			candidates = append(candidates, filepath.Join(d, command))
		}
	}
	var notExec, dir string
	var mode os.FileMode
	var statErr error
	for _, c := range candidates {
		fi, err := os.Stat(c)
		if err != nil {
			if !absent(err) && statErr == nil {
				statErr = err
			}
			continue
		}
		if fi.IsDir() {
			if dir == "" {
				dir = c
			}
			continue
		}
		if fi.Mode()&0o111 == 0 {
			if notExec == "" {
				notExec, mode = c, fi.Mode()
			}
			continue
		}
		return c, nil
	}
	switch {
	case statErr != nil: // the program may be where it could not look
		return "", fmt.Errorf("command %q: %w", command, statErr)
	case notExec != "":
		return "", &programError{fmt.Sprintf("command %q: %s is not executable (mode %v)", command, notExec, mode), ErrProgramNotExecutable}
	case len(candidates) == 1 && dir != "":
		return "", &programError{fmt.Sprintf("command %q: %s is a directory on worker, not a program", command, dir), ErrProgramNotExecutable}
	case len(candidates) == 1:
		return "", &programError{fmt.Sprintf("command %q not found: %s does not exist on worker", command, candidates[0]), ErrProgramNotFound}
	}
	return "", &programError{fmt.Sprintf("command %q not found in the rank's PATH (%s)", command, path), ErrProgramNotFound}
}
