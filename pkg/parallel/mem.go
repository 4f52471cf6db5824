package parallel

import (
	"context"
	"fmt"
	"sync"
)

// MemTransport is an in-process Transport for tests: NewMemTransports
// returns one connected endpoint per rank. Send copies the payload into a
// pooled buffer; Release hands it back.
type MemTransport struct {
	rank   int
	hub    *memHub
	opts   Options
	boxes  []*mailbox // boxes[from]: messages from rank from to this rank
	closed chan struct{}
	once   sync.Once
}

type memHub struct {
	eps  []*MemTransport
	pool bufPool // message copies, shared by all endpoints
}

// Release recycles a buffer returned by Recv.
func (t *MemTransport) Release(buf []byte) { t.hub.pool.put(buf) }

// NewMemTransports returns n connected in-process endpoints; endpoint i has rank i.
func NewMemTransports(n int, opts Options) []*MemTransport {
	opts = opts.withDefaults()
	hub := &memHub{eps: make([]*MemTransport, n)}
	for r := range hub.eps {
		t := &MemTransport{rank: r, hub: hub, opts: opts, boxes: newMailboxes(n), closed: make(chan struct{})}
		hub.eps[r] = t
	}
	return hub.eps
}

func (t *MemTransport) Rank() int { return t.rank }
func (t *MemTransport) Size() int { return len(t.hub.eps) }

func (t *MemTransport) isClosed() bool {
	select {
	case <-t.closed:
		return true
	default:
		return false
	}
}

func (t *MemTransport) Send(ctx context.Context, to int, tag uint64, payload []byte) error {
	if to < 0 || to >= len(t.hub.eps) {
		return fmt.Errorf("%w: send to %d of %d", ErrBadRank, to, len(t.hub.eps))
	}
	if t.isClosed() {
		return ErrClosed
	}
	if len(payload) > t.opts.MaxMessage {
		return fmt.Errorf("%w: %d bytes > %d", ErrTooLarge, len(payload), t.opts.MaxMessage)
	}
	if err := ctx.Err(); err != nil {
		return ctxErr(ctx, "send")
	}
	box := t.hub.eps[to].boxes[t.rank]
	if p := box.claim(tag, len(payload)); p != nil { // a posted receive: copy straight in
		copy(p.dst, payload)
		p.complete(nil)
		return nil
	}
	timer, stop := opDeadline(ctx, t.opts.Timeout)
	defer stop()
	err := box.waitRoom(ctx, t.opts.MaxPending, t.closed, timer)
	if err != nil {
		return fmt.Errorf("parallel: send to rank %d: %w", to, err)
	}
	box.deliver(tag, payload, &t.hub.pool)
	return nil
}

func (t *MemTransport) Recv(ctx context.Context, from int, tag uint64) ([]byte, error) {
	if from < 0 || from >= len(t.hub.eps) {
		return nil, fmt.Errorf("%w: recv from %d of %d", ErrBadRank, from, len(t.hub.eps))
	}
	if t.isClosed() {
		return nil, ErrClosed
	}
	msg, err := t.boxes[from].get(ctx, tag, t.opts.Timeout, t.closed)
	if err != nil {
		return nil, fmt.Errorf("parallel: recv from rank %d tag %#x: %w", from, tag, err)
	}
	return msg, nil
}

// RecvInto receives the next message from rank from with tag into dst (see
// RecvIntoer): a posted receive gets the sender's copy directly.
func (t *MemTransport) RecvInto(ctx context.Context, from int, tag uint64, dst []byte) error {
	return t.recvIntoPosted(ctx, from, tag, dst, nil)
}

func (t *MemTransport) recvIntoPosted(ctx context.Context, from int, tag uint64, dst []byte, posted func()) error {
	if from < 0 || from >= len(t.hub.eps) {
		return fmt.Errorf("%w: recv from %d of %d", ErrBadRank, from, len(t.hub.eps))
	}
	if t.isClosed() {
		return ErrClosed
	}
	if err := t.boxes[from].recvInto(ctx, tag, dst, t.opts.Timeout, t.closed, t.Release, posted); err != nil {
		return fmt.Errorf("parallel: recv from rank %d tag %#x: %w", from, tag, err)
	}
	return nil
}

// Close fails this endpoint's pending calls and tells every peer that no more
// messages will come from it.
func (t *MemTransport) Close() error {
	t.once.Do(func() {
		close(t.closed)
		for r, ep := range t.hub.eps {
			ep.boxes[t.rank].fail(fmt.Errorf("%w: rank %d", ErrPeerClosed, t.rank))
			t.boxes[r].fail(fmt.Errorf("%w: rank %d", ErrPeerClosed, t.rank)) // unblocks peers waiting for room
		}
	})
	return nil
}
