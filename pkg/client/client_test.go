package client_test

import (
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-ml/switchyard/internal/testnet"
	"github.com/switchyard-ml/switchyard/pkg/client"
	"github.com/switchyard-ml/switchyard/pkg/security"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
)

// fakeCoordinator answers ListJobs; the first failFirst calls get
// UNAVAILABLE, as a replica without a leader would give.
type fakeCoordinator struct {
	apiv1.UnimplementedCoordinatorServer
	failFirst int32
	calls     atomic.Int32
}

func (f *fakeCoordinator) ListJobs(context.Context, *apiv1.ListJobsRequest) (*apiv1.ListJobsResponse, error) {
	if n := f.calls.Add(1); n <= f.failFirst {
		return nil, status.Error(codes.Unavailable, "no leader yet")
	}
	return &apiv1.ListJobsResponse{}, nil
}

func serve(t *testing.T, f apiv1.CoordinatorServer, opts ...grpc.ServerOption) string {
	t.Helper()
	addr, stop := serveStop(t, f, opts...)
	t.Cleanup(stop)
	return addr
}

// serveStop is serve with the stop function returned (safe to call twice).
func serveStop(t *testing.T, f apiv1.CoordinatorServer, opts ...grpc.ServerOption) (string, func()) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(opts...)
	apiv1.RegisterCoordinatorServer(srv, f)
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(lis) }() //nolint:errcheck // ends with Stop
	return lis.Addr().String(), func() { srv.Stop(); <-done }
}

// deadAddr is a loopback address nothing listens on: a port that was
// just bound and closed again.
func deadAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	return addr
}

func dial(t *testing.T, o client.Options) *client.Client {
	t.Helper()
	c, err := client.Dial(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func listJobs(t *testing.T, c *client.Client, d time.Duration) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	_, err := c.ListJobs(ctx, &apiv1.ListJobsRequest{})
	return err
}

func TestFailOver(t *testing.T) {
	live := serve(t, &fakeCoordinator{})
	dead := deadAddr(t)
	for name, eps := range map[string][]string{
		"two endpoints":       {dead, live},
		"one comma list":      {dead + ", " + live},
		"empties are skipped": {"", dead, " ", live + ","},
	} {
		t.Run(name, func(t *testing.T) {
			c := dial(t, client.Options{Endpoints: eps})
			if err := listJobs(t, c, 5*time.Second); err != nil {
				t.Fatalf("ListJobs with %q: %v", eps, err)
			}
		})
	}
}

func TestFailOverWhenReplicaDies(t *testing.T) {
	a, b := &fakeCoordinator{}, &fakeCoordinator{}
	addrA, stopA := serveStop(t, a)
	t.Cleanup(stopA)
	addrB := serve(t, b)
	c := dial(t, client.Options{Endpoints: []string{addrA, addrB}})
	if err := listJobs(t, c, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if a.calls.Load() != 1 || b.calls.Load() != 0 {
		t.Fatalf("first call: replica a %d, b %d calls; want the first endpoint used", a.calls.Load(), b.calls.Load())
	}
	stopA()
	if err := listJobs(t, c, 5*time.Second); err != nil {
		t.Fatalf("after the first replica stopped: %v", err)
	}
	if b.calls.Load() != 1 {
		t.Fatalf("replica b served %d calls, want 1", b.calls.Load())
	}
}

func TestAllEndpointsDead(t *testing.T) {
	c := dial(t, client.Options{Endpoints: []string{deadAddr(t), deadAddr(t)}})
	err := listJobs(t, c, 500*time.Millisecond)
	if code := status.Code(err); code != codes.DeadlineExceeded && code != codes.Unavailable {
		t.Fatalf("got %v, want DeadlineExceeded or Unavailable", err)
	}
	// the error says why, not only that time ran out
	if !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("%v: does not say the replicas refused the connection", err)
	}
}

func TestRetriesUnavailable(t *testing.T) {
	f := &fakeCoordinator{failFirst: 2}
	c := dial(t, client.Options{Endpoints: []string{serve(t, f)}})
	if err := listJobs(t, c, 5*time.Second); err != nil {
		t.Fatalf("ListJobs after two UNAVAILABLE answers: %v", err)
	}
	if n := f.calls.Load(); n != 3 {
		t.Fatalf("server saw %d attempts, want 3", n)
	}
}

func TestToken(t *testing.T) {
	f := &fakeCoordinator{}
	addr := serve(t, f, security.ServerOptions("s3cret", false)...)
	c := dial(t, client.Options{Endpoints: []string{addr}, Token: "wrong"})
	if err := listJobs(t, c, 5*time.Second); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("got %v, want Unauthenticated", err)
	}
	ok := dial(t, client.Options{Endpoints: []string{addr}, Token: "s3cret"})
	if err := listJobs(t, ok, 5*time.Second); err != nil {
		t.Fatalf("right token: %v", err)
	}
}

func TestDialErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    client.Options
		want string
	}{
		{"no endpoints", client.Options{}, "no coordinator endpoint"},
		{"only blanks", client.Options{Endpoints: []string{"", " , ,"}}, "no coordinator endpoint"},
		{"partial TLS", client.Options{Endpoints: []string{"127.0.0.1:1"}, TLS: security.TLSFiles{CA: "ca.pem"}}, "needs all of ca, cert and key"},
		{"missing TLS file", client.Options{Endpoints: []string{"127.0.0.1:1"}, TLS: security.TLSFiles{CA: "/nonexistent/ca.pem", Cert: "/nonexistent/c.pem", Key: "/nonexistent/k.pem"}}, "/nonexistent/ca.pem"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := client.Dial(tc.o)
			if err == nil {
				c.Close()
				t.Fatal("Dial succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

// TestFailOverFromLeaderlessReplica: a replica that is up but answers
// UNAVAILABLE (cut off from its peers, no leader) is left for the next
// one, which then serves the calls that follow; streams fail over too.
func TestFailOverFromLeaderlessReplica(t *testing.T) {
	cut, ok := &fakeCoordinator{failFirst: 1 << 30}, &fakeCoordinator{}
	c := dial(t, client.Options{Endpoints: []string{serve(t, cut), serve(t, ok)}})
	if err := listJobs(t, c, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	tried := cut.calls.Load()
	if tried < 1 || ok.calls.Load() != 1 {
		t.Fatalf("first call: the cut replica saw %d attempts, the other %d calls", tried, ok.calls.Load())
	}
	for range 3 {
		if err := listJobs(t, c, 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if cut.calls.Load() != tried || ok.calls.Load() != 4 {
		t.Fatalf("later calls: the cut replica saw %d more, the other %d calls; want them kept on the replica that answered", cut.calls.Load()-tried, ok.calls.Load())
	}
	// a call without a deadline gives up when no replica answers
	all := dial(t, client.Options{Endpoints: []string{serve(t, &fakeCoordinator{failFirst: 1 << 30})}})
	if _, err := all.ListJobs(context.Background(), &apiv1.ListJobsRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("no replica with a leader, no deadline: %v", err)
	}
}

// hungAddr is a loopback address that accepts TCP connections and never
// answers on them: a replica whose process is stopped (SIGSTOP) or hangs.
func hungAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testnet.Accept(t, lis, nil)
	return lis.Addr().String()
}

// TestHungReplicaIsPassedOver: a replica that takes connections and never
// answers (its process stopped) holds a call only for its share of the
// deadline; the next replica answers it, and later calls go there first.
// (It held the whole call: with the leader stopped, every CLI call ran out
// of time although two replicas were well.)
func TestHungReplicaIsPassedOver(t *testing.T) {
	good := &fakeCoordinator{}
	c := dial(t, client.Options{Endpoints: []string{hungAddr(t), serve(t, good)}})
	start := time.Now()
	if err := listJobs(t, c, 8*time.Second); err != nil {
		t.Fatalf("with one replica hung and one well: %v", err)
	}
	if d := time.Since(start); d > 6*time.Second {
		t.Errorf("the call took %v: the hung replica held more than its share (4s)", d)
	}
	start = time.Now()
	if err := listJobs(t, c, 8*time.Second); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second || good.calls.Load() != 2 {
		t.Errorf("the second call took %v, the well replica served %d: want it asked first", d, good.calls.Load())
	}
	// only hung replicas: the call ends at its deadline, saying so
	hung := dial(t, client.Options{Endpoints: []string{hungAddr(t), hungAddr(t)}})
	err := listJobs(t, hung, 7*time.Second)
	if status.Code(err) != codes.DeadlineExceeded || !strings.Contains(err.Error(), "did not connect within") {
		t.Errorf("only hung replicas: %v", err)
	}
}

// slowCoordinator answers ListJobs after a delay: a healthy replica doing
// a long call (a checkpoint's verification, a write waiting on raft).
type slowCoordinator struct {
	apiv1.UnimplementedCoordinatorServer
	delay time.Duration
	calls atomic.Int32
}

func (f *slowCoordinator) ListJobs(ctx context.Context, _ *apiv1.ListJobsRequest) (*apiv1.ListJobsResponse, error) {
	f.calls.Add(1)
	select {
	case <-time.After(f.delay):
		return &apiv1.ListJobsResponse{}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// TestSlowReplicaIsNotCut: a connected replica that takes longer than a
// replica's share of the deadline gets the whole deadline; the call is not
// sent again elsewhere (a slow write would have been applied twice).
func TestSlowReplicaIsNotCut(t *testing.T) {
	var slow []*slowCoordinator
	var eps []string
	for range 3 {
		f := &slowCoordinator{delay: 4 * time.Second}
		slow = append(slow, f)
		eps = append(eps, serve(t, f))
	}
	c := dial(t, client.Options{Endpoints: eps})
	if err := listJobs(t, c, 10*time.Second); err != nil {
		t.Fatalf("three healthy replicas answering in 4s, a 10s deadline: %v", err)
	}
	var calls int32
	for _, f := range slow {
		calls += f.calls.Load()
	}
	if calls != 1 {
		t.Errorf("the call ran %d times", calls)
	}
}

// A client given RefusedGrace says that nothing listens instead of trying
// until the deadline, when no replica has ever answered it.
func TestRefusedGraceGivesUpOnNothingListening(t *testing.T) {
	c := dial(t, client.Options{Endpoints: []string{deadAddr(t), deadAddr(t)}, RefusedGrace: 300 * time.Millisecond})
	err := listJobs(t, c, time.Minute)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "nothing listens there") {
		t.Fatalf("got %v, want Unavailable saying that nothing listens there", err)
	}
	c = dial(t, client.Options{Endpoints: []string{"nosuchhost.invalid:7000"}, RefusedGrace: 300 * time.Millisecond})
	if err := listJobs(t, c, time.Minute); !strings.Contains(err.Error(), "does not resolve") {
		t.Fatalf("got %v, want the host name does not resolve", err)
	}
}

// Once a replica has answered, a call waits through a restart (refused
// connections for longer than RefusedGrace) until the replica is back.
func TestRefusedGraceWaitsThroughARestart(t *testing.T) {
	f := &fakeCoordinator{}
	addr, stop := serveStop(t, f)
	c := dial(t, client.Options{Endpoints: []string{addr}, RefusedGrace: 200 * time.Millisecond})
	if err := listJobs(t, c, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	stop()
	restarted := make(chan func())
	go func() {
		time.Sleep(time.Second) // the restart takes five times the grace
		lis, err := net.Listen("tcp", addr)
		if err != nil {
			t.Error(err)
			close(restarted)
			return
		}
		srv := grpc.NewServer()
		apiv1.RegisterCoordinatorServer(srv, f)
		done := make(chan struct{})
		go func() { defer close(done); srv.Serve(lis) }() //nolint:errcheck // ends with Stop
		restarted <- func() { srv.Stop(); <-done }
	}()
	err := listJobs(t, c, 30*time.Second)
	if stop, ok := <-restarted; ok {
		defer stop()
	}
	if err != nil {
		t.Fatalf("call during the restart: %v", err)
	}
	if n := f.calls.Load(); n != 2 {
		t.Fatalf("the replica served %d calls, want 2", n)
	}
}
