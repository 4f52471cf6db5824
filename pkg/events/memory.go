package events

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultMemoryHistory is how many stored messages per kind Memory keeps.
const DefaultMemoryHistory = 100_000

// Memory is an in-process Bus for tests. Stored kinds keep their last
// DefaultMemoryHistory messages; subscribers read the history at their own
// pace, so Publish never blocks and no subscriber loses messages unless it
// falls more than the history behind. Connect returns further clients of
// the same messages (as several processes share one NATS).
type Memory struct {
	*memHub
	closeMu   sync.Mutex
	closed    bool
	done      chan struct{}
	published atomic.Uint64
}

// memHub is the state clients share, playing the NATS server.
type memHub struct {
	mu      sync.Mutex
	logs    map[Kind][]Message
	base    map[Kind]uint64 // Seq of logs[k][0] minus 1
	changed chan struct{}   // closed and replaced on every publish
}

var _ Bus = (*Memory)(nil)

// NewMemory returns an empty in-memory bus.
func NewMemory() *Memory {
	return (&Memory{memHub: &memHub{
		logs: map[Kind][]Message{}, base: map[Kind]uint64{}, changed: make(chan struct{}),
	}}).Connect()
}

// Connect returns another client of the same bus, with its own Close and
// Stats.
func (b *Memory) Connect() *Memory {
	return &Memory{memHub: b.memHub, done: make(chan struct{})}
}

func (b *Memory) isClosed() bool {
	b.closeMu.Lock()
	defer b.closeMu.Unlock()
	return b.closed
}

// Publish implements Bus.
func (b *Memory) Publish(m Message) error {
	if err := m.Validate(); err != nil {
		return err
	}
	stamp(&m, time.Now)
	if b.isClosed() {
		return ErrClosed
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	log := b.logs[m.Kind]
	m.Seq = b.base[m.Kind] + uint64(len(log)) + 1
	if !m.Kind.Stored() {
		m.Seq = 0
	}
	log = append(log, m)
	if over := len(log) - DefaultMemoryHistory; over > 0 {
		log = log[over:]
		b.base[m.Kind] += uint64(over)
	}
	b.logs[m.Kind] = log
	close(b.changed)
	b.changed = make(chan struct{})
	b.published.Add(1)
	return nil
}

func matches(f Filter, m *Message) bool { return f.JobID == "" || m.JobID == f.JobID }

// Subscribe implements Bus.
func (b *Memory) Subscribe(ctx context.Context, f Filter) (<-chan Message, error) {
	if err := f.validate(); err != nil {
		return nil, err
	}
	if b.isClosed() {
		return nil, ErrClosed
	}
	b.mu.Lock()
	// next is the absolute index (base + offset) of the next message to read.
	next := b.base[f.Kind] + uint64(len(b.logs[f.Kind]))
	if f.Replay && f.Kind.Stored() {
		next = b.base[f.Kind]
	}
	b.mu.Unlock()

	out := make(chan Message)
	go func() {
		defer close(out)
		for {
			b.mu.Lock()
			base, log, changed := b.base[f.Kind], b.logs[f.Kind], b.changed
			b.mu.Unlock()
			if next < base {
				next = base // fell behind the history
			}
			for ; next < base+uint64(len(log)); next++ {
				m := log[next-base]
				if !matches(f, &m) {
					continue
				}
				select {
				case out <- m:
				case <-ctx.Done():
					return
				case <-b.done:
					return
				}
			}
			select {
			case <-changed:
			case <-ctx.Done():
				return
			case <-b.done:
				return
			}
		}
	}()
	return out, nil
}

// History implements Bus.
func (b *Memory) History(ctx context.Context, f Filter) ([]Message, error) {
	if err := f.validate(); err != nil {
		return nil, err
	}
	if !f.Kind.Stored() {
		return nil, nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []Message
	for _, m := range b.logs[f.Kind] {
		if matches(f, &m) {
			out = append(out, m)
		}
	}
	return out, nil
}

// Stats implements Bus. Memory never drops.
func (b *Memory) Stats() Stats {
	n := b.published.Load()
	return Stats{Published: n, Sent: n, Connected: true}
}

// Close implements Bus.
func (b *Memory) Close() error {
	b.closeMu.Lock()
	defer b.closeMu.Unlock()
	if !b.closed {
		b.closed = true
		close(b.done)
	}
	return nil
}
