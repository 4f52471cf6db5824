package agent

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-ml/switchyard/internal/freeport"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
)

// On SIGTERM (Run's context ends) a worker with drain_seconds keeps a rank
// whose job saves checkpoints running until the coordinator reports a
// checkpoint committed after the drain began, stops at once a rank whose
// job saves none, says it is draining in every sync, and then stops.
func TestDrainWaitsForCheckpoint(t *testing.T) {
	h := start(t, func(o *Options) { o.Config.DrainSeconds = 20 })
	saving := newTestTask("run-e", 0, 1, "name: demo\nsteps: 500\ncheckpoint: {interval_steps: 10}\n")
	saving.CheckpointStep = -1 // the coordinator cannot read the catalogue at first
	plain := newTestTask("run-f", 0, 1, spec1)
	h.coord.set(saving, plain)
	h.waitState("run-e", 0, apiv1.TaskState_TASK_STATE_RUNNING)
	h.waitState("run-f", 0, apiv1.TaskState_TASK_STATE_RUNNING)
	dirE, dirF := h.runDir("run-e", 1, 0), h.runDir("run-f", 1, 0)
	for _, d := range []string{dirE, dirF} {
		eventually(t, "pid file", func() bool { _, err := os.Stat(filepath.Join(d, "pid")); return err == nil })
	}

	h.cancel() // SIGTERM
	eventually(t, "run-f stopped at once (its job saves no checkpoints)", func() bool {
		_, err := os.Stat(filepath.Join(dirF, "terminated"))
		return err == nil
	})
	eventually(t, "the registration marked draining", func() bool {
		ws, err := h.reg.List(t.Context())
		return err == nil && len(ws) == 1 && ws[0].Draining
	})
	// run-e keeps running through several draining syncs that do not know
	// its job's newest checkpoint, then through several that report the
	// checkpoint it already had (not a new one: the unknown step was not
	// taken for "none")
	drainSyncs := func(n int) {
		h.coord.mu.Lock()
		from := h.coord.drains
		h.coord.mu.Unlock()
		eventually(t, "draining syncs", func() bool {
			h.coord.mu.Lock()
			defer h.coord.mu.Unlock()
			return h.coord.drains >= from+n
		})
	}
	drainSyncs(5)
	known := newTestTask("run-e", 0, 1, string(saving.Spec))
	known.CheckpointStep = 30
	h.coord.set(known)
	drainSyncs(10)
	if pid, alive := pidAlive(t, dirE); !alive {
		t.Fatalf("run-e (pid %d) stopped before its job committed a new checkpoint", pid)
	}
	select {
	case <-h.done:
		t.Fatal("Run returned while a rank waited for its checkpoint")
	default:
	}

	next := newTestTask("run-e", 0, 1, string(saving.Spec))
	next.CheckpointStep = 40 // committed during the drain
	h.coord.set(next)
	select {
	case err := <-h.done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		h.done <- nil // for the cleanup
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after the checkpoint")
	}
	if _, err := os.Stat(filepath.Join(dirE, "terminated")); err != nil {
		t.Errorf("run-e: no SIGTERM after the checkpoint: %v", err)
	}
	if ws, _ := h.reg.List(t.Context()); len(ws) != 0 {
		t.Fatalf("still registered after the drain: %+v", ws)
	}
}

// The drain is bounded: a job that never commits is stopped after
// drain_seconds.
func TestDrainBounded(t *testing.T) {
	h := start(t, func(o *Options) { o.Config.DrainSeconds = 1 })
	h.coord.set(newTestTask("run-g", 0, 1, "name: demo\nsteps: 500\ncheckpoint: {interval_steps: 10}\n"))
	h.waitState("run-g", 0, apiv1.TaskState_TASK_STATE_RUNNING)
	dir := h.runDir("run-g", 1, 0)
	eventually(t, "pid file", func() bool { _, err := os.Stat(filepath.Join(dir, "pid")); return err == nil })
	t0 := time.Now()
	h.stop()
	if took := time.Since(t0); took < time.Second {
		t.Errorf("stopped after %v, before the drain time", took)
	}
	if pid, alive := pidAlive(t, dir); alive {
		t.Errorf("pid %d alive after Run returned", pid)
	}
}

// The worker's probes and metrics, on its metrics_address.
func TestHealthProbesAndMetrics(t *testing.T) {
	// from below the ephemeral range: a ":0" port closed again may be
	// taken by any outgoing connection before the worker binds it
	addrs, err := freeport.Addrs("127.0.0.1", 1)
	if err != nil {
		t.Fatal(err)
	}
	addr := addrs[0]
	h := start(t, func(o *Options) { o.Config.MetricsAddress = addr })
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	eventually(t, "/readyz 200", func() bool { c, _ := get("/readyz"); return c == http.StatusOK })
	if c, body := get("/healthz"); c != http.StatusOK || body != "ok\n" {
		t.Errorf("/healthz: %d %q", c, body)
	}
	h.coord.set(newTestTask("run-h", 0, 1, spec1))
	h.waitState("run-h", 0, apiv1.TaskState_TASK_STATE_RUNNING)
	eventually(t, "ranks running in /metrics", func() bool {
		_, body := get("/metrics")
		return strings.Contains(body, "switchyard_worker_ranks_running 1")
	})
	h.coord.setDown(true)
	eventually(t, "/readyz 503 while the coordinator is down", func() bool {
		c, body := get("/readyz")
		return c == http.StatusServiceUnavailable && strings.Contains(body, "the coordinator did not answer")
	})
	h.coord.setDown(false)
	eventually(t, "/readyz 200 again", func() bool { c, _ := get("/readyz"); return c == http.StatusOK })
	h.stop()
	if c, _ := get("/healthz"); c != 0 {
		t.Errorf("/healthz answered %d after Run returned", c)
	}
}
