package parallel

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"testing"
	"time"
)

// RecvInto, posted before or after the message arrives, delivers the same
// bytes as Recv, in order, and fails cleanly on a size mismatch, a timeout
// or a closed peer.
func TestTransportRecvInto(t *testing.T) {
	forTransports(t, func(t *testing.T, k transportKind) {
		// The messages (up to 3 MiB, over TLS for some kinds) move with
		// the usual timeout: 300ms, which the silent-peer case below wants,
		// is less than a 3 MiB send takes under -race on a busy machine.
		ts := k.make(t, 2, testOptions())
		ctx := context.Background()
		rng := rand.New(rand.NewPCG(3, 4))
		recvInto := func(from int, tag uint64, dst []byte) error {
			return ts[1-from].(RecvIntoer).RecvInto(ctx, from, tag, dst)
		}
		for _, n := range []int{0, 1, 1000, 200 << 10, 3<<20 + 5} {
			// Posted first: the message goes straight into dst.
			msg := randBytes(rng, n)
			dst := make([]byte, n)
			errc := make(chan error, 1)
			go func() { errc <- recvInto(0, 7, dst) }()
			time.Sleep(5 * time.Millisecond)
			if err := ts[0].Send(ctx, 1, 7, msg); err != nil {
				t.Fatal(err)
			}
			if err := <-errc; err != nil || !bytes.Equal(dst, msg) {
				t.Fatalf("%d bytes posted first: %v, equal %v", n, err, bytes.Equal(dst, msg))
			}
			// Arrived first (queued), then two in a row keep their order.
			a, b := randBytes(rng, n), randBytes(rng, n)
			for _, m := range [][]byte{a, b} {
				if err := ts[0].Send(ctx, 1, 8, m); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(5 * time.Millisecond)
			for _, want := range [][]byte{a, b} {
				if err := recvInto(0, 8, dst); err != nil || !bytes.Equal(dst, want) {
					t.Fatalf("%d bytes queued: %v", n, err)
				}
			}
		}
		// Wrong size: ErrMismatch, posted or queued; the link still works.
		go func() { ts[0].Send(ctx, 1, 9, make([]byte, 10)) }()
		if err := recvInto(0, 9, make([]byte, 11)); !errors.Is(err, ErrMismatch) {
			t.Fatalf("size mismatch = %v, want ErrMismatch", err)
		}
		// Nothing comes: ErrTimeout, and a later message is not lost. A
		// link of its own with a short timeout; on a busy machine a
		// receive on it may time out again while "late" is on its way,
		// which is no loss.
		opts := testOptions()
		opts.Timeout = 300 * time.Millisecond
		short := k.make(t, 2, opts)
		recvShort := func(from int, tag uint64, dst []byte) error {
			return short[1-from].(RecvIntoer).RecvInto(ctx, from, tag, dst)
		}
		if err := recvShort(0, 10, make([]byte, 4)); !errors.Is(err, ErrTimeout) {
			t.Fatalf("silent peer = %v, want ErrTimeout", err)
		}
		if err := short[0].Send(ctx, 1, 10, []byte("late")); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 4)
		err := recvShort(0, 10, got)
		for deadline := time.Now().Add(10 * time.Second); errors.Is(err, ErrTimeout) && time.Now().Before(deadline); {
			err = recvShort(0, 10, got)
		}
		if err != nil || string(got) != "late" {
			t.Fatalf("after a timeout: %q, %v", got, err)
		}
		// A peer that closes fails a posted receive.
		errc := make(chan error, 1)
		go func() { errc <- recvInto(0, 11, make([]byte, 4)) }()
		time.Sleep(5 * time.Millisecond)
		ts[0].Close()
		if err := <-errc; !errors.Is(err, ErrPeerClosed) {
			t.Fatalf("posted receive from a closed peer = %v, want ErrPeerClosed", err)
		}
	})
}

// Ranks on one host link their data plane over a Unix socket.
func TestDataPlaneUsesUnixSocketOnLoopback(t *testing.T) {
	opts := testOptions()
	opts.DataPlane = DataPlaneTCP
	ts, err := NewLoopbackGRPC(context.Background(), 2, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer CloseTransports(ts)
	for r, tr := range ts {
		l := tr.(*GRPCTransport).linkOf(1 - r)
		if _, ok := l.raw.(*net.UnixConn); !ok {
			t.Errorf("rank %d: data connection is a %T", r, l.raw)
		}
	}
}
