package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// tempPrefix starts the names of temporary files (DirStorage's). Keys
// cannot have segments starting with it, so List never sees them.
const tempPrefix = ".tmp-"

// DirStorage is a Storage in a directory of a local or shared filesystem.
// A key maps to the file root/key. Put writes a temporary file in the
// destination directory, fsyncs it, renames it over the key and fsyncs the
// directory (and every directory it had to create, and their parents), so
// a blob is either absent, the old one, or complete and durable.
//
// A crash during Put can leave a temporary file (named ".tmp-*"); List
// ignores them and CleanTemp removes them.
type DirStorage struct {
	root string
}

var _ Storage = (*DirStorage)(nil)

// NewDirStorage returns a DirStorage rooted at root, creating the directory
// if needed.
func NewDirStorage(root string) (*DirStorage, error) {
	if root == "" {
		return nil, errors.New("checkpoint: dir storage: empty root")
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: dir storage: %w", err)
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("checkpoint: dir storage: %w", err)
	}
	return &DirStorage{root: abs}, nil
}

// Root returns the absolute root directory.
func (d *DirStorage) Root() string { return d.root }

func (d *DirStorage) path(key string) string {
	return filepath.Join(d.root, filepath.FromSlash(key))
}

// Put implements Storage.
func (d *DirStorage) Put(ctx context.Context, key string, r io.Reader) (int64, string, error) {
	return d.putFunc(ctx, key, func(w io.Writer) error {
		// 1 MiB copies: with io.Copy's 32 KiB the write system calls and
		// hash hand-offs, not the disk, set the throughput.
		_, err := io.CopyBuffer(w, onlyReader{r}, make([]byte, 1<<20))
		return err
	})
}

// putFunc implements putWriter: write streams the blob straight into the
// temporary file (no pipe, no intermediate copy) while it is hashed beside
// the write, and the file's pages are handed to the disk as they are
// written, so the final fsync waits only for the tail.
func (d *DirStorage) putFunc(ctx context.Context, key string, write func(io.Writer) error) (int64, string, error) {
	if err := ValidateKey(key); err != nil {
		return 0, "", err
	}
	if err := ctx.Err(); err != nil {
		return 0, "", err
	}
	dst := d.path(key)
	dir := filepath.Dir(dst)
	// A concurrent Delete may remove an empty parent between mkdir and
	// create; retry a few times.
	var f *os.File
	var err error
	for try := 0; ; try++ {
		if err = d.mkdirAllSync(dir); err == nil {
			f, err = os.CreateTemp(dir, tempPrefix+"*")
		}
		if err == nil || !errors.Is(err, fs.ErrNotExist) || try == 10 {
			break
		}
	}
	if err != nil {
		return 0, "", fmt.Errorf("checkpoint: put %s: %w", key, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	hw := newHashingWriter(ctx, &writebackFile{f: f})
	err = write(hw)
	hw.close()
	if err == nil {
		err = hw.err // a write error the func swallowed
	}
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		return 0, "", fmt.Errorf("checkpoint: put %s: %w", key, err)
	}
	n, sum := hw.sum()
	if err := f.Sync(); err != nil {
		return 0, "", fmt.Errorf("checkpoint: put %s: fsync: %w", key, err)
	}
	if err := f.Close(); err != nil {
		return 0, "", fmt.Errorf("checkpoint: put %s: %w", key, err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return 0, "", fmt.Errorf("checkpoint: put %s: %w", key, err)
	}
	ok = true
	if err := syncDir(dir); err != nil {
		return 0, "", fmt.Errorf("checkpoint: put %s: fsync dir: %w", key, err)
	}
	return n, sum, nil
}

// writebackChunk is how much a writebackFile writes per system call and
// then hands to the disk without waiting.
const writebackChunk = 8 << 20

// writebackFile writes to f in chunks and starts the disk write of each
// chunk as soon as it is in the page cache (startWriteback), so the disk
// works while the rest is still being produced instead of all at fsync.
// Durability is unchanged: Put still fsyncs before the rename.
type writebackFile struct {
	f   *os.File
	off int64
}

func (w *writebackFile) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		k := min(len(p)-done, writebackChunk)
		n, err := w.f.Write(p[done : done+k])
		done += n
		if n > 0 {
			startWriteback(w.f, w.off, int64(n))
			w.off += int64(n)
		}
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// onlyReader hides every method of a reader but Read, so io.CopyBuffer
// uses the buffer given rather than the reader's WriteTo.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

// mkdirAllSync creates dir and its missing parents below root, fsyncing the
// parent of every directory it creates so the new entries are durable.
func (d *DirStorage) mkdirAllSync(dir string) error {
	if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
		return nil
	}
	if dir == d.root || len(dir) <= len(d.root) {
		return os.MkdirAll(dir, 0o755)
	}
	parent := filepath.Dir(dir)
	if err := d.mkdirAllSync(parent); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return syncDir(parent)
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// Get implements Storage.
func (d *DirStorage) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := ValidateKey(key); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var f *os.File
	err := d.rooted(func(r *os.Root) (err error) {
		f, err = r.Open(filepath.FromSlash(key))
		return err
	})
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s", ErrNotFound, key)
		}
		return nil, fmt.Errorf("checkpoint: get %s: %w", key, err)
	}
	if fi, err := f.Stat(); err == nil && fi.IsDir() {
		f.Close()
		return nil, fmt.Errorf("%w: %s", ErrNotFound, key)
	}
	return f, nil
}

// Delete implements Storage. Directories left empty are removed, up to
// (not including) the root.
func (d *DirStorage) Delete(ctx context.Context, key string) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	rel := filepath.FromSlash(key)
	return d.rooted(func(r *os.Root) error {
		if fi, err := r.Lstat(rel); err == nil && fi.IsDir() {
			return nil // a directory is not a blob
		}
		if err := r.Remove(rel); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("checkpoint: delete %s: %w", key, err)
		}
		dir := filepath.Dir(rel)
		if err := syncRootedDir(r, dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("checkpoint: delete %s: fsync dir: %w", key, err)
		}
		for ; dir != "."; dir = filepath.Dir(dir) {
			if r.Remove(dir) != nil { // not empty (or gone): stop
				break
			}
		}
		return nil
	})
}

// rooted runs op on an os.Root of the storage's directory, so that a key
// whose path passes through a link out of it is an error, not followed:
// what one rank (perhaps as another OS user, rank_user) leaves in its
// job's directory is read, verified and deleted by coordinators and
// workers that may run as root.
func (d *DirStorage) rooted(op func(*os.Root) error) error {
	r, err := os.OpenRoot(d.root)
	if err != nil {
		return err
	}
	defer r.Close()
	return op(r)
}

func syncRootedDir(r *os.Root, dir string) error {
	f, err := r.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// List implements Storage.
func (d *DirStorage) List(ctx context.Context, prefix string) ([]string, error) {
	if err := validatePrefix(prefix); err != nil {
		return nil, err
	}
	// Walk only the deepest directory the prefix names completely.
	start := d.root
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		start = d.path(prefix[:i])
	}
	var keys []string
	err := filepath.WalkDir(start, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed while walking, or the prefix names nothing
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if p == d.root {
			return nil
		}
		if strings.HasPrefix(e.Name(), tempPrefix) || e.Name() == "." {
			if e.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		rel, err := filepath.Rel(d.root, p)
		if err != nil {
			return err
		}
		key := filepath.ToSlash(rel)
		if e.IsDir() {
			// Prune directories that cannot contain a match.
			if !strings.HasPrefix(key+"/", prefix) && !strings.HasPrefix(prefix, key+"/") {
				return fs.SkipDir
			}
			return nil
		}
		if e.Type().IsRegular() && strings.HasPrefix(key, prefix) {
			keys = append(keys, key)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("checkpoint: list %q: %w", prefix, err)
	}
	sort.Strings(keys)
	return keys, nil
}

// Stat implements Storage.
func (d *DirStorage) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	if err := ValidateKey(key); err != nil {
		return ObjectInfo{}, err
	}
	if err := ctx.Err(); err != nil {
		return ObjectInfo{}, err
	}
	var fi fs.FileInfo
	err := d.rooted(func(r *os.Root) (err error) {
		fi, err = r.Stat(filepath.FromSlash(key))
		return err
	})
	if err != nil || !fi.Mode().IsRegular() {
		if err == nil || errors.Is(err, fs.ErrNotExist) {
			return ObjectInfo{}, fmt.Errorf("%w: %s", ErrNotFound, key)
		}
		return ObjectInfo{}, fmt.Errorf("checkpoint: stat %s: %w", key, err)
	}
	return ObjectInfo{Key: key, Size: fi.Size()}, nil
}

// CleanTemp removes temporary files left by Puts that crashed, if they were
// last modified more than olderThan ago (a Put in progress keeps writing to
// its file, so pick olderThan well above the longest expected Put). It
// returns how many it removed.
func (d *DirStorage) CleanTemp(ctx context.Context, olderThan time.Duration) (int, error) {
	cutoff := time.Now().Add(-olderThan)
	n := 0
	err := filepath.WalkDir(d.root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if e.IsDir() || !strings.HasPrefix(e.Name(), tempPrefix) {
			return nil
		}
		fi, err := e.Info()
		if err != nil || fi.ModTime().After(cutoff) {
			return nil
		}
		if err := os.Remove(p); err == nil {
			n++
		}
		return nil
	})
	if err != nil {
		return n, fmt.Errorf("checkpoint: clean temp: %w", err)
	}
	return n, nil
}

// ctxReader stops a copy when its context is cancelled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
