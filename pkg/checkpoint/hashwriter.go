package checkpoint

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"io"
)

// hashOverlapMin is the smallest write whose hashing runs concurrently
// with writing it; smaller writes are hashed inline (a goroutine hand-off
// costs more than it saves).
const hashOverlapMin = 256 << 10

// hashingWriter writes to w and feeds the same bytes to a SHA-256 that
// runs beside the write: for a large p the hasher goroutine reads p while
// w.Write copies it, so the slower of the two, not their sum, sets the
// throughput. Write returns only when both are done with p (it does not
// retain p). Call close to stop the hasher.
type hashingWriter struct {
	ctx  context.Context
	w    io.Writer
	h    hash.Hash
	n    int64
	err  error // the first write error: the writer is done
	work chan []byte
	done chan struct{}
}

func newHashingWriter(ctx context.Context, w io.Writer) *hashingWriter {
	hw := &hashingWriter{ctx: ctx, w: w, h: sha256.New(), work: make(chan []byte), done: make(chan struct{})}
	go func() {
		for p := range hw.work {
			hw.h.Write(p)
			hw.done <- struct{}{}
		}
	}()
	return hw
}

func (hw *hashingWriter) Write(p []byte) (int, error) {
	if hw.err != nil {
		return 0, hw.err
	}
	if err := hw.ctx.Err(); err != nil {
		hw.err = err
		return 0, err
	}
	var (
		n   int
		err error
	)
	if len(p) < hashOverlapMin {
		n, err = hw.w.Write(p)
		hw.h.Write(p)
	} else {
		hw.work <- p
		n, err = hw.w.Write(p)
		<-hw.done
	}
	if err == nil && n < len(p) {
		err = io.ErrShortWrite
	}
	hw.n += int64(n)
	hw.err = err // after a failure the hash no longer matches the file: no more writes
	return n, err
}

// sum returns the size and hex SHA-256 of everything written (meaningless
// after a write error).
func (hw *hashingWriter) sum() (int64, string) { return hw.n, hex.EncodeToString(hw.h.Sum(nil)) }

func (hw *hashingWriter) close() { close(hw.work) }
