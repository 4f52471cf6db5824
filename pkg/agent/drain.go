package agent

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/jobspec"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
)

// drain runs when the worker is told to stop (SIGTERM), before its ranks
// are stopped. The worker takes no new ranks and tells the coordinator it
// is draining (nothing new is placed on it); a running rank whose job
// saves checkpoints keeps running until the job commits a checkpoint newer
// than the one it had when the drain began, so that its restart elsewhere
// loses little; a rank whose job saves none is stopped at once. The drain
// lasts at most drain_seconds; what still runs then is stopped by
// stopAll.
func (a *Agent) drain() {
	a.draining.Store(true)
	a.mu.Lock()
	a.closing = true
	n := len(a.tasks)
	a.mu.Unlock()
	grace := time.Duration(a.o.Config.DrainSeconds) * time.Second
	if grace <= 0 || n == 0 {
		return
	}
	close(a.drainStarted) // the registration says so too
	a.log.Info("draining: no new ranks; running ranks stop after their job's next checkpoint", "ranks", n, "at-most", grace)
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	baseline := map[taskKey]int64{} // each job's newest checkpoint when the drain began
	t := time.NewTicker(a.o.SyncInterval)
	defer t.Stop()
	for {
		if resp, err := a.sync(ctx, true); err == nil {
			a.reconcile(resp.GetTasks()) // stops what is no longer assigned; starts nothing
			for _, want := range resp.GetTasks() {
				a.drainTask(want, baseline)
			}
		} else if ctx.Err() == nil {
			a.log.Debug("drain: sync failed", "error", err)
		}
		if a.running() == 0 {
			a.log.Info("drained")
			return
		}
		select {
		case <-ctx.Done():
			a.log.Warn("drain time over: stopping the ranks still running", "ranks", a.running(), "drain_seconds", a.o.Config.DrainSeconds)
			return
		case <-t.C:
		case <-a.kick:
		}
	}
}

// drainTask stops want's rank when its job committed a checkpoint since
// the drain began, or saves none.
func (a *Agent) drainTask(want *apiv1.Task, baseline map[taskKey]int64) {
	k := keyOf(want)
	a.mu.Lock()
	tk := a.tasks[k]
	a.mu.Unlock()
	if tk == nil || tk.exited() {
		return
	}
	log := a.log.With("job-id", k.jobID, "attempt", k.attempt, "rank", k.rank)
	if !savesCheckpoints(want.GetSpec()) {
		if tk.requestStop() {
			log.Info("drain: stopping a rank whose job saves no checkpoints")
		}
		return
	}
	if want.GetCheckpointStep() < 0 {
		return // not known now (the coordinator could not read the catalogue)
	}
	b, seen := baseline[k]
	if !seen {
		baseline[k] = want.GetCheckpointStep()
		return
	}
	if want.GetCheckpointStep() > b && tk.requestStop() {
		log.Info("drain: the job committed a checkpoint; stopping the rank", "checkpoint-step", want.GetCheckpointStep())
	}
}

// savesCheckpoints says whether a job spec asks for periodic checkpoints.
func savesCheckpoints(raw []byte) bool {
	sp, err := jobspec.Parse(raw)
	return err == nil && (sp.Checkpoint.IntervalSteps > 0 || sp.Checkpoint.IntervalMinutes > 0)
}

// running counts the tasks whose process has not ended.
func (a *Agent) running() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, t := range a.tasks {
		if !t.exited() {
			n++
		}
	}
	return n
}

// healthHandlers are the worker's probes, served beside its metrics:
// /healthz answers while the worker runs; /readyz says whether it takes
// work: registered in etcd, its last sync reached the coordinator, and not
// draining.
func (a *Agent) healthHandlers() map[string]http.Handler {
	return map[string]http.Handler{
		"GET /healthz": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprintln(w, "ok")
		}),
		"GET /readyz": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			var why []string
			if !a.registered.Load() {
				why = append(why, "not registered in etcd")
			}
			if !a.synced.Load() {
				why = append(why, "the coordinator did not answer the last sync")
			}
			if a.draining.Load() {
				why = append(why, "draining (shutting down)")
			}
			if len(why) > 0 {
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprintln(w, "not ready: "+strings.Join(why, "; "))
				return
			}
			fmt.Fprintln(w, "ready")
		}),
	}
}
