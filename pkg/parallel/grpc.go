package parallel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	parallelv1 "github.com/switchyard-ml/switchyard/proto/parallel/v1"
)

// GRPCTransport is the Transport between processes: every rank serves the
// Transport gRPC service and shares one bidirectional stream with each peer
// (the lower rank dials). Messages travel as chunks of Options.ChunkSize;
// HTTP/2 flow control plus Options.MaxPending bound the memory a fast sender
// can make a slow receiver hold.
//
// Use: ListenGRPC on every rank, exchange the Addr()s out of band, then
// Connect on every rank with the full address list.
type GRPCTransport struct {
	parallelv1.UnimplementedTransportServer

	rank, world int
	opts        Options
	lis         net.Listener
	ulis        net.Listener // Unix socket for same-host data connections, or nil
	srv         *grpc.Server

	boxes []*mailbox      // boxes[from]; boxes[rank] holds self-sends
	rawIn []chan net.Conn // data connections of lower ranks, until their handshake

	mu    sync.Mutex
	links []*link         // by peer rank, set once
	ready []chan struct{} // closed when links[r] is set
	conns []*grpc.ClientConn

	closed    chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup // receive loops
	pool      bufPool        // received messages
	frames    framePool      // gRPC's frame and socket buffers
}

// msgStream is the part of a gRPC client or server stream a link uses.
type msgStream interface {
	SendMsg(m any) error
	RecvMsg(m any) error
}

// link is the stream shared with one peer (and, with DataPlane "tcp", the
// raw data connection beside it).
type link struct {
	t      *GRPCTransport
	peer   int
	life   linkLife
	stream msgStream
	cancel context.CancelFunc // client stream's context
	finish chan struct{}      // server role: closed to end the handler
	raw    net.Conn           // data connection (DataPlane "tcp"), else nil
	out    wire               // raw when there is one, else the stream
	sendMu chan struct{}      // one message at a time; a channel so waiting honours ctx
	box    *mailbox

	loopEnd chan struct{} // closed when the stream's receive loop returns
	rawEnd  chan struct{} // closed when rawRecvLoop returns (at once without raw)

	inflight atomic.Int64  // zero-copy chunks gRPC has not yet released
	released chan struct{} // signalled when inflight drops to 0
}

// linkState is where a link is in its life. It only moves forward:
//
//	open ----Close: sayGoodbye----> closing
//	open, closing ----fail(err)---> dead
//
// open: messages flow both ways. closing: our side began an orderly close;
// no new sends, the receive loops read what the peer still sends, and the
// end of its stream is its orderly end (ErrPeerClosed), not a loss. dead:
// the link failed or its close completed: sends fail with the error, the
// mailbox hands out what it holds and then the error, waits for mailbox
// room end, and the wires are cut.
type linkState int32

const (
	linkOpen linkState = iota
	linkClosing
	linkDead
)

// linkLife holds a link's state and what entering dead releases.
type linkLife struct {
	mu      sync.Mutex
	state   linkState
	ordered bool               // it went through closing (our Close), not straight to dead
	err     error              // why it died, set on entering dead
	dead    chan struct{}      // closed on entering dead
	ctx     context.Context    // cancelled on entering dead
	stop    context.CancelFunc // cancels ctx
}

func (lf *linkLife) init() {
	lf.dead = make(chan struct{})
	lf.ctx, lf.stop = context.WithCancel(context.Background())
}

// beginClose moves an open link to closing.
func (lf *linkLife) beginClose() {
	lf.mu.Lock()
	if lf.state == linkOpen {
		lf.state, lf.ordered = linkClosing, true
	}
	lf.mu.Unlock()
}

// closing reports whether our side began an orderly close (the link may
// be dead since).
func (lf *linkLife) closing() bool {
	lf.mu.Lock()
	defer lf.mu.Unlock()
	return lf.ordered
}

// die moves the link to dead with err; false if it already was.
func (lf *linkLife) die(err error) bool {
	lf.mu.Lock()
	defer lf.mu.Unlock()
	if lf.state == linkDead {
		return false
	}
	lf.state, lf.err = linkDead, err
	close(lf.dead)
	lf.stop()
	return true
}

// failure is why the link died, nil while it lives.
func (lf *linkLife) failure() error {
	lf.mu.Lock()
	defer lf.mu.Unlock()
	return lf.err
}

// ListenGRPC starts rank's gRPC server on addr (e.g. "127.0.0.1:0").
func ListenGRPC(rank, world int, addr string, opts Options) (*GRPCTransport, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	if world < 1 || rank < 0 || rank >= world {
		return nil, fmt.Errorf("%w: rank %d of world %d", ErrBadRank, rank, world)
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("parallel: listen: %w", err)
	}
	if opts.TLS != nil {
		lis = tls.NewListener(lis, opts.serverTLS())
	}
	t := &GRPCTransport{
		rank: rank, world: world, opts: opts, lis: lis,
		boxes:  newMailboxes(world),
		links:  make([]*link, world),
		ready:  make([]chan struct{}, world),
		rawIn:  make([]chan net.Conn, world),
		closed: make(chan struct{}),
	}
	for r := range t.boxes {
		t.ready[r] = make(chan struct{})
		t.rawIn[r] = make(chan net.Conn, 1)
	}
	t.srv = grpc.NewServer(
		grpc.ForceServerCodecV2(frameCodec{}),
		experimental.BufferPool(&t.frames),
		grpc.InitialWindowSize(int32(opts.Window)),
		grpc.InitialConnWindowSize(int32(2*opts.Window)),
		grpc.ReadBufferSize(ioBufferSize),
		grpc.WriteBufferSize(ioBufferSize),
		grpc.MaxRecvMsgSize(opts.ChunkSize+64<<10),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 20 * time.Second}),
	)
	parallelv1.RegisterTransportServer(t.srv, t)
	go t.srv.Serve(newMuxListener(lis, t)) //nolint:errcheck // returns when Close stops the server
	if opts.DataPlane == DataPlaneTCP && opts.TLS == nil && isLoopbackAddr(t.Addr()) {
		if ul, err := net.Listen("unix", udsName(t.Addr())); err == nil {
			t.ulis = ul
			go t.serveUDS(ul)
		}
	}
	return t, nil
}

// ioBufferSize is gRPC's socket read and write buffer: big writes and reads
// on loopback cut syscalls per byte.
const ioBufferSize = 1 << 20

// Addr is the address the server listens on.
func (t *GRPCTransport) Addr() string { return t.lis.Addr().String() }

func (t *GRPCTransport) Rank() int { return t.rank }
func (t *GRPCTransport) Size() int { return t.world }

// Connect links this rank with every peer: it dials the ranks above it and
// waits for the ranks below it to dial. addrs[r] is rank r's Addr. It returns
// once every link has completed its handshake, or fails when ctx is done or
// Options.DialTimeout has passed.
func (t *GRPCTransport) Connect(ctx context.Context, addrs []string) error {
	if len(addrs) != t.world {
		return fmt.Errorf("parallel: connect: %d addresses for world %d", len(addrs), t.world)
	}
	ctx, cancel := context.WithTimeout(ctx, t.opts.DialTimeout)
	defer cancel()
	errc := make(chan error, t.world)
	for p := t.rank + 1; p < t.world; p++ {
		go func() { errc <- t.dial(ctx, p, addrs[p]) }()
	}
	for p := t.rank + 1; p < t.world; p++ {
		if err := <-errc; err != nil {
			return err
		}
	}
	for p := 0; p < t.rank; p++ {
		select {
		case <-t.ready[p]:
		case <-ctx.Done():
			return fmt.Errorf("parallel: connect: rank %d never dialled rank %d: %w", p, t.rank, context.Cause(ctx))
		case <-t.closed:
			return ErrClosed
		}
	}
	return nil
}

func (t *GRPCTransport) dial(ctx context.Context, peer int, addr string) error {
	conn, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()), // TLS, if any, is below gRPC (dialTLS)
		grpc.WithContextDialer(t.opts.dialTLS),
		experimental.WithBufferPool(&t.frames),
		grpc.WithInitialWindowSize(int32(t.opts.Window)),
		grpc.WithInitialConnWindowSize(int32(2*t.opts.Window)),
		grpc.WithReadBufferSize(ioBufferSize),
		grpc.WithWriteBufferSize(ioBufferSize),
		grpc.WithDisableRetry(),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(t.opts.ChunkSize+64<<10)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 20 * time.Second, PermitWithoutStream: true}),
	)
	if err != nil {
		return fmt.Errorf("parallel: dial rank %d at %s: %w", peer, addr, err)
	}
	t.mu.Lock()
	t.conns = append(t.conns, conn)
	t.mu.Unlock()

	// The stream lives as long as the link; ctx only bounds the set-up.
	sctx, scancel := context.WithCancel(context.Background())
	stop := context.AfterFunc(ctx, scancel)
	defer stop()
	fail := func(err error) error {
		scancel()
		return fmt.Errorf("parallel: connect to rank %d at %s: %w", peer, addr, err)
	}
	mdctx := metadata.AppendToOutgoingContext(sctx, dataPlaneKey, t.opts.DataPlane)
	st, err := parallelv1.NewTransportClient(conn).Stream(mdctx, grpc.WaitForReady(true), grpc.ForceCodecV2(frameCodec{}))
	if err != nil {
		return fail(err)
	}
	if err := st.SendMsg(&outFrame{hello: t.hello()}); err != nil {
		_, rerr := st.Header() // the status explains an early end
		return fail(errors.Join(err, rerr))
	}
	var f inFrame
	if err := st.RecvMsg(&f); err != nil {
		return fail(err)
	}
	if err := t.checkHello(f.hello, peer); err != nil {
		return fail(err)
	}
	var raw net.Conn
	if t.opts.DataPlane == DataPlaneTCP {
		if raw, err = t.dialRaw(ctx, peer, addr); err != nil {
			return fail(fmt.Errorf("data connection: %w", err))
		}
	}
	if !stop() {
		if raw != nil {
			raw.Close()
		}
		return fail(context.Cause(ctx))
	}
	return t.addLink(peer, st, scancel, nil, raw)
}

func (t *GRPCTransport) hello() *parallelv1.Hello {
	return &parallelv1.Hello{Rank: uint32(t.rank), World: uint32(t.world), Session: t.opts.Session}
}

func (t *GRPCTransport) checkHello(h *parallelv1.Hello, want int) error {
	switch {
	case h == nil:
		return errors.New("parallel: handshake: first frame has no hello")
	case int(h.World) != t.world:
		return fmt.Errorf("parallel: handshake: peer world %d != %d", h.World, t.world)
	case h.Session != t.opts.Session:
		return fmt.Errorf("parallel: handshake: peer session %q != %q", h.Session, t.opts.Session)
	case want >= 0 && int(h.Rank) != want:
		return fmt.Errorf("parallel: handshake: peer says rank %d, expected %d", h.Rank, want)
	}
	return nil
}

// Stream is the gRPC handler: a lower rank dialled us.
func (t *GRPCTransport) Stream(ss grpc.BidiStreamingServer[parallelv1.Frame, parallelv1.Frame]) error {
	var f inFrame
	if err := ss.RecvMsg(&f); err != nil {
		return err
	}
	if err := t.checkHello(f.hello, -1); err != nil {
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	peer := int(f.hello.Rank)
	if peer >= t.rank {
		return status.Errorf(codes.FailedPrecondition, "parallel: handshake: rank %d dialled rank %d (only lower ranks dial)", peer, t.rank)
	}
	plane := DataPlaneGRPC
	if md, ok := metadata.FromIncomingContext(ss.Context()); ok && len(md.Get(dataPlaneKey)) > 0 {
		plane = md.Get(dataPlaneKey)[0]
	}
	if plane != t.opts.DataPlane {
		return status.Errorf(codes.FailedPrecondition, "parallel: handshake: rank %d uses data plane %q, rank %d %q", peer, plane, t.rank, t.opts.DataPlane)
	}
	if err := ss.SendMsg(&outFrame{hello: t.hello()}); err != nil {
		return err
	}
	var raw net.Conn
	if plane == DataPlaneTCP {
		timer := time.NewTimer(t.opts.DialTimeout)
		select {
		case raw = <-t.rawIn[peer]:
			timer.Stop()
			t.tuneRaw(raw)
		case <-timer.C:
			return status.Errorf(codes.DeadlineExceeded, "parallel: handshake: rank %d opened no data connection", peer)
		case <-ss.Context().Done():
			timer.Stop()
			return ss.Context().Err()
		case <-t.closed:
			timer.Stop()
			return status.Error(codes.Unavailable, ErrClosed.Error())
		}
	}
	finish := make(chan struct{})
	if err := t.addLink(peer, ss, nil, finish, raw); err != nil {
		return status.Error(codes.AlreadyExists, err.Error())
	}
	l := t.linkOf(peer)
	select {
	case <-finish: // orderly close: returning ends the stream after queued data
		return nil
	case <-l.life.dead:
	case <-l.loopEnd:
	}
	if err := l.failure(); err != nil && !errors.Is(err, ErrPeerClosed) {
		return status.Error(codes.Aborted, err.Error())
	}
	return nil
}

func (t *GRPCTransport) addLink(peer int, st msgStream, cancel context.CancelFunc, finish chan struct{}, raw net.Conn) error {
	l := &link{
		t: t, peer: peer, stream: st, cancel: cancel, finish: finish, raw: raw,
		sendMu: make(chan struct{}, 1), box: t.boxes[peer],
		loopEnd: make(chan struct{}), rawEnd: make(chan struct{}), released: make(chan struct{}, 1),
	}
	l.life.init()
	l.out = streamWire{l}
	if raw != nil {
		l.out = rawWire{l}
	}
	abandon := func() {
		if cancel != nil {
			cancel()
		}
		if raw != nil {
			raw.Close()
		}
	}
	t.mu.Lock()
	select {
	case <-t.closed:
		t.mu.Unlock()
		abandon()
		return ErrClosed
	default:
	}
	if t.links[peer] != nil {
		t.mu.Unlock()
		abandon()
		return fmt.Errorf("parallel: rank %d already linked", peer)
	}
	t.links[peer] = l
	l.box.setAbandon(func() {
		l.fail(fmt.Errorf("%w: rank %d: a receive gave up half-way through a message", ErrPeerLost, l.peer))
	})
	close(t.ready[peer])
	t.wg.Add(1)
	if raw != nil {
		t.wg.Add(1)
	}
	t.mu.Unlock()
	go l.recvLoop()
	if raw != nil {
		go l.rawRecvLoop()
	} else {
		close(l.rawEnd)
	}
	return nil
}

func (t *GRPCTransport) linkOf(peer int) *link {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.links[peer]
}

// fail ends the link: pending and later sends fail, receivers get err once
// the messages already received are consumed.
func (l *link) fail(err error) {
	if !l.life.die(err) {
		return
	}
	l.box.fail(err)
	if l.cancel != nil {
		l.cancel()
	}
	if l.raw != nil {
		l.raw.Close()
	}
}

func (l *link) failure() error { return l.life.failure() }

// recvLoop reassembles the peer's messages into the mailbox.
func (l *link) recvLoop() {
	defer l.t.wg.Done()
	defer close(l.loopEnd)
	a := &assembly{l: l}
	defer a.abandon()
	f := &inFrame{dest: a.dest}
	for {
		err := l.stream.RecvMsg(f)
		if err == nil {
			err = a.accept(f)
		}
		if err == nil && l.raw != nil {
			err = fmt.Errorf("%w: message on the gRPC stream of a tcp data plane", errBadFrame)
		}
		if err != nil {
			l.streamEnded(err)
			return
		}
		a.advance(f.n)
	}
}

// streamEnded ends the link after its stream's receive error err.
func (l *link) streamEnded(err error) {
	switch {
	case l.raw != nil && !errors.Is(err, errBadFrame):
		// The data connection decides how the link ends: this stream
		// may end before the last messages have been read from it.
	case err == io.EOF || l.life.closing() || status.Code(err) == codes.Canceled && isClosed(l.t.closed):
		l.fail(fmt.Errorf("%w: rank %d", ErrPeerClosed, l.peer))
	default:
		l.fail(fmt.Errorf("%w: rank %d: %w", ErrPeerLost, l.peer, err))
	}
}

// assembly is the message a link's receive loop is putting together from
// its chunks: into a posted receive's buffer when one claims it, else into
// a pooled buffer handed to the mailbox when complete.
type assembly struct {
	l         *link
	active    bool
	tag, size uint64
	buf       []byte
	filled    int
	claim     *posted // a posted receive the message goes straight into
}

// start begins a message of fsize bytes with tag ftag, waiting for room in
// the mailbox unless a posted receive takes it.
func (a *assembly) start(ftag, fsize uint64) error {
	l := a.l
	if fsize > uint64(l.t.opts.MaxMessage) {
		return fmt.Errorf("%w: peer announced %d bytes > %d", ErrTooLarge, fsize, l.t.opts.MaxMessage)
	}
	if a.claim = l.box.claim(ftag, int(fsize)); a.claim != nil {
		a.active, a.tag, a.size, a.filled = true, ftag, fsize, 0
		a.buf = a.claim.dst
		return nil
	}
	if err := l.box.waitRoom(l.life.ctx, l.t.opts.MaxPending, l.t.closed, nil); err != nil {
		return err
	}
	a.active, a.tag, a.size, a.filled = true, ftag, fsize, 0
	a.buf = l.t.pool.get(int(fsize))
	return nil
}

// continues checks that a chunk of n bytes of message (tag, size) is the
// next part of the one being assembled.
func (a *assembly) continues(tag, size uint64, n int) error {
	if tag != a.tag || size != a.size || a.filled+n > int(a.size) {
		return fmt.Errorf("%w: chunk (tag %#x, size %d, %d bytes) does not continue message (tag %#x, size %d, %d filled)", errBadFrame, tag, size, n, a.tag, a.size, a.filled)
	}
	return nil
}

// dest is where the decoder writes a chunk's n bytes.
func (a *assembly) dest(f *inFrame, n int) ([]byte, error) {
	if !a.active {
		if err := a.start(f.tag, f.size); err != nil {
			return nil, err
		}
	}
	if err := a.continues(f.tag, f.size, n); err != nil {
		return nil, err
	}
	return a.buf[a.filled : a.filled+n], nil
}

// accept takes a decoded frame: a chunk written in place by dest, or one
// decoded without it (f.data), which is copied.
func (a *assembly) accept(f *inFrame) error {
	if f.hello != nil {
		return fmt.Errorf("%w: hello inside a stream", errBadFrame)
	}
	if !a.active {
		if err := a.start(f.tag, f.size); err != nil {
			return err
		}
	}
	if f.data != nil {
		if err := a.continues(f.tag, f.size, len(f.data)); err != nil {
			return err
		}
		copy(a.buf[a.filled:], f.data)
	}
	return nil
}

// advance counts n more bytes and delivers the message once complete.
func (a *assembly) advance(n int) {
	a.filled += n
	if a.filled != int(a.size) {
		return
	}
	if a.claim != nil {
		a.claim.complete(nil)
		a.claim = nil
	} else {
		a.l.box.put(a.tag, a.buf[:a.size:a.size])
	}
	a.active, a.buf = false, nil
}

// abandon fails the posted receive of a message the link ended in.
func (a *assembly) abandon() {
	if a.claim != nil {
		a.claim.complete(fmt.Errorf("%w: rank %d: link ended mid-message", ErrPeerLost, a.l.peer))
	}
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func (t *GRPCTransport) Send(ctx context.Context, to int, tag uint64, payload []byte) error {
	if to < 0 || to >= t.world {
		return fmt.Errorf("%w: send to %d of %d", ErrBadRank, to, t.world)
	}
	if isClosed(t.closed) {
		return ErrClosed
	}
	if len(payload) > t.opts.MaxMessage {
		return fmt.Errorf("%w: %d bytes > %d", ErrTooLarge, len(payload), t.opts.MaxMessage)
	}
	if ctx.Err() != nil {
		return ctxErr(ctx, "send")
	}
	if to == t.rank {
		timer, stop := opDeadline(ctx, t.opts.Timeout)
		defer stop()
		if err := t.boxes[to].waitRoom(ctx, t.opts.MaxPending, t.closed, timer); err != nil {
			return fmt.Errorf("parallel: send to self: %w", err)
		}
		t.boxes[to].deliver(tag, payload, &t.pool)
		return nil
	}
	l := t.linkOf(to)
	if l == nil {
		return fmt.Errorf("parallel: send to rank %d: not connected", to)
	}
	if err := l.send(ctx, tag, payload); err != nil {
		return fmt.Errorf("parallel: send to rank %d tag %#x: %w", to, tag, err)
	}
	return nil
}

// zeroCopyMin is the smallest chunk handed to gRPC without a copy; smaller
// ones are copied, which is cheaper than tracking their release.
const zeroCopyMin = 32 << 10

// send writes one message. Once a chunk is out, a deadline or cancellation
// can only be honoured by ending the link (the peer would otherwise see half
// a message), so it does that.
func (l *link) send(ctx context.Context, tag uint64, payload []byte) error {
	timeout := l.t.opts.Timeout
	timer, stopTimer := opDeadline(ctx, timeout)
	defer stopTimer()
	select {
	case l.sendMu <- struct{}{}:
	case <-ctx.Done():
		return ctxErr(ctx, "send")
	case <-timer:
		return fmt.Errorf("%w: another send to this peer is stuck", ErrTimeout)
	case <-l.life.dead:
		return l.failure()
	case <-l.t.closed:
		return ErrClosed
	}
	defer func() { <-l.sendMu }()
	if err := l.failure(); err != nil {
		return err
	}

	// Watchdog: ctx, the transport timeout or Close end the link, which
	// unblocks a SendMsg stuck on flow control.
	var why atomic.Value
	abort := func(err error) {
		why.CompareAndSwap(nil, err)
		l.fail(err)
	}
	stopCtx := context.AfterFunc(ctx, func() { abort(ctxErr(ctx, "send")) })
	defer stopCtx()
	wd := time.AfterFunc(timeout, func() {
		abort(fmt.Errorf("%w: send to rank %d stalled for %v", ErrTimeout, l.peer, timeout))
	})
	defer wd.Stop()
	result := func(err error) error {
		if w := why.Load(); w != nil {
			return w.(error)
		}
		if f := l.failure(); f != nil {
			return f
		}
		return err
	}

	if err := l.out.write(tag, payload); err != nil {
		return result(err)
	}
	return nil // written whole: a failure noticed since is the next send's
}

// wire is how a link writes its messages: gRPC frames on the stream, or the
// raw data connection (DataPlane "tcp"). The link holds sendMu around every
// write and runs the watchdog, which ends the link (and so a stuck write);
// a write error ends the link too.
type wire interface {
	// write sends one whole message and returns once payload may be
	// reused.
	write(tag uint64, payload []byte) error
}

// streamWire writes a message as frames of Options.ChunkSize on the gRPC
// stream, large chunks without a copy.
type streamWire struct{ l *link }

func (w streamWire) write(tag uint64, payload []byte) error {
	l := w.l
	chunk := l.t.opts.ChunkSize
	size := uint64(len(payload))
	for off := 0; off == 0 || off < len(payload); off += chunk {
		piece := payload[off:min(off+chunk, len(payload))]
		var data mem.Buffer
		if len(piece) >= zeroCopyMin {
			l.inflight.Add(1)
			p := piece[:len(piece):len(piece)]
			data = mem.NewBuffer(&p, (*releaseNotifier)(l))
		} else if len(piece) > 0 {
			data = mem.SliceBuffer(append([]byte(nil), piece...))
		}
		if err := l.stream.SendMsg(&outFrame{tag: tag, size: size, data: data}); err != nil {
			return fmt.Errorf("%w: rank %d: %w", ErrPeerLost, l.peer, err)
		}
	}
	// Send may not return while gRPC still reads the caller's payload.
	for l.inflight.Load() != 0 {
		select {
		case <-l.released:
		case <-l.life.dead:
			return l.failure()
		}
	}
	return nil
}

// rawWire writes a message on the data connection (rawtcp.go).
type rawWire struct{ l *link }

func (w rawWire) write(tag uint64, payload []byte) error { return w.l.rawSend(tag, payload) }

// releaseNotifier is the mem.BufferPool of zero-copy chunks: gRPC "returns"
// a chunk once it has copied it to the socket buffer.
type releaseNotifier link

func (n *releaseNotifier) Get(int) *[]byte { panic("parallel: releaseNotifier.Get") }
func (n *releaseNotifier) Put(*[]byte) {
	if n.inflight.Add(-1) == 0 {
		select {
		case n.released <- struct{}{}:
		default:
		}
	}
}

func (t *GRPCTransport) Recv(ctx context.Context, from int, tag uint64) ([]byte, error) {
	if from < 0 || from >= t.world {
		return nil, fmt.Errorf("%w: recv from %d of %d", ErrBadRank, from, t.world)
	}
	if isClosed(t.closed) {
		return nil, ErrClosed
	}
	msg, err := t.boxes[from].get(ctx, tag, t.opts.Timeout, t.closed)
	if err != nil {
		return nil, fmt.Errorf("parallel: recv from rank %d tag %#x: %w", from, tag, err)
	}
	return msg, nil
}

// RecvInto receives the next message from rank from with tag into dst (see
// RecvIntoer): posted in time, the payload goes from the wire straight into
// dst.
func (t *GRPCTransport) RecvInto(ctx context.Context, from int, tag uint64, dst []byte) error {
	return t.recvIntoPosted(ctx, from, tag, dst, nil)
}

func (t *GRPCTransport) recvIntoPosted(ctx context.Context, from int, tag uint64, dst []byte, posted func()) error {
	if from < 0 || from >= t.world {
		return fmt.Errorf("%w: recv from %d of %d", ErrBadRank, from, t.world)
	}
	if isClosed(t.closed) {
		return ErrClosed
	}
	if err := t.boxes[from].recvInto(ctx, tag, dst, t.opts.Timeout, t.closed, t.Release, posted); err != nil {
		return fmt.Errorf("parallel: recv from rank %d tag %#x: %w", from, tag, err)
	}
	return nil
}

// Release recycles a buffer returned by Recv.
func (t *GRPCTransport) Release(buf []byte) { t.pool.put(buf) }

// closeGrace bounds how long Close waits for peers to acknowledge.
const closeGrace = 2 * time.Second

// Close ends every link in order (messages already sent still arrive), stops
// the server and fails pending calls with ErrClosed.
func (t *GRPCTransport) Close() error {
	t.closeOnce.Do(func() {
		t.mu.Lock()
		close(t.closed)
		var links []*link
		for _, l := range t.links {
			if l != nil {
				links = append(links, l)
			}
		}
		conns := t.conns
		t.mu.Unlock()
		grace, cancelGrace := context.WithTimeout(context.Background(), closeGrace)
		defer cancelGrace()
		deadline := grace.Done()
		for _, l := range links {
			l.sayGoodbye(deadline)
		}
		for _, l := range links {
			l.awaitEnd(deadline)
		}
		for _, in := range t.rawIn { // data connections whose handshake never came
			select {
			case c := <-in:
				c.Close()
			default:
			}
		}
		for _, b := range t.boxes {
			b.fail(ErrClosed)
		}
		t.stopServer(deadline)
		for _, c := range conns {
			c.Close()
		}
		if t.ulis != nil {
			t.ulis.Close()
		}
		for _, l := range links {
			l.fail(ErrClosed)
		}
		t.wg.Wait()
	})
	return nil
}

// sayGoodbye begins the link's orderly close: the data connection's
// goodbye, then the end of our half of the stream (messages already sent
// still arrive). Past deadline it fails the link instead.
func (l *link) sayGoodbye(deadline <-chan struct{}) {
	l.life.beginClose()
	if l.raw != nil {
		select { // the goodbye must not cut into a message
		case l.sendMu <- struct{}{}:
			l.rawBye()
			<-l.sendMu
		case <-deadline:
			l.fail(ErrClosed)
		}
	}
	if l.finish != nil {
		close(l.finish)
		return
	}
	select { // CloseSend must not race a SendMsg
	case l.sendMu <- struct{}{}:
		if cs, ok := l.stream.(grpc.ClientStream); ok {
			cs.CloseSend() //nolint:errcheck // the receive loop reports the outcome
		}
		<-l.sendMu
	case <-deadline:
		l.fail(ErrClosed)
	}
}

// awaitEnd waits for the link's receive loops to see the peer's side end,
// failing the link past deadline.
func (l *link) awaitEnd(deadline <-chan struct{}) {
	for _, end := range []chan struct{}{l.loopEnd, l.rawEnd} {
		select {
		case <-end:
		case <-deadline:
			l.fail(ErrClosed)
		}
	}
}

// stopServer stops the gRPC server: GracefulStop returns once peers have
// read everything this side wrote (they close the connections after the
// streams' trailers); past deadline Stop cuts off peers that do not.
func (t *GRPCTransport) stopServer(deadline <-chan struct{}) {
	stopped := make(chan struct{})
	go func() { t.srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-deadline:
		t.srv.Stop()
		<-stopped
	}
}

// NewLoopbackGRPC starts n connected gRPC transports on 127.0.0.1 in this
// process (tests and the in-process benchmark).
func NewLoopbackGRPC(ctx context.Context, n int, opts Options) ([]Transport, error) {
	gs := make([]*GRPCTransport, n)
	addrs := make([]string, n)
	ts := make([]Transport, n)
	for r := range gs {
		g, err := ListenGRPC(r, n, "127.0.0.1:0", opts)
		if err != nil {
			CloseTransports(ts[:r])
			return nil, err
		}
		gs[r], ts[r], addrs[r] = g, g, g.Addr()
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r, g := range gs {
		wg.Add(1)
		go func() { defer wg.Done(); errs[r] = g.Connect(ctx, addrs) }()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		CloseTransports(ts)
		return nil, err
	}
	return ts, nil
}

// CloseTransports closes every transport of ts, side by side.
func CloseTransports(ts []Transport) {
	var wg sync.WaitGroup
	for _, t := range ts {
		wg.Add(1)
		go func() { defer wg.Done(); t.Close() }()
	}
	wg.Wait()
}
