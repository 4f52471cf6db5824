package controller

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
	"github.com/switchyard-ml/switchyard/pkg/coordinator"
	"github.com/switchyard-ml/switchyard/pkg/jobspec"
	"github.com/switchyard-ml/switchyard/pkg/jobstate"
	"github.com/switchyard-ml/switchyard/pkg/membership"
	"github.com/switchyard-ml/switchyard/pkg/metrics"
	"github.com/switchyard-ml/switchyard/pkg/scheduler"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

const condScheduled = jobstate.CondScheduled

// raftTerm is the replica's raft term, where it has one (0 otherwise).
func (s *Server) raftTerm() uint64 {
	if t, ok := s.cfg.Node.(interface{ Term() uint64 }); ok {
		return t.Term()
	}
	return 0
}

// superviseLoop runs tick every cfg.Tick while this replica leads.
func (s *Server) superviseLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.Tick)
	defer t.Stop()
	leading := false
	var ledTerm uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.fences.fenced: // a job waiting for its fence is placed now
		}
		isLeader := s.cfg.Node.IsLeader()
		term := s.raftTerm() // after: a term read first could predate a loss and win
		if leading && (!isLeader || term != ledTerm) {
			// lost leadership, or lost and won it again between two
			// passes (another leader may have changed the state
			// meanwhile): this memory is stale
			if isLeader {
				s.log.Info("led again in a later term: taking over anew", "term", term)
			} else {
				s.log.Info("lost leadership")
			}
			h := s.hold()
			h.term.leading = false
			s.health.publish(h.term)
			s.fences.reset()
			h.release()
			leading = false
		}
		if !isLeader {
			continue
		}
		if !leading {
			// Everything committed by the previous leader must be applied here
			// before this replica acts on the state.
			bctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := s.cfg.Node.Barrier(bctx)
			cancel()
			if err != nil {
				s.log.Warn("barrier after election failed", "error", err)
				continue
			}
			if err := s.refresh(ctx); err != nil {
				s.log.Warn("membership list after election failed", "error", err)
				continue
			}
			h := s.hold()
			h.resetLeaderMemory()
			s.fences.reset()
			h.term.leading = true
			s.health.publish(h.term)
			h.release()
			leading, ledTerm = true, term
			s.log.Info("leading: supervising jobs", "jobs", len(s.cfg.Node.Unfinished()))
		}
		h := s.hold()
		h.tick(ctx)
		h.release()
	}
}

// tick is one supervision pass: worker losses, held rank failures, then
// scheduling.
func (s held) tick(ctx context.Context) {
	live := s.liveWorkers()
	now := s.cfg.Now()
	s.arrivals.drain(s.term.lastSync)
	for id := range live {
		if _, ok := s.term.lastSync[id]; !ok {
			s.term.lastSync[id] = now // first seen: give it time to sync
		}
	}
	s.health.publish(s.term) // before anything that may wait
	jobs := s.cfg.Node.Unfinished()
	for _, j := range jobs {
		if !active(j) {
			delete(s.term.failing, j.Id)
		} else if s.cfg.Checkpoints != nil {
			// placed by a coordinator that did not fence (an older
			// version): its attempt is fenced now
			s.fences.ready(j)
		}
	}
	for _, v := range decide(observed{now: now, jobs: jobs, live: live, lastSync: s.term.lastSync, failing: s.term.failing, draining: s.term.draining,
		silence: s.cfg.Silence, grace: s.cfg.FailureGrace, startSilence: s.cfg.StartSilence}) {
		s.failAttempt(ctx, v.job, v.reason, v.msg, v.worker)
	}
	s.schedule(ctx, live)
	s.prune(live, jobs)
}

// prune drops the leader's memory of workers that left and of jobs that
// ended, so that it does not grow with the cluster's history.
func (s held) prune(live map[string]membership.WorkerInfo, jobs []*pb.Job) {
	open := make(map[string]int32, len(jobs))
	for _, j := range jobs {
		open[j.Id] = j.Restarts
	}
	s.fences.retain(open)
	s.arrivals.forget(live)
	for w := range s.term.lastSync {
		if _, ok := live[w]; !ok {
			delete(s.term.lastSync, w)
		}
	}
	for w := range s.term.draining {
		if _, ok := live[w]; !ok {
			delete(s.term.draining, w)
		}
	}
	for k := range s.term.reports {
		if a, ok := open[k.job]; !ok || a != k.attempt {
			delete(s.term.reports, k)
		}
	}
	for k := range s.term.eventSeq {
		if a, ok := open[k.job]; !ok || a != k.attempt {
			delete(s.term.eventSeq, k)
		}
	}
	for id := range s.term.lastProgress {
		if _, ok := open[id]; !ok {
			delete(s.term.lastProgress, id)
		}
	}
	for id := range s.term.notBefore {
		if _, ok := open[id]; !ok {
			delete(s.term.notBefore, id)
		}
	}
	s.mu.Lock()
	for id := range s.specs {
		if _, ok := open[id]; !ok {
			delete(s.specs, id)
		}
	}
	s.mu.Unlock()
}

// failAttempt ends the job's current attempt: a requeue when its restart
// policy allows another try, else the job fails.
func (s held) failAttempt(ctx context.Context, j *pb.Job, reason, msg, worker string) {
	if !s.commits.wait(ctx, j.Id) {
		return // acted on in the next pass
	}
	maxRestarts, backoff := 0, 0
	if sp, err := s.spec(j); err == nil {
		maxRestarts, backoff = *sp.Restart.MaxRestarts, *sp.Restart.BackoffSeconds
	}
	delete(s.term.failing, j.Id)
	s.recordEvent(ctx, j.Id, reason, msg, worker)
	used := int(j.Restarts - j.FreeRestarts) // the restarts the policy counts
	free := reason == ReasonDrained          // the worker shut down on purpose
	if (used < maxRestarts || free) && reason != ReasonRefused {
		m := fmt.Sprintf("%s; restart %d of %d in %ds, resuming from the newest committed checkpoint", msg, used+1, maxRestarts, backoff)
		if free {
			m = fmt.Sprintf("%s; restarted in %ds from the newest committed checkpoint (not counted against max_restarts)", msg, backoff)
		}
		r, err := s.cfg.Node.Apply(ctx, &pb.Command{Op: &pb.Command_RequeueJob{RequeueJob: &pb.RequeueJob{JobId: j.Id, Reason: reason, Message: m, Free: free}}})
		if err != nil {
			s.log.Warn("requeue failed", "job-id", j.Id, "error", err)
			return
		}
		s.term.notBefore[j.Id] = s.cfg.Now().Add(time.Duration(backoff) * time.Second)
		s.cfg.Metrics.Restarted(reason)
		s.log.Info("job requeued", "job-id", j.Id, "reason", reason, "message", msg, "restarts", r.Job.Restarts)
		s.publish(j.Id, "Requeued", r.Job.State, m, worker)
		s.control(j.Id, "stop-attempt", m)
		return
	}
	m := msg
	switch {
	case reason == ReasonRefused:
		m = fmt.Sprintf("%s; not restarted: the worker refused the rank before it started and would refuse it again (change the job spec or the worker's config, then submit again)", msg)
	case maxRestarts > 0:
		m = fmt.Sprintf("%s; no restarts left (max_restarts %d)", msg, maxRestarts)
	}
	r, err := s.cfg.Node.Apply(ctx, &pb.Command{Op: &pb.Command_SetJobState{SetJobState: &pb.SetJobState{
		JobId: j.Id, State: pb.JobState_JOB_STATE_FAILED, Reason: reason, Message: m,
	}}})
	if err != nil {
		s.log.Warn("fail job failed", "job-id", j.Id, "error", err)
		return
	}
	s.log.Info("job failed", "job-id", j.Id, "reason", reason, "message", m)
	s.publish(j.Id, "Failed", r.Job.State, m, worker)
	s.control(j.Id, "stop-attempt", m)
}

// eventTimeout bounds the recording of one event in the history.
const eventTimeout = 10 * time.Second

func (s *Server) recordEvent(ctx context.Context, jobID, typ, msg, worker string) {
	// What the event tells has happened (a commit in etcd, a requeue): a
	// caller that hangs up now must not keep it out of the history.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), eventTimeout)
	defer cancel()
	_, err := s.cfg.Node.Apply(ctx, &pb.Command{Op: &pb.Command_RecordEvent{RecordEvent: &pb.RecordEvent{
		JobId: jobID, Event: &pb.JobEvent{Type: typ, Message: msg, WorkerId: worker},
	}}})
	if err != nil {
		s.log.Warn("record event failed", "job-id", jobID, "error", err)
	}
}

// The health of a registered worker, as the leader knows it
// (apiv1.Worker.health).
const (
	healthHealthy  = "healthy"
	healthSilent   = "silent"
	healthDraining = "draining"
	healthUnknown  = "unknown"
)

// health is what the leader knows of a registered worker: silent when
// no SyncWorker reached it for longer than silence (a worker killed -9
// stays registered until its lease runs out), else draining when it said
// it is shutting down, else healthy; and the time since its last sync
// (or since the leader first saw it).
func (m leaderMemory) health(id string, w membership.WorkerInfo, now time.Time, silence time.Duration) (string, time.Duration) {
	var since time.Duration
	if t, ok := m.lastSync[id]; ok {
		since = now.Sub(t)
	}
	switch {
	case since > silence:
		return healthSilent, since
	case w.Draining || m.draining[id]:
		return healthDraining, since
	}
	return healthHealthy, since
}

// snapshot is the scheduler's view: every slot of the live workers (a
// worker of several slots is that many scheduler workers, "id/k", each
// with an equal share of its resources, on one host), busy when placed.
func (s held) snapshot(live map[string]membership.WorkerInfo, jobs []*pb.Job) scheduler.Snapshot {
	busy := map[workerSlot]string{}
	for _, j := range jobs {
		if active(j) {
			for _, a := range j.Placement {
				busy[workerSlot{a.WorkerId, int(a.Slot)}] = j.Id
			}
		}
	}
	var snap scheduler.Snapshot
	now := s.cfg.Now()
	for id, w := range live {
		// registered but not responding, or shutting down: no new work
		health, _ := s.term.health(id, w, now, s.cfg.Silence)
		healthy := health == healthHealthy
		n := w.SlotCount()
		if n > 1 {
			snap.Unit = "slot" // reasons count slots
		}
		share := scheduler.Resources{CPUCores: w.Resources.CPUCores / n, MemoryMiB: (w.Resources.MemoryBytes >> 20) / int64(n), GPUs: w.Resources.GPUs / n}
		host := w.Host
		if host == "" && n > 1 {
			host = id // its slots share the machine
		}
		labels := jobspec.SettingLabels(w.Labels, w.Commands, w.RankUser) // its config says, not its labels
		for k := range n {
			job := busy[workerSlot{id, k}]
			free := share
			if job != "" {
				free = scheduler.Resources{}
			}
			snap.Workers = append(snap.Workers, scheduler.Worker{
				ID: slotID(id, k, n), Host: host, Labels: labels, Total: share, Free: free, Healthy: healthy, Job: job, Roots: w.Roots,
				GPUMemoryMiB: slotGPUMemory(w, k, n),
			})
		}
	}
	return snap
}

// slotGPUMemory is the memory of the smallest GPU of slot k of n of a
// worker (slot k has its detected GPUs [k*g, (k+1)*g), g = GPUs/n, as
// workerconfig.Config.SlotGPUs gives the rank), or 0 when the worker does
// not say (GPUs declared by count).
func slotGPUMemory(w membership.WorkerInfo, k, n int) int64 {
	g := w.Resources.GPUs / n
	if g < 1 || (k+1)*g > len(w.GPUDevices) {
		return 0
	}
	var least int64
	for i, d := range w.GPUDevices[k*g : (k+1)*g] {
		if d.MemoryMiB <= 0 {
			return 0
		}
		if i == 0 || d.MemoryMiB < least {
			least = d.MemoryMiB
		}
	}
	return least
}

// nodePlace is where a rank sits among its job's workers.
type nodePlace struct{ node, nodes, local, localWorld int32 }

// nodesOf numbers the workers of a placement in the order of their lowest
// rank (the node ranks) and each worker's ranks in rank order (the local
// ranks), by rank.
func nodesOf(placement []*pb.RankAssignment) []nodePlace {
	node := map[string]int32{}
	count := map[string]int32{}
	out := make([]nodePlace, len(placement))
	for _, a := range placement { // sorted by rank
		if _, ok := node[a.WorkerId]; !ok {
			node[a.WorkerId] = int32(len(node))
		}
		out[a.Rank] = nodePlace{node: node[a.WorkerId], local: count[a.WorkerId]}
		count[a.WorkerId]++
	}
	for _, a := range placement {
		out[a.Rank].nodes, out[a.Rank].localWorld = int32(len(node)), count[a.WorkerId]
	}
	return out
}

// workerSlot is one slot of one worker.
type workerSlot struct {
	worker string
	slot   int
}

// slotID names slot k of a worker of n slots for the scheduler: the
// worker's id when it has one slot, else "id/k" ('/' is never in a worker
// id).
func slotID(worker string, k, n int) string {
	if n == 1 {
		return worker
	}
	return fmt.Sprintf("%s/%d", worker, k)
}

// splitSlotID is slotID's inverse.
func splitSlotID(id string) workerSlot {
	w, k, ok := strings.Cut(id, "/")
	if !ok {
		return workerSlot{id, 0}
	}
	slot, err := strconv.Atoi(k)
	if err != nil {
		return workerSlot{id, 0}
	}
	return workerSlot{w, slot}
}

// schedule places what fits and records why the rest waits.
func (s held) schedule(ctx context.Context, live map[string]membership.WorkerInfo) {
	jobs := s.cfg.Node.Unfinished()
	now := s.cfg.Now()
	var queue []scheduler.Job
	byID := map[string]*pb.Job{}
	for _, j := range jobs {
		if j.State != pb.JobState_JOB_STATE_PENDING {
			continue
		}
		sp, err := s.spec(j)
		if err != nil {
			s.setState(ctx, j, pb.JobState_JOB_STATE_FAILED, "InvalidSpec", err.Error(), nil)
			continue
		}
		byID[j.Id] = j
		if s.cfg.Checkpoints != nil {
			s.fences.ready(j) // fenced while it waits, placed at once when it fits
		}
		if t, ok := s.term.notBefore[j.Id]; ok && now.Before(t) {
			s.setPending(ctx, j, "Backoff", fmt.Sprintf("restart backoff: placed again at %s", t.UTC().Format(time.TimeOnly)))
			continue
		}
		sj := sp.SchedulerJob(j.Id, j.SubmitSeq)
		if j.Restarts > 0 {
			// a restarted job that lost workers may shrink, as its
			// spec's elastic range allows (the checkpoint reshards)
			sj.MinDP = sp.Elastic.MinDP
		}
		queue = append(queue, sj)
	}
	if len(queue) == 0 {
		return
	}
	snap := s.snapshot(live, jobs)
	plans, pending := scheduler.Schedule(snap, queue)
	for _, p := range plans {
		if err := scheduler.Recheck(snap, p); err != nil {
			s.log.Warn("plan went stale", "job-id", p.Job.ID, "error", err)
			continue
		}
		if s.catalogueFenced(ctx, byID[p.Job.ID]) {
			s.place(ctx, byID[p.Job.ID], p)
		}
	}
	for _, p := range pending {
		j := byID[p.JobID]
		if j == nil {
			continue
		}
		reason := "Unschedulable"
		switch {
		case errors.Is(p.Err, scheduler.ErrNoFit):
			reason = "InsufficientWorkers"
		case errors.Is(p.Err, scheduler.ErrBlocked):
			reason = "WaitingForHigherPriority"
		case errors.Is(p.Err, scheduler.ErrTooLarge):
			// not only size: too few workers with its labels, its
			// paths or allow_commands, too small GPUs, no host for a
			// TP group; it waits for the cluster to change
			reason = "Unplaceable"
		}
		s.setPending(ctx, j, reason, settingsWording(p.Reason))
	}
}

// catalogueFenced reports whether pending job j may be placed: its attempt is
// fenced in the checkpoint catalogue, which then refuses every write of
// the earlier attempts, even one a deposed leader admitted and has not
// yet sent, so what the new attempt resumes from is all it will ever be.
// Otherwise the fence is asked for (placed by a later tick); a catalogue
// fenced above the attempt fails the job.
func (s held) catalogueFenced(ctx context.Context, j *pb.Job) bool {
	if s.cfg.Checkpoints == nil {
		return true
	}
	ok, err := s.fences.ready(j)
	switch {
	case ok:
		return true
	case errors.Is(err, checkpoint.ErrFenced):
		s.setState(ctx, j, pb.JobState_JOB_STATE_FAILED, "CatalogueFenced", fmt.Sprintf(
			"the checkpoint catalogue of job %s is fenced for a later attempt than this one (%d): the coordinators' state is older than etcd's (restored from a backup?), and a commit of this attempt would be refused: %v", j.Id, j.Restarts, err), nil)
	case err != nil:
		s.setPending(ctx, j, "CatalogueUnavailable", fmt.Sprintf("the checkpoint catalogue could not be fenced for attempt %d (placed once it is): %v", j.Restarts, err))
	case s.fences.waited(j) >= fenceWaitShown:
		// usually fenced by the next tick; a slow catalogue's first try
		// (up to fenceTimeout) would otherwise leave the reason of
		// before, as if the job still waited for workers
		s.setPending(ctx, j, "FencingCatalogue", fmt.Sprintf("fits; waiting for the checkpoint catalogue to be fenced for attempt %d (placed once it is)", j.Restarts))
	}
	return false
}

// fenceWaitShown is how long a job that fits waits for its fence before
// its pending reason says so.
const fenceWaitShown = 2 * time.Second

// settingsWording says in the scheduler's reasons what the labels the
// controller gives workers for their settings stand for (allow_commands,
// rank_user), which a label of the worker's own cannot stand in for.
func settingsWording(reason string) string {
	return strings.NewReplacer(
		"labelled "+jobspec.CommandsLabel+"=true", "allowing command jobs (allow_commands: true in the worker's config)",
		"labelled "+jobspec.RankUserLabel+"=true", "running ranks as another OS user (rank_user in the worker's config)",
	).Replace(reason)
}

// place commits plan p of job j: its placement and, when the scheduler
// shrank it (an elastic job that lost workers), its smaller layout.
func (s held) place(ctx context.Context, j *pb.Job, p scheduler.Plan) {
	sp, err := s.spec(j)
	if err != nil {
		return
	}
	placement := make([]*pb.RankAssignment, len(p.Workers))
	for r, id := range p.Workers {
		ws := splitSlotID(id)
		placement[r] = &pb.RankAssignment{Rank: int32(r), WorkerId: ws.worker, Slot: int32(ws.slot)}
	}
	cmd := &pb.PlaceJob{JobId: j.Id, Placement: placement}
	shrunk := p.Job.Layout.DP != sp.Parallel.DP
	if shrunk {
		cmd.Dp, cmd.Ep = int32(p.Job.Layout.DP), int32(p.Job.Layout.EP)
	}
	res, err := s.cfg.Node.Apply(ctx, &pb.Command{Op: &pb.Command_PlaceJob{PlaceJob: cmd}})
	if err != nil {
		s.log.Warn("place failed", "job-id", j.Id, "error", err)
		return
	}
	if res.Job.Restarts != j.Restarts && s.cfg.Checkpoints != nil {
		// the job moved to a later attempt while this pass ran (this
		// replica lost and won leadership meanwhile, and another leader
		// ended the attempt it read): that attempt may not be fenced, and
		// its ranks must not start before it is. No sync hands out its
		// tasks meanwhile (this holds the lead lock): it waits again, at
		// no cost to its restart policy.
		if ok, _ := s.fences.ready(res.Job); !ok {
			msg := fmt.Sprintf("placed at attempt %d, whose checkpoint catalogue fence was not yet raised (a change of leader during the placement); placed again once it is", res.Job.Restarts)
			if _, err := s.cfg.Node.Apply(ctx, &pb.Command{Op: &pb.Command_RequeueJob{RequeueJob: &pb.RequeueJob{JobId: j.Id, Reason: "Requeued", Message: msg, Free: true}}}); err != nil {
				s.log.Warn("requeue of a placement at an unfenced attempt failed", "job-id", j.Id, "error", err)
			}
			return
		}
	}
	workers := strings.Join(p.Workers, ",")
	reason, msg := "Placed", fmt.Sprintf("attempt %d: ranks -> workers %s", res.Job.Restarts, workers)
	cond := "ranks -> workers " + workers
	if shrunk {
		reason = "PlacedElastic"
		msg = fmt.Sprintf("attempt %d: not enough workers for dp %d; shrunk to dp %d ep %d on workers %s",
			res.Job.Restarts, sp.Parallel.DP, p.Job.Layout.DP, p.Job.Layout.EP, workers)
		cond = msg
	}
	var firstWait time.Duration
	if res.Job.Restarts == 0 && res.Job.SubmittedUnixNano > 0 {
		firstWait = s.cfg.Now().Sub(time.Unix(0, res.Job.SubmittedUnixNano))
	}
	s.cfg.Metrics.Placed(shrunk, firstWait)
	s.setState(ctx, res.Job, res.Job.State, "", "", &pb.Condition{Type: condScheduled, Status: true, Reason: reason, Message: cond})
	if shrunk {
		s.recordEvent(ctx, j.Id, "Shrunk", msg, "")
	}
	s.log.Info("job placed", "job-id", j.Id, "workers", p.Workers, "attempt", res.Job.Restarts, "dp", p.Job.Layout.DP, "ep", p.Job.Layout.EP)
	s.publish(j.Id, "Placed", res.Job.State, msg, "")
}

// setPending records why a pending job waits, when that changed.
func (s *Server) setPending(ctx context.Context, j *pb.Job, reason, msg string) {
	for _, c := range j.Conditions {
		if c.Type == condScheduled && !c.Status && c.Reason == reason && c.Message == msg {
			return
		}
	}
	s.setState(ctx, j, j.State, "", "", &pb.Condition{Type: condScheduled, Status: false, Reason: reason, Message: msg})
}

func (s *Server) setState(ctx context.Context, j *pb.Job, st pb.JobState, reason, msg string, cond *pb.Condition) *pb.Job {
	if jobstate.Final(st) && !s.commits.wait(ctx, j.Id) {
		s.log.Warn("job not ended: its checkpoint commit is still in flight", "job-id", j.Id, "state", jobstate.Lower(st))
		return nil
	}
	r, err := s.cfg.Node.Apply(ctx, &pb.Command{Op: &pb.Command_SetJobState{SetJobState: &pb.SetJobState{
		JobId: j.Id, State: st, Reason: reason, Message: msg, Condition: cond,
	}}})
	if err != nil {
		s.log.Warn("set job state failed", "job-id", j.Id, "error", err)
		return nil
	}
	return r.Job
}

// ---- SyncWorker ----

func (s *Server) SyncWorker(ctx context.Context, req *apiv1.SyncWorkerRequest) (*apiv1.SyncWorkerResponse, error) {
	w := req.GetWorkerId()
	if w == "" {
		return nil, apiError(failure(errBadRequest, "sync without a worker id"))
	}
	if id, ok := caller(ctx); ok && id.Worker != w {
		if id.Worker == "" {
			return nil, apiError(failure(errPermission, "a sync as worker %s needs that worker's own token (switchyard cluster worker-token %s), not the cluster token", w, w))
		}
		return nil, apiError(failure(errPermission, "worker %s's token cannot sync as worker %s", id.Worker, w))
	}
	if id, ok := caller(ctx); ok && id.Ranked() {
		return nil, apiError(failure(errPermission, "the token of rank %d of job %s cannot sync as worker %s: only the worker's own token syncs", id.Scope.Rank, id.Scope.Job, w))
	}
	if req.GetProbe() {
		return &apiv1.SyncWorkerResponse{}, nil // the credentials passed; any replica says so
	}
	if !s.cfg.Node.IsLeader() {
		return forward(ctx, s, req, apiv1.CoordinatorClient.SyncWorker)
	}
	s.arrivals.note(w, s.cfg.Now())
	h := s.hold()
	locked := true
	release := func() {
		if locked {
			locked = false
			h.release()
		}
	}
	defer release()
	h.term.lastSync[w] = s.cfg.Now()
	switch {
	case req.GetDraining() && !h.term.draining[w]:
		h.term.draining[w] = true
		s.log.Info("worker draining: no new work goes to it", "worker-id", w)
	case !req.GetDraining() && h.term.draining[w]:
		delete(h.term.draining, w) // started again
	}
	for _, ts := range req.GetTasks() {
		if err := h.report(ctx, w, ts); err != nil {
			return nil, apiError(err)
		}
	}
	live := s.liveWorkers()
	resp := &apiv1.SyncWorkerResponse{}
	var draining []*pb.Job // the jobs of a draining worker, for their checkpoints
	for _, j := range s.cfg.Node.Unfinished() {
		if !active(j) {
			continue
		}
		var mine []*pb.RankAssignment // a worker of several slots may hold several ranks
		peers := make([]string, len(j.Placement))
		hosts := make([]string, len(j.Placement))
		for _, a := range j.Placement {
			if a.WorkerId == w {
				mine = append(mine, a)
			}
			if info, ok := live[a.WorkerId]; ok {
				peers[a.Rank] = membership.SlotAddress(info.Address, int(a.Slot))
				hosts[a.Rank] = cmp.Or(info.Host, a.WorkerId)
			}
		}
		if len(mine) == 0 || contains(peers, "") {
			continue // not ours, or a peer is gone (the tick handles that)
		}
		sp, err := s.spec(j)
		if err != nil {
			continue
		}
		l := sp.AttemptLayout(int(j.PlacedDp), int(j.PlacedEp))
		nodes := nodesOf(j.Placement)
		localSlots := make([]int32, len(mine)) // mine is in rank order
		for i, a := range mine {
			localSlots[i] = a.Slot
		}
		if req.GetDraining() {
			draining = append(draining, j)
		}
		for _, a := range mine {
			n := nodes[a.Rank]
			resp.Tasks = append(resp.Tasks, &apiv1.Task{
				JobId: j.Id, Attempt: j.Restarts, Rank: a.Rank, Slot: a.Slot, WorldSize: int32(len(j.Placement)),
				Tp: int32(l.TP), Dp: int32(l.DP), Ep: int32(l.EP), Balance: l.Balance,
				Peers: peers, Hosts: hosts, Spec: j.Spec, ResumeFromStep: j.ResumeFromStep, Accumulation: int32(l.Accumulation),
				NodeRank: n.node, Nodes: n.nodes, LocalRank: n.local, LocalWorldSize: n.localWorld, LocalSlots: localSlots,
			})
		}
	}
	if len(draining) > 0 {
		// the catalogue (etcd) is read without the leader's lock, which
		// every sync and the supervision tick need
		release()
		steps := make(map[string]int64, len(draining))
		for _, j := range draining {
			steps[j.Id] = s.newestCheckpoint(ctx, j)
		}
		for _, t := range resp.Tasks {
			t.CheckpointStep = steps[t.JobId]
		}
	}
	return resp, nil
}

// newestCheckpoint is the step of j's newest committed checkpoint (0:
// none), or -1 when the catalogue cannot be read now: the draining worker
// must not take an unknown step for "none" (its next known step would
// look newer than the drain and stop the rank at once); it asks again at
// its next sync.
func (s *Server) newestCheckpoint(ctx context.Context, j *pb.Job) int64 {
	if s.cfg.Checkpoints == nil {
		return 0
	}
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	live, _, err := s.cfg.Checkpoints.List(cctx, j)
	switch {
	case err != nil:
		return -1
	case len(live) == 0:
		return 0
	}
	return live[0].Step // newest first
}

func contains(xs []string, x string) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

// report applies one task report of worker w.
func (s held) report(ctx context.Context, w string, ts *apiv1.TaskStatus) error {
	if ts.GetJobId() == "" {
		return nil // not a task anyone assigned
	}
	j, err := s.cfg.Node.Job(ts.GetJobId())
	if errors.Is(err, coordinator.ErrJobNotFound) {
		return nil // a job this replica never had: the worker will stop it
	}
	if err != nil {
		return err
	}
	if !active(j) || ts.GetAttempt() != j.Restarts {
		return nil // an older attempt, or a job that ended: nothing to do
	}
	if r := int(ts.GetRank()); r < 0 || r >= len(j.Placement) || j.Placement[r].WorkerId != w {
		return nil // not this worker's rank (a stale report)
	}
	key := taskKey{job: j.Id, attempt: j.Restarts, rank: ts.GetRank()}
	s.term.reports[key] = ts
	s.recordRankEvents(ctx, j, key, w, ts.GetEvents())
	switch ts.GetState() {
	case apiv1.TaskState_TASK_STATE_FAILED:
		if ts.GetRank() == 0 && ts.GetStep() > j.GetProgress().GetStep() {
			// the steps it took since the last progress record (a rank
			// killed at its last step had trained them all); an attempt
			// whose first report is its failure did run those steps, so a
			// placed job is recorded as having run
			if nj := s.progress(ctx, j, ts, true); nj != nil {
				j = nj
			}
		}
		msg := bounded(ts.GetMessage(), maxRankMessage)
		if msg == "" {
			msg = "exited with an error"
		}
		// the attempt's first failure is held; a refusal replaces one that
		// is not (the refused rank never started, so its peers' failures
		// follow from it)
		if f, ok := s.term.failing[j.Id]; !ok || f.attempt != j.Restarts || (ts.GetRefused() && !f.refused) {
			s.term.failing[j.Id] = pendingFailure{attempt: j.Restarts, at: s.cfg.Now(), worker: w, refused: ts.GetRefused(),
				msg: fmt.Sprintf("rank %d on worker %s: %s", ts.GetRank(), w, msg)}
		}
	case apiv1.TaskState_TASK_STATE_RUNNING:
		if ts.GetRank() == 0 && ts.GetStep() > 0 {
			s.progress(ctx, j, ts, false)
		} else if j.State == pb.JobState_JOB_STATE_PLACED {
			s.commandStarted(ctx, j)
		}
	case apiv1.TaskState_TASK_STATE_SUCCEEDED:
		for r := range j.Placement {
			st := s.term.reports[taskKey{job: j.Id, attempt: j.Restarts, rank: int32(r)}]
			if st.GetState() != apiv1.TaskState_TASK_STATE_SUCCEEDED {
				return nil
			}
		}
		if r0 := s.term.reports[taskKey{job: j.Id, attempt: j.Restarts, rank: 0}]; r0.GetStep() > 0 {
			if nj := s.progress(ctx, j, r0, true); nj != nil {
				j = nj
			}
		}
		if nj := s.setState(ctx, j, pb.JobState_JOB_STATE_SUCCEEDED, "Completed", finishedMessage(len(j.Placement)), nil); nj != nil {
			s.publish(j.Id, "Succeeded", nj.State, nj.Message, "")
		}
	}
	return nil
}

// commandStarted moves placed command job j to RUNNING once every rank
// of its attempt runs: its trainer may print no metrics, and its first
// step (which moves an engine job) would never come.
func (s held) commandStarted(ctx context.Context, j *pb.Job) {
	if sp, err := s.spec(j); err != nil || sp.Runtime != jobspec.RuntimeCommand {
		return
	}
	for r := range j.Placement {
		if s.term.reports[taskKey{job: j.Id, attempt: j.Restarts, rank: int32(r)}].GetState() != apiv1.TaskState_TASK_STATE_RUNNING {
			return
		}
	}
	msg := fmt.Sprintf("all %d ranks started", len(j.Placement))
	if nj := s.setState(ctx, j, pb.JobState_JOB_STATE_RUNNING, "Started", msg, nil); nj != nil {
		s.publish(j.Id, "Running", nj.State, msg, "")
	}
}

// recordRankEvents adds the events a rank announced to the job's history,
// once each: by sequence number, and after a change of leader (which
// starts with no memory of them) by type and message.
func (s held) recordRankEvents(ctx context.Context, j *pb.Job, key taskKey, w string, evs []*apiv1.TaskEvent) {
	for _, ev := range evs {
		if ev.GetSeq() <= s.term.eventSeq[key] {
			continue
		}
		s.term.eventSeq[key] = ev.GetSeq()
		msg := fmt.Sprintf("rank %d: %s", key.rank, bounded(ev.GetMessage(), maxRankMessage))
		typ := bounded(ev.GetType(), maxEventType)
		seen := false
		for _, e := range j.Events {
			seen = seen || (e.Type == typ && e.Message == msg)
		}
		if seen {
			continue
		}
		_, err := s.cfg.Node.Apply(ctx, &pb.Command{Op: &pb.Command_RecordEvent{RecordEvent: &pb.RecordEvent{
			JobId: j.Id, Event: &pb.JobEvent{Type: typ, Message: msg, WorkerId: w, UnixNano: ev.GetUnixNano()},
		}}})
		if err != nil {
			s.log.Warn("record rank event failed", "job-id", j.Id, "error", err)
			continue
		}
		s.publish(j.Id, typ, j.State, msg, w)
	}
}

// boundGPUStats keeps, of the GPU samples a worker reported for a job of
// world ranks, what may go into the job's record (metrics.BoundGPUs: one
// per rank of the world, short UUIDs), whatever the worker sent.
func boundGPUStats(gs []*pb.GPUStat, world int) []*pb.GPUStat {
	if len(gs) == 0 {
		return nil
	}
	in := make([]metrics.GPU, len(gs))
	for i, g := range gs {
		in[i] = metrics.GPU{Rank: int(g.GetRank()), UUID: g.GetUuid(), UtilPct: g.GetUtilPct(), MemUsedBytes: g.GetMemUsedBytes(), MemTotalBytes: g.GetMemTotalBytes()}
	}
	kept := metrics.BoundGPUs(in, max(world, 1))
	out := make([]*pb.GPUStat, len(kept))
	for i, g := range kept {
		out[i] = &pb.GPUStat{Rank: int32(g.Rank), Uuid: g.UUID, UtilPct: g.UtilPct, MemUsedBytes: g.MemUsedBytes, MemTotalBytes: g.MemTotalBytes}
	}
	return out
}

// progress records rank 0's progress, at most every ProgressEvery unless
// force or the job has not started running yet.
func (s held) progress(ctx context.Context, j *pb.Job, ts *apiv1.TaskStatus, force bool) *pb.Job {
	now := s.cfg.Now()
	if !force && j.State == pb.JobState_JOB_STATE_RUNNING && now.Sub(s.term.lastProgress[j.Id]) < s.cfg.ProgressEvery {
		return nil
	}
	if j.Progress != nil && j.Progress.Step == ts.GetStep() && j.State == pb.JobState_JOB_STATE_RUNNING {
		return nil
	}
	s.term.lastProgress[j.Id] = now
	r, err := s.cfg.Node.Apply(ctx, &pb.Command{Op: &pb.Command_JobProgress{JobProgress: &pb.JobProgress{
		JobId: j.Id, Step: ts.GetStep(), Loss: ts.GetLoss(), TokensPerSecond: ts.GetTokensPerSecond(), Gpus: boundGPUStats(ts.GetGpus(), len(j.Placement)),
	}}})
	if err != nil {
		s.log.Warn("progress failed", "job-id", j.Id, "error", err)
		return nil
	}
	if j.State == pb.JobState_JOB_STATE_PLACED {
		s.publish(j.Id, "Running", r.Job.State, fmt.Sprintf("first step reported (step %d)", ts.GetStep()), "")
	}
	return r.Job
}

// finishedMessage is why a job succeeded: "all 2 ranks finished".
func finishedMessage(ranks int) string {
	if ranks == 1 {
		return "its rank finished"
	}
	return fmt.Sprintf("all %d ranks finished", ranks)
}
