package membership_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-ml/switchyard/pkg/devcluster"
	"github.com/switchyard-ml/switchyard/pkg/membership"
)

// harness connects new clients (one per simulated process) to one shared
// backend. kill stops the client's keep-alives without revoking anything,
// as kill -9 of the process would.
type harness struct {
	connect func(t *testing.T) (r membership.Registry, kill func())
	// deleteKey removes a worker's entry behind its registration's back,
	// as an operator's etcdctl del would.
	deleteKey func(t *testing.T, id string)
}

func TestMemoryContract(t *testing.T) {
	srv := membership.NewMemoryServer()
	t.Cleanup(srv.Stop)
	runContract(t, harness{connect: func(t *testing.T) (membership.Registry, func()) {
		m := membership.NewMemory(srv)
		t.Cleanup(func() { m.Close() })
		return m, m.Abandon
	}, deleteKey: func(t *testing.T, id string) { srv.Delete(id) }})
}

// testEtcd starts an embedded etcd for the test (skipped in -short) and
// returns a function that connects a new client to it (closed with the
// test).
func testEtcd(t *testing.T) func() *clientv3.Client {
	t.Helper()
	if testing.Short() {
		t.Skip("embedded etcd in -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := devcluster.StartEtcd(ctx, t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return func() *clientv3.Client {
		cli, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints, DialTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cli.Close() })
		return cli
	}
}

func TestEtcdContract(t *testing.T) {
	client := testEtcd(t)
	runContract(t, harness{connect: func(t *testing.T) (membership.Registry, func()) {
		cli := client()
		r := membership.NewEtcd(cli, "", nil)
		t.Cleanup(func() { r.Close() })
		// Closing the client drops the keep-alive stream and revokes nothing.
		return r, func() { cli.Close() }
	}, deleteKey: func(t *testing.T, id string) {
		if r, err := client().Delete(context.Background(), membership.DefaultPrefix+id); err != nil || r.Deleted != 1 {
			t.Fatalf("etcdctl del of %s: %v (deleted %v)", id, err, r)
		}
	}})
}

// TestEtcdKeyWithoutLease: a worker's key written by hand without a lease
// never expires: registering that id is refused saying how to remove it.
func TestEtcdKeyWithoutLease(t *testing.T) {
	cli := testEtcd(t)()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	key := membership.DefaultPrefix + "w9"
	if _, err := cli.Put(ctx, key, `{"id":"w9","address":"10.0.0.9:7500"}`); err != nil {
		t.Fatal(err)
	}
	r := membership.NewEtcd(cli, "", nil)
	defer r.Close()
	_, err := r.Register(ctx, worker("w9", 1), 5*time.Second)
	if !errors.Is(err, membership.ErrTaken) || !strings.Contains(err.Error(), "a key without a lease (written by hand?), which never expires: remove it with etcdctl del "+key) {
		t.Fatalf("register over a key without a lease: %v", err)
	}
}

func worker(id string, cores int) membership.WorkerInfo {
	return membership.WorkerInfo{
		ID: id, Address: "127.0.0.1:9" + fmt.Sprint(len(id)),
		Resources: membership.Resources{CPUCores: cores, MemoryBytes: 1 << 30},
		Labels:    map[string]string{"host": "h-" + id},
	}
}

// next returns the next event, failing after timeout.
func next(t *testing.T, ch <-chan membership.Event, timeout time.Duration) membership.Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed")
		}
		return ev
	case <-time.After(timeout):
		t.Fatalf("no membership event after %v", timeout)
	}
	panic("unreachable")
}

func expect(t *testing.T, ch <-chan membership.Event, typ membership.EventType, id string, timeout time.Duration) membership.Event {
	t.Helper()
	ev := next(t, ch, timeout)
	if ev.Type != typ || ev.Worker.ID != id {
		t.Fatalf("event %v %s, want %v %s", ev.Type, ev.Worker.ID, typ, id)
	}
	return ev
}

func runContract(t *testing.T, h harness) {
	t.Run("JoinUpdateLeave", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		coord, _ := h.connect(t)
		w1, _ := h.connect(t)

		r1, err := w1.Register(ctx, worker("a1", 4), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		watch, err := coord.Watch(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// Present at watch start: a join.
		expect(t, watch, membership.Join, "a1", 5*time.Second)

		r2, err := w1.Register(ctx, worker("a2", 8), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		ev := expect(t, watch, membership.Join, "a2", 5*time.Second)
		if ev.Worker.Resources.CPUCores != 8 || ev.Worker.Labels["host"] != "h-a2" {
			t.Fatalf("join carries %+v", ev.Worker)
		}
		list, err := coord.List(ctx)
		if err != nil || len(list) != 2 || list[0].ID != "a1" || list[1].ID != "a2" {
			t.Fatalf("list %+v %v", list, err)
		}

		upd := worker("a1", 4)
		upd.Labels["gpu"] = "none"
		if err := r1.Update(ctx, upd); err != nil {
			t.Fatal(err)
		}
		if ev := expect(t, watch, membership.Update, "a1", 5*time.Second); ev.Worker.Labels["gpu"] != "none" {
			t.Fatalf("update carries %+v", ev.Worker)
		}
		if err := r1.Update(ctx, worker("other", 1)); !errors.Is(err, membership.ErrInvalidWorker) {
			t.Fatalf("update changing the id: %v", err)
		}

		// Deregistering is a leave well before the 10s TTL.
		start := time.Now()
		if err := r2.Close(ctx); err != nil {
			t.Fatal(err)
		}
		ev = expect(t, watch, membership.Leave, "a2", 5*time.Second)
		if ev.Worker.Resources.CPUCores != 8 {
			t.Fatalf("leave carries %+v, want the last info", ev.Worker)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("deregistration took %v", d)
		}
		select {
		case <-r2.Lost():
		case <-time.After(5 * time.Second):
			t.Fatal("closed registration not reported lost")
		}
		if err := r1.Close(ctx); err != nil {
			t.Fatal(err)
		}
		expect(t, watch, membership.Leave, "a1", 5*time.Second)

		// The watch ends with its context.
		cancel()
		for range watch {
		}
	})

	t.Run("KilledWorkerLeavesAfterTTL", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		coord, _ := h.connect(t)
		w, kill := h.connect(t)
		// Long enough that keep-alives on a loaded machine stay in time.
		const ttl = 2 * time.Second
		if _, err := w.Register(ctx, worker("k1", 2), ttl); err != nil {
			t.Fatal(err)
		}
		watch, err := coord.Watch(ctx)
		if err != nil {
			t.Fatal(err)
		}
		expect(t, watch, membership.Join, "k1", 5*time.Second)
		// Outlives several TTLs while kept alive.
		select {
		case ev := <-watch:
			t.Fatalf("event %v %s while the worker is alive", ev.Type, ev.Worker.ID)
		case <-time.After(2 * ttl):
		}
		start := time.Now()
		kill()
		expect(t, watch, membership.Leave, "k1", 10*ttl)
		took := time.Since(start)
		t.Logf("killed worker's leave seen after %v (ttl %v)", took.Round(time.Millisecond), ttl)
		if took < ttl/4 {
			t.Fatalf("leave after %v: the kill revoked the lease instead of letting it expire", took)
		}
		// The restarted worker registers again.
		w2, _ := h.connect(t)
		r, err := w2.Register(ctx, worker("k1", 2), ttl)
		if err != nil {
			t.Fatal(err)
		}
		expect(t, watch, membership.Join, "k1", 5*time.Second)
		r.Close(ctx)
		expect(t, watch, membership.Leave, "k1", 5*time.Second)
	})

	// Two workers of one id would both run its ranks, and the second's
	// exit would unregister the first: the second is refused, naming the
	// first, and may register once the first is gone.
	t.Run("RefusesTakenID", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		w1, _ := h.connect(t)
		w2, _ := h.connect(t)
		first := worker("d1", 2)
		r1, err := w1.Register(ctx, first, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		second := worker("d1", 2)
		second.Address = "127.0.0.1:19999"
		if _, err := w2.Register(ctx, second, 5*time.Second); !errors.Is(err, membership.ErrTaken) || !strings.Contains(err.Error(), first.Address) {
			t.Fatalf("a second registration of d1: %v, want ErrTaken naming %s", err, first.Address)
		}
		ws, err := w1.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(ws) != 1 || ws[0].Address != first.Address {
			t.Fatalf("after the refusal: %+v, want the first registration alone", ws)
		}
		// the first may update its own registration
		first.Draining = true
		if err := r1.Update(ctx, first); err != nil {
			t.Fatalf("the holder's update: %v", err)
		}
		if err := r1.Close(ctx); err != nil {
			t.Fatal(err)
		}
		r2, err := w2.Register(ctx, second, 5*time.Second)
		if err != nil {
			t.Fatalf("after the first closed: %v", err)
		}
		r2.Close(ctx)
	})

	// A key deleted by someone else while the lease lives: the
	// coordinator sees the worker leave, so its registration is lost (the
	// agent registers again) rather than renewing a lease that holds
	// nothing; the id is free to register again.
	t.Run("DeletedKeyIsLost", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		coord, _ := h.connect(t)
		w, _ := h.connect(t)
		r, err := w.Register(ctx, worker("k1", 2), 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		watch, err := coord.Watch(ctx)
		if err != nil {
			t.Fatal(err)
		}
		expect(t, watch, membership.Join, "k1", 5*time.Second)
		// an update of its own does not count as losing it
		upd := worker("k1", 2)
		upd.Draining = true
		if err := r.Update(ctx, upd); err != nil {
			t.Fatal(err)
		}
		expect(t, watch, membership.Update, "k1", 5*time.Second)
		select {
		case <-r.Lost():
			t.Fatal("lost after its own update")
		case <-time.After(1500 * time.Millisecond): // past a renewal (TTL/3)
		}
		h.deleteKey(t, "k1")
		expect(t, watch, membership.Leave, "k1", 5*time.Second)
		select {
		case <-r.Lost():
		case <-time.After(5 * time.Second):
			t.Fatal("registration not lost 5s after its key was deleted")
		}
		r.Close(ctx)
		r2, err := w.Register(ctx, worker("k1", 2), 3*time.Second)
		if err != nil {
			t.Fatalf("registering again: %v", err)
		}
		expect(t, watch, membership.Join, "k1", 5*time.Second)
		select {
		case <-r2.Lost():
			t.Fatal("the new registration lost")
		case <-time.After(1500 * time.Millisecond):
		}
		r2.Close(ctx)
	})

	t.Run("CloseRevokesAll", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		coord, _ := h.connect(t)
		w, _ := h.connect(t)
		for _, id := range []string{"c1", "c2"} {
			if _, err := w.Register(ctx, worker(id, 1), 30*time.Second); err != nil {
				t.Fatal(err)
			}
		}
		watch, err := coord.Watch(ctx)
		if err != nil {
			t.Fatal(err)
		}
		expect(t, watch, membership.Join, "c1", 5*time.Second)
		expect(t, watch, membership.Join, "c2", 5*time.Second)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		for range 2 {
			ev := next(t, watch, 5*time.Second)
			if ev.Type != membership.Leave {
				t.Fatalf("event %v", ev.Type)
			}
			got[ev.Worker.ID] = true
		}
		if !got["c1"] || !got["c2"] {
			t.Fatalf("leaves %v", got)
		}
		if _, err := w.Register(ctx, worker("c3", 1), time.Second); !errors.Is(err, membership.ErrClosed) {
			t.Fatalf("register after close: %v", err)
		}
	})

	t.Run("RefusesBadInfo", func(t *testing.T) {
		r, _ := h.connect(t)
		for _, w := range []membership.WorkerInfo{
			{Address: "x:1"},
			{ID: "no-addr"},
			{ID: "a/b", Address: "x:1"},
			{ID: "neg", Address: "x:1", Resources: membership.Resources{GPUs: -1}},
		} {
			if _, err := r.Register(context.Background(), w, time.Second); !errors.Is(err, membership.ErrInvalidWorker) {
				t.Errorf("%+v: %v", w, err)
			}
		}
	})
}

// TestMemoryWatchWhileWorkersChange: a watch opened while workers join
// and leave always starts (its initial list is delivered, however the
// changes interleave with it) and ends with its context. A watch that
// sent its initial notification after registering could block for good
// when a change filled the notification's buffer first, hanging the
// controller tests' shutdown once in a few hundred runs.
func TestMemoryWatchWhileWorkersChange(t *testing.T) {
	srv := membership.NewMemoryServer()
	m := membership.NewMemory(srv)
	defer m.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var churn sync.WaitGroup
	for g := range 4 {
		churn.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				reg, err := m.Register(ctx, worker(fmt.Sprintf("w-%d-%d", g, i%3), 1), time.Minute)
				if err == nil {
					reg.Close(context.Background()) //nolint:errcheck
				}
			}
		})
	}
	for i := range 2000 {
		done := make(chan error, 1)
		go func() {
			wctx, wcancel := context.WithCancel(ctx)
			defer wcancel()
			ch, err := m.Watch(wctx)
			if err == nil {
				wcancel()
				for range ch { // closed once the watch ends
				}
			}
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("watch %d never started or never ended", i)
		}
	}
	cancel()
	churn.Wait()
}
