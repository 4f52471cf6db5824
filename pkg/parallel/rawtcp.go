package parallel

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// The raw TCP data plane (Options.DataPlane "tcp").
//
// gRPC-Go caps a bidirectional stream on loopback well below the socket:
// HTTP/2 DATA frames are at most 16 KiB (fixed in gRPC-Go), every byte is
// copied into gRPC's write buffer on the way out and twice on the way in
// (socket buffer, frame buffer, message), and each frame costs flow-control
// bookkeeping and a goroutine hand-off. BenchmarkTransportStream measures
// the gap. With the "tcp" data plane each pair of ranks still opens its gRPC
// stream (rank discovery, handshake, session and world checks, and a
// liveness channel), and also one plain TCP connection to the same port,
// which carries every message: a 16-byte header (tag, size, little-endian)
// and the payload, written with one writev straight from the caller's
// buffer and read straight into the pooled receive buffer. The listener
// tells the two apart by the first 8 bytes (rawMagic versus the HTTP/2
// preface). An orderly Close ends the connection with a goodbye header, so
// a connection that ends without one (kill -9, a crash) is ErrPeerLost.
//
// Between ranks on one host (a loopback address) the data connection is a
// Unix domain socket instead, in the abstract namespace under a name derived
// from the TCP address (udsName): it skips the TCP/IP stack and moves about
// twice the bytes per CPU second of loopback TCP when both directions are
// busy, as they are in a ring. If it cannot be set up, TCP is used.

// DataPlane values.
const (
	DataPlaneGRPC = "grpc"
	DataPlaneTCP  = "tcp"
)

// dataPlaneKey is the gRPC metadata key by which the dialling rank states
// its data plane; the accepting rank refuses a mismatch.
const dataPlaneKey = "switchyard-data-plane"

var rawMagic = [8]byte{'S', 'Y', 'R', 'A', 'W', 'v', '1', '\n'}

// byeTag and byeSize mark the goodbye header (the size is never valid).
const (
	byeTag  = ^uint64(0)
	byeSize = ^uint64(0)
)

const rawHeader = 16

// muxListener hands the gRPC server every connection that does not open
// with rawMagic, and the transport the ones that do.
type muxListener struct {
	net.Listener
	t     *GRPCTransport
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newMuxListener(lis net.Listener, t *GRPCTransport) *muxListener {
	m := &muxListener{Listener: lis, t: t, conns: make(chan net.Conn), done: make(chan struct{})}
	go m.run()
	return m
}

func (m *muxListener) Accept() (net.Conn, error) {
	select {
	case c := <-m.conns:
		return c, nil
	case <-m.done:
		return nil, net.ErrClosed
	}
}

func (m *muxListener) Close() error {
	var err error
	m.once.Do(func() {
		close(m.done)
		err = m.Listener.Close()
	})
	return err
}

func (m *muxListener) run() {
	for {
		c, err := m.Listener.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			m.Close()
			return
		}
		go m.sniff(c)
	}
}

func (m *muxListener) sniff(c net.Conn) {
	var b [8]byte
	c.SetReadDeadline(time.Now().Add(10 * time.Second)) //nolint:errcheck // checked by the read
	if _, err := io.ReadFull(c, b[:]); err != nil {
		c.Close()
		return
	}
	c.SetReadDeadline(time.Time{}) //nolint:errcheck
	if b == rawMagic {
		m.t.acceptRaw(c)
		return
	}
	select {
	case m.conns <- &prefixConn{Conn: c, prefix: b[:]}:
	case <-m.done:
		c.Close()
	}
}

// prefixConn replays the sniffed bytes before the rest of the connection.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// udsName is the abstract Unix socket beside the TCP listener at addr.
func udsName(addr string) string { return "@switchyard-parallel/" + addr }

// isLoopbackAddr reports whether host:port names this host.
func isLoopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// serveUDS accepts data connections on the Unix socket (rawMagic first;
// anything else is closed).
func (t *GRPCTransport) serveUDS(lis net.Listener) {
	for {
		c, err := lis.Accept()
		if err != nil {
			return
		}
		go func() {
			var b [8]byte
			c.SetReadDeadline(time.Now().Add(10 * time.Second)) //nolint:errcheck // checked by the read
			if _, err := io.ReadFull(c, b[:]); err != nil || b != rawMagic {
				c.Close()
				return
			}
			c.SetReadDeadline(time.Time{}) //nolint:errcheck
			t.acceptRaw(c)
		}()
	}
}

// rawHello is what the dialling rank sends after rawMagic.
func (t *GRPCTransport) rawHello() []byte {
	b := append([]byte(nil), rawMagic[:]...)
	b = binary.LittleEndian.AppendUint32(b, uint32(t.rank))
	b = binary.LittleEndian.AppendUint32(b, uint32(t.world))
	b = binary.LittleEndian.AppendUint16(b, uint16(len(t.opts.Session)))
	return append(b, t.opts.Session...)
}

// acceptRaw takes a data connection a lower rank dialled (rawMagic already
// read) and parks it for the gRPC handshake of that rank (Stream).
func (t *GRPCTransport) acceptRaw(c net.Conn) {
	c.SetDeadline(time.Now().Add(10 * time.Second)) //nolint:errcheck
	var h [10]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		c.Close()
		return
	}
	peer := int(binary.LittleEndian.Uint32(h[0:]))
	world := int(binary.LittleEndian.Uint32(h[4:]))
	session := make([]byte, binary.LittleEndian.Uint16(h[8:]))
	if _, err := io.ReadFull(c, session); err != nil {
		c.Close()
		return
	}
	ok := t.opts.DataPlane == DataPlaneTCP && world == t.world && string(session) == t.opts.Session &&
		peer >= 0 && peer < t.rank
	if ok {
		select {
		case t.rawIn[peer] <- c:
		default:
			ok = false // a second connection from the same rank
		}
	}
	if !ok {
		c.Write([]byte{0}) //nolint:errcheck // refused: the dialler reports it
		c.Close()
		return
	}
	c.SetDeadline(time.Time{}) //nolint:errcheck
	if _, err := c.Write([]byte{1}); err != nil {
		c.Close()
	}
}

// dialRaw opens the data connection to a higher rank.
func (t *GRPCTransport) dialRaw(ctx context.Context, peer int, addr string) (net.Conn, error) {
	var d net.Dialer
	var c net.Conn
	var err error
	if t.opts.TLS == nil && isLoopbackAddr(addr) {
		c, err = d.DialContext(ctx, "unix", udsName(addr))
	}
	if c == nil {
		if c, err = t.opts.dialTLS(ctx, addr); err != nil {
			return nil, err
		}
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl) //nolint:errcheck
	}
	var ack [1]byte
	if _, err = c.Write(t.rawHello()); err == nil {
		_, err = io.ReadFull(c, ack[:])
	}
	if err == nil && ack[0] != 1 {
		err = fmt.Errorf("rank %d refused the data connection (data plane, world or session differ)", peer)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{}) //nolint:errcheck
	t.tuneRaw(c)
	return c, nil
}

// udsBuffer is the socket buffer asked for on a Unix data connection.
// Linux autotunes TCP buffers but not Unix ones, which stay at
// net.core.wmem_default (208 KiB): a 1 MiB ring segment would then cross
// in five or more fills, each a park and wake-up of both ranks' goroutines
// (on 4 ranks sharing 2 cores, about a tenth of the CPU time of a large
// all-reduce). The kernel caps the request at net.core.wmem_max/rmem_max.
const udsBuffer = 4 << 20

// tuneRaw bounds the kernel's socket buffers when the options ask for a
// small flow-control window; otherwise Linux autotunes TCP's, and a Unix
// socket's are raised to udsBuffer.
func (t *GRPCTransport) tuneRaw(c net.Conn) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn() // the socket below TLS
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetNoDelay(true) //nolint:errcheck
	}
	b, ok := c.(interface {
		SetReadBuffer(int) error
		SetWriteBuffer(int) error
	})
	switch {
	case !ok:
	case t.opts.Window < 1<<20:
		b.SetReadBuffer(t.opts.Window)  //nolint:errcheck
		b.SetWriteBuffer(t.opts.Window) //nolint:errcheck
	case c.LocalAddr().Network() == "unix":
		b.SetReadBuffer(udsBuffer)  //nolint:errcheck // best effort: a smaller buffer only costs wake-ups
		b.SetWriteBuffer(udsBuffer) //nolint:errcheck
	}
}

// rawSend writes one message: header and payload in one writev, no copy.
// The caller holds sendMu and runs the watchdog (a stalled write ends when
// fail closes the connection).
func (l *link) rawSend(tag uint64, payload []byte) error {
	var hdr [rawHeader]byte
	binary.LittleEndian.PutUint64(hdr[0:], tag)
	binary.LittleEndian.PutUint64(hdr[8:], uint64(len(payload)))
	bufs := net.Buffers{hdr[:], payload}
	if len(payload) == 0 {
		bufs = bufs[:1]
	}
	if _, err := bufs.WriteTo(l.raw); err != nil {
		return fmt.Errorf("%w: rank %d: %w", ErrPeerLost, l.peer, err)
	}
	return nil
}

// rawBye ends our half of the data connection in order. The caller holds
// sendMu.
func (l *link) rawBye() {
	var hdr [rawHeader]byte
	binary.LittleEndian.PutUint64(hdr[0:], byeTag)
	binary.LittleEndian.PutUint64(hdr[8:], byeSize)
	l.raw.SetWriteDeadline(time.Now().Add(closeGrace)) //nolint:errcheck
	if _, err := l.raw.Write(hdr[:]); err == nil {
		if cw, ok := l.raw.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite() //nolint:errcheck
		}
	}
}

// rawRecvLoop reads the peer's messages from the data connection into the
// mailbox, big payloads straight from the socket into the pooled buffer.
func (l *link) rawRecvLoop() {
	defer l.t.wg.Done()
	defer close(l.rawEnd)
	br := bufio.NewReaderSize(l.raw, 64<<10)
	var hdr [rawHeader]byte
	lost := func(err error) {
		if l.life.closing() || isClosed(l.t.closed) {
			l.fail(fmt.Errorf("%w: rank %d", ErrPeerClosed, l.peer))
			return
		}
		l.fail(fmt.Errorf("%w: rank %d: %w", ErrPeerLost, l.peer, err))
	}
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			if err == io.EOF {
				err = errors.New("data connection ended without goodbye")
			}
			lost(err)
			return
		}
		tag, size := binary.LittleEndian.Uint64(hdr[0:]), binary.LittleEndian.Uint64(hdr[8:])
		if tag == byeTag && size == byeSize {
			l.fail(fmt.Errorf("%w: rank %d", ErrPeerClosed, l.peer))
			return
		}
		if size > uint64(l.t.opts.MaxMessage) {
			l.fail(fmt.Errorf("%w: %w: peer announced %d bytes > %d", ErrPeerLost, ErrTooLarge, size, l.t.opts.MaxMessage))
			return
		}
		if p := l.box.claim(tag, int(size)); p != nil { // posted: read straight into it
			if _, err := io.ReadFull(br, p.dst); err != nil {
				p.complete(fmt.Errorf("%w: rank %d: %w", ErrPeerLost, l.peer, err))
				lost(err)
				return
			}
			p.complete(nil)
			continue
		}
		if err := l.box.waitRoom(l.life.ctx, l.t.opts.MaxPending, l.t.closed, nil); err != nil {
			return // the link or the transport is already failing
		}
		buf := l.t.pool.get(int(size))
		if _, err := io.ReadFull(br, buf); err != nil {
			lost(err)
			return
		}
		l.box.put(tag, buf)
	}
}
