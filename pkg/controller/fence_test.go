package controller

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
	"github.com/switchyard-ml/switchyard/pkg/coordinator"
	"github.com/switchyard-ml/switchyard/pkg/membership"
	"github.com/switchyard-ml/switchyard/pkg/scheduler"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// TestLateCommitOfAnEndedAttemptFenced: a leader admitted attempt 0's
// commit of step 8 and lost its leadership before the commit reached
// the catalogue; the next leader ended attempt 0 and placed attempt 1,
// which resumes from step 4. The late commit then arrives. The
// catalogue's fence, raised when attempt 1 was placed, refuses it (and a
// retention step of attempt 0 alike), so attempt 1's own later commits
// are not stale behind a step it never saw. Without the fence, attempt
// 1's commit of step 6 would be refused until it restarted.
func TestLateCommitOfAnEndedAttemptFenced(t *testing.T) {
	l := newLocal(t)
	cat := checkpoint.NewMemCatalogue()
	cps := etcdCheckpoints{cat: cat, log: quietLogger(t)}
	l.placeWithCatalogue(offTheLock{cps, l.s, t})
	if _, err := l.s.CommitCheckpoint(l.ctx, &apiv1.CommitCheckpointRequest{JobId: "j1", Attempt: 0, Manifest: encodeStep(t, 4)}); err != nil {
		t.Fatal(err)
	}
	// what the deposed leader holds: attempt 0's record, admitted
	attempt0 := l.job("j1")
	// the new leader ends attempt 0 and places attempt 1
	t1, t2 := l.sync("w1"), l.sync("w2")
	l.sync("w1", status_(t1[0], apiv1.TaskState_TASK_STATE_RUNNING, 1))
	l.sync("w2", status_(t2[0], apiv1.TaskState_TASK_STATE_FAILED, 1))
	l.clock.add(l.s.cfg.FailureGrace)
	l.sync("w1", status_(t1[0], apiv1.TaskState_TASK_STATE_RUNNING, 2))
	l.sync("w2", status_(t2[0], apiv1.TaskState_TASK_STATE_FAILED, 1))
	l.tick()
	l.tick()
	if j := l.job("j1"); j.Restarts != 1 || j.State != pb.JobState_JOB_STATE_PLACED {
		t.Fatalf("job %v at attempt %d, want attempt 1 placed", j.State, j.Restarts)
	}
	// the late commit, and a late retention step, of attempt 0
	m8, err := checkpoint.DecodeManifest(encodeStep(t, 8))
	if err != nil {
		t.Fatal(err)
	}
	_, err = l.s.commitIt(l.ctx, attempt0, m8)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "attempt 0 is over") {
		t.Fatalf("attempt 0's late commit: %v, want FAILED_PRECONDITION attempt over", err)
	}
	if err := cps.Retire(l.ctx, attempt0, 4, false); !errors.Is(err, checkpoint.ErrFenced) {
		t.Fatalf("attempt 0's late retention step: %v, want fenced", err)
	}
	if m, err := cat.Latest(l.ctx, "j1"); err != nil || m.Step != 4 {
		t.Fatalf("the catalogue's latest: step %d, %v; want 4", m.Step, err)
	}
	refused := false
	for _, e := range l.job("j1").Events {
		refused = refused || (e.Type == "CommitRefused" && strings.Contains(e.Message, "fenced for a later attempt"))
	}
	if !refused {
		t.Errorf("no CommitRefused event for the late commit: %v", l.job("j1").Events)
	}
	// attempt 1 commits past its resume point
	if _, err := l.s.CommitCheckpoint(l.ctx, &apiv1.CommitCheckpointRequest{JobId: "j1", Attempt: 1, Manifest: encodeStep(t, 6)}); err != nil {
		t.Fatalf("attempt 1's commit of step 6: %v", err)
	}
}

// A placement waits while the catalogue cannot be fenced, saying why.
func TestPlacementWaitsForTheFence(t *testing.T) {
	l := newLocal(t)
	l.s.cfg.Checkpoints = unfenceable{memCheckpoints()}
	l.submit("j1", "name: j1\nparallel: {dp: 2, ep: 1}\nsteps: 10\nresources: {cpu_cores: 1, memory_mib: 512}\n")
	l.register("w1")
	l.register("w2")
	l.tick()
	j := l.job("j1")
	if j.State != pb.JobState_JOB_STATE_PENDING || !strings.Contains(pendingReason(j), "could not be fenced for attempt 0") {
		t.Fatalf("job %v, pending reason %q", j.State, pendingReason(j))
	}
}

type unfenceable struct{ Checkpoints }

// A job that fits and waits for its fence longer than a tick or two (a
// slow catalogue) says so, rather than keep the reason of before.
func TestPendingReasonWhileFencing(t *testing.T) {
	l := newLocal(t)
	l.s.cfg.Checkpoints = memCheckpoints()
	l.s.fences.now = l.clock.now
	l.submit("j1", "name: j1\nparallel: {dp: 2, ep: 1}\nsteps: 10\nresources: {cpu_cores: 1, memory_mib: 512}\n")
	l.register("w1")
	tickUnfenced := func() { // a tick while the fence is still being written
		t.Helper()
		if err := l.s.refresh(l.ctx); err != nil {
			t.Fatal(err)
		}
		h := l.s.hold()
		h.tick(l.ctx)
		h.release()
	}
	tickUnfenced()
	before := pendingReason(l.job("j1"))
	if !strings.Contains(before, "only 1 such worker") {
		t.Fatalf("pending reason %q, want too few workers", before)
	}
	l.register("w2")
	tickUnfenced()
	if r := pendingReason(l.job("j1")); r != before {
		t.Fatalf("pending reason %q a tick after it fits, want the one of before", r)
	}
	l.clock.add(fenceWaitShown)
	l.sync("w1")
	l.sync("w2")
	tickUnfenced()
	j := l.job("j1")
	if r := pendingReason(j); j.State != pb.JobState_JOB_STATE_PENDING || !strings.Contains(r, "waiting for the checkpoint catalogue to be fenced for attempt 0") {
		t.Fatalf("job %v, pending reason %q, want the wait for its fence", j.State, r)
	}
	l.tick() // fenced, then placed
	if j := l.job("j1"); j.State == pb.JobState_JOB_STATE_PENDING {
		t.Fatalf("job still pending (%q) once fenced", pendingReason(j))
	}
}

// offTheLock fails the test when a fence is written under the leader's
// lock: a slow etcd would hold up every sync and supervision pass.
type offTheLock struct {
	Checkpoints
	s *Server
	t *testing.T
}

func (c offTheLock) Fence(ctx context.Context, j *pb.Job, attempt int32) error {
	if !c.s.lead.TryLock() {
		c.t.Errorf("job %s's attempt %d fenced under the leader's lock", j.Id, attempt)
	} else {
		c.s.lead.Unlock()
	}
	return c.Checkpoints.Fence(ctx, j, attempt)
}

// A job whose catalogue is fenced above its attempt (the coordinators'
// state restored from a backup older than etcd's) fails, saying so,
// rather than waiting for good.
func TestPlacementFencedAbove(t *testing.T) {
	l := newLocal(t)
	cat := checkpoint.NewMemCatalogue()
	if err := cat.Fence(l.ctx, "j1", 3); err != nil {
		t.Fatal(err)
	}
	l.s.cfg.Checkpoints = etcdCheckpoints{cat: cat}
	l.submit("j1", "name: j1\nparallel: {dp: 2, ep: 1}\nsteps: 10\nresources: {cpu_cores: 1, memory_mib: 512}\n")
	l.register("w1")
	l.register("w2")
	l.tick()
	j := l.job("j1")
	if j.State != pb.JobState_JOB_STATE_FAILED || j.Reason != "CatalogueFenced" || !strings.Contains(j.Message, "fenced for a later attempt") {
		t.Fatalf("job %v (%s: %s), want FAILED CatalogueFenced", j.State, j.Reason, j.Message)
	}
	// its fence, above the attempt a deletion fences, keeps late writes
	// out already: the job is deleted as any other
	if _, err := l.s.DeleteJob(l.ctx, &apiv1.DeleteJobRequest{JobId: "j1"}); err != nil {
		t.Fatalf("deleting the job that failed CatalogueFenced: %v", err)
	}
	if _, err := l.s.cfg.Node.Job("j1"); err == nil {
		t.Fatal("the job is still there")
	}
}

func (unfenceable) Fence(context.Context, *pb.Job, int32) error {
	return errors.New("etcd: context deadline exceeded")
}

// encodeStep is the manifest placeWithCatalogue commits, at step.
func encodeStep(t *testing.T, step int64) []byte {
	t.Helper()
	b, err := checkpoint.EncodeManifest(checkpoint.Manifest{Job: "j1", Step: step, Layout: checkpoint.Layout{TP: 1, DP: 2, EP: 1},
		Shards: []checkpoint.ShardInfo{{Name: "rank-0000/state.bin", Size: 4096, SHA256: strings.Repeat("0", 64), Kind: checkpoint.KindParams}}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A job's deletion fences its catalogue first: a commit of its last
// attempt still in flight from a deposed leader cannot leave an entry of
// a deleted job behind.
func TestDeleteFencesOutLateWrites(t *testing.T) {
	l := newLocal(t)
	cat := checkpoint.NewMemCatalogue()
	cps := etcdCheckpoints{cat: cat, log: quietLogger(t)}
	l.placeWithCatalogue(cps)
	if _, err := l.s.CancelJob(l.ctx, &apiv1.CancelJobRequest{JobId: "j1"}); err != nil {
		t.Fatal(err)
	}
	last := l.job("j1")
	if _, err := l.s.DeleteJob(l.ctx, &apiv1.DeleteJobRequest{JobId: "j1"}); err != nil {
		t.Fatal(err)
	}
	m, err := checkpoint.DecodeManifest(encodeStep(t, 4))
	if err != nil {
		t.Fatal(err)
	}
	if err := cps.Commit(l.ctx, last, m); !errors.Is(err, checkpoint.ErrFenced) {
		t.Fatalf("a late commit of the deleted job's last attempt: %v, want fenced", err)
	}
	if ms, err := cat.List(l.ctx, "j1"); err != nil || len(ms) != 0 {
		t.Fatalf("the deleted job's catalogue: %v, %v", ms, err)
	}
}

// termedReplica is a local replica whose raft term the test sets.
type termedReplica struct {
	*localReplica
	term atomic.Uint64
}

func (r *termedReplica) Term() uint64 { return r.term.Load() }

// A replica that lost its leadership and won it again between two
// supervision passes takes over anew (barrier, fresh memory), as after
// any election: another leader may have changed the state meanwhile.
func TestLeadingAgainInALaterTermTakesOverAnew(t *testing.T) {
	members := membership.NewMemoryServer()
	t.Cleanup(members.Stop)
	r := &termedReplica{localReplica: &localReplica{fsm: coordinator.NewFSM(0), now: time.Now}}
	r.term.Store(1)
	s, err := New(Config{Node: r, APIAddr: "local:0", Workers: membership.NewMemory(members), Replicas: membership.NewMemory(membership.NewMemoryServer()),
		Tick: 10 * time.Millisecond, Logger: quietLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := membership.NewMemory(members).Register(ctxT(t), membership.WorkerInfo{ID: "w1", Address: "w1:9000",
		Resources: membership.Resources{CPUCores: 2, MemoryBytes: 4 << 30}}, time.Hour); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.superviseLoop(ctx) }()
	defer func() { cancel(); <-done }()
	memory := func(f func(m *leaderMemory) bool) bool {
		h := s.hold()
		defer h.release()
		return f(&h.term)
	}
	waitFor := func(what string, cond func(m *leaderMemory) bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !memory(cond) {
			if time.Now().After(deadline) {
				t.Fatalf("never %s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor("leading", func(m *leaderMemory) bool { return m.leading })
	// something this term's memory holds (w1 said it drains)
	memory(func(m *leaderMemory) bool { m.draining["w1"] = true; return true })
	time.Sleep(50 * time.Millisecond) // passes of the same term keep it
	if !memory(func(m *leaderMemory) bool { return m.draining["w1"] }) {
		t.Fatal("the memory was reset within one term")
	}
	r.term.Store(3)
	waitFor("a fresh memory in term 3", func(m *leaderMemory) bool { return m.leading && !m.draining["w1"] })
}

// A fence refused for an earlier attempt (another leader fenced further
// meanwhile) is that attempt's: the job's next attempt is fenced and
// placed as usual, not failed.
func TestFenceFailureOfAnEarlierAttempt(t *testing.T) {
	l := newLocal(t)
	cat := checkpoint.NewMemCatalogue()
	l.s.cfg.Checkpoints = etcdCheckpoints{cat: cat}
	l.submit("j1", "name: j1\nparallel: {dp: 2, ep: 1}\nsteps: 10\nresources: {cpu_cores: 1, memory_mib: 512}\n")
	l.s.fences.ready(l.job("j1"))
	if err := cat.Fence(l.ctx, "j1", 1); err != nil { // another leader
		t.Fatal(err)
	}
	l.s.fences.flush(l.ctx, l.s.cfg.Checkpoints, l.s.log)
	if ok, err := l.s.fences.ready(l.job("j1")); ok || !errors.Is(err, checkpoint.ErrFenced) {
		t.Fatalf("attempt 0 after the refused fence: ready %v, %v", ok, err)
	}
	if _, err := l.s.CancelJob(l.ctx, &apiv1.CancelJobRequest{JobId: "j1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.s.ResumeJob(l.ctx, &apiv1.ResumeJobRequest{JobId: "j1"}); err != nil {
		t.Fatal(err)
	}
	if ok, err := l.s.fences.ready(l.job("j1")); ok || err != nil {
		t.Fatalf("attempt 1 before its fence: ready %v, %v; want asked, no failure", ok, err)
	}
	l.register("w1")
	l.register("w2")
	l.tick()
	if j := l.job("j1"); j.State != pb.JobState_JOB_STATE_PLACED || j.Restarts != 1 {
		t.Fatalf("job %v at attempt %d (%s: %s), want attempt 1 placed", j.State, j.Restarts, j.Reason, j.Message)
	}
}

// A placement that finds the job at a later attempt than the one the
// pass read (another leader ended it meanwhile), not yet fenced, is
// undone before any rank is handed out: the job waits again, at no cost
// to its restart policy.
func TestPlacementAtAnUnfencedLaterAttemptUndone(t *testing.T) {
	l := newLocal(t)
	l.s.cfg.Checkpoints = etcdCheckpoints{cat: checkpoint.NewMemCatalogue()}
	l.submit("j1", "name: j1\nparallel: {dp: 2, ep: 1}\nsteps: 10\nresources: {cpu_cores: 1, memory_mib: 512}\n")
	l.register("w1")
	l.register("w2")
	if err := l.s.refresh(l.ctx); err != nil {
		t.Fatal(err)
	}
	read := l.job("j1") // what the pass read: attempt 0
	if _, err := l.s.CancelJob(l.ctx, &apiv1.CancelJobRequest{JobId: "j1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.s.ResumeJob(l.ctx, &apiv1.ResumeJobRequest{JobId: "j1"}); err != nil {
		t.Fatal(err)
	}
	h := l.s.hold()
	h.place(l.ctx, read, scheduler.Plan{Job: scheduler.Job{ID: "j1", Layout: scheduler.Layout{TP: 1, DP: 2, EP: 1}}, Workers: []string{"w1", "w2"}})
	h.release()
	j := l.job("j1")
	if j.State != pb.JobState_JOB_STATE_PENDING || j.Restarts != 2 || j.Restarts != j.FreeRestarts || !strings.Contains(j.Message, "fence was not yet raised") {
		t.Fatalf("job %v at attempt %d (%d free): %s", j.State, j.Restarts, j.FreeRestarts, j.Message)
	}
	if tasks := l.sync("w1"); len(tasks) != 0 {
		t.Fatalf("tasks handed out: %v", tasks)
	}
	l.tick()
	if j := l.job("j1"); j.State != pb.JobState_JOB_STATE_PLACED || j.Restarts != 2 {
		t.Fatalf("job %v at attempt %d, want placed at 2 once fenced", j.State, j.Restarts)
	}
}

// A resume from the newest checkpoint says which one, or that there is
// none and the job starts from step 0.
func TestResumeSaysWhatItStartsFrom(t *testing.T) {
	l := newLocal(t)
	m := l.placeWithCatalogue(memCheckpoints())
	resume := func() string {
		t.Helper()
		if _, err := l.s.CancelJob(l.ctx, &apiv1.CancelJobRequest{JobId: "j1"}); err != nil {
			t.Fatal(err)
		}
		r, err := l.s.ResumeJob(l.ctx, &apiv1.ResumeJobRequest{JobId: "j1"})
		if err != nil {
			t.Fatal(err)
		}
		return r.Job.Message
	}
	if msg := resume(); !strings.Contains(msg, "no committed checkpoint: it starts from step 0") {
		t.Fatalf("resumed without a checkpoint: %q", msg)
	}
	l.tick() // placed again, attempt 1
	j := l.job("j1")
	if _, err := l.s.CommitCheckpoint(l.ctx, &apiv1.CommitCheckpointRequest{JobId: "j1", Attempt: j.Restarts, Manifest: m}); err != nil {
		t.Fatal(err)
	}
	if msg := resume(); !strings.Contains(msg, "from the newest committed checkpoint (step 10;") {
		t.Fatalf("resumed with the checkpoint of step 10: %q", msg)
	}
}
