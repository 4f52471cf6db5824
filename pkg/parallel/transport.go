package parallel

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Transport moves tagged byte messages between the ranks of a job. Messages
// from one sender with one tag arrive in the order they were sent; messages
// with different tags or from different senders are independent. Every method
// is safe for concurrent use.
//
// A Send or Recv waits at most until ctx is done or the transport's timeout
// (Options.Timeout) has passed, whichever comes first; a peer that dies,
// stalls or closes becomes an error, never a hang.
type Transport interface {
	// Rank is this endpoint's global rank; Size is the world size.
	Rank() int
	Size() int
	// Send delivers payload to rank to. It does not keep payload after it
	// returns, so the caller may reuse it. A message may be buffered by the
	// transport: Send returning does not mean the peer has received it.
	Send(ctx context.Context, to int, tag uint64, payload []byte) error
	// Recv returns the next message from rank from with the given tag. The
	// caller owns the returned slice (see Release).
	Recv(ctx context.Context, from int, tag uint64) ([]byte, error)
	// Close releases the transport. Pending and later calls fail with
	// ErrClosed; peers' pending Recvs from this rank fail promptly with
	// ErrPeerClosed once the messages already sent have been received.
	Close() error
}

// Releaser is implemented by transports that recycle receive buffers: a
// caller done with a slice returned by Recv may hand it back. Optional.
type Releaser interface {
	Release(buf []byte)
}

// Errors of the transports; they wrap context errors where those are the cause.
var (
	ErrClosed     = errors.New("parallel: transport closed")
	ErrPeerClosed = errors.New("parallel: peer closed")
	ErrPeerLost   = errors.New("parallel: peer lost")
	ErrTimeout    = errors.New("parallel: timed out waiting for peer")
	ErrBadRank    = errors.New("parallel: rank out of range")
	ErrTooLarge   = errors.New("parallel: message too large")
)

// Options configures a transport. Zero fields take the defaults.
type Options struct {
	// Timeout bounds every Send and Recv (default 5m): the longest a rank
	// waits for a peer before giving up with ErrTimeout. Set it above the
	// longest compute between two collectives.
	Timeout time.Duration
	// MaxPending bounds the bytes of received messages that wait, per
	// sender, for a Recv (default 256 MiB). A sender that gets further ahead
	// blocks (and eventually times out). One message is always admitted.
	MaxPending int
	// MaxMessage bounds one message (default 4 GiB).
	MaxMessage int
	// ChunkSize is the gRPC frame payload size (default 1 MiB).
	ChunkSize int
	// Window is the gRPC HTTP/2 flow-control window per stream (default
	// 16 MiB; the connection window is twice it).
	Window int
	// Session must match between all ranks of a gRPC job (default "").
	Session string
	// DialTimeout bounds Connect (default 1m).
	DialTimeout time.Duration
}

// DefaultOptions returns the defaults.
func DefaultOptions() Options {
	return Options{
		Timeout:     5 * time.Minute,
		MaxPending:  256 << 20,
		MaxMessage:  4 << 30,
		ChunkSize:   1 << 20,
		Window:      16 << 20,
		DialTimeout: time.Minute,
	}
}

func (o Options) withDefaults() Options {
	d := DefaultOptions()
	if o.Timeout <= 0 {
		o.Timeout = d.Timeout
	}
	if o.MaxPending <= 0 {
		o.MaxPending = d.MaxPending
	}
	if o.MaxMessage <= 0 {
		o.MaxMessage = d.MaxMessage
	}
	if o.ChunkSize <= 0 {
		o.ChunkSize = d.ChunkSize
	}
	if o.Window <= 0 {
		o.Window = d.Window
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = d.DialTimeout
	}
	return o
}

// Validate reports settings that cannot work.
func (o Options) Validate() error {
	o = o.withDefaults()
	if o.ChunkSize < 1024 {
		return fmt.Errorf("parallel: options: chunk size %d < 1024", o.ChunkSize)
	}
	if o.Window < 64<<10 {
		return fmt.Errorf("parallel: options: window %d < 64 KiB", o.Window)
	}
	if o.Window > 1<<30 {
		return fmt.Errorf("parallel: options: window %d > 1 GiB", o.Window)
	}
	return nil
}

// opDeadline turns ctx and the transport timeout into one wait: it returns a
// timer channel (nil when ctx's own deadline is earlier) and a stop func.
func opDeadline(ctx context.Context, timeout time.Duration) (<-chan time.Time, func()) {
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= timeout {
		return nil, func() {}
	}
	t := time.NewTimer(timeout)
	return t.C, func() { t.Stop() }
}

func ctxErr(ctx context.Context, what string) error {
	return fmt.Errorf("parallel: %s: %w", what, context.Cause(ctx))
}

// mailbox holds the messages received from one sender until Recv takes them.
type mailbox struct {
	mu      sync.Mutex
	queues  map[uint64][][]byte
	pending int           // bytes queued
	changed chan struct{} // closed and replaced on every change
	err     error         // set when no more messages will arrive
}

func newMailbox() *mailbox {
	return &mailbox{queues: make(map[uint64][][]byte), changed: make(chan struct{})}
}

func (m *mailbox) notifyLocked() {
	close(m.changed)
	m.changed = make(chan struct{})
}

// waitRoom blocks until fewer than limit bytes are pending. It fails with the
// mailbox error, ErrClosed when closed is closed, ctx's error, or ErrTimeout.
func (m *mailbox) waitRoom(ctx context.Context, limit int, closed <-chan struct{}, timer <-chan time.Time) error {
	for {
		m.mu.Lock()
		if m.err != nil {
			err := m.err
			m.mu.Unlock()
			return err
		}
		if m.pending < limit {
			m.mu.Unlock()
			return nil
		}
		ch := m.changed
		m.mu.Unlock()
		select {
		case <-ch:
		case <-closed:
			return ErrClosed
		case <-ctx.Done():
			return ctxErr(ctx, "send")
		case <-timer:
			return ErrTimeout
		}
	}
}

// put queues a message. It never blocks (see waitRoom).
func (m *mailbox) put(tag uint64, msg []byte) {
	m.mu.Lock()
	m.queues[tag] = append(m.queues[tag], msg)
	m.pending += len(msg)
	m.notifyLocked()
	m.mu.Unlock()
}

// fail makes waiters without a queued message return err; the first error sticks.
func (m *mailbox) fail(err error) {
	m.mu.Lock()
	if m.err == nil {
		m.err = err
		m.notifyLocked()
	}
	m.mu.Unlock()
}

// get waits for the next message with tag.
func (m *mailbox) get(ctx context.Context, tag uint64, timeout time.Duration, closed <-chan struct{}) ([]byte, error) {
	var timer <-chan time.Time
	stop := func() {}
	defer func() { stop() }()
	for {
		m.mu.Lock()
		if q := m.queues[tag]; len(q) > 0 {
			msg := q[0]
			q[0] = nil
			if len(q) == 1 {
				delete(m.queues, tag)
			} else {
				m.queues[tag] = q[1:]
			}
			m.pending -= len(msg)
			m.notifyLocked()
			m.mu.Unlock()
			return msg, nil
		}
		if m.err != nil {
			err := m.err
			m.mu.Unlock()
			return nil, err
		}
		ch := m.changed
		m.mu.Unlock()
		if timer == nil {
			timer, stop = opDeadline(ctx, timeout)
			if timer == nil {
				timer = make(chan time.Time) // never fires: ctx deadline comes first
			}
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctxErr(ctx, "recv")
		case <-timer:
			return nil, ErrTimeout
		case <-closed:
			return nil, ErrClosed
		}
	}
}
