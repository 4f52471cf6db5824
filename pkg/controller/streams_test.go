package controller

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-ml/switchyard/pkg/events"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// watchStream is a WatchJob stream without gRPC: what the server sends
// arrives on sent.
type watchStream struct {
	grpc.ServerStream
	ctx  context.Context
	sent chan *apiv1.WatchJobResponse
}

func (w *watchStream) Context() context.Context { return w.ctx }
func (w *watchStream) Send(m *apiv1.WatchJobResponse) error {
	w.sent <- m
	return nil
}

// racingBus publishes, when the history is read, a message that the
// subscription made just before also delivers: the step that arrives
// between a WatchJob's Subscribe and its History.
type racingBus struct {
	events.Bus
	during func()
}

func (b *racingBus) History(ctx context.Context, f events.Filter) ([]events.Message, error) {
	if b.during != nil {
		b.during()
		b.during = nil
	}
	return b.Bus.History(ctx, f)
}

func publishStep(t *testing.T, bus events.Bus, job string, rank int, step int64) {
	t.Helper()
	err := bus.Publish(events.Message{Kind: events.KindMetrics, JobID: job, Metrics: &events.StepMetrics{
		Step: step, Rank: rank, Loss: 5 - float64(step)/10, LBL: 1.5, TokensPerSecond: 1000,
		ExpertLoadLE: [][]float64{{0.5, 0.5}}, GPUUtilPct: []float64{90, -1},
	}})
	if err != nil {
		t.Fatal(err)
	}
}

// next is the stream's next message; "job", "metrics N" or "replayed".
func next(t *testing.T, ws *watchStream) (string, *apiv1.WatchJobResponse) {
	t.Helper()
	select {
	case m := <-ws.sent:
		switch {
		case m.GetJob() != nil:
			return "job " + m.GetJob().GetState().String(), m
		case m.GetMetrics() != nil:
			return fmt.Sprintf("metrics %d", m.GetMetrics().GetStep()), m
		case m.GetReplayed():
			return "replayed", m
		}
		return fmt.Sprintf("unknown %v", m), m
	case <-time.After(10 * time.Second):
		t.Fatal("no message within 10s")
	}
	return "", nil
}

func wantNext(t *testing.T, ws *watchStream, want ...string) {
	t.Helper()
	for _, w := range want {
		if got, _ := next(t, ws); got != w {
			t.Fatalf("got %q, want %q", got, w)
		}
	}
}

// WatchJob with replay: the job's record, rank 0's stored metrics, the
// end-of-history marker, then live metrics with nothing lost or doubled
// (a step published between the subscription and the history read comes
// once), until the job ends; for a finished job, the history and the end.
func TestWatchJobReplay(t *testing.T) {
	l := newLocal(t)
	bus := events.NewMemory()
	t.Cleanup(func() { bus.Close() })
	l.submit("j1", fmt.Sprintf(spec2, 1))
	l.submit("j2", fmt.Sprintf(spec2, 1))
	for s := int64(1); s <= 3; s++ {
		publishStep(t, bus, "j1", 0, s)
		publishStep(t, bus, "j1", 1, s) // rank 1: not sent
		publishStep(t, bus, "j2", 0, s) // another job
	}
	l.s.cfg.Bus = &racingBus{Bus: bus, during: func() { publishStep(t, bus, "j1", 0, 4) }}

	ctx, cancel := context.WithCancel(l.ctx)
	defer cancel()
	ws := &watchStream{ctx: ctx, sent: make(chan *apiv1.WatchJobResponse, 100)}
	done := make(chan error, 1)
	go func() { done <- l.s.WatchJob(&apiv1.WatchJobRequest{JobId: "j1", Replay: true}, ws) }()
	wantNext(t, ws, "job JOB_STATE_PENDING", "metrics 1", "metrics 2", "metrics 3", "metrics 4", "replayed")
	publishStep(t, bus, "j1", 0, 5)
	_, m := next(t, ws)
	if m.GetMetrics().GetStep() != 5 {
		t.Fatalf("after the history: %v, want step 5 (step 4 came twice?)", m)
	}
	if sm := m.GetMetrics(); sm.GetLoss() != 4.5 || sm.GetLbl() != 1.5 || len(sm.GetExpertLoad()) != 1 || sm.GetExpertLoad()[0].GetShare()[1] != 0.5 ||
		fmt.Sprint(sm.GetGpuUtilPct()) != "[90 -1]" {
		t.Fatalf("live metrics %v", sm)
	}
	if _, err := l.s.CancelJob(l.ctx, &apiv1.CancelJobRequest{JobId: "j1"}); err != nil {
		t.Fatal(err)
	}
	wantNext(t, ws, "job JOB_STATE_CANCELLED")
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the watch of a cancelled job did not end")
	}
	if len(ws.sent) != 0 {
		t.Fatalf("%d more messages after the end", len(ws.sent))
	}

	// A finished job: the record, the history, the marker, the end.
	ws = &watchStream{ctx: ctx, sent: make(chan *apiv1.WatchJobResponse, 100)}
	if err := l.s.WatchJob(&apiv1.WatchJobRequest{JobId: "j1", Replay: true}, ws); err != nil {
		t.Fatal(err)
	}
	wantNext(t, ws, "job JOB_STATE_CANCELLED", "metrics 1", "metrics 2", "metrics 3", "metrics 4", "metrics 5", "replayed")
	if len(ws.sent) != 0 {
		t.Fatalf("%d more messages after the history of a finished job", len(ws.sent))
	}

	// Without replay, as before: a finished job's record only.
	ws = &watchStream{ctx: ctx, sent: make(chan *apiv1.WatchJobResponse, 100)}
	if err := l.s.WatchJob(&apiv1.WatchJobRequest{JobId: "j1"}, ws); err != nil {
		t.Fatal(err)
	}
	wantNext(t, ws, "job JOB_STATE_CANCELLED")
	if len(ws.sent) != 0 {
		t.Fatalf("%d messages after the record without replay", len(ws.sent))
	}

	// No bus, no history: said, not an empty plot.
	l.s.cfg.Bus = nil
	err := l.s.WatchJob(&apiv1.WatchJobRequest{JobId: "j2", Replay: true}, ws)
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("replay without a bus: %v", err)
	}
	if j := l.job("j2"); j.State != pb.JobState_JOB_STATE_PENDING {
		t.Fatalf("j2 %v", j.State)
	}
}

// Rank 0's metrics go on as WatchJob sends them; a step without an LBL
// says so (no_lbl), and other ranks' metrics do not go.
func TestRank0Metrics(t *testing.T) {
	if rank0Metrics(events.Message{Metrics: &events.StepMetrics{Step: 3, Rank: 1}}) != nil {
		t.Error("rank 1's metrics sent")
	}
	sm := rank0Metrics(events.Message{Metrics: &events.StepMetrics{Step: 3, Loss: 2.5, NoLBL: true, TokensPerSecond: 10}})
	if sm.GetStep() != 3 || sm.GetLoss() != 2.5 || !sm.GetNoLbl() || sm.GetTokensPerSecond() != 10 {
		t.Errorf("sent %v", sm)
	}
	if sm := rank0Metrics(events.Message{Metrics: &events.StepMetrics{Step: 4, LBL: 0.5}}); sm.GetNoLbl() || sm.GetLbl() != 0.5 {
		t.Errorf("sent %v", sm)
	}
}
