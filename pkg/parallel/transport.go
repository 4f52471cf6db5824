package parallel

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
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

// RecvIntoer is implemented by transports that can place a message straight
// into the caller's buffer: RecvInto receives the next message from rank
// from with tag, which must be exactly len(dst) bytes (else ErrMismatch),
// into dst. If the receive is posted before the message arrives, the
// transport writes the payload there as it comes off the wire, saving a copy
// and a buffer. Timeouts, cancellation and close behave as for Recv; when
// RecvInto returns, nothing writes to dst any more (a receive abandoned
// half-way through a message ends the link, as a half-sent message does).
type RecvIntoer interface {
	RecvInto(ctx context.Context, from int, tag uint64, dst []byte) error
}

// recvIntoPoster is implemented by the transports of this package: RecvInto
// that also calls posted once the receive is posted (see mailbox.recvInto),
// so that a caller can tell the sender it may send (Comm's rendezvous).
type recvIntoPoster interface {
	recvIntoPosted(ctx context.Context, from int, tag uint64, dst []byte, posted func()) error
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
	// ErrAborted: a group member failed the collective and told the others
	// (see Comm); the error names the member and its reason.
	ErrAborted = errors.New("parallel: collective aborted by a peer")
)

// Abort notices. A message whose tag has abortSpace as its top 32 bits is
// not delivered: it carries a tag (8 bytes, little-endian) and a reason, and
// makes every Recv on the receiving transport whose tag has the same top 32
// bits (the communicator) and a low 32 bits (the sequence number) at least
// as large fail with ErrAborted. Comm sends them when a collective fails, so
// that members not linked to a dead peer fail at once instead of waiting out
// the timeout. NewComm never gives a communicator the id abortSpace.
const abortSpace = 0xFFFFFFFF

// abortTag is the tag abort notices travel with.
const abortTag = uint64(abortSpace) << 32

func encodeAbort(tag uint64, reason string) []byte {
	if len(reason) > 1024 {
		reason = reason[:1024]
	}
	b := binary.LittleEndian.AppendUint64(make([]byte, 0, 8+len(reason)), tag)
	return append(b, reason...)
}

type abortNotice struct {
	tag    uint64
	from   int
	reason string
}

// abortSet holds the abort notices a transport received; its mailboxes
// share it.
type abortSet struct {
	mu      sync.Mutex
	notices []abortNotice
	boxes   []*mailbox // woken on every new notice
}

func newMailboxes(n int) []*mailbox {
	a := &abortSet{boxes: make([]*mailbox, n)}
	for i := range a.boxes {
		a.boxes[i] = newMailbox()
		a.boxes[i].from, a.boxes[i].aborts = i, a
	}
	return a.boxes
}

func (a *abortSet) add(from int, msg []byte) {
	if len(msg) < 8 {
		return
	}
	n := abortNotice{tag: binary.LittleEndian.Uint64(msg), from: from, reason: string(msg[8:])}
	a.mu.Lock()
	if len(a.notices) < 1024 {
		a.notices = append(a.notices, n)
	}
	boxes := a.boxes
	a.mu.Unlock()
	for _, m := range boxes {
		m.mu.Lock()
		m.notifyLocked()
		m.mu.Unlock()
	}
}

// check returns the abort error for tag, if any.
func (a *abortSet) check(tag uint64) error {
	if a == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, n := range a.notices {
		if n.tag>>32 == tag>>32 && uint32(tag) >= uint32(n.tag) {
			return fmt.Errorf("%w: rank %d: %s", ErrAborted, n.from, n.reason)
		}
	}
	return nil
}

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
	// DataPlane chooses what carries the messages of a GRPCTransport:
	// "grpc" (the default) sends them as frames of the gRPC streams; "tcp"
	// sends them over one plain TCP connection per pair of ranks, set up
	// beside the gRPC stream, which then carries only the handshake (see
	// rawtcp.go for why). All ranks of a job must agree.
	DataPlane string
	// TLS, when set, encrypts every connection between ranks (gRPC and
	// data connections) with mutual TLS: its Certificates are this rank's,
	// its RootCAs verify the peers' (as clients and as servers), and a
	// peer's certificate must name the host of its address. Same-host Unix
	// sockets are not used. All ranks of a job must agree. See
	// `switchyard bench collectives --tls` for what it costs.
	TLS *tls.Config `json:"-"`
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
		DataPlane:   DataPlaneGRPC,
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
	if o.DataPlane == "" {
		o.DataPlane = d.DataPlane
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
	if o.DataPlane != DataPlaneGRPC && o.DataPlane != DataPlaneTCP {
		return fmt.Errorf("parallel: options: data plane %q is neither %q nor %q", o.DataPlane, DataPlaneGRPC, DataPlaneTCP)
	}
	if o.TLS != nil && (len(o.TLS.Certificates) == 0 || o.TLS.RootCAs == nil) {
		return errors.New("parallel: options: TLS needs this rank's certificate and the CA that signs the peers'")
	}
	return nil
}

// serverTLS is o.TLS for accepting a peer: its client certificate is
// required and verified against the same CA.
func (o Options) serverTLS() *tls.Config {
	c := o.TLS.Clone()
	c.ClientAuth, c.ClientCAs = tls.RequireAndVerifyClientCert, o.TLS.RootCAs
	c.MinVersion = tls.VersionTLS13
	return c
}

// dialTLS dials addr over TCP and, with o.TLS, runs the TLS handshake
// (verifying that the peer's certificate names addr's host).
func (o Options) dialTLS(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil || o.TLS == nil {
		return c, err
	}
	host, _, _ := net.SplitHostPort(addr)
	cfg := o.TLS.Clone()
	cfg.ServerName, cfg.MinVersion = host, tls.VersionTLS13
	tc := tls.Client(c, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("TLS with %s: %w", addr, err)
	}
	return tc, nil
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
	from    int       // sender rank
	aborts  *abortSet // shared by the transport's mailboxes; may be nil
	mu      sync.Mutex
	queues  map[uint64][][]byte
	pending int           // bytes queued
	changed chan struct{} // closed and replaced on every change
	err     error         // set when no more messages will arrive

	posted  map[uint64]*posted // receives waiting for their message, by tag
	abandon func()             // makes a claimed fill fail soon; nil if fills never block
}

// posted is a receive waiting, with its destination, for a message. A filler
// that claims it writes the message into dst and then calls complete.
type posted struct {
	dst     []byte
	claimed bool
	done    chan error // the fill's outcome, once claimed
}

func (p *posted) complete(err error) { p.done <- err }

// claim hands the filler the receive posted for tag, if there is one for a
// message of n bytes and no message with tag is queued ahead of it.
func (m *mailbox) claim(tag uint64, n int) *posted {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.posted[tag]
	if p == nil || len(p.dst) != n || len(m.queues[tag]) > 0 {
		return nil
	}
	delete(m.posted, tag)
	p.claimed = true
	return p
}

// setAbandon installs the hook recvInto calls when it gives up on a claimed fill.
func (m *mailbox) setAbandon(f func()) {
	m.mu.Lock()
	m.abandon = f
	m.mu.Unlock()
}

// recvInto is RecvInto on one sender's mailbox (see RecvIntoer). release
// recycles a queued message once copied. onPosted, if not nil, is called
// (without the lock) once the receive is in place: posted, so that a message
// arriving from then on lands in dst, or, where the message is already
// queued or the receive cannot be posted, before it waits for the fallback.
func (m *mailbox) recvInto(ctx context.Context, tag uint64, dst []byte, timeout time.Duration, closed <-chan struct{}, release func([]byte), onPosted func()) error {
	if onPosted == nil {
		onPosted = func() {}
	}
	fallback := func() error { // the message is (or will be) queued: copy it
		msg, err := m.get(ctx, tag, timeout, closed)
		if err != nil {
			return err
		}
		defer release(msg)
		if len(msg) != len(dst) {
			return fmt.Errorf("%w: %d-byte message for a %d-byte buffer", ErrMismatch, len(msg), len(dst))
		}
		copy(dst, msg)
		return nil
	}
	m.mu.Lock()
	if len(m.queues[tag]) > 0 || m.posted[tag] != nil || m.err != nil || m.aborts.check(tag) != nil {
		m.mu.Unlock()
		onPosted()
		return fallback()
	}
	p := &posted{dst: dst, done: make(chan error, 1)}
	if m.posted == nil {
		m.posted = make(map[uint64]*posted)
	}
	m.posted[tag] = p
	ch := m.changed
	m.mu.Unlock()
	onPosted()
	timer, stop := opDeadline(ctx, timeout)
	defer stop()
	giveUp := func(err error) error {
		m.mu.Lock()
		if !p.claimed {
			delete(m.posted, tag)
			m.mu.Unlock()
			return err
		}
		abandon := m.abandon
		m.mu.Unlock()
		if abandon != nil { // the filler is writing into dst: stop it, wait for it
			abandon()
		}
		<-p.done
		return err
	}
	for {
		select {
		case err := <-p.done:
			return err
		case <-ch:
			m.mu.Lock()
			if !p.claimed && (len(m.queues[tag]) > 0 || m.err != nil || m.aborts.check(tag) != nil) {
				delete(m.posted, tag)
				m.mu.Unlock()
				return fallback()
			}
			ch = m.changed
			m.mu.Unlock()
		case <-ctx.Done():
			return giveUp(ctxErr(ctx, "recv"))
		case <-timer:
			return giveUp(ErrTimeout)
		case <-closed:
			return giveUp(ErrClosed)
		}
	}
}

// deliver hands a message to a posted receive (copying payload into it) or
// queues a pooled copy. The caller has checked for room (waitRoom) unless
// a posted receive takes it.
func (m *mailbox) deliver(tag uint64, payload []byte, pool *bufPool) {
	if p := m.claim(tag, len(payload)); p != nil {
		copy(p.dst, payload)
		p.complete(nil)
		return
	}
	msg := pool.get(len(payload))
	copy(msg, payload)
	m.put(tag, msg)
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

// put queues a message, or registers an abort notice. It never blocks (see
// waitRoom).
func (m *mailbox) put(tag uint64, msg []byte) {
	if tag>>32 == abortSpace {
		if m.aborts != nil {
			m.aborts.add(m.from, msg)
		}
		return
	}
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
		if err := m.aborts.check(tag); err != nil {
			m.mu.Unlock()
			return nil, err
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
