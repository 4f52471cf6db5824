package events_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/events"
)

// TestNATSOutage stops NATS under a publisher and a `logs -f` follower:
// Publish stays non-blocking and counts drops once the buffer is full;
// after NATS restarts (same port and store) the buffered messages are sent
// and the follower resumes without losing or repeating a stored message.
func TestNATSOutage(t *testing.T) {
	dir := t.TempDir()
	srv := startNATS(t, dir, 0)
	port := srv.Port
	const buffer = 64
	pub := newNATSBus(t, srv.URL, buffer)
	sub := newNATSBus(t, srv.URL, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	follow, err := sub.Subscribe(ctx, events.Filter{Kind: events.KindLog, JobID: "out-1", Replay: true})
	if err != nil {
		t.Fatal(err)
	}
	next := 0
	for ; next < 10; next++ {
		if err := pub.Publish(logMsg("out-1", next)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 10 {
		if m := recv(t, follow, 5*time.Second); m.Log.Line != fmt.Sprintf("line %d", i) {
			t.Fatalf("before outage %d: %+v", i, m)
		}
	}

	srv.Close()
	const burst = 10_000
	start := time.Now()
	var dropped int
	var kept []int
	for i := range burst {
		err := pub.Publish(logMsg("out-1", next+i))
		switch {
		case errors.Is(err, events.ErrDropped):
			dropped++
		case err != nil:
			t.Fatal(err)
		default:
			kept = append(kept, next+i)
		}
	}
	took := time.Since(start)
	t.Logf("nats down: %d publishes in %v (%.2f µs each), %d dropped, %d buffered",
		burst, took, float64(took.Microseconds())/burst, dropped, len(kept))
	if took > 5*time.Second {
		t.Fatalf("publishing while NATS is down took %v: Publish blocks", took)
	}
	if s := pub.Stats(); dropped == 0 || s.Dropped != uint64(dropped) {
		t.Fatalf("dropped %d, stats %+v", dropped, s)
	}
	// log lines fill at most three quarters of the buffer (one more may
	// be in the send loop's hands): the metrics behind them still get in
	if len(kept) > buffer-buffer/4+1 {
		t.Fatalf("%d log lines buffered of %d: more than three quarters", len(kept), buffer)
	}
	step := events.Message{Kind: events.KindMetrics, JobID: "out-1", Metrics: &events.StepMetrics{Step: 7}}
	if err := pub.Publish(step); err != nil {
		t.Fatalf("a step's metrics behind a flood of log lines: %v", err)
	}

	restart := time.Now()
	srv2 := startNATS(t, dir, port)
	t.Cleanup(srv2.Close)
	// Everything accepted before the outage and into the buffer arrives once,
	// in order.
	for _, want := range kept {
		m := recv(t, follow, 20*time.Second)
		if m.Log.Line != fmt.Sprintf("line %d", want) {
			t.Fatalf("after restart: got %q, want line %d", m.Log.Line, want)
		}
	}
	t.Logf("follower received the %d buffered messages %v after NATS restarted", len(kept), time.Since(restart).Round(time.Millisecond))
	if err := pub.Publish(logMsg("out-1", 99_999)); err != nil {
		t.Fatal(err)
	}
	if m := recv(t, follow, 10*time.Second); m.Log.Line != "line 99999" {
		t.Fatalf("live after restart: %+v", m)
	}
	hist, err := sub.History(ctx, events.Filter{Kind: events.KindLog, JobID: "out-1"})
	if err != nil || len(hist) != 10+len(kept)+1 {
		t.Fatalf("history after outage: %d messages (want %d), %v", len(hist), 10+len(kept)+1, err)
	}
}

// TestNATSStartsWithoutServer: a worker whose NATS is unreachable starts
// and trains; its publishes are buffered, then dropped, never blocking.
func TestNATSStartsWithoutServer(t *testing.T) {
	b := newNATSBus(t, "nats://127.0.0.1:1", 8)
	start := time.Now()
	for i := range 100 {
		b.Publish(logMsg("nowhere", i))
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("publishing took %v", d)
	}
	if s := b.Stats(); s.Dropped < 90 || s.Sent != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// TestNATSOversizedMessageDoesNotBlock: a message larger than the server
// takes (a 2 MiB event message; NATS takes 1 MiB) is dropped and counted,
// and the messages behind it are sent; before, it was retried for ever at
// the head of the queue and nothing after it was published.
func TestNATSOversizedMessageDoesNotBlock(t *testing.T) {
	srv := startNATS(t, t.TempDir(), 0)
	t.Cleanup(srv.Close)
	pub := newNATSBus(t, srv.URL, 64)
	sub := newNATSBus(t, srv.URL, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	follow, err := sub.Subscribe(ctx, events.Filter{Kind: events.KindLog, JobID: "big-1", Replay: true})
	if err != nil {
		t.Fatal(err)
	}
	huge := events.Message{Kind: events.KindEvent, JobID: "big-1", Event: &events.JobEvent{Type: "Cancelled", Message: strings.Repeat("x", 2<<20)}}
	if err := pub.Publish(huge); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := pub.Publish(logMsg("big-1", i)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 5 {
		if m := recv(t, follow, 10*time.Second); m.Log.Line != fmt.Sprintf("line %d", i) {
			t.Fatalf("behind the oversized message: %+v", m)
		}
	}
	for deadline := time.Now().Add(5 * time.Second); pub.Stats().Sent < 5 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond) // the counter follows the send the follower saw
	}
	if s := pub.Stats(); s.Dropped != 1 || s.Sent != 5 {
		t.Fatalf("stats %+v, want the oversized message dropped and 5 sent", s)
	}
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"nats://127.0.0.1:4222":                   "nats://127.0.0.1:4222",
		"nats://user:s3cret@h:4222":               "nats://user:xxxxx@h:4222",
		"nats://t0ken@h:4222":                     "nats://xxxxx@h:4222",
		"nats://a:p1@h1:4222,nats://b:p2@h2:4222": "nats://a:xxxxx@h1:4222,nats://b:xxxxx@h2:4222",
		"": "",
	} {
		if got := events.Redact(in); got != want || strings.Contains(got, "s3cret") {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}
