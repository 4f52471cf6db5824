package parallel

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/security"
	"time"
)

// transportKind builds n connected transports; the test closes them.
type transportKind struct {
	name string
	make func(t testing.TB, n int, opts Options) []Transport
}

var transportKinds = []transportKind{
	{"mem", func(t testing.TB, n int, opts Options) []Transport {
		eps := NewMemTransports(n, opts)
		ts := make([]Transport, n)
		for i, e := range eps {
			ts[i] = e
		}
		t.Cleanup(func() { closeAll(ts) })
		return ts
	}},
	grpcKind("grpc", DataPlaneGRPC, false),
	grpcKind("grpc-tcp", DataPlaneTCP, false),
	grpcKind("grpc-tls", DataPlaneGRPC, true),
	grpcKind("grpc-tcp-tls", DataPlaneTCP, true),
}

// grpcKind is the gRPC transport on loopback with a data plane, and with
// mutual TLS or not.
func grpcKind(name, plane string, encrypt bool) transportKind {
	return transportKind{name, func(t testing.TB, n int, opts Options) []Transport {
		opts.DataPlane = plane
		if encrypt {
			opts.TLS = loopbackTLS(t)
		}
		ts, err := NewLoopbackGRPC(context.Background(), n, opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { closeAll(ts) })
		return ts
	}}
}

// loopbackTLS is mutual TLS for ranks on 127.0.0.1.
func loopbackTLS(t testing.TB) *tls.Config {
	c, err := security.EphemeralMutualTLS("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func closeAll(ts []Transport) { CloseTransports(ts) }

// onAllRanks runs f for every rank on its own goroutine and returns their
// errors by rank.
func onAllRanks(n int, f func(r int) error) []error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := range n {
		wg.Go(func() { errs[r] = f(r) })
	}
	wg.Wait()
	return errs
}

// forTransports runs f as a subtest for every transport kind.
func forTransports(t *testing.T, f func(t *testing.T, k transportKind)) {
	for _, k := range transportKinds {
		t.Run(k.name, func(t *testing.T) { f(t, k) })
	}
}

func testOptions() Options {
	return Options{Timeout: 5 * time.Second, ChunkSize: 64 << 10, DialTimeout: 10 * time.Second}
}

func randBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func TestTransportOrderAndTags(t *testing.T) {
	forTransports(t, func(t *testing.T, k transportKind) {
		ts := k.make(t, 2, testOptions())
		ctx := context.Background()
		for i := 0; i < 50; i++ {
			if err := ts[0].Send(ctx, 1, 7, []byte{byte(i)}); err != nil {
				t.Fatal(err)
			}
		}
		if err := ts[0].Send(ctx, 1, 9, []byte("nine")); err != nil {
			t.Fatal(err)
		}
		// Tag 9 can be taken before the queued tag-7 messages.
		if got, err := ts[1].Recv(ctx, 0, 9); err != nil || string(got) != "nine" {
			t.Fatalf("Recv tag 9 = %q, %v", got, err)
		}
		for i := 0; i < 50; i++ {
			got, err := ts[1].Recv(ctx, 0, 7)
			if err != nil || len(got) != 1 || got[0] != byte(i) {
				t.Fatalf("message %d = %v, %v", i, got, err)
			}
		}
	})
}

func TestTransportSizes(t *testing.T) {
	forTransports(t, func(t *testing.T, k transportKind) {
		ts := k.make(t, 2, testOptions())
		ctx := context.Background()
		rng := rand.New(rand.NewPCG(3, 4))
		sizes := []int{0, 1, 1023, 32 << 10, 64 << 10, 64<<10 + 1, 1<<20 + 3, 5 << 20}
		var want [][]byte
		for _, n := range sizes {
			want = append(want, randBytes(rng, n))
		}
		errc := make(chan error, 1)
		go func() {
			for _, m := range want {
				buf := append([]byte(nil), m...)
				if err := ts[1].Send(ctx, 0, 1, buf); err != nil {
					errc <- err
					return
				}
				clear(buf) // Send must not keep the payload
			}
			errc <- nil
		}()
		for i, m := range want {
			got, err := ts[0].Recv(ctx, 1, 1)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, m) {
				t.Fatalf("message %d (%d bytes): got %d bytes, differs", i, len(m), len(got))
			}
		}
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	})
}

func TestTransportSelf(t *testing.T) {
	forTransports(t, func(t *testing.T, k transportKind) {
		ts := k.make(t, 2, testOptions())
		ctx := context.Background()
		if err := ts[1].Send(ctx, 1, 3, []byte("me")); err != nil {
			t.Fatal(err)
		}
		if got, err := ts[1].Recv(ctx, 1, 3); err != nil || string(got) != "me" {
			t.Fatalf("self Recv = %q, %v", got, err)
		}
		if err := ts[1].Send(ctx, 2, 3, nil); !errors.Is(err, ErrBadRank) {
			t.Fatalf("Send to rank 2 of 2 = %v, want ErrBadRank", err)
		}
	})
}

func TestTransportConcurrentPeers(t *testing.T) {
	forTransports(t, func(t *testing.T, k transportKind) {
		const n, msgs = 4, 20
		ts := k.make(t, n, testOptions())
		ctx := context.Background()
		payload := func(from, to, i int) []byte {
			return bytes.Repeat([]byte(fmt.Sprintf("%d>%d#%d;", from, to, i)), 1+(i*997)%20000)
		}
		var wg sync.WaitGroup
		errs := make(chan error, 2*n*n)
		for from := 0; from < n; from++ {
			for to := 0; to < n; to++ {
				if to == from {
					continue
				}
				wg.Add(2)
				go func() { // sender
					defer wg.Done()
					for i := 0; i < msgs; i++ {
						if err := ts[from].Send(ctx, to, uint64(i%3), payload(from, to, i)); err != nil {
							errs <- err
							return
						}
					}
				}()
				go func() { // receiver, by tag
					defer wg.Done()
					for tag := 0; tag < 3; tag++ {
						for i := tag; i < msgs; i += 3 {
							got, err := ts[to].Recv(ctx, from, uint64(tag))
							if err != nil {
								errs <- err
								return
							}
							if !bytes.Equal(got, payload(from, to, i)) {
								errs <- fmt.Errorf("%d>%d message %d corrupted", from, to, i)
								return
							}
						}
					}
				}()
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	})
}

func TestTransportTimeouts(t *testing.T) {
	forTransports(t, func(t *testing.T, k transportKind) {
		opts := testOptions()
		opts.Timeout = 200 * time.Millisecond
		ts := k.make(t, 2, opts)
		start := time.Now()
		_, err := ts[0].Recv(context.Background(), 1, 1)
		if !errors.Is(err, ErrTimeout) {
			t.Fatalf("Recv from a silent peer = %v, want ErrTimeout", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("timeout took %v", d)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		if _, err := ts[0].Recv(ctx, 1, 1); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Recv past ctx deadline = %v, want DeadlineExceeded", err)
		}
		cctx, ccancel := context.WithCancel(context.Background())
		time.AfterFunc(20*time.Millisecond, ccancel)
		if _, err := ts[0].Recv(cctx, 1, 1); !errors.Is(err, context.Canceled) {
			t.Fatalf("Recv after cancel = %v, want Canceled", err)
		}
		// The link still works after a Recv gave up.
		if err := ts[1].Send(context.Background(), 0, 1, []byte("late")); err != nil {
			t.Fatal(err)
		}
		if got, err := ts[0].Recv(context.Background(), 1, 1); err != nil || string(got) != "late" {
			t.Fatalf("Recv after timeouts = %q, %v", got, err)
		}
	})
}

// A receiver that never reads holds at most MaxPending (plus the flow-control
// windows): the sender blocks and then times out instead of growing memory.
func TestTransportBackpressure(t *testing.T) {
	forTransports(t, func(t *testing.T, k transportKind) {
		opts := testOptions()
		opts.Timeout = 300 * time.Millisecond
		opts.MaxPending = 128 << 10
		opts.Window = 64 << 10
		opts.ChunkSize = 16 << 10
		ts := k.make(t, 2, opts)
		msg := make([]byte, 32<<10)
		var err error
		sent := 0
		for sent < 2000 && err == nil { // 64 MiB if nothing pushed back
			err = ts[0].Send(context.Background(), 1, 1, msg)
			sent++
		}
		if !errors.Is(err, ErrTimeout) {
			t.Fatalf("after %d sends: %v, want ErrTimeout", sent, err)
		}
		if sent*len(msg) > 4<<20 {
			t.Fatalf("%d bytes accepted before back-pressure", sent*len(msg))
		}
	})
}

func TestTransportClose(t *testing.T) {
	forTransports(t, func(t *testing.T, k transportKind) {
		ts := k.make(t, 3, testOptions())
		ctx := context.Background()
		// A message sent before Close still arrives; then the peer's Recv fails promptly.
		if err := ts[0].Send(ctx, 1, 5, []byte("bye")); err != nil {
			t.Fatal(err)
		}
		pending := make(chan error, 1)
		go func() {
			_, err := ts[2].Recv(ctx, 0, 5)
			pending <- err
		}()
		time.Sleep(20 * time.Millisecond) // let the Recv block
		start := time.Now()
		ts[0].Close()
		if got, err := ts[1].Recv(ctx, 0, 5); err != nil || string(got) != "bye" {
			t.Fatalf("Recv of the message sent before Close = %q, %v", got, err)
		}
		if _, err := ts[1].Recv(ctx, 0, 5); !errors.Is(err, ErrPeerClosed) {
			t.Fatalf("Recv from a closed peer = %v, want ErrPeerClosed", err)
		}
		if err := <-pending; !errors.Is(err, ErrPeerClosed) {
			t.Fatalf("pending Recv from a closed peer = %v, want ErrPeerClosed", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("peers noticed Close after %v", d)
		}
		if err := ts[1].Send(ctx, 0, 5, []byte("x")); err == nil {
			t.Fatal("Send to a closed peer succeeded")
		}
		// Local Close fails pending and later calls with ErrClosed.
		go func() {
			_, err := ts[1].Recv(ctx, 2, 1)
			pending <- err
		}()
		time.Sleep(20 * time.Millisecond)
		ts[1].Close()
		if err := <-pending; !errors.Is(err, ErrClosed) {
			t.Fatalf("pending Recv on a closed transport = %v, want ErrClosed", err)
		}
		if _, err := ts[1].Recv(ctx, 2, 1); !errors.Is(err, ErrClosed) {
			t.Fatalf("Recv on a closed transport = %v, want ErrClosed", err)
		}
	})
}

// Ranks that disagree on the data plane fail to connect, with an error
// that says so, instead of hanging.
func TestDataPlaneMismatch(t *testing.T) {
	ctx := context.Background()
	opts := testOptions()
	opts.DialTimeout = time.Second
	a, err := ListenGRPC(0, 2, "127.0.0.1:0", opts)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	opts.DataPlane = DataPlaneTCP
	b, err := ListenGRPC(1, 2, "127.0.0.1:0", opts)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	addrs := []string{a.Addr(), b.Addr()}
	errs := onAllRanks(2, func(r int) error { return []*GRPCTransport{a, b}[r].Connect(ctx, addrs) })
	if errs[0] == nil || errs[1] == nil {
		t.Fatalf("connect with different data planes: %v", errs)
	}
	t.Log(errs)
	if o := (Options{DataPlane: "udp"}); o.Validate() == nil {
		t.Error("data plane udp validated")
	}
}

// TestTLSRefusesStrangers: with TLS on, a rank whose certificate another
// CA signed, or that speaks plain TCP, cannot link with the job's ranks.
func TestTLSRefusesStrangers(t *testing.T) {
	for _, tc := range []struct {
		name     string
		stranger *tls.Config
	}{{"another CA", loopbackTLS(t)}, {"no TLS", nil}} {
		t.Run(tc.name, func(t *testing.T) {
			opts := testOptions()
			opts.DialTimeout = 2 * time.Second
			opts.TLS = loopbackTLS(t)
			a, err := ListenGRPC(0, 2, "127.0.0.1:0", opts)
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			opts.TLS = tc.stranger
			b, err := ListenGRPC(1, 2, "127.0.0.1:0", opts)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			addrs := []string{a.Addr(), b.Addr()}
			errs := onAllRanks(2, func(r int) error { return []*GRPCTransport{a, b}[r].Connect(context.Background(), addrs) })
			if errs[0] == nil || errs[1] == nil {
				t.Fatalf("a stranger linked: %v", errs)
			}
		})
	}
}
