package parallel

import (
	"math/bits"
	"sync"
)

// bufPool recycles message buffers in power-of-two size classes. Unlike a
// sync.Pool it survives garbage collections (big buffers freed and
// re-allocated every step cost page faults and zeroing), and it is bounded:
// it keeps at most poolKeep buffers per class and poolMaxBytes in all, and
// drops the rest to the garbage collector. The zero value is ready to use.
type bufPool struct {
	mu      sync.Mutex
	classes [48][][]byte
	held    int // bytes held
}

const (
	poolMin      = 64 << 10 // smaller buffers are plain allocations
	poolKeep     = 16
	poolMaxBytes = 512 << 20
)

// get returns a buffer of length n (contents undefined).
func (p *bufPool) get(n int) []byte {
	if n < poolMin {
		return make([]byte, n)
	}
	c := bits.Len(uint(n - 1))
	if c >= len(p.classes) {
		return make([]byte, n)
	}
	p.mu.Lock()
	if l := p.classes[c]; len(l) > 0 {
		b := l[len(l)-1]
		l[len(l)-1] = nil
		p.classes[c] = l[:len(l)-1]
		p.held -= cap(b)
		p.mu.Unlock()
		return b[:n]
	}
	p.mu.Unlock()
	return make([]byte, n, 1<<c)
}

// put hands back a buffer from get; others are ignored.
func (p *bufPool) put(b []byte) {
	c := cap(b)
	if c < poolMin || c&(c-1) != 0 {
		return
	}
	k := bits.Len(uint(c - 1))
	if k >= len(p.classes) {
		return
	}
	p.mu.Lock()
	if len(p.classes[k]) < poolKeep && p.held+c <= poolMaxBytes {
		p.classes[k] = append(p.classes[k], b[:c])
		p.held += c
	}
	p.mu.Unlock()
}

// framePool is the mem.BufferPool of the gRPC transports (frame payloads,
// socket read and write buffers). gRPC's default pool zeroes every buffer it
// hands out and lives in sync.Pools that garbage collections empty; at
// gigabytes per second both show up in profiles. framePool does neither: it
// keeps freed buffers on bounded free lists, per power-of-two class.
type framePool struct {
	mu      sync.Mutex
	classes [32][]*[]byte
	held    int
}

const framePoolMaxBytes = 64 << 20

func (p *framePool) Get(n int) *[]byte {
	c := bits.Len(uint(max(n, 1) - 1))
	if c >= len(p.classes) {
		b := make([]byte, n)
		return &b
	}
	p.mu.Lock()
	if l := p.classes[c]; len(l) > 0 {
		b := l[len(l)-1]
		l[len(l)-1] = nil
		p.classes[c] = l[:len(l)-1]
		p.held -= cap(*b)
		p.mu.Unlock()
		*b = (*b)[:n]
		return b
	}
	p.mu.Unlock()
	b := make([]byte, n, 1<<c)
	return &b
}

func (p *framePool) Put(b *[]byte) {
	c := cap(*b)
	if c == 0 || c&(c-1) != 0 {
		return
	}
	k := bits.Len(uint(c - 1))
	if k >= len(p.classes) {
		return
	}
	p.mu.Lock()
	if p.held+c <= framePoolMaxBytes {
		p.classes[k] = append(p.classes[k], b)
		p.held += c
	}
	p.mu.Unlock()
}
