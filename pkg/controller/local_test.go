package controller

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
	"github.com/switchyard-ml/switchyard/pkg/coordinator"
	"github.com/switchyard-ml/switchyard/pkg/jobstate"
	"github.com/switchyard-ml/switchyard/pkg/membership"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// localReplica is a Replica with no raft and no network: a lone leader
// applying commands straight to a coordinator.FSM, stamped with its clock.
type localReplica struct {
	mu  sync.Mutex
	fsm *coordinator.FSM
	now func() time.Time
}

func (r *localReplica) ID() string                        { return "local" }
func (r *localReplica) IsLeader() bool                    { return true }
func (r *localReplica) Leader() (string, string)          { return "local", "" }
func (r *localReplica) Barrier(context.Context) error     { return nil }
func (r *localReplica) ReadBarrier(context.Context) error { return nil }
func (r *localReplica) Job(id string) (*pb.Job, error)    { return r.fsm.Job(id) }
func (r *localReplica) Jobs() []*pb.Job                   { return r.fsm.Jobs() }
func (r *localReplica) Unfinished() []*pb.Job             { return r.fsm.Unfinished() }
func (r *localReplica) Apply(_ context.Context, cmd *pb.Command) (coordinator.ApplyResult, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if cmd.GetUnixNano() == 0 {
		cmd = proto.CloneOf(cmd)
		cmd.UnixNano = r.now().UnixNano()
	}
	res := r.fsm.ApplyCommand(cmd)
	return res, res.Err
}

// fakeClock is a clock the test moves.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// local is a leader driven one tick at a time on a fake clock, with no
// raft, no gRPC and no goroutine of the server running.
type local struct {
	t       *testing.T
	s       *Server
	clock   *fakeClock
	members *membership.MemoryServer
	ctx     context.Context
}

func newLocal(t *testing.T) *local {
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	members := membership.NewMemoryServer()
	t.Cleanup(members.Stop)
	s, err := New(Config{
		Node: &localReplica{fsm: coordinator.NewFSM(0), now: clock.now}, APIAddr: "local:0",
		Workers: membership.NewMemory(members), Replicas: membership.NewMemory(membership.NewMemoryServer()),
		Now: clock.now, Logger: quietLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	return &local{t: t, s: s, clock: clock, members: members, ctx: ctxT(t)}
}

func (l *local) tick() {
	l.t.Helper()
	if err := l.s.refresh(l.ctx); err != nil {
		l.t.Fatal(err)
	}
	flushFences(l.ctx, l.s)
	h := l.s.hold()
	h.tick(l.ctx)
	h.release()
}

func (l *local) job(id string) *pb.Job {
	l.t.Helper()
	r, err := l.s.GetJob(l.ctx, &apiv1.GetJobRequest{JobId: id})
	if err != nil {
		l.t.Fatal(err)
	}
	return r.Job
}

func (l *local) sync(w string, ts ...*apiv1.TaskStatus) []*apiv1.Task {
	l.t.Helper()
	r, err := l.s.SyncWorker(l.ctx, &apiv1.SyncWorkerRequest{WorkerId: w, Tasks: ts})
	if err != nil {
		l.t.Fatal(err)
	}
	return r.Tasks
}

func (l *local) register(id string) {
	l.t.Helper()
	_, err := membership.NewMemory(l.members).Register(l.ctx, membership.WorkerInfo{ID: id, Address: id + ":9000", Host: "host-" + id,
		Resources: membership.Resources{CPUCores: 2, MemoryBytes: 4 << 30}}, time.Hour)
	if err != nil {
		l.t.Fatal(err)
	}
}

func (l *local) submit(id, spec string) {
	l.t.Helper()
	if _, err := l.s.SubmitJob(l.ctx, &apiv1.SubmitJobRequest{JobId: id, Spec: []byte(spec)}); err != nil {
		l.t.Fatal(err)
	}
}

// The leader's supervision without a network: a job waits for workers
// with a reason, is gang-placed, hands out its tasks, and a rank failure
// is held for the grace period, then requeues the job.
func TestSupervisionWithoutNetwork(t *testing.T) {
	l := newLocal(t)
	job := func() *pb.Job { return l.job("j1") }
	l.submit("j1", fmt.Sprintf(spec2, 1))
	l.register("w1")
	l.tick()
	if r := pendingReason(job()); !strings.Contains(r, "needs 2 workers") {
		t.Fatalf("with one worker: pending reason %q", r)
	}
	l.register("w2")
	l.tick()
	if j := job(); j.State != pb.JobState_JOB_STATE_PLACED || len(j.Placement) != 2 {
		t.Fatalf("with two workers: %v placement %v, want PLACED on both", j.State, j.Placement)
	}
	t1, t2 := l.sync("w1"), l.sync("w2")
	if len(t1) != 1 || len(t2) != 1 || t1[0].Rank == t2[0].Rank {
		t.Fatalf("tasks %v and %v: want one rank each", t1, t2)
	}
	l.sync("w1", status_(t1[0], apiv1.TaskState_TASK_STATE_RUNNING, 1))
	l.sync("w2", status_(t2[0], apiv1.TaskState_TASK_STATE_FAILED, 1))
	l.tick()
	if j := job(); j.State != pb.JobState_JOB_STATE_RUNNING {
		t.Fatalf("a rank failure inside the grace period: job %v, want still RUNNING", j.State)
	}
	l.clock.add(l.s.cfg.FailureGrace)
	l.sync("w1", status_(t1[0], apiv1.TaskState_TASK_STATE_RUNNING, 2)) // both workers keep syncing
	l.sync("w2", status_(t2[0], apiv1.TaskState_TASK_STATE_FAILED, 1))
	l.tick()
	j := job()
	if j.Restarts != 1 {
		t.Fatalf("after the grace period: job %v with %d restarts, want requeued once", j.State, j.Restarts)
	}
	var types []string
	for _, e := range j.Events {
		types = append(types, e.Type)
	}
	if got := strings.Join(types, ","); !strings.Contains(got, "Placed") || !strings.Contains(got, "RankFailed") {
		t.Fatalf("events %s: want the placement and the rank failure", got)
	}
}

// TestPlacedOnASilentWorker: a worker registered in etcd that never syncs
// (hung, or a forged registration) gets a job placed while it is new, and
// the job moves on once the worker has been silent for StartSilence,
// instead of staying PLACED for ever.
func TestPlacedOnASilentWorker(t *testing.T) {
	l := newLocal(t)
	l.submit("j1", fmt.Sprintf(spec2, 1))
	l.register("w1")
	l.register("w2") // never syncs
	l.tick()
	if j := l.job("j1"); j.State != pb.JobState_JOB_STATE_PLACED {
		t.Fatalf("job %v, want PLACED", j.State)
	}
	l.register("w3")
	for range 20 { // w1 and w3 keep syncing, once a second
		l.clock.add(time.Second)
		l.sync("w1")
		l.sync("w3")
		l.tick()
	}
	j := l.job("j1")
	if j.Restarts != 1 || strings.Contains(fmt.Sprint(j.Placement), "w2") {
		t.Fatalf("after 20s of silence from w2: %d restarts, placement %v; want requeued once, away from w2", j.Restarts, j.Placement)
	}
	found := false
	for _, e := range j.Events {
		found = found || (e.Type == "WorkerLost" && strings.Contains(e.Message, "worker w2") && strings.Contains(e.Message, "has not synced"))
	}
	if !found {
		t.Fatalf("no WorkerLost event naming w2: %v", j.Events)
	}
}

// A worker of several slots runs several ranks: one task per rank, each
// with its slot, the peers at the workers' ports + slot; the GPUs are the
// slots' (one per rank), never shared.
func TestSeveralRanksPerWorker(t *testing.T) {
	l := newLocal(t)
	for _, id := range []string{"g1", "g2"} {
		_, err := membership.NewMemory(l.members).Register(l.ctx, membership.WorkerInfo{ID: id, Address: id + ":9000",
			Resources: membership.Resources{CPUCores: 4, MemoryBytes: 8 << 30, GPUs: 2}, Slots: 2}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
	}
	l.submit("big", "name: big\nparallel: {dp: 6}\nresources: {cpu_cores: 1, memory_mib: 1024, gpus: 1}\n")
	l.submit("j4", "name: j4\nparallel: {tp: 2, dp: 2}\nresources: {cpu_cores: 1, memory_mib: 1024, gpus: 1}\n")
	l.tick()
	if r := pendingReason(l.job("big")); !strings.Contains(r, "needs 6 slots with 1 core, 1024 MiB, 1 GPU; the cluster has only 4 such slots") {
		t.Errorf("6 ranks of 1 GPU on 4 GPU slots: pending reason %q", r)
	}
	j := l.job("j4")
	if j.State != pb.JobState_JOB_STATE_PLACED || len(j.Placement) != 4 {
		t.Fatalf("%v placement %v", j.State, j.Placement)
	}
	used := map[string]bool{}
	for _, a := range j.Placement {
		key := fmt.Sprintf("%s/%d", a.WorkerId, a.Slot)
		if used[key] {
			t.Fatalf("slot %s given to two ranks: %v", key, j.Placement)
		}
		used[key] = true
	}
	// tensor-parallel pairs on one worker (the NVLink island)
	for r := 0; r < 4; r += 2 {
		if j.Placement[r].WorkerId != j.Placement[r+1].WorkerId {
			t.Errorf("TP group %d split: %v", r/2, j.Placement)
		}
	}
	ranks := 0
	for _, w := range []string{"g1", "g2"} {
		tasks := l.sync(w)
		if len(tasks) != 2 || tasks[0].Slot == tasks[1].Slot {
			t.Fatalf("%s: tasks %v: want two ranks in two slots", w, tasks)
		}
		for _, tk := range tasks {
			ranks++
			if tk.Nodes != 2 || tk.LocalWorldSize != 2 || tk.LocalRank != tk.Rank%2 || tk.NodeRank != tk.Rank/2 {
				t.Errorf("%s rank %d: node %d of %d, local %d of %d: want node rank/2 of 2, local rank%%2 of 2", w, tk.Rank, tk.NodeRank, tk.Nodes, tk.LocalRank, tk.LocalWorldSize)
			}
			want := fmt.Sprintf("%s:%d", w, 9000+tk.Slot)
			if tk.Peers[tk.Rank] != want {
				t.Errorf("%s rank %d slot %d: its peer address %s, want %s", w, tk.Rank, tk.Slot, tk.Peers[tk.Rank], want)
			}
		}
	}
	if ranks != 4 {
		t.Fatalf("%d tasks, want 4", ranks)
	}
}

// placeWithCatalogue gives the coordinator the checkpoint catalogue cps,
// places job j1 (dp 2) on workers w1 and w2, and returns the manifest of
// a checkpoint of its step 10 for its rank 0 to commit.
func (l *local) placeWithCatalogue(cps Checkpoints) []byte {
	l.t.Helper()
	l.s.cfg.Checkpoints = cps
	l.submit("j1", fmt.Sprintf(spec2, 1))
	l.register("w1")
	l.register("w2")
	l.tick()
	m, err := checkpoint.EncodeManifest(checkpoint.Manifest{Job: "j1", Step: 10, Layout: checkpoint.Layout{TP: 1, DP: 2, EP: 1},
		Shards: []checkpoint.ShardInfo{{Name: "rank-0000/state.bin", Size: 4096, SHA256: strings.Repeat("0", 64), Kind: checkpoint.KindParams}}})
	if err != nil {
		l.t.Fatal(err)
	}
	return m
}

// slowCheckpoints commits like etcd's client does: a commit whose
// context ends first fails (after the server may well have applied it).
type slowCheckpoints struct {
	Checkpoints
	started chan struct{}
	mu      sync.Mutex
	steps   []int64
}

func (c *slowCheckpoints) Commit(ctx context.Context, _ *pb.Job, m checkpoint.Manifest) error {
	close(c.started)
	select {
	case <-time.After(100 * time.Millisecond):
	case <-ctx.Done():
		return ctx.Err()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.steps = append(c.steps, m.Step)
	return nil
}

// TestCommitOutlivesItsCaller: a rank killed while its commit is in
// flight hangs up; the commit it began still completes, with its event,
// so that the history tells what the catalogue holds.
func TestCommitOutlivesItsCaller(t *testing.T) {
	l := newLocal(t)
	cps := &slowCheckpoints{Checkpoints: memCheckpoints(), started: make(chan struct{})}
	m := l.placeWithCatalogue(cps)
	ctx, cancel := context.WithCancel(l.ctx)
	go func() { <-cps.started; cancel() }()
	l.s.CommitCheckpoint(ctx, &apiv1.CommitCheckpointRequest{JobId: "j1", Attempt: 0, Manifest: m}) //nolint:errcheck // the caller is gone
	if cps.steps == nil {
		t.Fatal("the commit ended with its caller")
	}
	var recorded bool
	for _, e := range l.job("j1").Events {
		// one shard, in the unit its size reaches (was "1 shards, 0.0 MB")
		recorded = recorded || (e.Type == "CheckpointCommitted" && e.Message == "checkpoint of step 10 committed (1 shard, 4 KiB, layout tp 1 dp 2 ep 1)")
	}
	if !recorded {
		t.Fatalf("step 10 committed without its event: %v", l.job("j1").Events)
	}
}

// stuckCommits is a Checkpoints whose commit hangs (an etcd that is down)
// until the test lets it go on, and then waits up to a second for its job
// to end first: a commit that lands after its attempt ended shows in the
// history's order.
type stuckCommits struct {
	Checkpoints
	started, proceed chan struct{}
	ended            func() bool
}

func (c *stuckCommits) Commit(ctx context.Context, _ *pb.Job, m checkpoint.Manifest) error {
	close(c.started)
	<-c.proceed
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline) && !c.ended(); {
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

// commitStuck has rank 0 of j1 commit m in the background and returns
// once the commit is in cps's hands; its answer comes on the channel.
func (l *local) commitStuck(cps *stuckCommits, m []byte) <-chan error {
	committed := make(chan error, 1)
	go func() {
		_, err := l.s.CommitCheckpoint(l.ctx, &apiv1.CommitCheckpointRequest{JobId: "j1", Attempt: 0, Manifest: m})
		committed <- err
	}()
	<-cps.started
	return committed
}

// TestCommitInFlightHoldsUpOnlyItsAttemptsEnd: a commit stuck in etcd
// keeps no sync or supervision pass waiting (it holds no lock), and a
// cancel of its job waits for it: the checkpoint is committed, with its
// event, before the attempt ends, never after.
func TestCommitInFlightHoldsUpOnlyItsAttemptsEnd(t *testing.T) {
	l := newLocal(t)
	cps := &stuckCommits{Checkpoints: memCheckpoints(), started: make(chan struct{}), proceed: make(chan struct{}), ended: func() bool {
		j, err := l.s.cfg.Node.Job("j1")
		return err == nil && jobstate.Final(j.State)
	}}
	m := l.placeWithCatalogue(cps)
	committed := l.commitStuck(cps, m)
	// a deadlock would hang the test: the watchdog lets the commit go
	// on and the test fails
	watchdog := time.AfterFunc(30*time.Second, func() { close(cps.proceed) })
	l.sync("w1")
	l.sync("w2")
	l.tick()
	if !watchdog.Stop() {
		t.Fatal("the syncs and the supervision pass waited for a commit stuck in etcd")
	}
	cancelled := make(chan error, 1)
	go func() {
		_, err := l.s.CancelJob(l.ctx, &apiv1.CancelJobRequest{JobId: "j1"})
		cancelled <- err
	}()
	close(cps.proceed)
	if err := <-committed; err != nil {
		t.Fatalf("commit: %v", err)
	}
	if err := <-cancelled; err != nil {
		t.Fatalf("cancel: %v", err)
	}
	commit, cancel := -1, -1
	for i, e := range l.job("j1").Events {
		switch e.Type {
		case "CheckpointCommitted":
			commit = i
		case "Cancelled":
			cancel = i
		}
	}
	if commit < 0 || cancel < 0 || commit > cancel {
		t.Fatalf("history %v: want step 10's CheckpointCommitted before Cancelled", l.job("j1").Events)
	}
}

// catalogue is a Checkpoints whose List answers what the test says.
type catalogue struct {
	Checkpoints
	live []checkpoint.Manifest
	err  error
}

func (c *catalogue) List(context.Context, *pb.Job) ([]checkpoint.Manifest, []int64, error) {
	return c.live, nil, c.err
}

func (c *catalogue) Delete(_ context.Context, _ *pb.Job, step int64) error {
	c.live = slices.DeleteFunc(c.live, func(m checkpoint.Manifest) bool { return m.Step == step })
	return nil
}

// TestNewestCheckpointUnknown: a draining worker is told 0 only when the
// job has no checkpoint; a catalogue that cannot be read gives -1 (not
// known), which the worker does not take for "none".
func TestNewestCheckpointUnknown(t *testing.T) {
	l := newLocal(t)
	cat := &catalogue{Checkpoints: memCheckpoints()}
	l.s.cfg.Checkpoints = cat
	j := &pb.Job{Id: "j"}
	for _, tc := range []struct {
		live []checkpoint.Manifest
		err  error
		want int64
	}{
		{nil, nil, 0},
		{[]checkpoint.Manifest{{Step: 40}, {Step: 30}}, nil, 40},
		{nil, errors.New("etcd: context deadline exceeded"), -1},
	} {
		cat.live, cat.err = tc.live, tc.err
		if got := l.s.newestCheckpoint(l.ctx, j); got != tc.want {
			t.Errorf("live %v, error %v: %d, want %d", tc.live, tc.err, got, tc.want)
		}
	}
}

// TestDeleteFindsNoFiles: a delete whose storage holds no file of the
// checkpoint (a --checkpoint-root that is not the workers' storage) is
// refused and leaves the catalogue as it was; with the files there, both
// go.
func TestDeleteFindsNoFiles(t *testing.T) {
	ctx := context.Background()
	root, elsewhere := t.TempDir(), t.TempDir()
	st, err := checkpoint.NewDirStorage(root)
	if err != nil {
		t.Fatal(err)
	}
	cat := checkpoint.NewStorageCatalogue(checkpoint.NewMemStorage())
	key := checkpoint.StepPrefix("j", 4) + "rank-0000/state.bin"
	size, sum, err := st.Put(ctx, key, strings.NewReader("shard"))
	if err != nil {
		t.Fatal(err)
	}
	if err := cat.Commit(ctx, checkpoint.Manifest{Job: "j", Step: 4, Layout: checkpoint.Layout{TP: 1, DP: 1, EP: 1},
		Shards: []checkpoint.ShardInfo{{Name: "rank-0000/state.bin", Size: size, SHA256: sum, Kind: checkpoint.KindParams}}}); err != nil {
		t.Fatal(err)
	}
	j := &pb.Job{Id: "j", Spec: []byte("name: j\n")}
	wrong := etcdCheckpoints{cat: cat, root: elsewhere, log: quietLogger(t)}
	if err := wrong.Delete(ctx, j, 4); err == nil || !strings.Contains(err.Error(), "nothing was deleted") || !strings.Contains(err.Error(), elsewhere) {
		t.Fatalf("delete through another root: %v", err)
	}
	if live, _, err := wrong.List(ctx, j); err != nil || len(live) != 1 {
		t.Fatalf("the catalogue after a refused delete: %v, %v", live, err)
	}
	right := etcdCheckpoints{cat: cat, root: root, log: quietLogger(t)}
	if err := right.Delete(ctx, j, 4); err != nil {
		t.Fatal(err)
	}
	if live, _, _ := right.List(ctx, j); len(live) != 0 {
		t.Errorf("still catalogued: %v", live)
	}
	if keys, _ := st.List(ctx, checkpoint.StepPrefix("j", 4)); len(keys) != 0 {
		t.Errorf("files left: %v", keys)
	}
}

// TestSyncsHeldUpBehindTheLeaderAreNoSilence: the leader's lock is held
// for 20s (a checkpoint commit waiting on an etcd that is down) while the
// workers of a placed job keep syncing, each sync waiting for the lock.
// The supervision pass that follows must not take the workers for silent
// ("has not synced for 20s while its rank waited to start"): their syncs
// arrived, the leader was what held them up.
func TestSyncsHeldUpBehindTheLeaderAreNoSilence(t *testing.T) {
	l := newLocal(t)
	l.submit("j1", fmt.Sprintf(spec2, 1))
	l.register("w1")
	l.register("w2")
	l.tick()
	if j := l.job("j1"); j.State != pb.JobState_JOB_STATE_PLACED {
		t.Fatalf("job %v, want PLACED", j.State)
	}
	h := l.s.hold() // the long decision
	var wg sync.WaitGroup
	defer wg.Wait()
	released := false
	defer func() {
		if !released {
			h.release()
		}
	}()
	for range 20 {
		l.clock.add(time.Second)
		now := l.clock.now()
		for _, w := range []string{"w1", "w2"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				l.s.SyncWorker(l.ctx, &apiv1.SyncWorkerRequest{WorkerId: w}) //nolint:errcheck // waits for the lock
			}()
			// the sync has arrived (and waits for the lock)
			for {
				l.s.arrivals.mu.Lock()
				at := l.s.arrivals.at[w]
				l.s.arrivals.mu.Unlock()
				if at.Equal(now) {
					break
				}
				time.Sleep(time.Millisecond)
			}
		}
	}
	h.tick(l.ctx) // the pass right after the decision, before the syncs run
	h.release()
	released = true
	wg.Wait()
	for _, e := range l.job("j1").Events {
		if e.Type == "WorkerLost" {
			t.Fatalf("a worker whose syncs waited for the leader's lock was taken for lost: %s", e.Message)
		}
	}
}

// TestDeleteJob: a job is deleted only once it has ended and has no
// checkpoint (each refusal says what to do); a deleted job is gone, and
// its ID is refused to a new one.
func TestDeleteJob(t *testing.T) {
	l := newLocal(t)
	cat := &catalogue{Checkpoints: memCheckpoints(), live: []checkpoint.Manifest{{Job: "j1", Step: 20}, {Job: "j1", Step: 10}}}
	l.s.cfg.Checkpoints = cat
	l.submit("j1", fmt.Sprintf(spec2, 1))
	l.register("w1")
	l.register("w2")
	l.tick()
	withCheckpoints := false
	del := func() error {
		_, err := l.s.DeleteJob(l.ctx, &apiv1.DeleteJobRequest{JobId: "j1", WithCheckpoints: withCheckpoints})
		return err
	}
	if err := del(); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "job j1 is placed: only a job that has ended is deleted (switchyard job cancel j1 first)") {
		t.Fatalf("delete of a placed job: %v", err)
	}
	if _, err := l.s.CancelJob(l.ctx, &apiv1.CancelJobRequest{JobId: "j1"}); err != nil {
		t.Fatal(err)
	}
	if err := del(); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "job j1 has checkpoints (steps 10, 20): delete them first (switchyard checkpoints delete j1 STEP, or job delete --checkpoints)") {
		t.Fatalf("delete of a job with checkpoints: %v", err)
	}
	cat.err = errors.New("etcd down")
	if err := del(); status.Code(err) != codes.Unavailable {
		t.Fatalf("delete while the catalogue cannot be read: %v", err)
	}
	cat.err, withCheckpoints = nil, true
	if err := del(); err != nil || len(cat.live) != 0 {
		t.Fatalf("delete of a cancelled job with its checkpoints: %v, %d left", err, len(cat.live))
	}
	if _, err := l.s.GetJob(l.ctx, &apiv1.GetJobRequest{JobId: "j1"}); status.Code(err) != codes.NotFound {
		t.Fatalf("get after the delete: %v", err)
	}
	_, err := l.s.SubmitJob(l.ctx, &apiv1.SubmitJobRequest{JobId: "j1", Spec: []byte(fmt.Sprintf(spec2, 1))})
	if status.Code(err) != codes.AlreadyExists || !strings.Contains(err.Error(), "the ID of a deleted job") {
		t.Fatalf("a new job under the deleted ID: %v", err)
	}
}

// TestAttemptNotEndedPastItsCallersWait: a cancel, or the success of the
// job's last rank, whose caller's deadline passes while the job's
// checkpoint commit is still in flight does not end the attempt (the
// commit would land after it ended): the cancel answers Unavailable and
// the job runs on; once the commit is in, the cancel goes through.
func TestAttemptNotEndedPastItsCallersWait(t *testing.T) {
	l := newLocal(t)
	cps := &stuckCommits{Checkpoints: memCheckpoints(), started: make(chan struct{}), proceed: make(chan struct{}), ended: func() bool { return true }}
	m := l.placeWithCatalogue(cps)
	committed := l.commitStuck(cps, m)
	ctx, cancel := context.WithTimeout(l.ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := l.s.CancelJob(ctx, &apiv1.CancelJobRequest{JobId: "j1"}); status.Code(err) != codes.Unavailable {
		t.Fatalf("cancel whose caller gave up with a commit in flight: %v", err)
	}
	done := func(r int32) *apiv1.TaskStatus {
		return &apiv1.TaskStatus{JobId: "j1", Attempt: 0, Rank: r, State: apiv1.TaskState_TASK_STATE_SUCCEEDED}
	}
	l.sync("w2", done(1))
	sctx, scancel := context.WithTimeout(l.ctx, 50*time.Millisecond)
	defer scancel()
	l.s.SyncWorker(sctx, &apiv1.SyncWorkerRequest{WorkerId: "w1", Tasks: []*apiv1.TaskStatus{done(0)}}) //nolint:errcheck // its answer does not matter
	if j := l.job("j1"); !active(j) {
		t.Fatalf("job %s with its commit still in flight; history %v", jobstate.Lower(j.State), j.Events)
	}
	close(cps.proceed)
	if err := <-committed; err != nil {
		t.Fatalf("commit: %v", err)
	}
	if _, err := l.s.CancelJob(l.ctx, &apiv1.CancelJobRequest{JobId: "j1"}); err != nil {
		t.Fatalf("cancel once the commit is in: %v", err)
	}
}

// listHook is a catalogue that runs during its List what the test says
// happens meanwhile.
type listHook struct {
	catalogue
	during func()
}

func (c *listHook) List(ctx context.Context, j *pb.Job) ([]checkpoint.Manifest, []int64, error) {
	live, deleting, err := c.catalogue.List(ctx, j)
	if during := c.during; during != nil {
		c.during = nil // once: what it does may list again
		during()
	}
	return live, deleting, err
}

// TestDeleteJobResumedMeanwhile: a job resumed (and ended again) while
// its deletion lists its checkpoints is not deleted: the list may have
// missed its new attempt's checkpoints, left out of every command's reach.
func TestDeleteJobResumedMeanwhile(t *testing.T) {
	l := newLocal(t)
	cat := &listHook{catalogue: catalogue{Checkpoints: memCheckpoints()}}
	l.s.cfg.Checkpoints = cat
	l.submit("j1", fmt.Sprintf(spec2, 1))
	if _, err := l.s.CancelJob(l.ctx, &apiv1.CancelJobRequest{JobId: "j1"}); err != nil {
		t.Fatal(err)
	}
	cat.during = func() {
		if _, err := l.s.ResumeJob(l.ctx, &apiv1.ResumeJobRequest{JobId: "j1"}); err != nil {
			t.Error(err)
		}
		// its new attempt commits a checkpoint, then ends
		cat.live = []checkpoint.Manifest{{Job: "j1", Step: 10}}
		if _, err := l.s.CancelJob(l.ctx, &apiv1.CancelJobRequest{JobId: "j1"}); err != nil {
			t.Error(err)
		}
	}
	if _, err := l.s.DeleteJob(l.ctx, &apiv1.DeleteJobRequest{JobId: "j1"}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("delete of a job resumed while its checkpoints were listed: %v", err)
	}
	if _, err := l.s.DeleteJob(l.ctx, &apiv1.DeleteJobRequest{JobId: "j1"}); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "steps 10") {
		t.Fatalf("delete again: %v", err)
	}
	l.job("j1")
}

// memCheckpoints is the catalogue the fakes above stand in front of: in
// memory, with fences.
func memCheckpoints() Checkpoints {
	return etcdCheckpoints{cat: checkpoint.NewMemCatalogue()}
}

// flushFences is what Run's fencing goroutine does between two ticks:
// the unfinished jobs' attempts fenced, so that the next tick places the
// pending ones.
func flushFences(ctx context.Context, s *Server) {
	if cps := s.cfg.Checkpoints; cps != nil {
		for _, j := range s.cfg.Node.Unfinished() {
			s.fences.ready(j)
		}
		s.fences.flush(ctx, cps, s.log)
	}
}

// A command job is RUNNING once all its ranks run, whether or not its
// trainer reports steps; an engine job is by its first step.
func TestCommandJobRunningWhenItsRanksRun(t *testing.T) {
	l := newLocal(t)
	for _, w := range []string{"w1", "w2"} {
		_, err := membership.NewMemory(l.members).Register(l.ctx, membership.WorkerInfo{ID: w, Address: w + ":9000", Host: "host-" + w, Commands: true,
			Resources: membership.Resources{CPUCores: 2, MemoryBytes: 4 << 30}}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
	}
	l.submit("c1", "name: c1\nruntime: command\ncommand: /bin/true\nranks: 2\nresources: {cpu_cores: 1, memory_mib: 512}\n")
	l.tick()
	j := l.job("c1")
	if j.State != pb.JobState_JOB_STATE_PLACED {
		t.Fatalf("c1 %v, want placed", j.State)
	}
	running := func(rank int32) *apiv1.TaskStatus {
		return &apiv1.TaskStatus{JobId: "c1", Attempt: j.Restarts, Rank: rank, State: apiv1.TaskState_TASK_STATE_RUNNING}
	}
	l.sync(j.Placement[0].WorkerId, running(0))
	if got := l.job("c1").State; got != pb.JobState_JOB_STATE_PLACED {
		t.Fatalf("one of two ranks running: %v", got)
	}
	l.sync(j.Placement[1].WorkerId, running(1))
	if got := l.job("c1"); got.State != pb.JobState_JOB_STATE_RUNNING || got.Reason != "Started" || got.Message != "all 2 ranks started" {
		t.Fatalf("both ranks running: %v (%s: %s)", got.State, got.Reason, got.Message)
	}
}
