package events_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/devcluster"
	"github.com/switchyard-ml/switchyard/pkg/events"
)

func TestMemoryContract(t *testing.T) {
	hub := events.NewMemory()
	runContract(t, func(t *testing.T) events.Bus { return hub.Connect() })
}

func startNATS(t *testing.T, dir string, port int) *devcluster.NATS {
	t.Helper()
	n, err := devcluster.StartNATS(dir, port, 0)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func newNATSBus(t *testing.T, url string, buffer int) *events.NATS {
	t.Helper()
	b, err := events.NewNATS(events.NATSConfig{URL: url, Buffer: buffer, PublishTimeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func TestNATSContract(t *testing.T) {
	srv := startNATS(t, t.TempDir(), 0)
	t.Cleanup(srv.Close)
	runContract(t, func(t *testing.T) events.Bus { return newNATSBus(t, srv.URL, 0) })
}

func logMsg(job string, i int) events.Message {
	return events.Message{Kind: events.KindLog, JobID: job, Log: &events.LogLine{Rank: i % 2, Line: fmt.Sprintf("line %d", i)}}
}

func recv(t *testing.T, ch <-chan events.Message, timeout time.Duration) events.Message {
	t.Helper()
	select {
	case m, ok := <-ch:
		if !ok {
			t.Fatal("subscription closed")
		}
		return m
	case <-time.After(timeout):
		t.Fatalf("no message after %v", timeout)
	}
	panic("unreachable")
}

// runContract checks the behaviour every Bus must have. newBus returns a
// new client of one shared backend (so one client's history is another's).
func runContract(t *testing.T, newBus func(t *testing.T) events.Bus) {
	t.Run("LiveAndFiltered", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		pub, sub := newBus(t), newBus(t)
		jobOnly, err := sub.Subscribe(ctx, events.Filter{Kind: events.KindEvent, JobID: "live-a"})
		if err != nil {
			t.Fatal(err)
		}
		all, err := sub.Subscribe(ctx, events.Filter{Kind: events.KindEvent})
		if err != nil {
			t.Fatal(err)
		}
		for _, job := range []string{"live-b", "live-a"} {
			if err := pub.Publish(events.Message{Kind: events.KindEvent, JobID: job, Event: &events.JobEvent{Type: "Placed", State: "placed"}}); err != nil {
				t.Fatal(err)
			}
		}
		m := recv(t, jobOnly, 5*time.Second)
		if m.JobID != "live-a" || m.Event.Type != "Placed" || m.Time.IsZero() || m.Seq == 0 {
			t.Fatalf("got %+v", m)
		}
		if a, b := recv(t, all, 5*time.Second), recv(t, all, 5*time.Second); a.JobID != "live-b" || b.JobID != "live-a" || a.Seq >= b.Seq {
			t.Fatalf("all jobs: %+v then %+v", a, b)
		}
	})

	t.Run("ReplayFinishedJob", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		pub := newBus(t)
		const n = 50
		for i := range n {
			if err := pub.Publish(logMsg("done-1", i)); err != nil {
				t.Fatal(err)
			}
			if err := pub.Publish(logMsg("other", i)); err != nil {
				t.Fatal(err)
			}
		}
		if err := pub.Close(); err != nil { // flushes
			t.Fatal(err)
		}
		if s := pub.Stats(); s.Published != 2*n || s.Sent != 2*n || s.Dropped != 0 {
			t.Fatalf("stats after close %+v", s)
		}
		reader := newBus(t)
		hist, err := reader.History(ctx, events.Filter{Kind: events.KindLog, JobID: "done-1"})
		if err != nil || len(hist) != n {
			t.Fatalf("history: %d messages, %v", len(hist), err)
		}
		for i, m := range hist {
			if m.Log.Line != fmt.Sprintf("line %d", i) || (i > 0 && m.Seq <= hist[i-1].Seq) {
				t.Fatalf("history[%d] = %+v", i, m)
			}
		}
		// `logs -f` of the same job: history, then live.
		follow, err := reader.Subscribe(ctx, events.Filter{Kind: events.KindLog, JobID: "done-1", Replay: true})
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			if m := recv(t, follow, 5*time.Second); m.Log.Line != fmt.Sprintf("line %d", i) {
				t.Fatalf("replay %d: %+v", i, m)
			}
		}
		if err := reader.Publish(logMsg("done-1", n)); err != nil {
			t.Fatal(err)
		}
		if m := recv(t, follow, 5*time.Second); m.Log.Line != fmt.Sprintf("line %d", n) {
			t.Fatalf("live after replay: %+v", m)
		}
	})

	t.Run("Control", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		pub, sub := newBus(t), newBus(t)
		ch, err := sub.Subscribe(ctx, events.Filter{Kind: events.KindControl, JobID: "ctl-1"})
		if err != nil {
			t.Fatal(err)
		}
		if err := pub.Publish(events.Message{Kind: events.KindControl, JobID: "ctl-1", Control: &events.Control{Action: "cancel", Reason: "user"}}); err != nil {
			t.Fatal(err)
		}
		if m := recv(t, ch, 5*time.Second); m.Control.Action != "cancel" {
			t.Fatalf("got %+v", m)
		}
		cancel()
		for range ch { // closes when ctx ends
		}
	})

	t.Run("RefusesBadMessages", func(t *testing.T) {
		b := newBus(t)
		for _, m := range []events.Message{
			{Kind: "bogus", JobID: "j", Log: &events.LogLine{}},
			{Kind: events.KindLog, JobID: "a.b", Log: &events.LogLine{}},
			{Kind: events.KindLog, JobID: "", Log: &events.LogLine{}},
			{Kind: events.KindLog, JobID: "j"},
			{Kind: events.KindLog, JobID: "j", Log: &events.LogLine{}, Event: &events.JobEvent{}},
		} {
			if err := b.Publish(m); !errors.Is(err, events.ErrInvalidMessage) {
				t.Errorf("%+v: %v", m, err)
			}
		}
		if _, err := b.Subscribe(context.Background(), events.Filter{Kind: events.KindLog, JobID: "x>"}); !errors.Is(err, events.ErrInvalidMessage) {
			t.Errorf("subscribe bad job id: %v", err)
		}
		b.Close()
		if err := b.Publish(logMsg("j", 0)); !errors.Is(err, events.ErrClosed) {
			t.Errorf("publish after close: %v", err)
		}
	})
}
