package controller

import (
	"net/http"
	"strings"
	"time"
)

// etcdFresh is how recently etcd must have answered for this replica to
// be ready: the memberships are listed every 5s, so one failed list is
// tolerated.
const etcdFresh = 10 * time.Second

// health is this replica as its probes see it.
type health struct {
	// Shutdown: raft has shut down; the process serves no purpose.
	Shutdown bool
	// Closing: the replica is shutting down (SIGTERM).
	Closing bool
	// Leader: raft knows a leader (this replica or another).
	Leader bool
	// EtcdOK is when etcd last answered a list (zero: never).
	EtcdOK time.Time
	// HasBus: an event bus is configured; BusConnected: it is connected.
	HasBus, BusConnected bool
}

// notReady lists, in words, why the replica is not ready at now (none:
// ready).
func (h health) notReady(now time.Time) []string {
	var out []string
	if h.Shutdown {
		out = append(out, "raft is shut down")
	}
	if h.Closing {
		out = append(out, "shutting down")
	}
	if !h.Leader && !h.Shutdown {
		out = append(out, "raft knows no leader")
	}
	switch {
	case h.EtcdOK.IsZero():
		out = append(out, "etcd not reached yet")
	case now.Sub(h.EtcdOK) > etcdFresh:
		out = append(out, "etcd not reached for "+now.Sub(h.EtcdOK).Round(time.Second).String())
	}
	if h.HasBus && !h.BusConnected {
		out = append(out, "NATS not connected")
	}
	return out
}

// probeHandler serves /healthz and /readyz, for the kubelet (or any load
// balancer): no token, since they reveal nothing but the words below.
// /healthz is liveness: 200 while the process serves and raft runs.
// /readyz is readiness: 200 when raft knows a leader, etcd answered in the
// last etcdFresh and the event bus, if any, is connected; else 503 with
// the reasons: "not ready: raft knows no leader; NATS not connected".
func probeHandler(state func() health, now func() time.Time) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Cache-Control", "no-store")
		hd.Set("Content-Type", "text/plain; charset=utf-8")
		hd.Set("X-Content-Type-Options", "nosniff")
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			hd.Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h := state()
		var (
			bad  []string
			what = "not ready: "
		)
		switch r.URL.Path {
		case "/healthz":
			if h.Shutdown {
				bad, what = []string{"raft is shut down"}, "not live: "
			}
		case "/readyz":
			bad = h.notReady(now())
		default:
			http.NotFound(w, r)
			return
		}
		if len(bad) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte(what + strings.Join(bad, "; ") + "\n")) //nolint:errcheck // the prober went away
			return
		}
		w.Write([]byte("ok\n")) //nolint:errcheck
	})
}
