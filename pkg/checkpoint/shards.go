package checkpoint

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
)

var (
	// ErrShardMissing is wrapped by a ShardError when a shard is not in
	// storage.
	ErrShardMissing = errors.New("checkpoint: shard missing")
	// ErrShardCorrupt is wrapped by a ShardError when a shard's size or
	// SHA-256 differs from its manifest entry.
	ErrShardCorrupt = errors.New("checkpoint: shard corrupt")
)

// ShardError is an error about one shard. Its message is
// "checkpoint: shard NAME: PROBLEM"; it unwraps to ErrShardMissing or
// ErrShardCorrupt where one applies and to the underlying error otherwise.
type ShardError struct {
	Name   string
	Reason string // "sha256 mismatch", "size 10, manifest says 12", ...
	Err    error
}

func (e *ShardError) Error() string {
	if e.Reason != "" {
		return fmt.Sprintf("checkpoint: shard %s: %s", e.Name, e.Reason)
	}
	return fmt.Sprintf("checkpoint: shard %s: %v", e.Name, e.Err)
}

func (e *ShardError) Unwrap() error { return e.Err }

// ShardSource produces one shard's bytes for SaveShards. Write is called
// once and streams the shard into w; it must not retain w.
type ShardSource struct {
	Name  string // relative to the checkpoint prefix, e.g. "rank-0003/params.bin"
	Rank  int
	Kind  string
	Write func(w io.Writer) error
}

// BytesShard is a ShardSource for bytes already in memory.
func BytesShard(name string, rank int, kind string, b []byte) ShardSource {
	return ShardSource{Name: name, Rank: rank, Kind: kind, Write: func(w io.Writer) error {
		_, err := w.Write(b)
		return err
	}}
}

// TensorShard is a ShardSource that writes tensors in the tensor shard
// format (WriteShard).
func TensorShard(name string, rank int, kind string, tensors []Tensor) ShardSource {
	return ShardSource{Name: name, Rank: rank, Kind: kind, Write: func(w io.Writer) error {
		return WriteShard(w, tensors)
	}}
}

// SaveShards writes each shard durably to st under prefix+name (prefix is
// usually StepPrefix(job, step)) and returns their sizes and hashes in the
// order given. It stops at the first failure; shards already written stay
// in storage until CollectGarbage removes them (nothing references them).
// It passes the failpoints FailBeforeShardWrite, FailAfterFirstShard and
// FailAfterShardWrite.
func SaveShards(ctx context.Context, st Storage, prefix string, shards []ShardSource) ([]ShardInfo, error) {
	return SaveShardsParallel(ctx, st, prefix, shards, 1)
}

// SaveShardsParallel is SaveShards writing up to parallel shards at a time
// (each shard's hashing is sequential, so on a fast disk one shard at a
// time is bound by one core's SHA-256). The results are in the order
// given. FailAfterFirstShard is passed when the first shard to finish is
// durable, with others possibly still being written; on a failure the
// writes in flight are cancelled.
func SaveShardsParallel(ctx context.Context, st Storage, prefix string, shards []ShardSource, parallel int) ([]ShardInfo, error) {
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		return nil, fmt.Errorf("%w: prefix %q must end in \"/\"", ErrInvalidKey, prefix)
	}
	seen := make(map[string]bool, len(shards))
	for _, s := range shards {
		if err := ValidateKey(prefix + s.Name); err != nil {
			return nil, err
		}
		if seen[s.Name] {
			return nil, fmt.Errorf("checkpoint: save: duplicate shard %q", s.Name)
		}
		seen[s.Name] = true
		if s.Write == nil {
			return nil, fmt.Errorf("checkpoint: save: shard %q has no Write func", s.Name)
		}
	}
	if err := Failpoint(FailBeforeShardWrite); err != nil {
		return nil, err
	}
	var (
		infos []ShardInfo
		err   error
	)
	if parallel = min(parallel, len(shards)); parallel <= 1 {
		infos, err = saveSequential(ctx, st, prefix, shards)
	} else {
		infos, err = saveParallel(ctx, st, prefix, shards, parallel)
	}
	if err != nil {
		return nil, err
	}
	if err := Failpoint(FailAfterShardWrite); err != nil {
		return nil, err
	}
	return infos, nil
}

func saveSequential(ctx context.Context, st Storage, prefix string, shards []ShardSource) ([]ShardInfo, error) {
	infos := make([]ShardInfo, 0, len(shards))
	for i, s := range shards {
		size, sum, err := putStreaming(ctx, st, prefix+s.Name, s.Write)
		if err != nil {
			return nil, &ShardError{Name: s.Name, Err: err}
		}
		infos = append(infos, ShardInfo{Name: s.Name, Size: size, SHA256: sum, Rank: s.Rank, Kind: s.Kind})
		if i == 0 {
			if err := Failpoint(FailAfterFirstShard); err != nil {
				return nil, err
			}
		}
	}
	return infos, nil
}

func saveParallel(ctx context.Context, st Storage, prefix string, shards []ShardSource, parallel int) ([]ShardInfo, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	infos := make([]ShardInfo, len(shards))
	next := make(chan int)
	var (
		mu       sync.Mutex
		first    = true
		firstErr error
		wg       sync.WaitGroup
	)
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
			cancel(err)
		}
		mu.Unlock()
	}
	for range parallel {
		wg.Go(func() {
			for i := range next {
				s := shards[i]
				size, sum, err := putStreaming(ctx, st, prefix+s.Name, s.Write)
				if err != nil {
					fail(&ShardError{Name: s.Name, Err: err}) // only the first failure is reported
					continue
				}
				infos[i] = ShardInfo{Name: s.Name, Size: size, SHA256: sum, Rank: s.Rank, Kind: s.Kind}
				mu.Lock()
				isFirst := first
				first = false
				mu.Unlock()
				if isFirst {
					if err := Failpoint(FailAfterFirstShard); err != nil {
						fail(err)
					}
				}
			}
		})
	}
	for i := range shards {
		if ctx.Err() != nil {
			break
		}
		next <- i
	}
	close(next)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if firstErr == nil && ctx.Err() != nil {
		firstErr = context.Cause(ctx) // the caller's ctx ended
	}
	if firstErr != nil {
		return nil, firstErr
	}
	return infos, nil
}

// putWriter is implemented by storages that can take a blob from a
// function writing it (DirStorage: straight into the file, no pipe and no
// extra copy). Its contract is Put's, with write in place of the reader:
// an error from write aborts the put and no blob is stored.
type putWriter interface {
	putFunc(ctx context.Context, key string, write func(io.Writer) error) (int64, string, error)
}

// putStreaming stores what write produces under key: directly where st is
// a putWriter, otherwise through a pipe into st.Put. An error from write
// aborts the Put so no blob is stored.
func putStreaming(ctx context.Context, st Storage, key string, write func(io.Writer) error) (int64, string, error) {
	if pw, ok := st.(putWriter); ok {
		return pw.putFunc(ctx, key, write)
	}
	pr, pw := io.Pipe()
	werr := make(chan error, 1)
	go func() {
		err := write(pw)
		if err == nil {
			pw.Close()
		} else {
			pw.CloseWithError(err)
		}
		werr <- err
	}()
	size, sum, err := st.Put(ctx, key, pr)
	pr.CloseWithError(errors.New("checkpoint: put finished")) // unblock a writer Put abandoned
	if e := <-werr; e != nil && err == nil {
		// Put consumed everything, yet the writer reports failure.
		_ = st.Delete(context.WithoutCancel(ctx), key)
		return 0, "", e
	}
	return size, sum, err
}

// Verify re-reads every shard of m under prefix and checks its size and
// SHA-256. Every bad shard is reported: the result joins one *ShardError
// per shard, each wrapping ErrShardMissing or ErrShardCorrupt, or the
// storage's own error if the shard could not be read (an I/O failure, not
// evidence against the checkpoint). A cancelled ctx stops it with
// ctx.Err().
func Verify(ctx context.Context, st Storage, prefix string, m Manifest) error {
	var errs []error
	for _, s := range m.Shards {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := verifyShard(ctx, st, prefix, s, nil); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// verifyShard hashes one shard, copying it into dst if dst is not nil.
func verifyShard(ctx context.Context, st Storage, prefix string, s ShardInfo, dst io.Writer) error {
	rc, err := st.Get(ctx, prefix+s.Name)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return &ShardError{Name: s.Name, Reason: "missing", Err: ErrShardMissing}
		}
		return &ShardError{Name: s.Name, Err: err}
	}
	defer rc.Close()
	h := sha256.New()
	var w io.Writer = h
	if dst != nil {
		w = io.MultiWriter(h, dst)
	}
	// Read at most one byte more than expected: enough to see a longer file.
	n, err := io.Copy(w, io.LimitReader(ctxReader{ctx, rc}, s.Size+1))
	if err != nil {
		return &ShardError{Name: s.Name, Err: err}
	}
	if n != s.Size {
		what := fmt.Sprintf("size %d, manifest says %d", n, s.Size)
		if n > s.Size {
			what = fmt.Sprintf("larger than the manifest's %d bytes", s.Size)
		}
		return &ShardError{Name: s.Name, Reason: what, Err: ErrShardCorrupt}
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != s.SHA256 {
		return &ShardError{Name: s.Name, Reason: "sha256 mismatch", Err: ErrShardCorrupt}
	}
	return nil
}

// ReadShardVerified reads the named shard of m (stored under prefix) into
// memory and checks it against the manifest, so what the caller loads is
// exactly what was committed even if the file changed after Verify.
func ReadShardVerified(ctx context.Context, st Storage, prefix string, m Manifest, name string) ([]byte, error) {
	s, ok := m.Shard(name)
	if !ok {
		return nil, fmt.Errorf("%w: shard %q not in manifest of %s step %d", ErrNotFound, name, m.Job, m.Step)
	}
	var buf bytes.Buffer
	if s.Size < 1<<30 {
		buf.Grow(int(s.Size))
	}
	if err := verifyShard(ctx, st, prefix, s, &buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// isEvidence reports whether err shows the checkpoint is bad: some shard
// is missing or corrupt. Errors that only say storage could not be read
// are not evidence.
func isEvidence(err error) bool {
	return errors.Is(err, ErrShardMissing) || errors.Is(err, ErrShardCorrupt)
}
