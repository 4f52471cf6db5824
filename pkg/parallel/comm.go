package parallel

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"sync"
	"time"
	"unsafe"

	"github.com/switchyard-ml/switchyard/pkg/kernels"
)

// Op is a reduction.
type Op int

const (
	Sum Op = iota
	Max
	Min
)

func (o Op) String() string {
	switch o {
	case Sum:
		return "sum"
	case Max:
		return "max"
	case Min:
		return "min"
	}
	return fmt.Sprintf("Op(%d)", int(o))
}

// ErrMismatch reports that group members called a collective with
// incompatible arguments (lengths or counts).
var ErrMismatch = errors.New("parallel: collective arguments differ between ranks")

// CommOptions configures a Comm. Zero fields take the defaults.
type CommOptions struct {
	// Name separates the tag spaces of several Comms over the same ranks
	// (e.g. "grad" and "lbl"); members of one Comm must use the same Name.
	Name string
	// SmallBytes: all-reduces and broadcasts of at most this many bytes use
	// the one-round direct algorithm, larger ones the pipelined ring or
	// chain (default 64 KiB).
	SmallBytes int
	// Segment is the pipelining unit of ring and chain algorithms in bytes
	// (default 1 MiB).
	Segment int
}

func (o CommOptions) withDefaults() CommOptions {
	if o.SmallBytes <= 0 {
		o.SmallBytes = 64 << 10
	}
	if o.Segment <= 0 {
		o.Segment = 1 << 20
	}
	return o
}

// Comm runs collectives among a group of ranks over a Transport.
//
// Every member must issue the same collectives in the same order, one at a
// time (a Comm is not for concurrent use; use one Comm per goroutine, with
// distinct Names, to run collectives concurrently). Results are
// deterministic: the same inputs give bitwise-identical outputs on every
// member and every run, whatever order messages arrive in. After a
// collective fails (peer lost, timeout, cancellation) the Comm must not be
// used again: peers may be half-way through it.
type Comm struct {
	t     Transport
	ranks []int // global ranks, sorted
	me    int   // index of t.Rank() in ranks
	id    uint64
	seq   uint32
	opts  CommOptions
}

// NewComm makes a communicator over the group ranks (global ranks of t; the
// group must contain t.Rank()). Group index i is the i-th smallest rank.
func NewComm(t Transport, ranks []int, opts CommOptions) (*Comm, error) {
	rs := slices.Clone(ranks)
	slices.Sort(rs)
	me := -1
	for i, r := range rs {
		if r < 0 || r >= t.Size() {
			return nil, fmt.Errorf("%w: group member %d of world %d", ErrBadRank, r, t.Size())
		}
		if i > 0 && rs[i-1] == r {
			return nil, fmt.Errorf("parallel: group lists rank %d twice", r)
		}
		if r == t.Rank() {
			me = i
		}
	}
	if me < 0 {
		return nil, fmt.Errorf("parallel: group %v does not contain rank %d", rs, t.Rank())
	}
	h := fnv.New64a()
	fmt.Fprintf(h, "%s|%v", opts.Name, rs)
	id := h.Sum64() >> 32
	if id == abortSpace {
		id--
	}
	return &Comm{t: t, ranks: rs, me: me, id: id, opts: opts.withDefaults()}, nil
}

// Sub makes a communicator over a subgroup (global ranks) with its own tag
// space; name distinguishes several subgroups over the same ranks.
func (c *Comm) Sub(name string, ranks []int) (*Comm, error) {
	o := c.opts
	o.Name = c.opts.Name + "/" + name
	return NewComm(c.t, ranks, o)
}

// Rank is this member's index in the group; Size the group size.
func (c *Comm) Rank() int { return c.me }
func (c *Comm) Size() int { return len(c.ranks) }

// Ranks returns the group's global ranks in group order.
func (c *Comm) Ranks() []int { return slices.Clone(c.ranks) }

func (c *Comm) nextTag() uint64 {
	c.seq++
	return c.id<<32 | uint64(c.seq)
}

func (c *Comm) peer(i int) int { return c.ranks[((i%len(c.ranks))+len(c.ranks))%len(c.ranks)] }

func (c *Comm) release(b []byte) {
	if r, ok := c.t.(Releaser); ok {
		r.Release(b)
	}
}

// fail wraps the error of the current collective and, unless a peer's abort
// notice caused it, sends one to every other member (see abortSpace), so
// that none of them waits out the timeout for a collective that cannot
// complete. It waits at most abortWait for the notices to go out.
// recvInto receives the next message from global rank from into dst, which
// it must fill exactly: straight from the wire where the transport can.
func (c *Comm) recvInto(ctx context.Context, from int, tag uint64, dst []byte) error {
	return c.recvIntoPosted(ctx, from, tag, dst, func() {})
}

// recvIntoPosted is recvInto that calls posted exactly once: as soon as a
// message arriving from then on lands in dst (where the transport says so,
// recvIntoPoster), else just before it starts waiting, or when it fails.
func (c *Comm) recvIntoPosted(ctx context.Context, from int, tag uint64, dst []byte, posted func()) error {
	var once sync.Once
	defer once.Do(posted)
	if p, ok := c.t.(recvIntoPoster); ok {
		return p.recvIntoPosted(ctx, from, tag, dst, func() { once.Do(posted) })
	}
	once.Do(posted)
	if ri, ok := c.t.(RecvIntoer); ok {
		return ri.RecvInto(ctx, from, tag, dst)
	}
	m, err := c.t.Recv(ctx, from, tag)
	if err != nil {
		return err
	}
	defer c.release(m)
	if len(m) != len(dst) {
		return fmt.Errorf("%w: rank %d sent %d bytes, want %d", ErrMismatch, from, len(m), len(dst))
	}
	copy(dst, m)
	return nil
}

func (c *Comm) fail(what string, err error) error {
	err = fmt.Errorf("parallel: %s (group %v, rank %d): %w", what, c.ranks, c.t.Rank(), err)
	if !errors.Is(err, ErrAborted) && c.Size() > 1 {
		c.abort(err)
	}
	return err
}

const abortWait = time.Second

func (c *Comm) abort(err error) {
	msg := encodeAbort(c.id<<32|uint64(c.seq), err.Error())
	ctx, cancel := context.WithTimeout(context.Background(), abortWait)
	var wg sync.WaitGroup
	for i, r := range c.ranks {
		if i == c.me {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.t.Send(ctx, r, abortTag, msg) //nolint:errcheck // best effort: a dead peer needs no notice
		}()
	}
	wg.Wait() // each send gives up by abortWait
	cancel()
}

// reducer combines src into dst element-wise (both hold whole elements).
type reducer func(dst, src []byte)

func asF32(b []byte) []float32 {
	if len(b) == 0 {
		return nil
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), len(b)/4)
}

func asF64(b []byte) []float64 {
	if len(b) == 0 {
		return nil
	}
	return unsafe.Slice((*float64)(unsafe.Pointer(&b[0])), len(b)/8)
}

func f32Bytes(x []float32) []byte {
	if len(x) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&x[0])), len(x)*4)
}

func f64Bytes(x []float64) []byte {
	if len(x) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&x[0])), len(x)*8)
}

// aligned returns b, copied if its start is not aligned to n bytes.
func aligned(b []byte, n uintptr) []byte {
	if len(b) > 0 && uintptr(unsafe.Pointer(&b[0]))%n != 0 {
		return append(make([]byte, 0, len(b)+8), b...)
	}
	return b
}

// combine sets dst[i] = f(dst[i], src[i]) (the non-hot reductions).
func combine[T float32 | float64](dst, src []T, f func(a, b T) T) {
	src = src[:len(dst)]
	for i := range dst {
		dst[i] = f(dst[i], src[i])
	}
}

func reducerF32(op Op) (reducer, error) {
	var f func(a, b float32) float32
	switch op {
	case Sum:
		return addF32, nil
	case Max:
		f = func(a, b float32) float32 { return max(a, b) }
	case Min:
		f = func(a, b float32) float32 { return min(a, b) }
	default:
		return nil, fmt.Errorf("parallel: unknown reduction %v", op)
	}
	return func(d, s []byte) { combine(asF32(d), asF32(aligned(s, 4)), f) }, nil
}

// addF32 is the float32 sum: dst += src with one vectorised add per element
// (kernels.Axpy with alpha 1 is a fused multiply-add 1*src+dst, which rounds
// exactly like src+dst, so the result is bitwise that of addF32Ref).
func addF32(d, s []byte) {
	dst, src := asF32(d), asF32(aligned(s, 4))
	kernels.Axpy(1, src[:len(dst)], dst)
}

// addF32Ref is the plain reference of addF32.
func addF32Ref(d, s []byte) {
	combine(asF32(d), asF32(aligned(s, 4)), func(a, b float32) float32 { return a + b })
}

func reducerF64(op Op) (reducer, error) {
	var f func(a, b float64) float64
	switch op {
	case Sum:
		f = func(a, b float64) float64 { return a + b }
	case Max:
		f = func(a, b float64) float64 { return max(a, b) }
	case Min:
		f = func(a, b float64) float64 { return min(a, b) }
	default:
		return nil, fmt.Errorf("parallel: unknown reduction %v", op)
	}
	return func(d, s []byte) { combine(asF64(d), asF64(aligned(s, 8)), f) }, nil
}

// AllReduce reduces buf element-wise over the group, in place. Buffers of at
// most SmallBytes use one round of direct exchange, reduced in group order
// (x0 op x1 op ...); larger ones use a pipelined ring (reduce-scatter then
// all-gather), where chunk i is reduced in ring order starting at member
// i+1. Either way every member gets the same bits.
func (c *Comm) AllReduce(ctx context.Context, buf []float32, op Op) error {
	red, err := reducerF32(op)
	if err != nil {
		return err
	}
	return c.allReduce(ctx, f32Bytes(buf), 4, red)
}

// AllReduceF64 is AllReduce for float64 (e.g. expert token counts).
func (c *Comm) AllReduceF64(ctx context.Context, buf []float64, op Op) error {
	red, err := reducerF64(op)
	if err != nil {
		return err
	}
	return c.allReduce(ctx, f64Bytes(buf), 8, red)
}

func (c *Comm) allReduce(ctx context.Context, data []byte, elem int, red reducer) error {
	tag := c.nextTag()
	w := c.Size()
	if w == 1 || len(data) == 0 {
		return nil
	}
	if len(data) <= c.opts.SmallBytes {
		if err := c.directAllReduce(ctx, tag, data, red); err != nil {
			return c.fail("all-reduce", err)
		}
		return nil
	}
	offs := blockOffsets(len(data)/elem, w, elem)
	if err := c.ring(ctx, tag, data, offs, elem, 0, 2*w-2, 0, red); err != nil {
		return c.fail("all-reduce", err)
	}
	return nil
}

// blockOffsets splits n elements into w near-equal chunks; byte offsets.
func blockOffsets(n, w, elem int) []int {
	offs := make([]int, w+1)
	for i := 0; i <= w; i++ {
		offs[i] = (n * i / w) * elem
	}
	return offs
}

func countOffsets(counts []int, elem int) ([]int, error) {
	offs := make([]int, len(counts)+1)
	for i, n := range counts {
		if n < 0 {
			return nil, fmt.Errorf("parallel: negative count %d", n)
		}
		offs[i+1] = offs[i] + n*elem
	}
	return offs, nil
}

// directAllReduce: every member sends its buffer to every other and reduces
// all of them in group order.
func (c *Comm) directAllReduce(ctx context.Context, tag uint64, data []byte, red reducer) error {
	w := c.Size()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sendErr := make(chan error, 1)
	go func() {
		for k := 1; k < w; k++ {
			if err := c.t.Send(ctx, c.peer(c.me+k), tag, data); err != nil {
				cancel()
				sendErr <- err
				return
			}
		}
		sendErr <- nil
	}()
	msgs := make([][]byte, w)
	var rerr error
	for k := 1; k < w && rerr == nil; k++ {
		i := (c.me - k + w) % w
		m, err := c.t.Recv(ctx, c.ranks[i], tag)
		switch {
		case err != nil:
			rerr = err
		case len(m) != len(data):
			rerr = fmt.Errorf("%w: rank %d sent %d bytes, want %d", ErrMismatch, c.ranks[i], len(m), len(data))
		}
		msgs[i] = m
	}
	if rerr != nil {
		cancel()
	}
	// A failed send cancels the receives: report the send's error, not the
	// cancellation it caused.
	if serr := <-sendErr; serr != nil && (rerr == nil || errors.Is(rerr, context.Canceled) && ctx.Err() != nil) {
		rerr = serr
	}
	if rerr != nil {
		return rerr
	}
	// Sends are done: data may now be overwritten. Reduce in group order.
	acc := msgs[0]
	if c.me == 0 {
		acc = append(make([]byte, 0, len(data)), data...)
	}
	for i := 1; i < w; i++ {
		if i == c.me {
			red(acc, data)
		} else {
			red(acc, msgs[i])
		}
	}
	copy(data, acc)
	for _, m := range msgs {
		if m != nil {
			c.release(m)
		}
	}
	return nil
}

// ringOp is one segment moved in a ring step.
type ringOp struct {
	lo, hi int // byte range in the buffer
	after  int // send: recv ops that must be done first; recv: send ops that must be done first
	reduce bool
}

// ring runs steps [t0, t1) of a ring over data, split into w chunks at byte
// offsets offs and pipelined in segments. At step t member r sends chunk
// (r-t+k) mod w to member r+1 and receives chunk (r-t-1+k) mod w from member
// r-1, reducing it into place for t < w-1 and copying it for t >= w-1. The
// chunk sent at step t > t0 is the one received at step t-1.
//
// All-reduce is steps [0, 2w-2) with k = 0 (member r ends the reduce-scatter
// half holding chunk r+1); reduce-scatter is [0, w-1) with k = -1 (member r
// ends with chunk r); all-gather is [w-1, 2w-2) with k = -1.
func (c *Comm) ring(ctx context.Context, tag uint64, data []byte, offs []int, elem, t0, t1, k int, red reducer) error {
	seg := max(elem, c.opts.Segment/elem*elem)
	sends, recvs := ringSchedule(c.Size(), c.me, t0, t1, k, offs, seg)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	x := &ringRun{cancel: cancel}
	x.cond = sync.NewCond(&x.mu)
	sendFinished := make(chan struct{})
	go func() {
		defer close(sendFinished)
		c.ringSends(ctx, x, tag, data, sends)
	}()
	c.ringRecvs(ctx, x, tag, data, recvs, red)
	<-sendFinished
	return x.failed
}

// ringSchedule is member r's part of ring steps [t0, t1) over w members
// (see ring), chunk i being bytes [offs[i], offs[i+1]) cut into segments of
// at most seg bytes: the segments it sends to r+1 and receives from r-1,
// each in order. A send of step t > t0 waits for the receive of the same
// segment at step t-1 (it forwards what arrived); a receive waits for the
// last send of its segment (the old contents must be out before they are
// overwritten). Pure: the tests check every member's schedule together.
func ringSchedule(w, r, t0, t1, k int, offs []int, seg int) (sends, recvs []ringOp) {
	mod := func(x int) int { return ((x % w) + w) % w }
	segments := func(chunk int) [][2]int {
		var s [][2]int
		for lo := offs[chunk]; lo < offs[chunk+1]; lo += seg {
			s = append(s, [2]int{lo, min(lo+seg, offs[chunk+1])})
		}
		return s
	}
	lastSend := map[int]int{} // segment start -> index of its latest send op
	for t := t0; t < t1; t++ {
		base := len(recvs) // recv ops of step t-1 end at base
		sc := mod(r - t + k)
		for j, s := range segments(sc) {
			after := 0
			if t > t0 {
				after = base - len(segments(sc)) + j + 1
			}
			lastSend[s[0]] = len(sends)
			sends = append(sends, ringOp{lo: s[0], hi: s[1], after: after})
		}
		for _, s := range segments(mod(r - t - 1 + k)) {
			after := 0
			if i, ok := lastSend[s[0]]; ok {
				after = i + 1
			}
			recvs = append(recvs, ringOp{lo: s[0], hi: s[1], after: after, reduce: t < w-1})
		}
	}
	return sends, recvs
}

// ringRun is the progress of one ring run's two sides: the sends (on their
// own goroutine) and the receives (on the caller's), each op waiting until
// the other side has done the number of ops its after names, and the first
// error, which stops both.
type ringRun struct {
	mu                 sync.Mutex
	cond               *sync.Cond
	sendDone, recvDone int
	failed             error
	cancel             context.CancelFunc
}

// await waits until *done >= n; false if the run failed meanwhile.
func (x *ringRun) await(done *int, n int) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	for *done < n && x.failed == nil {
		x.cond.Wait()
	}
	return x.failed == nil
}

func (x *ringRun) did(done *int) {
	x.mu.Lock()
	*done++
	x.cond.Broadcast()
	x.mu.Unlock()
}

func (x *ringRun) fail(err error) {
	x.mu.Lock()
	if x.failed == nil {
		x.failed = err
	}
	x.cond.Broadcast()
	x.mu.Unlock()
	x.cancel()
}

func (c *Comm) ringSends(ctx context.Context, x *ringRun, tag uint64, data []byte, sends []ringOp) {
	next := c.peer(c.me + 1)
	for _, op := range sends {
		if !x.await(&x.recvDone, op.after) {
			return
		}
		if err := c.t.Send(ctx, next, tag, data[op.lo:op.hi]); err != nil {
			x.fail(err)
			return
		}
		x.did(&x.sendDone)
	}
}

func (c *Comm) ringRecvs(ctx context.Context, x *ringRun, tag uint64, data []byte, recvs []ringOp, red reducer) {
	prev := c.peer(c.me - 1)
	for _, op := range recvs {
		if !x.await(&x.sendDone, op.after) {
			return
		}
		var err error
		if op.reduce {
			var m []byte
			m, err = c.t.Recv(ctx, prev, tag)
			if err == nil && len(m) != op.hi-op.lo {
				err = fmt.Errorf("%w: rank %d sent a %d-byte segment, want %d", ErrMismatch, prev, len(m), op.hi-op.lo)
			}
			if err == nil {
				red(data[op.lo:op.hi], m)
				c.release(m)
			}
		} else {
			// The segment's old contents are out (op.after): receive in place.
			err = c.recvInto(ctx, prev, tag, data[op.lo:op.hi])
		}
		if err != nil {
			x.fail(err)
			return
		}
		x.did(&x.recvDone)
	}
}

// ReduceScatter reduces buf element-wise over the group and leaves member i
// with the reduced block i: buf is split in group order into blocks of
// counts[i] elements (sum(counts) == len(buf)). It returns this member's
// block, a subslice of buf; the rest of buf is clobbered.
func (c *Comm) ReduceScatter(ctx context.Context, buf []float32, counts []int, op Op) ([]float32, error) {
	red, err := reducerF32(op)
	if err != nil {
		return nil, err
	}
	tag := c.nextTag()
	offs, err := c.checkCounts(counts, len(buf), 4)
	if err != nil {
		return nil, err
	}
	if c.Size() > 1 {
		if err := c.ring(ctx, tag, f32Bytes(buf), offs, 4, 0, c.Size()-1, -1, red); err != nil {
			return nil, c.fail("reduce-scatter", err)
		}
	}
	return buf[offs[c.me]/4 : offs[c.me+1]/4], nil
}

// AllGather fills buf, split in group order into blocks of counts[i]
// elements, with every member's block: on entry member i's block holds its
// contribution.
func (c *Comm) AllGather(ctx context.Context, buf []float32, counts []int) error {
	tag := c.nextTag()
	offs, err := c.checkCounts(counts, len(buf), 4)
	if err != nil {
		return err
	}
	if c.Size() > 1 {
		w := c.Size()
		if err := c.ring(ctx, tag, f32Bytes(buf), offs, 4, w-1, 2*w-2, -1, nil); err != nil {
			return c.fail("all-gather", err)
		}
	}
	return nil
}

func (c *Comm) checkCounts(counts []int, n, elem int) ([]int, error) {
	if len(counts) != c.Size() {
		return nil, fmt.Errorf("parallel: %d counts for a group of %d", len(counts), c.Size())
	}
	offs, err := countOffsets(counts, elem)
	if err != nil {
		return nil, err
	}
	if offs[len(counts)] != n*elem {
		return nil, fmt.Errorf("parallel: counts sum to %d, buffer holds %d", offs[len(counts)]/elem, n)
	}
	return offs, nil
}

// AllGatherBytes returns every member's bytes (of any lengths), in group order.
func (c *Comm) AllGatherBytes(ctx context.Context, mine []byte) ([][]byte, error) {
	send := make([][]byte, c.Size())
	for i := range send {
		send[i] = mine
	}
	out, err := c.allToAll(ctx, c.nextTag(), send)
	if err != nil {
		return nil, c.fail("all-gather", err)
	}
	return out, nil
}

// AllToAllV sends send[i] to member i and returns what each member sent to
// this one, in group order (send[Rank()] is copied to the result).
func (c *Comm) AllToAllV(ctx context.Context, send [][]byte) ([][]byte, error) {
	if len(send) != c.Size() {
		return nil, fmt.Errorf("parallel: all-to-all: %d buffers for a group of %d", len(send), c.Size())
	}
	out, err := c.allToAll(ctx, c.nextTag(), send)
	if err != nil {
		return nil, c.fail("all-to-all", err)
	}
	return out, nil
}

// AllToAllVF32 sends send's block i (sendCounts[i] elements, in group order)
// to member i and writes member i's block for us into recv's block i
// (recvCounts[i] elements). Counts must agree pairwise across members
// (where they do not, ErrMismatch where it is seen, a timeout on a member
// left waiting).
//
// Receives from all peers are posted at once and a large block is sent
// only once its receiver has posted (see exchange), so that every received
// block lands straight in recv where the transport can place it
// (RecvIntoer): the call allocates and copies nothing in proportion to the
// data beyond our own block.
func (c *Comm) AllToAllVF32(ctx context.Context, send []float32, sendCounts []int, recv []float32, recvCounts []int) error {
	tag, readyTag := c.nextTag(), c.nextTag()
	w := c.Size()
	if len(sendCounts) != w || len(recvCounts) != w {
		return fmt.Errorf("parallel: %d send and %d receive counts for a group of %d", len(sendCounts), len(recvCounts), w)
	}
	var offBuf [2 * 17]int
	var soffs, roffs []int
	if w <= 16 {
		soffs, roffs = offBuf[:w+1], offBuf[17:17+w+1]
	} else {
		soffs, roffs = make([]int, w+1), make([]int, w+1)
	}
	if err := fillOffsets(soffs, sendCounts, len(send)); err != nil {
		return err
	}
	if err := fillOffsets(roffs, recvCounts, len(recv)); err != nil {
		return err
	}
	sb, rb := f32Bytes(send), f32Bytes(recv)
	if n, m := soffs[c.me+1]-soffs[c.me], roffs[c.me+1]-roffs[c.me]; n != m {
		return fmt.Errorf("%w: all-to-all: %d elements to self, %d expected", ErrMismatch, n, m)
	}
	into := func(i int) []byte { return rb[roffs[i]*4 : roffs[i+1]*4] }
	err := c.exchange(ctx, tag, exchangeOps{
		part: func(i int) []byte { return sb[soffs[i]*4 : soffs[i+1]*4] },
		recv: func(ctx context.Context, i int, posted func()) error {
			return c.recvIntoPosted(ctx, c.ranks[i], tag, into(i), posted)
		},
		local:    func() { copy(into(c.me), sb[soffs[c.me]*4:soffs[c.me+1]*4]) },
		want:     func(i int) int { return len(into(i)) },
		readyTag: readyTag,
	})
	if err != nil {
		return c.fail("all-to-all", err)
	}
	return nil
}

// fillOffsets sets offs (len(counts)+1) to the element offsets of counts and
// checks that they sum to n.
func fillOffsets(offs, counts []int, n int) error {
	offs[0] = 0
	for i, k := range counts {
		if k < 0 {
			return fmt.Errorf("parallel: negative count %d", k)
		}
		offs[i+1] = offs[i] + k
	}
	if offs[len(counts)] != n {
		return fmt.Errorf("parallel: counts sum to %d, buffer holds %d", offs[len(counts)], n)
	}
	return nil
}

func (c *Comm) allToAll(ctx context.Context, tag uint64, send [][]byte) ([][]byte, error) {
	out := make([][]byte, c.Size())
	out[c.me] = append([]byte(nil), send[c.me]...)
	err := c.exchange(ctx, tag, exchangeOps{
		part: func(i int) []byte { return send[i] },
		recv: func(ctx context.Context, i int, posted func()) error {
			posted()
			m, err := c.t.Recv(ctx, c.ranks[i], tag)
			out[i] = m
			return err
		},
	})
	return out, err
}

// exchangeOps are an exchange's parts.
type exchangeOps struct {
	// part is what goes to member i (group index).
	part func(i int) []byte
	// recv receives member i's message, calling posted exactly once, as
	// soon as a message arriving from then on is received in place.
	recv func(ctx context.Context, i int, posted func()) error
	// local, if not nil, runs on the caller's goroutine while the messages
	// travel (e.g. copying our own part).
	local func()
	// want, if not nil, is the length of member i's message, which every
	// member must know of the messages it receives; it enables the
	// rendezvous of large messages (see exchange) on readyTag.
	want     func(i int) int
	readyTag uint64
}

// exchange sends part(i) to every other member i and receives from every
// other member (recv), running local meanwhile; the first error cancels
// the rest.
//
// Every receive is posted at once. Small exchanges also send everything at
// once (one round trip). In a large one (any part over SmallBytes) a
// member sends to one peer at a time, preferring me+1, me+2, ... (pairwise
// stages: one outgoing stream per rank instead of w-1 competing for the
// cores and the cache), and, where receivers know the lengths (want), each
// message over SmallBytes waits for a ready note from its receiver, sent
// once the receive is posted (rendezvous). Without it a message that
// overtakes its receive (from a peer a stage, or a collective, ahead of
// us, which is most of them in a large all-to-all of ranks sharing cores)
// is read into a pooled buffer and copied again when the receive comes
// (about a tenth of the CPU time of a world-4 all-to-all of 64 MiB on the
// Unix-socket data plane). The note, the length the receiver expects,
// costs one small message per pair; a sender whose length differs fails
// with ErrMismatch.
func (c *Comm) exchange(ctx context.Context, tag uint64, ops exchangeOps) error {
	w := c.Size()
	if w == 1 {
		if ops.local != nil {
			ops.local()
		}
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	small := c.opts.SmallBytes
	big := false
	for i := range w {
		big = big || (i != c.me && len(ops.part(i)) > small)
	}
	rdvIn := func(i int) bool { return ops.want != nil && ops.want(i) > small }
	rdvOut := func(i int) bool { return ops.want != nil && len(ops.part(i)) > small }

	pending := 0 // results to collect on errs
	errs := make(chan error, 3*w)
	var posted sync.WaitGroup
	for k := 1; k < w; k++ {
		j := (c.me - k + w) % w
		posted.Add(1)
		pending++
		go func() { errs <- ops.recv(ctx, j, posted.Done) }()
	}
	// Ready notes go out once every receive is posted, before our own
	// large messages can hold up the links.
	posted.Wait()
	for k := 1; k < w; k++ {
		if j := (c.me - k + w) % w; rdvIn(j) {
			pending++
			go func() {
				errs <- c.t.Send(ctx, c.ranks[j], ops.readyTag, binary.LittleEndian.AppendUint64(nil, uint64(ops.want(j))))
			}()
		}
	}
	send := func(i int) error { return c.t.Send(ctx, c.ranks[i], tag, ops.part(i)) }
	if !big {
		for k := 1; k < w; k++ {
			pending++
			go func() { errs <- send((c.me + k) % w) }()
		}
	} else {
		ready := make(chan int, w) // members whose ready note has come
		for k := 1; k < w; k++ {
			if i := (c.me + k) % w; rdvOut(i) {
				pending++
				go func() {
					err := c.awaitReady(ctx, c.ranks[i], ops.readyTag, len(ops.part(i)))
					if err == nil {
						ready <- i
					}
					errs <- err
				}()
			}
		}
		pending++
		go func() { errs <- c.sendInTurn(ctx, ready, rdvOut, send) }()
	}
	if ops.local != nil {
		ops.local()
	}
	var first error
	for range pending {
		if err := <-errs; err != nil && first == nil {
			first = err
			cancel()
		}
	}
	return first
}

// sendInTurn is the sending side of a large exchange: one message at a
// time, first those that need no ready note, then the others as their notes
// come (ready), each time the first of me+1, me+2, ... whose note has come.
func (c *Comm) sendInTurn(ctx context.Context, ready <-chan int, rdv func(i int) bool, send func(i int) error) error {
	w := c.Size()
	var waiting []int // group indices, in turn order
	for k := 1; k < w; k++ {
		i := (c.me + k) % w
		if !rdv(i) {
			if err := send(i); err != nil {
				return err
			}
			continue
		}
		waiting = append(waiting, i)
	}
	arrived := make([]bool, w)
	for len(waiting) > 0 {
		select {
		case i := <-ready:
			arrived[i] = true
		case <-ctx.Done():
			return ctxErr(ctx, "send")
		}
		for n := len(ready); n > 0; n-- { // take every note already in
			arrived[<-ready] = true
		}
		for len(waiting) > 0 {
			k := slices.IndexFunc(waiting, func(i int) bool { return arrived[i] })
			if k < 0 {
				break
			}
			i := waiting[k]
			waiting = slices.Delete(waiting, k, k+1)
			if err := send(i); err != nil {
				return err
			}
		}
	}
	return nil
}

// awaitReady waits for member global rank from's ready note for a message
// of n bytes.
func (c *Comm) awaitReady(ctx context.Context, from int, tag uint64, n int) error {
	m, err := c.t.Recv(ctx, from, tag)
	if err != nil {
		return err
	}
	defer c.release(m)
	if len(m) != 8 {
		return fmt.Errorf("%w: rank %d sent a %d-byte ready note", ErrMismatch, from, len(m))
	}
	if want := binary.LittleEndian.Uint64(m); want != uint64(n) {
		return fmt.Errorf("%w: rank %d expects %d bytes, we have %d for it", ErrMismatch, from, want, n)
	}
	return nil
}

// Broadcast copies member root's buf into every member's buf (all members
// pass buffers of the same length). Large buffers travel down a pipelined
// chain root, root+1, ...; small ones directly from the root.
func (c *Comm) Broadcast(ctx context.Context, buf []byte, root int) error {
	tag := c.nextTag()
	w := c.Size()
	if root < 0 || root >= w {
		return fmt.Errorf("%w: broadcast root %d of group size %d", ErrBadRank, root, w)
	}
	if w == 1 {
		return nil
	}
	var err error
	if len(buf) <= c.opts.SmallBytes || w == 2 {
		if c.me == root {
			parts := make([][]byte, w)
			for i := range parts {
				parts[i] = buf
			}
			err = c.exchangeFrom(ctx, tag, parts)
		} else {
			err = c.recvInto(ctx, c.ranks[root], tag, buf)
		}
	} else {
		err = c.chain(ctx, tag, buf, root)
	}
	if err != nil {
		return c.fail("broadcast", err)
	}
	return nil
}

// BroadcastF32 is Broadcast for float32.
func (c *Comm) BroadcastF32(ctx context.Context, buf []float32, root int) error {
	return c.Broadcast(ctx, f32Bytes(buf), root)
}

// exchangeFrom sends parts[i] to every other member and receives nothing.
func (c *Comm) exchangeFrom(ctx context.Context, tag uint64, parts [][]byte) error {
	var wg sync.WaitGroup
	errs := make([]error, c.Size())
	for i := range parts {
		if i == c.me {
			continue
		}
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = c.t.Send(ctx, c.ranks[i], tag, parts[i]) }()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (c *Comm) chain(ctx context.Context, tag uint64, buf []byte, root int) error {
	w := c.Size()
	pos := (c.me - root + w) % w
	prev, next := c.peer(c.me-1), c.peer(c.me+1)
	seg := c.opts.Segment
	for lo := 0; lo == 0 || lo < len(buf); lo += seg {
		s := buf[lo:min(lo+seg, len(buf))]
		if pos > 0 {
			if err := c.recvInto(ctx, prev, tag, s); err != nil {
				return err
			}
		}
		if pos < w-1 {
			if err := c.t.Send(ctx, next, tag, s); err != nil {
				return err
			}
		}
	}
	return nil
}

// Barrier returns once every member has entered it (dissemination barrier:
// ceil(log2 size) rounds of one message).
func (c *Comm) Barrier(ctx context.Context) error {
	tag := c.nextTag()
	w := c.Size()
	for d := 1; d < w; d *= 2 {
		errc := make(chan error, 1)
		go func() { errc <- c.t.Send(ctx, c.peer(c.me+d), tag, nil) }()
		_, rerr := c.t.Recv(ctx, c.peer(c.me-d), tag)
		serr := <-errc
		if err := errors.Join(rerr, serr); err != nil {
			return c.fail("barrier", err)
		}
	}
	return nil
}
