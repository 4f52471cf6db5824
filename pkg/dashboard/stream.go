package dashboard

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/switchyard-ml/switchyard/pkg/events"
	"github.com/switchyard-ml/switchyard/pkg/jobstate"
)

// stream sends the job's live state in Server-Sent Events format:
//
//	event: job      data: the job as GET /api/jobs/{id} (first, then on change)
//	event: metrics  data: rank 0's metrics of one step (the stored ones
//	                first unless ?replay=0, then live ones)
//	event: event    data: a lifecycle event as it is published
//	event: notice   data: {"message": ...} (e.g. no live metrics)
//	event: end      data: {} once the job ended and went quiet
//
// and a comment line as a heartbeat. It ends when the client goes away,
// the job ended, or the Handler closes.
func (h *Handler) stream(w http.ResponseWriter, r *http.Request) error {
	j, err := h.jobOf(r)
	if err != nil {
		return err
	}
	fl, ok := w.(http.Flusher)
	if !ok {
		return apiErr(http.StatusInternalServerError, "streaming is not supported by this connection")
	}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return apiErr(http.StatusServiceUnavailable, "the dashboard is shutting down")
	}
	h.streams.Add(1)
	h.mu.Unlock()
	defer h.streams.Done()
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	go func() { // the only other goroutine: ends with the request
		select {
		case <-h.done:
			cancel()
		case <-ctx.Done():
		}
	}()

	hd := w.Header()
	hd.Set("Content-Type", "text/event-stream")
	hd.Set("Cache-Control", "no-store")
	hd.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	// a client that stops reading must not hold the stream (and the
	// coordinator's shutdown) forever: every write has a deadline
	rc := http.NewResponseController(w)
	send := func(event string, v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		_ = rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout)) // not every writer supports it (tests' recorders)
		if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, b); err != nil {
			return err
		}
		fl.Flush()
		return nil
	}
	if err := send("job", detail(j)); err != nil {
		return nil // the client went away: nothing to answer
	}

	replay := r.URL.Query().Get("replay") != "0"
	metrics, err := h.cfg.Source.Subscribe(ctx, j.Id, events.KindMetrics, replay)
	if err != nil {
		send("notice", map[string]string{"message": "no live metrics: " + err.Error()}) //nolint:errcheck // ends below if gone
		metrics = nil
	}
	evs, err := h.cfg.Source.Subscribe(ctx, j.Id, events.KindEvent, false)
	if err != nil {
		evs = nil
	}
	poll := time.NewTicker(h.cfg.PollEvery)
	defer poll.Stop()
	beat := time.NewTicker(h.cfg.Heartbeat)
	defer beat.Stop()
	last := time.Now()
	var ended time.Time
	if jobstate.Final(j.GetState()) {
		ended = last
	}
	for {
		var err error
		select {
		case <-ctx.Done():
			return nil
		case m, ok := <-metrics:
			if !ok {
				metrics = nil
				continue
			}
			if p, ok := pointOf(m); ok {
				last = time.Now()
				err = send("metrics", p)
			}
		case m, ok := <-evs:
			if !ok {
				evs = nil
				continue
			}
			if m.Event != nil {
				err = send("event", eventView{Time: m.Time.UnixMilli(), Type: m.Event.Type, Message: m.Event.Message, Worker: m.Event.WorkerID})
			}
		case <-beat.C:
			_ = rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
			_, err = fmt.Fprint(w, ": heartbeat\n\n")
			fl.Flush()
		case <-poll.C:
			nj, jerr := h.cfg.Source.Job(ctx, j.Id)
			if jerr != nil {
				if ctx.Err() != nil {
					return nil
				}
				continue // a replica without a leader for a moment: try again
			}
			if !proto.Equal(nj, j) {
				j = nj
				err = send("job", detail(j))
			}
			if jobstate.Final(j.GetState()) && ended.IsZero() {
				ended = time.Now()
			}
			if !ended.IsZero() && time.Since(ended) >= h.cfg.QuietAfterEnd && time.Since(last) >= h.cfg.QuietAfterEnd/2 {
				send("end", struct{}{}) //nolint:errcheck // ending anyway
				return nil
			}
		}
		if err != nil {
			return nil // the client went away
		}
	}
}

// streamWriteTimeout bounds one write of a live stream.
const streamWriteTimeout = 30 * time.Second
