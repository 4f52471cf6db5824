// Package devcomm runs a group's collectives on device buffers, for the
// GPU engine's ranks: through NCCL when every rank has a GPU of its own,
// and host-staged (device to host, the ranks' transport, back) otherwise:
// several ranks on one GPU, which NCCL refuses; a device without NCCL
// (the CPU emulator); or when asked. Both backends are behind one
// interface, so the engine and its equivalence tests do not care which
// one runs, and the host-staged one is the reference the NCCL one is
// tested against on the GPU machine.
//
// Open chooses the backend the same way on every rank: each rank tells
// the others its GPU's UUID and whether NCCL loads there (one all-gather
// over the group's transport), and the choice is a function of what all
// said. For NCCL, rank 0 makes the unique id and broadcasts it over the
// same transport (with its error, if it could not, so that no rank waits
// for an id that will not come); then every rank joins the communicator.
//
// It owns the choice, the bootstrap and the staging buffers; the NCCL
// calls are pkg/cuda's, the transport is pkg/parallel's.
package devcomm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unsafe"

	"github.com/switchyard-ml/switchyard/pkg/cuda"
	"github.com/switchyard-ml/switchyard/pkg/parallel"
)

// Backend names a way of running the collectives.
type Backend string

// The backends. Auto picks NCCL where it can run (every rank a GPU of its
// own, NCCL loadable everywhere, more than one rank) and Host otherwise.
const (
	Auto Backend = ""
	NCCL Backend = "nccl"
	Host Backend = "host"
)

// ParseBackend reads a backend name ("auto", "nccl", "host"; "" is auto).
func ParseBackend(s string) (Backend, error) {
	switch strings.ToLower(s) {
	case "", "auto":
		return Auto, nil
	case "nccl":
		return NCCL, nil
	case "host":
		return Host, nil
	}
	return Auto, fmt.Errorf("devcomm: unknown collectives backend %q (want auto, nccl or host)", s)
}

// ErrUnavailable: the backend asked for cannot run on these ranks.
var ErrUnavailable = errors.New("devcomm: backend unavailable")

// Comm is one rank's collectives over a group, on float32 device buffers.
// Every call returns when its result is in place (later device work sees
// it); the ranks of the group make the same calls in the same order.
type Comm interface {
	Backend() Backend
	// Describe says what runs and why, for logs and reports.
	Describe() string
	Rank() int
	Size() int
	// AllReduceSum sums n floats at buf over the group, in place.
	AllReduceSum(ctx context.Context, buf cuda.DevPtr, n int) error
	// ReduceScatterSum: buf holds Size() blocks of n floats; afterwards
	// this rank's block (at Rank()*n) holds the sum over the group of that
	// block. The other blocks are clobbered.
	ReduceScatterSum(ctx context.Context, buf cuda.DevPtr, n int) error
	// AllGather: buf holds Size() blocks of n floats, this rank's block
	// (at Rank()*n) its contribution; afterwards every block holds its
	// rank's.
	AllGather(ctx context.Context, buf cuda.DevPtr, n int) error
	// AllToAllV sends sendCounts[j] floats to rank j (read contiguously
	// from send in rank order) and receives recvCounts[j] from rank j
	// (written to recv in rank order).
	AllToAllV(ctx context.Context, send cuda.DevPtr, sendCounts []int, recv cuda.DevPtr, recvCounts []int) error
	// Close releases the backend (not the group's transport).
	Close() error
}

// Uses are the kinds of collectives a group will run: NCCL's first
// exchange in Open connects what they need (and only that).
type Uses uint8

// The kinds.
const (
	// UsesAllReduce: AllReduceSum (and ReduceScatterSum).
	UsesAllReduce Uses = 1 << iota
	// UsesAllToAll: AllToAllV.
	UsesAllToAll
	// UsesAllGather: AllGather.
	UsesAllGather
)

// Open makes this rank's Comm over group g for the device dev, with the
// backend want (Auto: chosen as the package comment says), for the
// collectives uses. Every rank of g calls it with the same want and uses.
func Open(ctx context.Context, dev cuda.Device, g *parallel.Comm, want Backend, uses Uses) (Comm, error) {
	return open(ctx, dev, g, want, uses, realNCCL{})
}

// rankInfo is what a rank tells the others when choosing.
type rankInfo struct {
	GPU      string `json:"gpu,omitempty"`  // its GPU's UUID ("" for a device that is not one)
	Device   string `json:"device"`         // the device's name
	NCCL     string `json:"nccl,omitempty"` // NCCL's version where it loads
	NCCLMiss string `json:"nccl_missing,omitempty"`
}

func open(ctx context.Context, dev cuda.Device, g *parallel.Comm, want Backend, uses Uses, lib library) (Comm, error) {
	if want != Auto && want != NCCL && want != Host {
		return nil, fmt.Errorf("devcomm: unknown collectives backend %q", want)
	}
	host := &hostComm{dev: dev, g: g}
	if want == Host {
		host.why = "host-staged collectives, as asked"
		return host, nil
	}
	if want == Auto && g.Size() == 1 {
		host.why = "one rank: nothing to exchange"
		return host, nil
	}
	me := rankInfo{Device: dev.Name()}
	if u, ok := dev.(interface{ UUID() string }); ok {
		me.GPU = u.UUID()
	}
	if me.GPU != "" {
		if v, err := lib.version(); err != nil {
			me.NCCLMiss = err.Error()
		} else {
			me.NCCL = v
		}
	}
	mine, err := json.Marshal(me)
	if err != nil {
		return nil, err
	}
	all, err := g.AllGatherBytes(ctx, mine)
	if err != nil {
		return nil, fmt.Errorf("devcomm: choosing the collectives backend: %w", err)
	}
	infos := make([]rankInfo, len(all))
	for i, b := range all {
		if err := json.Unmarshal(b, &infos[i]); err != nil {
			return nil, fmt.Errorf("devcomm: rank %d's description: %w", i, err)
		}
	}
	why := ncclObstacle(infos)
	if why != "" {
		if want == NCCL {
			return nil, fmt.Errorf("%w: NCCL: %s", ErrUnavailable, why)
		}
		host.why = "host-staged collectives: " + why
		return host, nil
	}
	nc, err := bootstrap(ctx, dev, g, lib)
	if err != nil {
		return nil, err
	}
	gpus := map[string]bool{}
	for _, in := range infos {
		gpus[in.GPU] = true
	}
	c := &ncclComm{nc: nc, g: g, why: fmt.Sprintf("NCCL %s over %d GPUs", infos[0].NCCL, len(gpus)), timeout: NCCLTimeout}
	if err := handshake(ctx, dev, c, g, uses); err != nil {
		return nil, errors.Join(err, nc.Abort())
	}
	return c, nil
}

// handshake runs, of an all-reduce, an all-gather and an all-to-all-v,
// those the group uses, on a few floats, every rank with every other, and checks what
// arrived. NCCL connects a pair of ranks (and allocates the connection's
// buffers) at their first collective of a kind: made here, while every
// rank is in Open, rather than in the first step, the small messages'
// connections and their memory are there before the engine checks what
// is free (NCCL may still connect more for large all-reduces, at their
// first use), and a rank that cannot connect, or an exchange that
// delivers the wrong floats, fails Open on every rank naming it. A rank
// that cannot even set the exchange up says so before any rank enters
// NCCL, whose waits for a peer cannot be interrupted.
func handshake(ctx context.Context, dev cuda.Device, c Comm, g *parallel.Comm, uses Uses) error {
	p, r := c.Size(), c.Rank()
	// the all-reduce's float; the all-to-all-v's p to send and p to
	// receive; the all-gather's p (this rank's is its block)
	n := 1 + 3*p
	host := make([]float32, n)
	host[0] = float32(r + 1)
	for j := range p {
		host[1+j] = float32(r*p + j) // for rank j
	}
	gathered := 1 + 2*p
	host[gathered+r] = float32(10 * (r + 1))
	buf, err := dev.Alloc(int64(4 * n))
	if err == nil {
		defer dev.Free(buf)
		err = dev.CopyHtoD(buf, unsafe.Pointer(&host[0]), int64(4*n))
	}
	if err := agree(ctx, g, err, "setting up the NCCL communicator's first exchange", "could not set up the NCCL communicator's first exchange"); err != nil {
		return err
	}
	ones := make([]int, p)
	for j := range ones {
		ones[j] = 1
	}
	exchange := func() error {
		if uses&UsesAllReduce != 0 {
			if err := c.AllReduceSum(ctx, buf, 1); err != nil {
				return err
			}
		}
		if uses&UsesAllToAll != 0 {
			if err := c.AllToAllV(ctx, buf.Add(4), ones, buf.Add(int64(4*(1+p))), ones); err != nil {
				return err
			}
		}
		if uses&UsesAllGather != 0 {
			if err := c.AllGather(ctx, buf.Add(int64(4*gathered)), 1); err != nil {
				return err
			}
		}
		if err := dev.CopyDtoH(unsafe.Pointer(&host[0]), buf, int64(4*n)); err != nil {
			return err
		}
		if want := float32(p * (p + 1) / 2); uses&UsesAllReduce != 0 && host[0] != want {
			return fmt.Errorf("the all-reduce gave %v, want %v", host[0], want)
		}
		for j := range p {
			if got, want := host[1+p+j], float32(j*p+r); uses&UsesAllToAll != 0 && got != want {
				return fmt.Errorf("the all-to-all-v delivered %v from rank %d, want %v", got, j, want)
			}
			if got, want := host[gathered+j], float32(10*(j+1)); uses&UsesAllGather != 0 && got != want {
				return fmt.Errorf("the all-gather gave %v as rank %d's block, want %v", got, j, want)
			}
		}
		return nil
	}
	return agree(ctx, g, exchange(), "the NCCL communicator's first exchange", "failed the NCCL communicator's first exchange")
}

// ncclObstacle says why NCCL cannot run on ranks that said infos ("" if
// it can): every rank needs a GPU of its own and NCCL of one version.
func ncclObstacle(infos []rankInfo) string {
	seen := map[string]int{}
	for r, in := range infos {
		switch {
		case in.GPU == "":
			return fmt.Sprintf("rank %d's device (%s) is not a GPU", r, in.Device)
		case in.NCCL == "":
			return fmt.Sprintf("rank %d has no NCCL: %s", r, in.NCCLMiss)
		case in.NCCL != infos[0].NCCL:
			return fmt.Sprintf("rank 0 has NCCL %s, rank %d NCCL %s", infos[0].NCCL, r, in.NCCL)
		}
		if q, dup := seen[in.GPU]; dup {
			return fmt.Sprintf("ranks %d and %d share GPU %s (NCCL needs one GPU per rank)", q, r, in.GPU)
		}
		seen[in.GPU] = r
	}
	return ""
}

// idMessage is rank 0's broadcast: a status byte, the id, and rank 0's
// error text when it could not make one.
const idMessage = 1 + cuda.NCCLIDBytes + 512

// bootstrap makes the NCCL communicator: the id from rank 0 over the
// group's transport, then every rank joins.
func bootstrap(ctx context.Context, dev cuda.Device, g *parallel.Comm, lib library) (ncclOps, error) {
	msg := make([]byte, idMessage)
	var mkErr error
	if g.Rank() == 0 {
		id, err := lib.newID()
		if err != nil {
			mkErr = err
			msg[0] = 1
			copy(msg[1+cuda.NCCLIDBytes:], err.Error())
		} else {
			copy(msg[1:], id[:])
		}
	}
	if err := g.Broadcast(ctx, msg, 0); err != nil {
		return nil, errors.Join(fmt.Errorf("devcomm: sending the NCCL id: %w", err), mkErr)
	}
	if msg[0] != 0 {
		text := string(msg[1+cuda.NCCLIDBytes:])
		if i := strings.IndexByte(text, 0); i >= 0 {
			text = text[:i]
		}
		return nil, fmt.Errorf("%w: rank 0 could not make the NCCL id: %s", ErrUnavailable, text)
	}
	var id cuda.NCCLID
	copy(id[:], msg[1:])
	nc, openErr := lib.open(dev, id, g.Size(), g.Rank())
	// every rank says whether it joined: one that could not makes all
	// abort now, rather than hang in their first collective
	if err := agree(ctx, g, openErr, "the NCCL communicator", "could not join the NCCL communicator"); err != nil {
		if nc != nil {
			err = errors.Join(err, nc.Abort())
		}
		return nil, err
	}
	return nc, nil
}

// agree all-gathers every rank's outcome of a step of Open: nil when all
// succeeded, else an error naming every rank that failed ("rank 2
// <failed>: <its error>; rank 0: <its error>"), the same on every rank.
// When the ranks cannot even agree, the error keeps this rank's own.
func agree(ctx context.Context, g *parallel.Comm, mine error, what, failed string) error {
	var b []byte
	if mine != nil {
		b = []byte(mine.Error())
	}
	all, err := g.AllGatherBytes(ctx, b)
	if err != nil {
		return errors.Join(fmt.Errorf("devcomm: agreeing on %s: %w", what, err), mine)
	}
	var msgs []string
	for r, b := range all {
		if len(b) == 0 {
			continue
		}
		if len(msgs) == 0 {
			msgs = append(msgs, fmt.Sprintf("rank %d %s: %s", r, failed, b))
		} else {
			msgs = append(msgs, fmt.Sprintf("rank %d: %s", r, b))
		}
	}
	if len(msgs) > 0 {
		return fmt.Errorf("%w: %s", ErrUnavailable, strings.Join(msgs, "; "))
	}
	return nil
}

// ---- NCCL ----

// ncclOps is what the NCCL backend uses of a communicator (*cuda.NCCL).
type ncclOps interface {
	AllReduce(send, recv cuda.DevPtr, count int, dt cuda.DType, op cuda.NCCLOp) error
	ReduceScatter(send, recv cuda.DevPtr, recvCount int, dt cuda.DType, op cuda.NCCLOp) error
	AllGather(send, recv cuda.DevPtr, sendCount int, dt cuda.DType) error
	AllToAllV(send cuda.DevPtr, sendCounts []int, recv cuda.DevPtr, recvCounts []int, dt cuda.DType) error
	Wait(ctx context.Context) error
	Abort() error
	Close() error
}

// library makes communicators (the real one: pkg/cuda's NCCL).
type library interface {
	version() (string, error)
	newID() (cuda.NCCLID, error)
	open(dev cuda.Device, id cuda.NCCLID, size, rank int) (ncclOps, error)
}

type realNCCL struct{}

func (realNCCL) version() (string, error)    { return cuda.NCCLVersion() }
func (realNCCL) newID() (cuda.NCCLID, error) { return cuda.NewNCCLID() }
func (realNCCL) open(dev cuda.Device, id cuda.NCCLID, size, rank int) (ncclOps, error) {
	c, ok := dev.(*cuda.Context)
	if !ok {
		return nil, fmt.Errorf("%w: NCCL needs a GPU (device %s)", ErrUnavailable, dev.Name())
	}
	nc, err := c.OpenNCCL(id, size, rank)
	if err != nil {
		return nil, err // not a nil *cuda.NCCL in an interface
	}
	return nc, nil
}

type ncclComm struct {
	nc  ncclOps
	g   *parallel.Comm
	why string
	// timeout bounds each collective: a peer that died without NCCL
	// noticing (no asynchronous error) leaves the device waiting
	timeout time.Duration
}

// NCCLTimeout is how long one NCCL collective may take before the
// communicator is aborted (a peer is taken to have failed).
const NCCLTimeout = 5 * time.Minute

func (c *ncclComm) Backend() Backend { return NCCL }
func (c *ncclComm) Describe() string { return c.why }
func (c *ncclComm) Rank() int        { return c.g.Rank() }
func (c *ncclComm) Size() int        { return c.g.Size() }

// done waits for the enqueued collective, aborting the communicator if
// it could not be enqueued (a peer may have been left in it), if NCCL
// reports a failure, if ctx ends or after the timeout.
func (c *ncclComm) done(ctx context.Context, err error) error {
	if err != nil {
		return errors.Join(err, c.nc.Abort())
	}
	ctx, cancel := context.WithTimeoutCause(ctx, c.timeout, fmt.Errorf("no NCCL collective may take %v: a peer is taken to have failed", c.timeout))
	defer cancel()
	return c.nc.Wait(ctx)
}

func (c *ncclComm) AllReduceSum(ctx context.Context, buf cuda.DevPtr, n int) error {
	return c.done(ctx, c.nc.AllReduce(buf, buf, n, cuda.F32, cuda.NCCLSum))
}

func (c *ncclComm) ReduceScatterSum(ctx context.Context, buf cuda.DevPtr, n int) error {
	return c.done(ctx, c.nc.ReduceScatter(buf, buf.Add(int64(4*n*c.Rank())), n, cuda.F32, cuda.NCCLSum))
}

func (c *ncclComm) AllGather(ctx context.Context, buf cuda.DevPtr, n int) error {
	return c.done(ctx, c.nc.AllGather(buf.Add(int64(4*n*c.Rank())), buf, n, cuda.F32))
}

func (c *ncclComm) AllToAllV(ctx context.Context, send cuda.DevPtr, sendCounts []int, recv cuda.DevPtr, recvCounts []int) error {
	return c.done(ctx, c.nc.AllToAllV(send, sendCounts, recv, recvCounts, cuda.F32))
}

func (c *ncclComm) Close() error { return c.nc.Close() }

// Abort tears the NCCL communicator down without waiting for its work
// (after a failure: peers may be waiting in a collective); Close is then
// a no-op.
func (c *ncclComm) Abort() error { return c.nc.Abort() }

// ---- host-staged ----

type hostComm struct {
	dev        cuda.Device
	g          *parallel.Comm
	why        string
	sbuf, rbuf []float32 // staging, reused
}

func (c *hostComm) Backend() Backend { return Host }
func (c *hostComm) Describe() string { return c.why }
func (c *hostComm) Rank() int        { return c.g.Rank() }
func (c *hostComm) Size() int        { return c.g.Size() }
func (c *hostComm) Close() error     { return nil }

func grow(b []float32, n int) []float32 {
	if cap(b) < n {
		return make([]float32, n)
	}
	return b[:n]
}

func (c *hostComm) down(dst []float32, src cuda.DevPtr) error {
	if len(dst) == 0 {
		return nil
	}
	return c.dev.CopyDtoH(unsafe.Pointer(&dst[0]), src, int64(4*len(dst)))
}

func (c *hostComm) up(dst cuda.DevPtr, src []float32) error {
	if len(src) == 0 {
		return nil
	}
	return c.dev.CopyHtoD(dst, unsafe.Pointer(&src[0]), int64(4*len(src)))
}

func checkN(n int) error {
	if n < 0 {
		return fmt.Errorf("devcomm: negative count %d", n)
	}
	return nil
}

func (c *hostComm) AllReduceSum(ctx context.Context, buf cuda.DevPtr, n int) error {
	if err := checkN(n); err != nil || c.Size() == 1 || n == 0 {
		return err
	}
	c.sbuf = grow(c.sbuf, n)
	if err := c.down(c.sbuf, buf); err != nil {
		return err
	}
	if err := c.g.AllReduce(ctx, c.sbuf, parallel.Sum); err != nil {
		return err
	}
	return c.up(buf, c.sbuf)
}

func (c *hostComm) equal(n int) []int {
	counts := make([]int, c.Size())
	for i := range counts {
		counts[i] = n
	}
	return counts
}

func (c *hostComm) ReduceScatterSum(ctx context.Context, buf cuda.DevPtr, n int) error {
	if err := checkN(n); err != nil || c.Size() == 1 || n == 0 {
		return err
	}
	c.sbuf = grow(c.sbuf, n*c.Size())
	if err := c.down(c.sbuf, buf); err != nil {
		return err
	}
	mine, err := c.g.ReduceScatter(ctx, c.sbuf, c.equal(n), parallel.Sum)
	if err != nil {
		return err
	}
	return c.up(buf.Add(int64(4*n*c.Rank())), mine)
}

func (c *hostComm) AllGather(ctx context.Context, buf cuda.DevPtr, n int) error {
	if err := checkN(n); err != nil || c.Size() == 1 || n == 0 {
		return err
	}
	c.sbuf = grow(c.sbuf, n*c.Size())
	off := n * c.Rank()
	if err := c.down(c.sbuf[off:off+n], buf.Add(int64(4*off))); err != nil {
		return err
	}
	if err := c.g.AllGather(ctx, c.sbuf, c.equal(n)); err != nil {
		return err
	}
	return c.up(buf, c.sbuf)
}

func (c *hostComm) AllToAllV(ctx context.Context, send cuda.DevPtr, sendCounts []int, recv cuda.DevPtr, recvCounts []int) error {
	if len(sendCounts) != c.Size() || len(recvCounts) != c.Size() {
		return fmt.Errorf("devcomm: all-to-all-v over %d ranks with %d send and %d receive counts", c.Size(), len(sendCounts), len(recvCounts))
	}
	ns, nr := 0, 0
	for j := range sendCounts {
		if sendCounts[j] < 0 || recvCounts[j] < 0 {
			return fmt.Errorf("devcomm: negative count for rank %d", j)
		}
		ns += sendCounts[j]
		nr += recvCounts[j]
	}
	if c.Size() == 1 {
		if ns != nr {
			return fmt.Errorf("devcomm: all-to-all-v with one rank sends %d and receives %d", ns, nr)
		}
		if ns == 0 {
			return nil
		}
		return c.dev.CopyDtoD(recv, send, int64(4*ns))
	}
	c.sbuf, c.rbuf = grow(c.sbuf, ns), grow(c.rbuf, nr)
	if err := c.down(c.sbuf, send); err != nil {
		return err
	}
	if err := c.g.AllToAllVF32(ctx, c.sbuf, slices.Clone(sendCounts), c.rbuf, slices.Clone(recvCounts)); err != nil {
		return err
	}
	return c.up(recv, c.rbuf)
}
