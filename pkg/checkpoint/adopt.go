package checkpoint

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// KindFile is the kind of a shard that is a file some other trainer wrote
// (torch.save, DCP, safetensors: any format).
const KindFile = "file"

// ErrStepExists: files are already stored under the prefix a directory
// was to be moved to.
var ErrStepExists = errors.New("checkpoint: files already stored for the step")

// AdoptDir makes the regular files under dir (a trainer's checkpoint, any
// format) the shards under prefix in st, and returns them (rank 0, kind
// KindFile, named by their paths relative to dir, hashed). When st is a
// DirStorage and dir lies strictly inside movable (a directory of the
// storage that the caller's trainer owns: its staging area), dir is moved
// into place (one rename, no copy; ErrStepExists if the prefix has
// files) and the files are synced as they are hashed; otherwise every file
// is copied in with Put and dir is left as it was (a committed checkpoint
// named as dir is never moved). undo puts a moved dir back, or removes
// the copies: the caller calls it when the commit that follows fails, so
// that the trainer can retry and the storage keeps nothing uncommitted. Anything under dir that is not a regular
// file or a directory (a symbolic link, a socket) is refused, naming it,
// and so are names the storage cannot hold (a segment starting with
// ".tmp-"); dot-names such as DCP's ".metadata" are kept.
func AdoptDir(ctx context.Context, st Storage, prefix, dir, movable string) (shards []ShardInfo, undo func() error, err error) {
	// a checkpoint is one directory the trainer wrote: not the staging
	// area of all of them, nor one that holds the storage's checkpoints
	if movable != "" && holds(dir, movable) {
		return nil, nil, fmt.Errorf("checkpoint: adopt %s: it holds the staging directory %s, where every checkpoint of the attempt is written: write this one to a directory inside it and commit that", dir, movable)
	}
	if ds, ok := st.(*DirStorage); ok && holds(dir, ds.root) {
		return nil, nil, fmt.Errorf("checkpoint: adopt %s: it holds the checkpoint storage %s itself: commit the directory the trainer wrote this checkpoint to", dir, ds.root)
	}
	names, err := regularFiles(dir)
	if err != nil {
		return nil, nil, err
	}
	if ds, ok := st.(*DirStorage); ok && movable != "" && within(movable, dir) && within(ds.root, movable) {
		return ds.adopt(ctx, prefix, dir, names)
	}
	// copied: undoing removes the copies (dir is as it was), so that a
	// commit refused or failed leaves nothing of it in the storage
	var copied []string
	undo = func() error {
		var errs []error
		for _, name := range copied {
			// not the caller's context: it may be why the commit failed
			if err := st.Delete(context.WithoutCancel(ctx), prefix+name); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	}
	infos := make([]ShardInfo, 0, len(names))
	for _, name := range names {
		f, err := os.Open(filepath.Join(dir, filepath.FromSlash(name)))
		if err != nil {
			return nil, nil, errors.Join(fmt.Errorf("checkpoint: adopt %s: %w", dir, err), undo())
		}
		size, sum, err := st.Put(ctx, prefix+name, f)
		f.Close()
		if err != nil {
			return nil, nil, errors.Join(fmt.Errorf("checkpoint: adopt %s: %s: %w", dir, name, err), undo())
		}
		copied = append(copied, name)
		infos = append(infos, ShardInfo{Name: name, Size: size, SHA256: sum, Kind: KindFile})
	}
	return infos, undo, nil
}

// adopt moves dir to prefix's directory and hashes (and syncs) its files;
// a failure after the move moves it back.
func (d *DirStorage) adopt(ctx context.Context, prefix, dir string, names []string) ([]ShardInfo, func() error, error) {
	dst := d.path(prefix)
	if _, err := os.Stat(dst); err == nil {
		return nil, nil, fmt.Errorf("%w: %s", ErrStepExists, dst)
	}
	if err := d.mkdirAllSync(filepath.Dir(dst)); err != nil {
		return nil, nil, fmt.Errorf("checkpoint: adopt %s: %w", dir, err)
	}
	if err := os.Rename(dir, dst); err != nil {
		return nil, nil, fmt.Errorf("checkpoint: adopt %s: move to %s: %w", dir, dst, err)
	}
	undo := func() error {
		if err := os.Rename(dst, dir); err != nil {
			return fmt.Errorf("checkpoint: adopt %s: move back from %s: %w", dir, dst, err)
		}
		return nil
	}
	fail := func(err error) ([]ShardInfo, func() error, error) {
		return nil, nil, errors.Join(fmt.Errorf("checkpoint: adopt %s: %w", dir, err), undo())
	}
	for _, p := range []string{filepath.Dir(dst), filepath.Dir(dir)} {
		if err := syncDir(p); err != nil {
			return fail(err)
		}
	}
	infos := make([]ShardInfo, 0, len(names))
	for _, name := range names {
		size, sum, err := hashAndSync(ctx, filepath.Join(dst, filepath.FromSlash(name)))
		if err != nil {
			return fail(err)
		}
		infos = append(infos, ShardInfo{Name: name, Size: size, SHA256: sum, Kind: KindFile})
	}
	return infos, undo, nil
}

// hashAndSync reads a file to its end, returning its size and SHA-256,
// and makes it durable (the trainer that wrote it may not have).
func hashAndSync(ctx context.Context, path string) (int64, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, ctxReader{ctx: ctx, r: f})
	if err != nil {
		return 0, "", fmt.Errorf("%s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return 0, "", fmt.Errorf("%s: sync: %w", path, err)
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}

// regularFiles lists the files under dir as slash paths relative to it,
// sorted; each is a valid storage key segment path.
func regularFiles(dir string) ([]string, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: adopt: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("checkpoint: adopt: %s is not a directory", dir)
	}
	var names []string
	err = filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(dir, path)
		rel = filepath.ToSlash(rel)
		if !e.Type().IsRegular() {
			return fmt.Errorf("%s is not a regular file (%v): a checkpoint holds files and directories only", rel, e.Type())
		}
		if err := ValidateKey(rel); err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		names = append(names, rel)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("checkpoint: adopt %s: %w", dir, err)
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("checkpoint: adopt %s: no files to commit", dir)
	}
	slices.Sort(names)
	return names, nil
}

// within reports whether path lies under root (both absolute, cleaned;
// links are not resolved: a rename needs the same filesystem, which a
// failing rename reports).
// holds reports whether inner is dir or lies inside it, as written or
// where their links lead.
func holds(dir, inner string) bool {
	a, errA := filepath.Abs(dir)
	b, errB := filepath.Abs(inner)
	if errA != nil || errB != nil {
		return false
	}
	if a == b || within(a, b) {
		return true
	}
	ra, errA := filepath.EvalSymlinks(a)
	rb, errB := filepath.EvalSymlinks(b)
	return errA == nil && errB == nil && (ra == rb || within(ra, rb))
}

func within(root, path string) bool {
	abs, err := filepath.Abs(path)
	if err != nil {
		return false
	}
	rel, err := filepath.Rel(root, abs)
	return err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, "../")
}
