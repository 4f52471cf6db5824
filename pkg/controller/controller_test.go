package controller

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-ml/switchyard/internal/freeport"
	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
	"github.com/switchyard-ml/switchyard/pkg/client"
	"github.com/switchyard-ml/switchyard/pkg/coordinator"
	"github.com/switchyard-ml/switchyard/pkg/events"
	"github.com/switchyard-ml/switchyard/pkg/jobstate"
	"github.com/switchyard-ml/switchyard/pkg/membership"
	"github.com/switchyard-ml/switchyard/pkg/security"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// harness is an in-process control plane: raft replicas with their API
// servers over loopback gRPC, in-memory membership and event bus.
type harness struct {
	t        *testing.T
	members  *membership.MemoryServer
	dir      *membership.MemoryServer
	token    string
	cat      checkpoint.Catalogue
	bus      *events.Memory
	replicas []*replica
}

type replica struct {
	node   *coordinator.Node
	srv    *Server
	addr   string
	grpc   *grpc.Server
	cancel context.CancelFunc
	done   chan struct{}
}

func quietLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func freePorts(t *testing.T, n int) []string {
	t.Helper()
	out, err := freeport.Addrs("127.0.0.1", n)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// newHarness starts n replicas bootstrapped together.
func newHarness(t *testing.T, n int, token string) *harness {
	t.Helper()
	h := &harness{t: t, members: membership.NewMemoryServer(), dir: membership.NewMemoryServer(), bus: events.NewMemory(), token: token, cat: checkpoint.NewMemCatalogue()}
	t.Cleanup(func() { h.bus.Close(); h.members.Stop(); h.dir.Stop() })
	raftAddrs := freePorts(t, n)
	var servers []coordinator.Server
	for i := range n {
		servers = append(servers, coordinator.Server{ID: fmt.Sprintf("c%d", i+1), Address: raftAddrs[i]})
	}
	for i := range n {
		cfg := coordinator.DefaultConfig()
		cfg.ID, cfg.BindAddr, cfg.DataDir = servers[i].ID, raftAddrs[i], filepath.Join(t.TempDir(), servers[i].ID)
		cfg.Bootstrap, cfg.Servers = true, servers
		cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLeaseTimeout = 300*time.Millisecond, 300*time.Millisecond, 150*time.Millisecond
		cfg.Logger = quietLogger(t)
		node, err := coordinator.NewNode(cfg)
		if err != nil {
			t.Fatal(err)
		}
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv, err := New(Config{
			Node: node, APIAddr: lis.Addr().String(),
			Workers:  membership.NewMemory(h.members),
			Replicas: membership.NewMemory(h.dir),
			Bus:      h.bus, Token: token, Tick: 50 * time.Millisecond, ProgressEvery: 100 * time.Millisecond,
			ReplicaLag:  300 * time.Millisecond,
			Checkpoints: etcdCheckpoints{cat: h.cat, log: cfg.Logger},
			Logger:      cfg.Logger,
		})
		if err != nil {
			t.Fatal(err)
		}
		r := &replica{node: node, srv: srv, addr: lis.Addr().String(), grpc: grpc.NewServer(append(security.ServerOptions(token, false), client.KeepaliveServerOptions()...)...), done: make(chan struct{})}
		apiv1.RegisterCoordinatorServer(r.grpc, srv)
		go r.grpc.Serve(lis) //nolint:errcheck
		ctx, cancel := context.WithCancel(context.Background())
		r.cancel = cancel
		go func() { defer close(r.done); srv.Run(ctx) }() //nolint:errcheck
		h.replicas = append(h.replicas, r)
		t.Cleanup(r.stop)
	}
	return h
}

func (r *replica) stop() {
	r.grpc.Stop()
	r.cancel()
	<-r.done
	r.node.Shutdown()
}

func (h *harness) leader() *replica {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, r := range h.replicas {
			if r.node.IsLeader() {
				return r
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	h.t.Fatal("no leader within 10s")
	return nil
}

func (h *harness) client(r *replica, token string) *client.Client {
	h.t.Helper()
	c, err := client.Dial(client.Options{Endpoints: []string{r.addr}, Token: token})
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	return c
}

// follower returns a replica that is not the leader, once it knows the
// leader's API address (which it needs to forward).
func (h *harness) follower() *replica {
	h.t.Helper()
	lead := h.leader()
	deadline := time.Now().Add(5 * time.Second)
	for _, r := range h.replicas {
		if r == lead {
			continue
		}
		for {
			r.srv.mu.Lock()
			_, ok := r.srv.replicas[lead.node.ID()]
			r.srv.mu.Unlock()
			if ok {
				return r
			}
			if time.Now().After(deadline) {
				h.t.Fatalf("follower %s never learnt the leader's address", r.node.ID())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	h.t.Fatal("no follower")
	return nil
}

// worker registers a fake worker in the in-memory membership.
func (h *harness) worker(id string) membership.Registration {
	h.t.Helper()
	return h.workerWith(id, func(*membership.WorkerInfo) {})
}

// silentWorker registers a worker with a long lease that never syncs: a
// worker that just died.
func (h *harness) silentWorker(id string) {
	h.t.Helper()
	reg, err := membership.NewMemory(h.members).Register(ctxT(h.t), membership.WorkerInfo{
		ID: id, Address: "127.0.0.1:12000", Resources: membership.Resources{CPUCores: 2, MemoryBytes: 4 << 30},
	}, time.Minute)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { reg.Close(context.Background()) })
}

// workerWith is worker with its registration changed by edit.
func (h *harness) workerWith(id string, edit func(*membership.WorkerInfo)) membership.Registration {
	h.t.Helper()
	info := membership.WorkerInfo{
		ID: id, Address: "127.0.0.1:1" + id[len(id)-1:] + "000", Host: "host-" + id,
		Resources: membership.Resources{CPUCores: 2, MemoryBytes: 4 << 30},
	}
	edit(&info)
	reg, err := membership.NewMemory(h.members).Register(context.Background(), info, 2*time.Second)
	if err != nil {
		h.t.Fatal(err)
	}
	// like a real agent, it syncs every few hundred milliseconds, with
	// its own token
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	token := ""
	if h.token != "" {
		token = security.WorkerToken(h.token, id)
	}
	c := h.client(h.leader(), token)
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			cctx, ccancel := context.WithTimeout(ctx, time.Second)
			c.SyncWorker(cctx, &apiv1.SyncWorkerRequest{WorkerId: id}) //nolint:errcheck // a heartbeat
			ccancel()
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	h.t.Cleanup(func() { cancel(); <-done })
	return reg
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// waitJob polls until cond holds for the job as c sees it.
func waitJob(t *testing.T, c apiv1.CoordinatorClient, id string, what string, cond func(*pb.Job) bool) *pb.Job {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	var last *pb.Job
	for time.Now().Before(deadline) {
		r, err := c.GetJob(ctxT(t), &apiv1.GetJobRequest{JobId: id})
		if err == nil {
			last = r.Job
			if cond(r.Job) {
				return r.Job
			}
		}
		time.Sleep(30 * time.Millisecond)
	}
	t.Fatalf("job %s never %s; last: %v", id, what, last)
	return nil
}

const spec2 = `name: demo
parallel: {dp: 2, ep: 2}
steps: 10
resources: {cpu_cores: 1, memory_mib: 512}
restart: {max_restarts: %d, backoff_seconds: 0}
`

func submit(t *testing.T, c apiv1.CoordinatorClient, id string, maxRestarts int) *pb.Job {
	t.Helper()
	r, err := c.SubmitJob(ctxT(t), &apiv1.SubmitJobRequest{JobId: id, Spec: []byte(fmt.Sprintf(spec2, maxRestarts))})
	if err != nil {
		t.Fatal(err)
	}
	return r.Job
}

func syncTasks(t *testing.T, c apiv1.CoordinatorClient, worker string, tasks ...*apiv1.TaskStatus) []*apiv1.Task {
	t.Helper()
	r, err := c.SyncWorker(ctxT(t), &apiv1.SyncWorkerRequest{WorkerId: worker, Tasks: tasks})
	if err != nil {
		t.Fatal(err)
	}
	return r.Tasks
}

func waitTasks(t *testing.T, c apiv1.CoordinatorClient, worker string, n int) []*apiv1.Task {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if ts := syncTasks(t, c, worker); len(ts) == n {
			return ts
		}
		time.Sleep(30 * time.Millisecond)
	}
	t.Fatalf("worker %s never got %d tasks", worker, n)
	return nil
}

func status_(task *apiv1.Task, st apiv1.TaskState, step int64) *apiv1.TaskStatus {
	return &apiv1.TaskStatus{JobId: task.JobId, Attempt: task.Attempt, Rank: task.Rank, State: st, Step: step, Loss: 2.5, TokensPerSecond: 1000}
}

// TestJobLifecycle: a job waits with a reason until enough workers join, is
// gang-placed, runs, reports progress and succeeds once every rank did.
func TestJobLifecycle(t *testing.T) {
	h := newHarness(t, 1, "")
	c := h.client(h.leader(), "")
	h.worker("w1")
	submit(t, c, "job-a", 0)
	j := waitJob(t, c, "job-a", "explains why it waits", func(j *pb.Job) bool { return pendingReason(j) != "" })
	if r := pendingReason(j); !strings.Contains(r, "needs 2 workers") {
		t.Fatalf("pending reason %q does not say what the job needs", r)
	}
	h.worker("w2")
	j = waitJob(t, c, "job-a", "placed", func(j *pb.Job) bool { return j.State == pb.JobState_JOB_STATE_PLACED })
	got := map[string]int32{}
	for _, a := range j.Placement {
		got[a.WorkerId] = a.Rank
	}
	if len(got) != 2 {
		t.Fatalf("placement %v: want two distinct workers", j.Placement)
	}
	t1, t2 := waitTasks(t, c, "w1", 1)[0], waitTasks(t, c, "w2", 1)[0]
	if t1.WorldSize != 2 || len(t1.Peers) != 2 || t1.Dp != 2 || t1.Ep != 2 || t1.Peers[t1.Rank] != "127.0.0.1:11000" {
		t.Fatalf("task %v: wrong layout or peers", t1)
	}
	// the host of every rank, for the balance group "node"
	want := make([]string, 2)
	for _, a := range j.Placement {
		want[a.Rank] = "host-" + a.WorkerId
	}
	for _, tk := range []*apiv1.Task{t1, t2} {
		if !slices.Equal(tk.Hosts, want) {
			t.Errorf("rank %d's task names the hosts %v, want %v", tk.Rank, tk.Hosts, want)
		}
	}
	r0, r1 := t1, t2
	if t1.Rank == 1 {
		r0, r1 = t2, t1
	}
	w0, w1 := "w1", "w2"
	if t1.Rank == 1 {
		w0, w1 = w1, w0
	}
	running := status_(r0, apiv1.TaskState_TASK_STATE_RUNNING, 3)
	running.Events = []*apiv1.TaskEvent{{Seq: 1, Type: "Resumed", Message: "resumed from the checkpoint of step 2"}}
	syncTasks(t, c, w0, running)
	syncTasks(t, c, w0, running) // repeated: recorded once
	j = waitJob(t, c, "job-a", "running", func(j *pb.Job) bool { return j.State == pb.JobState_JOB_STATE_RUNNING })
	if j.Progress.GetStep() != 3 || j.Progress.GetLoss() != 2.5 {
		t.Fatalf("progress %v", j.Progress)
	}
	resumed := 0
	for _, e := range j.Events {
		if e.Type == "Resumed" && e.Message == "rank 0: resumed from the checkpoint of step 2" {
			resumed++
		}
	}
	if resumed != 1 {
		t.Fatalf("%d Resumed events in %v", resumed, j.Events)
	}
	syncTasks(t, c, w0, status_(r0, apiv1.TaskState_TASK_STATE_SUCCEEDED, 10))
	time.Sleep(150 * time.Millisecond)
	if j := waitJob(t, c, "job-a", "read", func(*pb.Job) bool { return true }); j.State != pb.JobState_JOB_STATE_RUNNING {
		t.Fatalf("job is %v with one of two ranks finished", j.State)
	}
	syncTasks(t, c, w1, status_(r1, apiv1.TaskState_TASK_STATE_SUCCEEDED, 0))
	j = waitJob(t, c, "job-a", "succeeded", func(j *pb.Job) bool { return j.State == pb.JobState_JOB_STATE_SUCCEEDED })
	if j.Progress.GetStep() != 10 {
		t.Fatalf("final progress %v, want step 10", j.Progress)
	}
	if ts := syncTasks(t, c, w0); len(ts) != 0 {
		t.Fatalf("finished job still hands out tasks: %v", ts)
	}
	// the leader forgets the finished job (its memory does not grow with
	// the cluster's history)
	lead := h.leader()
	deadline := time.Now().Add(5 * time.Second)
	for {
		lead.srv.lead.Lock()
		n := len(lead.srv.term.reports) + len(lead.srv.term.lastProgress) + len(lead.srv.term.eventSeq)
		lead.srv.lead.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the leader still holds %d entries about the finished job", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// the lifecycle reached the bus as well
	msgs, err := h.bus.History(ctxT(t), events.Filter{Kind: events.KindEvent, JobID: "job-a"})
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, m := range msgs {
		types = append(types, m.Event.Type)
	}
	if got := strings.Join(types, ","); got != "Submitted,Placed,Resumed,Running,Succeeded" {
		t.Fatalf("bus events %s", got)
	}
}

// placedOnThree submits job-a (no restarts) of 2 ranks to a one-replica
// cluster of workers w1, w2 and w3 and returns a client, the workers'
// registrations and the worker of rank 1 once it is placed.
func placedOnThree(t *testing.T) (*client.Client, map[string]membership.Registration, string) {
	t.Helper()
	h := newHarness(t, 1, "")
	c := h.client(h.leader(), "")
	regs := map[string]membership.Registration{"w1": h.worker("w1"), "w2": h.worker("w2"), "w3": h.worker("w3")}
	submit(t, c, "job-a", 0)
	j := waitJob(t, c, "job-a", "placed", func(j *pb.Job) bool { return j.State == pb.JobState_JOB_STATE_PLACED })
	return c, regs, j.Placement[1].WorkerId
}

// TestWorkerLostFailsJob: with no restarts allowed, a worker whose lease
// ends fails the job with a reason naming it, and the queue moves on.
func TestWorkerLostFailsJob(t *testing.T) {
	c, regs, victim := placedOnThree(t)
	if err := regs[victim].Close(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	j := waitJob(t, c, "job-a", "failed", func(j *pb.Job) bool { return j.State == pb.JobState_JOB_STATE_FAILED })
	if j.Reason != "WorkerLost" || !strings.Contains(j.Message, victim) {
		t.Fatalf("failed with %s: %s; want WorkerLost naming %s", j.Reason, j.Message, victim)
	}
	// the queue moves on: a second job gets the two workers left
	submit(t, c, "job-b", 0)
	waitJob(t, c, "job-b", "placed", func(j *pb.Job) bool { return j.State == pb.JobState_JOB_STATE_PLACED })
}

// placedOnTwo submits job-a (max_restarts restarts) to a one-replica
// cluster of workers w1 and w2 and returns a client and w1's task once
// it is placed.
func placedOnTwo(t *testing.T, maxRestarts int) (apiv1.CoordinatorClient, *apiv1.Task) {
	t.Helper()
	h := newHarness(t, 1, "")
	c := h.client(h.leader(), "")
	h.worker("w1")
	h.worker("w2")
	submit(t, c, "job-a", maxRestarts)
	waitJob(t, c, "job-a", "placed", func(j *pb.Job) bool { return j.State == pb.JobState_JOB_STATE_PLACED })
	return c, waitTasks(t, c, "w1", 1)[0]
}

// TestDrainedWorkerRestartIsFree: a worker that says it drains and then
// leaves has not failed: its job restarts from its checkpoint, not
// counted against max_restarts (0 here), reason WorkerDrained.
func TestDrainedWorkerRestartIsFree(t *testing.T) {
	c, regs, victim := placedOnThree(t)
	if _, err := c.SyncWorker(ctxT(t), &apiv1.SyncWorkerRequest{WorkerId: victim, Draining: true}); err != nil {
		t.Fatal(err)
	}
	if err := regs[victim].Close(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	j := waitJob(t, c, "job-a", "requeued", func(j *pb.Job) bool { return j.Restarts == 1 })
	if j.State == pb.JobState_JOB_STATE_FAILED || j.FreeRestarts != 1 {
		t.Fatalf("after a drain with max_restarts 0: %s (%s: %s), free restarts %d", j.State, j.Reason, j.Message, j.FreeRestarts)
	}
	drained, free := false, false
	for _, e := range j.Events {
		drained = drained || (e.Type == "WorkerDrained" && e.WorkerId == victim)
		free = free || strings.Contains(e.Message, "not counted against max_restarts")
	}
	drained = drained && free
	if !drained {
		t.Fatalf("no WorkerDrained event saying the restart is free: %v", j.Events)
	}
}

// TestRefusedRankFailsJob: a rank its worker refused to start fails the
// job at once, however many restarts its policy allows, and says why.
func TestRefusedRankFailsJob(t *testing.T) {
	c, task := placedOnTwo(t, 3)
	refused := status_(task, apiv1.TaskState_TASK_STATE_FAILED, 0)
	refused.Message = "rank 0: data.corpus /etc/shadow is outside this worker's storage_path"
	refused.Refused = true
	syncTasks(t, c, "w1", refused)
	j := waitJob(t, c, "job-a", "failed", func(j *pb.Job) bool { return j.State == pb.JobState_JOB_STATE_FAILED })
	if j.Restarts != 0 || j.Reason != "Refused" || !strings.Contains(j.Message, "/etc/shadow is outside") || !strings.Contains(j.Message, "not restarted") {
		t.Fatalf("restarts %d, reason %s, message %q", j.Restarts, j.Reason, j.Message)
	}
}

// TestRankFailureRequeues: a failed rank requeues the job (restart policy),
// the next attempt is a new task, and reports of the old attempt are ignored.
func TestRankFailureRequeues(t *testing.T) {
	c, task := placedOnTwo(t, 1)
	if task.Attempt != 0 {
		t.Fatalf("first attempt %d", task.Attempt)
	}
	// rank 0 fails at step 7, its first report: the job's progress says
	// how far it came
	fail := status_(task, apiv1.TaskState_TASK_STATE_FAILED, 7)
	fail.Message = "exit status 1: boom"
	syncTasks(t, c, "w1", fail)
	j := waitJob(t, c, "job-a", "placed again", func(j *pb.Job) bool {
		return j.Restarts == 1 && j.State == pb.JobState_JOB_STATE_PLACED
	})
	if j.Progress.GetStep() != 7 {
		t.Errorf("progress of the failed attempt: step %d, want 7", j.Progress.GetStep())
	}
	found := false
	for _, e := range j.Events {
		found = found || (e.Type == "RankFailed" && strings.Contains(e.Message, "boom") && e.WorkerId == "w1")
	}
	if !found {
		t.Fatalf("no RankFailed event naming the error: %v", j.Events)
	}
	// the stale failure report again must not count another restart
	syncTasks(t, c, "w1", fail)
	next := waitTasks(t, c, "w1", 1)[0]
	if next.Attempt != 1 {
		t.Fatalf("second attempt %d", next.Attempt)
	}
	// the second attempt commits a checkpoint of step 4, then fails
	m := checkpoint.Manifest{Job: "job-a", Step: 4, Layout: checkpoint.Layout{TP: 1, DP: 2, EP: 2},
		Shards: []checkpoint.ShardInfo{{Name: "rank-0000/state.bin", SHA256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", Kind: checkpoint.KindParams}}}
	raw, err := checkpoint.EncodeManifest(m)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CommitCheckpoint(ctxT(t), &apiv1.CommitCheckpointRequest{JobId: "job-a", Attempt: 1, Manifest: raw}); err != nil {
		t.Fatal(err)
	}
	fail2 := status_(next, apiv1.TaskState_TASK_STATE_FAILED, 0)
	syncTasks(t, c, "w1", fail2)
	j = waitJob(t, c, "job-a", "failed", func(j *pb.Job) bool { return j.State == pb.JobState_JOB_STATE_FAILED })
	if j.Restarts != 1 || !strings.Contains(j.Message, "no restarts left") {
		t.Fatalf("restarts %d, message %q", j.Restarts, j.Message)
	}
	// resume by hand from a step that is no checkpoint: refused, nothing
	// changes
	if _, err := c.ResumeJob(ctxT(t), &apiv1.ResumeJobRequest{JobId: "job-a", FromStep: 7}); status.Code(err) != codes.NotFound ||
		!strings.Contains(err.Error(), "no committed checkpoint of step 7 (steps 4 are committed)") {
		t.Fatalf("resume from step 7: %v", err)
	}
	// from one that is: a new attempt from the chosen step
	r, err := c.ResumeJob(ctxT(t), &apiv1.ResumeJobRequest{JobId: "job-a", FromStep: 4})
	if err != nil {
		t.Fatal(err)
	}
	if r.Job.State != pb.JobState_JOB_STATE_PENDING || r.Job.Restarts != 2 {
		t.Fatalf("resumed job %v", r.Job)
	}
	resumed := waitTasks(t, c, "w1", 1)[0]
	if resumed.ResumeFromStep != 4 || resumed.Attempt != 2 {
		t.Fatalf("resumed task %v", resumed)
	}
	// the checkpoint it resumes from cannot be deleted under it
	if _, err := c.DeleteCheckpoint(ctxT(t), &apiv1.DeleteCheckpointRequest{JobId: "job-a", Step: 4}); status.Code(err) != codes.FailedPrecondition ||
		!strings.Contains(err.Error(), "resumes from it") {
		t.Fatalf("delete of the checkpoint the job resumes from: %v", err)
	}
	// the resume by hand was not an automatic restart: the policy's one
	// restart is there again
	syncTasks(t, c, "w1", status_(resumed, apiv1.TaskState_TASK_STATE_FAILED, 0))
	j = waitJob(t, c, "job-a", "restarted after the resume", func(j *pb.Job) bool { return j.Restarts == 3 })
	requeued := false
	for _, e := range j.Events {
		requeued = requeued || strings.Contains(e.Message, "restart 1 of 1")
	}
	if j.State == pb.JobState_JOB_STATE_FAILED || !requeued {
		t.Fatalf("after a resume by hand and a failure: %s: %q, events %v", j.State, j.Message, j.Events)
	}
}

// TestCancelStopsTasks: cancelling takes the job's tasks away.
func TestCancelStopsTasks(t *testing.T) {
	h := newHarness(t, 1, "")
	c := h.client(h.leader(), "")
	h.worker("w1")
	h.worker("w2")
	submit(t, c, "job-a", 0)
	waitTasks(t, c, "w1", 1)
	if _, err := c.CancelJob(ctxT(t), &apiv1.CancelJobRequest{JobId: "job-a"}); err != nil {
		t.Fatal(err)
	}
	waitTasks(t, c, "w1", 0)
	if _, err := c.CancelJob(ctxT(t), &apiv1.CancelJobRequest{JobId: "nope"}); status.Code(err) != codes.NotFound {
		t.Fatalf("cancel of an unknown job: %v", err)
	}
}

// TestFollowerForwardsAndToken: writes sent to a follower reach the leader;
// calls without the token are refused; a bad spec names its field.
func TestFollowerForwardsAndToken(t *testing.T) {
	h := newHarness(t, 3, "s3cret")
	lead, follower := h.leader(), h.follower()
	c := h.client(follower, "s3cret")
	if j := submit(t, c, "job-f", 0); j.State != pb.JobState_JOB_STATE_PENDING {
		t.Fatalf("submitted through a follower: %v", j)
	}
	if _, err := lead.node.Job("job-f"); err != nil {
		t.Fatalf("leader does not have the job: %v", err)
	}
	_, err := c.SubmitJob(ctxT(t), &apiv1.SubmitJobRequest{Spec: []byte("name: x\nparallel: {dp: 4, ep: 3}\n")})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "parallel.ep = 3") {
		t.Fatalf("bad spec: %v", err)
	}
	bad := h.client(follower, "wrong")
	if _, err := bad.ListJobs(ctxT(t), &apiv1.ListJobsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("wrong token: %v", err)
	}
	cs, err := c.ClusterStatus(ctxT(t), &apiv1.ClusterStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(cs.Replicas) != 3 || cs.LeaderId != lead.node.ID() || cs.AnsweredBy != follower.node.ID() {
		t.Fatalf("cluster status %v", cs)
	}
}

// TestRankFailureBlamesSilentWorker: a worker dies (stops syncing) while
// its lease still runs; its peer's rank fails at once. The job's failure
// names the silent worker, not the survivor, and the dead worker gets no
// new work.
func TestRankFailureBlamesSilentWorker(t *testing.T) {
	h := newHarness(t, 1, "")
	c := h.client(h.leader(), "")
	h.worker("w1")
	h.silentWorker("w2")
	submit(t, c, "job-a", 0)
	j := waitJob(t, c, "job-a", "placed on w1 and w2", func(j *pb.Job) bool { return j.State == pb.JobState_JOB_STATE_PLACED })
	if ws := fmt.Sprint(j.Placement); !strings.Contains(ws, "w2") {
		t.Fatalf("placed on %s", ws)
	}
	task := waitTasks(t, c, "w1", 1)[0]
	fail := status_(task, apiv1.TaskState_TASK_STATE_FAILED, 0)
	fail.Message = "collective aborted by a peer"
	syncTasks(t, c, "w1", fail)
	j = waitJob(t, c, "job-a", "failed", func(j *pb.Job) bool { return j.State == pb.JobState_JOB_STATE_FAILED })
	if j.Reason != "WorkerLost" || !strings.Contains(j.Message, "worker w2") || !strings.Contains(j.Message, "stopped responding") {
		t.Fatalf("failed with %s: %s; want WorkerLost naming w2", j.Reason, j.Message)
	}
	// the queue moves on without the silent worker
	h.worker("w3")
	submit(t, c, "job-b", 0)
	j = waitJob(t, c, "job-b", "placed", func(j *pb.Job) bool { return j.State == pb.JobState_JOB_STATE_PLACED })
	if ws := fmt.Sprint(j.Placement); strings.Contains(ws, "w2") {
		t.Fatalf("job-b placed on the silent worker: %s", ws)
	}
}

// TestElasticShrink: a restarted job that no longer fits is placed again
// with a smaller dp inside its elastic range; the accumulation grows so
// that the global batch stays the same.
func TestElasticShrink(t *testing.T) {
	h := newHarness(t, 1, "")
	c := h.client(h.leader(), "")
	regs := map[string]membership.Registration{"w1": h.worker("w1"), "w2": h.worker("w2")}
	spec := "name: el\nparallel: {dp: 2, ep: 1}\naccumulation: 3\nsteps: 10\nresources: {cpu_cores: 1, memory_mib: 512}\nrestart: {max_restarts: 1, backoff_seconds: 0}\nelastic: {min_dp: 1}\n"
	if _, err := c.SubmitJob(ctxT(t), &apiv1.SubmitJobRequest{JobId: "el", Spec: []byte(spec)}); err != nil {
		t.Fatal(err)
	}
	j := waitJob(t, c, "el", "placed", func(j *pb.Job) bool { return j.State == pb.JobState_JOB_STATE_PLACED })
	victim := j.Placement[1].WorkerId
	if err := regs[victim].Close(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	j = waitJob(t, c, "el", "placed again, smaller", func(j *pb.Job) bool {
		return j.State == pb.JobState_JOB_STATE_PLACED && j.Restarts == 1
	})
	if len(j.Placement) != 1 || j.PlacedDp != 1 || j.Placement[0].WorkerId == victim {
		t.Fatalf("elastic placement %v dp %d", j.Placement, j.PlacedDp)
	}
	task := waitTasks(t, c, j.Placement[0].WorkerId, 1)[0]
	if task.WorldSize != 1 || task.Dp != 1 || task.Accumulation != 6 || len(task.Peers) != 1 {
		t.Fatalf("task %v: want world 1, dp 1, accumulation 6 (2 x 3 / 1)", task)
	}
}

// TestCommitCheckpointFencedByAttempt: the current attempt's rank 0 commits
// through the coordinator; after the job was requeued, a commit from the
// old attempt is refused and the catalogue keeps what it had.
func TestCommitCheckpointFencedByAttempt(t *testing.T) {
	h := newHarness(t, 1, "")
	c := h.client(h.leader(), "")
	h.worker("w1")
	h.worker("w2")
	submit(t, c, "job-a", 1)
	waitJob(t, c, "job-a", "placed", func(j *pb.Job) bool { return j.State == pb.JobState_JOB_STATE_PLACED })
	manifest := func(step int64) []byte {
		m := checkpoint.Manifest{Job: "job-a", Step: step, Layout: checkpoint.Layout{TP: 1, DP: 2, EP: 2},
			Shards: []checkpoint.ShardInfo{{Name: "rank-0000/state.bin", Size: 0, SHA256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", Kind: checkpoint.KindParams}},
			Meta:   map[string]string{checkpoint.MetaValLoss: "2.25"}}
		b, err := checkpoint.EncodeManifest(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	if _, err := c.CommitCheckpoint(ctxT(t), &apiv1.CommitCheckpointRequest{JobId: "job-a", Attempt: 0, Manifest: manifest(10)}); err != nil {
		t.Fatal(err)
	}
	_, err := c.CommitCheckpoint(ctxT(t), &apiv1.CommitCheckpointRequest{JobId: "job-a", Attempt: 0, Manifest: manifest(10)})
	if status.Code(err) != codes.AlreadyExists {
		t.Fatalf("second commit of step 10: %v", err)
	}
	task := waitTasks(t, c, "w1", 1)[0]
	syncTasks(t, c, "w1", status_(task, apiv1.TaskState_TASK_STATE_FAILED, 0))
	waitJob(t, c, "job-a", "requeued", func(j *pb.Job) bool { return j.Restarts == 1 })
	_, err = c.CommitCheckpoint(ctxT(t), &apiv1.CommitCheckpointRequest{JobId: "job-a", Attempt: 0, Manifest: manifest(20)})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "attempt 0 is over") {
		t.Fatalf("commit from the abandoned attempt: %v", err)
	}
	if m, err := h.cat.Latest(ctxT(t), "job-a"); err != nil || m.Step != 10 {
		t.Fatalf("catalogue latest %d %v, want step 10", m.Step, err)
	}
	// the current attempt cannot commit what it cannot have written
	waitJob(t, c, "job-a", "placed again", func(j *pb.Job) bool { return j.Restarts == 1 && j.State == pb.JobState_JOB_STATE_PLACED })
	for _, m := range [][]byte{manifest(999_999_999_999), func() []byte {
		b, _ := checkpoint.EncodeManifest(checkpoint.Manifest{Job: "job-a", Step: 8, Layout: checkpoint.Layout{TP: 1, DP: 4, EP: 2},
			Shards: []checkpoint.ShardInfo{{Name: "rank-0000/state.bin", SHA256: strings.Repeat("0", 64), Kind: checkpoint.KindParams}}})
		return b
	}()} {
		_, err = c.CommitCheckpoint(ctxT(t), &apiv1.CommitCheckpointRequest{JobId: "job-a", Attempt: 1, Manifest: m})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "past the job's last step 10") && !strings.Contains(err.Error(), "a checkpoint of 4 ranks") {
			t.Errorf("an implausible commit: %v", err)
		}
	}
	if m, err := h.cat.Latest(ctxT(t), "job-a"); err != nil || m.Step != 10 {
		t.Fatalf("catalogue latest %d %v after implausible commits, want step 10", m.Step, err)
	}
	cps, err := c.ListCheckpoints(ctxT(t), &apiv1.ListCheckpointsRequest{JobId: "job-a"})
	if err != nil || len(cps.Checkpoints) != 1 || cps.Checkpoints[0].Step != 10 {
		t.Fatalf("list: %v %v", cps, err)
	}
	if v := cps.Checkpoints[0].ValLoss; v != 2.25 {
		t.Errorf("list: val loss %v, want the manifest's 2.25", v)
	}
}

// TestMalformedRPCs: requests no well-behaved client sends are answered
// with an error naming the problem (or ignored where the protocol says
// so), never a crash.
func TestMalformedRPCs(t *testing.T) {
	h := newHarness(t, 1, "")
	c := h.client(h.leader(), "")
	h.worker("w1")
	h.worker("w2")
	submit(t, c, "job-a", 0)
	waitJob(t, c, "job-a", "placed", func(j *pb.Job) bool { return j.State == pb.JobState_JOB_STATE_PLACED })
	ctx := ctxT(t)
	code := func(err error) codes.Code { return status.Code(err) }

	if _, err := c.SubmitJob(ctx, &apiv1.SubmitJobRequest{Spec: []byte("\x00\xff{{{")}); code(err) != codes.InvalidArgument {
		t.Errorf("garbage spec: %v", err)
	}
	if _, err := c.SubmitJob(ctx, &apiv1.SubmitJobRequest{JobId: "Bad ID!", Spec: []byte("name: x\n")}); code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "Bad ID!") {
		t.Errorf("bad job id: %v", err)
	}
	if _, err := c.SyncWorker(ctx, &apiv1.SyncWorkerRequest{}); code(err) != codes.InvalidArgument {
		t.Errorf("sync without a worker id: %v", err)
	}
	// reports of ranks that do not exist, of jobs that do not exist, of
	// other workers' ranks and of unknown states are ignored
	for _, ts := range []*apiv1.TaskStatus{
		{JobId: "job-a", Rank: -1, State: apiv1.TaskState_TASK_STATE_FAILED},
		{JobId: "job-a", Rank: 99, State: apiv1.TaskState_TASK_STATE_FAILED},
		{JobId: "nope", Rank: 0, State: apiv1.TaskState_TASK_STATE_SUCCEEDED},
		{JobId: "job-a", Rank: 0, Attempt: -5, State: apiv1.TaskState_TASK_STATE_FAILED},
		{JobId: "job-a", Rank: 0, State: apiv1.TaskState(42), Step: -3},
		{JobId: "", Rank: 0},
	} {
		if _, err := c.SyncWorker(ctx, &apiv1.SyncWorkerRequest{WorkerId: "w-stranger", Tasks: []*apiv1.TaskStatus{ts}}); err != nil {
			t.Errorf("report %v: %v", ts, err)
		}
	}
	if j := waitJob(t, c, "job-a", "read", func(*pb.Job) bool { return true }); j.State != pb.JobState_JOB_STATE_PLACED || j.Restarts != 0 {
		t.Fatalf("a stranger's reports changed the job: %v %s", j.State, j.Message)
	}
	for _, m := range [][]byte{nil, []byte("{"), []byte(`{"job":"job-a","step":-1}`), []byte(`{"job":"other","step":5,"layout":{"tp":1,"dp":1,"ep":1},"shards":[]}`)} {
		if _, err := c.CommitCheckpoint(ctx, &apiv1.CommitCheckpointRequest{JobId: "job-a", Manifest: m}); code(err) != codes.InvalidArgument {
			t.Errorf("manifest %q: %v", m, err)
		}
	}
	if _, err := c.GetJob(ctx, &apiv1.GetJobRequest{JobId: ""}); code(err) != codes.InvalidArgument {
		t.Errorf("empty job id: %v", err)
	}
	if _, err := c.ResumeJob(ctx, &apiv1.ResumeJobRequest{JobId: "job-a", FromStep: -1}); code(err) == codes.OK {
		t.Errorf("resume of a placed job from step -1 accepted")
	}
	if _, err := c.AddReplica(ctx, &apiv1.AddReplicaRequest{Id: "x"}); code(err) != codes.InvalidArgument {
		t.Errorf("add replica without an address: %v", err)
	}
	if _, err := c.DeleteCheckpoint(ctx, &apiv1.DeleteCheckpointRequest{JobId: "nope", Step: 1}); code(err) != codes.NotFound {
		t.Errorf("delete for an unknown job: %v", err)
	}
	if _, err := c.DeleteCheckpoint(ctx, &apiv1.DeleteCheckpointRequest{JobId: "job-a", Step: -1}); code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "steps are >= 0") {
		t.Errorf("delete of step -1: %v", err)
	}
	if _, err := c.VerifyCheckpoint(ctx, &apiv1.VerifyCheckpointRequest{JobId: "job-a", Step: -1}); code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "steps are >= 0") {
		t.Errorf("verify of step -1: %v", err)
	}
	if _, err := c.DeleteCheckpoint(ctx, &apiv1.DeleteCheckpointRequest{JobId: "job-a", Step: 7}); code(err) != codes.NotFound || !strings.Contains(err.Error(), "no committed checkpoint of step 7") {
		t.Errorf("delete of a step never committed: %v", err)
	}
}

// TestFollowerReadsWaitForTheLeader: a follower's streams deny only a job
// the leader does not know; for a job it has not yet replicated (a replica
// that just restarted is seconds behind) it waits, and a replica that
// cannot catch up answers UNAVAILABLE, which clients retry, never NOT_FOUND.
// Its GetJob and ListJobs are the leader's answers, never its own stale
// state.
func TestFollowerReadsWaitForTheLeader(t *testing.T) {
	h := newHarness(t, 3, "")
	lead, follower := h.leader(), h.follower()
	lc, fc := h.client(lead, ""), h.client(follower, "")
	logs := func(c apiv1.CoordinatorClient, id string) error {
		s, err := c.JobLogs(ctxT(t), &apiv1.JobLogsRequest{JobId: id})
		if err != nil {
			return err
		}
		for {
			if _, err := s.Recv(); err != nil {
				if errors.Is(err, io.EOF) {
					return nil
				}
				return err
			}
		}
	}
	start := time.Now()
	if err := logs(fc, "no-such-job"); status.Code(err) != codes.NotFound {
		t.Fatalf("unknown job through a follower: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("not found took %v: the follower waited instead of asking the leader", d)
	}
	submit(t, lc, "job-r", 0)
	if err := logs(fc, "job-r"); err != nil {
		t.Fatalf("logs of a job submitted through the leader, read through a follower: %v", err)
	}
	if r, err := fc.GetJob(ctxT(t), &apiv1.GetJobRequest{JobId: "job-r"}); err != nil || r.Job.State != pb.JobState_JOB_STATE_PENDING {
		t.Fatalf("job-r through the follower: %v, %v", r, err)
	}
	// cut the follower off: it keeps its state but receives nothing more
	if err := follower.node.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if _, err := lc.CancelJob(ctxT(t), &apiv1.CancelJobRequest{JobId: "job-r"}); err != nil {
		t.Fatal(err)
	}
	// its job-r is still pending: it must not say so (the client retries
	// UNAVAILABLE until its deadline)
	unavailable := func(err error) bool {
		return status.Code(err) == codes.Unavailable || status.Code(err) == codes.DeadlineExceeded
	}
	short := func() context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		t.Cleanup(cancel)
		return ctx
	}
	if r, err := fc.GetJob(short(), &apiv1.GetJobRequest{JobId: "job-r"}); !unavailable(err) {
		t.Fatalf("a job cancelled through the leader, read through the cut-off follower: %v, %v (want no answer, not its stale state)", r.GetJob().GetState(), err)
	}
	if r, err := fc.ListJobs(short(), &apiv1.ListJobsRequest{}); !unavailable(err) {
		t.Fatalf("jobs listed by the cut-off follower: %v, %v", r, err)
	}
	submit(t, lc, "job-s", 0)
	err := logs(fc, "job-s")
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "job-s") {
		t.Fatalf("a job the cut-off follower never received: %v (want UNAVAILABLE naming the job)", err)
	}
	t.Logf("cut-off follower: %v", err)
}

// TestDrainingWorker: a worker that says it is draining gets no new ranks,
// and its syncs carry its jobs' newest committed checkpoint.
func TestDrainingWorker(t *testing.T) {
	h := newHarness(t, 1, "")
	c := h.client(h.leader(), "")
	h.worker("w1")
	// w3 drains: its registration and its syncs say so (the registration
	// for a leader elected after the drain began)
	w3 := membership.WorkerInfo{ID: "w3", Address: "127.0.0.1:13000", Host: "host-w3", Resources: membership.Resources{CPUCores: 2, MemoryBytes: 4 << 30}, Draining: true}
	reg3, err := membership.NewMemory(h.members).Register(context.Background(), w3, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var draining atomic.Bool
	draining.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { // w3's agent: syncs every 200ms, draining or not
		defer close(done)
		for ctx.Err() == nil {
			cctx, ccancel := context.WithTimeout(ctx, time.Second)
			c.SyncWorker(cctx, &apiv1.SyncWorkerRequest{WorkerId: "w3", Draining: draining.Load()}) //nolint:errcheck // a heartbeat
			ccancel()
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })

	submit(t, c, "job-d", 0) // needs 2 workers: w1 and the draining w3 are not enough
	j := waitJob(t, c, "job-d", "explains why it waits", func(j *pb.Job) bool { return pendingReason(j) != "" })
	time.Sleep(time.Second) // several supervision ticks
	if j = waitJob(t, c, "job-d", "still pending", func(*pb.Job) bool { return true }); j.State != pb.JobState_JOB_STATE_PENDING || len(j.Placement) != 0 {
		t.Fatalf("job placed with a draining worker: %v %v", j.State, j.Placement)
	}
	draining.Store(false) // w3 started again
	w3.Draining = false
	if err := reg3.Update(ctxT(t), w3); err != nil {
		t.Fatal(err)
	}
	j = waitJob(t, c, "job-d", "placed once w3 takes work", func(j *pb.Job) bool { return j.State == pb.JobState_JOB_STATE_PLACED })
	if w := placedWorkers(j); !slices.Equal(w, []string{"w1", "w3"}) {
		t.Fatalf("placed on %v", w)
	}

	var raw []byte
	m := checkpoint.Manifest{Job: "job-d", Step: 4, Layout: checkpoint.Layout{TP: 1, DP: 2, EP: 2},
		Shards: []checkpoint.ShardInfo{{Name: "rank-0000/state.bin", SHA256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", Kind: checkpoint.KindParams}}}
	raw, err = checkpoint.EncodeManifest(m)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CommitCheckpoint(ctxT(t), &apiv1.CommitCheckpointRequest{JobId: "job-d", Attempt: 0, Manifest: raw}); err != nil {
		t.Fatal(err)
	}
	r, err := c.SyncWorker(ctxT(t), &apiv1.SyncWorkerRequest{WorkerId: "w1", Draining: true})
	if err != nil || len(r.Tasks) != 1 || r.Tasks[0].CheckpointStep != 4 {
		t.Fatalf("draining sync: %v %v, want the task with checkpoint step 4", r, err)
	}
	if ts := syncTasks(t, c, "w1"); len(ts) != 1 || ts[0].CheckpointStep != 0 {
		t.Fatalf("a sync that is not draining: %v", ts)
	}
}

func placedWorkers(j *pb.Job) []string {
	var out []string
	for _, a := range j.Placement {
		out = append(out, a.WorkerId)
	}
	slices.Sort(out)
	return out
}

// TestCommandJobsGoWhereCommandsRun: a command job is placed only on
// workers whose config allows command jobs (their label says nothing
// either way), and waits, saying so, while too few of them are free.
// A job whose corpus only some workers allow goes to those (and to the
// workers that do not say); one that needs more waits naming the path.
func TestJobsGoWhereTheirPathsAreAllowed(t *testing.T) {
	h := newHarness(t, 1, "")
	c := h.client(h.leader(), "")
	h.workerWith("w1", func(w *membership.WorkerInfo) { w.Roots = []string{"/srv/sy"} })
	h.workerWith("w2", func(w *membership.WorkerInfo) { w.Roots = []string{"/srv/sy", "/data"} })
	h.workerWith("w3", func(w *membership.WorkerInfo) { w.Roots = []string{"/srv/sy", "/datasets"} })
	const spec = `name: p
data: {corpus: /data/c.jsonl}
parallel: {dp: %d}
resources: {cpu_cores: 1, memory_mib: 512}
`
	if _, err := c.SubmitJob(ctxT(t), &apiv1.SubmitJobRequest{JobId: "one", Spec: []byte(fmt.Sprintf(spec, 1))}); err != nil {
		t.Fatal(err)
	}
	j := waitJob(t, c, "one", "placed", func(j *pb.Job) bool { return j.State == pb.JobState_JOB_STATE_PLACED })
	if len(j.Placement) != 1 || j.Placement[0].WorkerId != "w2" {
		t.Fatalf("placement %v, want w2 (the one worker that allows /data)", j.Placement)
	}
	if _, err := c.SubmitJob(ctxT(t), &apiv1.SubmitJobRequest{JobId: "two", Spec: []byte(fmt.Sprintf(spec, 2))}); err != nil {
		t.Fatal(err)
	}
	j = waitJob(t, c, "two", "pending with a reason", func(j *pb.Job) bool {
		return strings.Contains(jobstate.PendingReason(j), "allowing /data/c.jsonl (storage_path or allowed_paths); the cluster has only 1 such worker")
	})
	if j.State != pb.JobState_JOB_STATE_PENDING {
		t.Fatalf("two: %v %q", j.State, jobstate.PendingReason(j))
	}
	// the cluster cannot place it as it is, whatever is free: not for
	// its size
	if got := scheduledReason(j); got != "Unplaceable" {
		t.Errorf("two's Scheduled condition: reason %q, want Unplaceable", got)
	}
	t.Logf("two waits: %s", jobstate.PendingReason(j))
	// a worker that says nothing of its paths (an older one) may take it:
	// two now waits only for w2, busy with one
	h.worker("w4")
	j = waitJob(t, c, "two", "pending for a busy worker", func(j *pb.Job) bool {
		return strings.Contains(jobstate.PendingReason(j), "allowing /data/c.jsonl (storage_path or allowed_paths), 1 free (1 busy)")
	})
	if got := scheduledReason(j); got != "InsufficientWorkers" {
		t.Errorf("two's Scheduled condition: reason %q, want InsufficientWorkers", got)
	}
}

// scheduledReason is the reason of j's Scheduled condition.
func scheduledReason(j *pb.Job) string {
	for _, c := range j.GetConditions() {
		if c.GetType() == jobstate.CondScheduled {
			return c.GetReason()
		}
	}
	return ""
}

// TestGPUJobsGoWhereTheyFit: a GPU job's rank goes only to a slot whose
// GPU holds what the engine needs (runconfig's bound for a cuda engine
// job), and a job that only too small GPUs could take waits saying so.
func TestGPUJobsGoWhereTheyFit(t *testing.T) {
	h := newHarness(t, 1, "")
	c := h.client(h.leader(), "")
	h.workerWith("w1", func(w *membership.WorkerInfo) {
		w.Resources.GPUs, w.Slots = 2, 2
		w.GPUDevices = []membership.GPU{{Index: 0, Name: "small GPU", MemoryMiB: 1024}, {Index: 1, Name: "large GPU", MemoryMiB: 8192}}
	})
	const spec = "name: g\ndevice: cuda\nmodel: {preset: tiny}\nresources: {cpu_cores: 1, memory_mib: 512, gpus: 1}\n"
	for _, id := range []string{"one", "two"} {
		if _, err := c.SubmitJob(ctxT(t), &apiv1.SubmitJobRequest{JobId: id, Spec: []byte(spec)}); err != nil {
			t.Fatal(err)
		}
	}
	j := waitJob(t, c, "one", "placed", func(j *pb.Job) bool { return j.State == pb.JobState_JOB_STATE_PLACED })
	if len(j.Placement) != 1 || j.Placement[0].WorkerId != "w1" || j.Placement[0].Slot != 1 {
		t.Fatalf("placement %v, want w1's slot 1 (the 8 GiB GPU)", j.Placement)
	}
	j = waitJob(t, c, "two", "pending with a reason", func(j *pb.Job) bool {
		return strings.Contains(jobstate.PendingReason(j), "MiB or more, 0 free (1 busy); the others cannot take it (1 with too little GPU memory)")
	})
	t.Logf("two waits: %s", jobstate.PendingReason(j))
}

// TestClusterStatusInventory: what a worker registers of its machine (its
// GPUs with their links, the paths jobs may use) reaches cluster status.
func TestClusterStatusInventory(t *testing.T) {
	h := newHarness(t, 1, "")
	c := h.client(h.leader(), "")
	h.workerWith("w1", func(w *membership.WorkerInfo) {
		w.Resources.GPUs, w.Slots = 2, 2
		w.GPUDevices = []membership.GPU{{Index: 0, UUID: "GPU-a", Name: "NVIDIA H100", MemoryMiB: 81559, Links: map[int]string{1: "NV18"}},
			{Index: 1, UUID: "GPU-b", Name: "NVIDIA H100", MemoryMiB: 81559, Links: map[int]string{0: "NV18"}}}
		w.Roots = []string{"/srv/sy", "/data"}
	})
	cs, err := c.ClusterStatus(ctxT(t), &apiv1.ClusterStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(cs.Workers) != 1 {
		t.Fatalf("workers %v", cs.Workers)
	}
	w := cs.Workers[0]
	if g := w.GetGpuDevices(); len(g) != 2 || g[0].GetUuid() != "GPU-a" || !maps.Equal(g[0].GetLinks(), map[int32]string{1: "NV18"}) || !maps.Equal(g[1].GetLinks(), map[int32]string{0: "NV18"}) {
		t.Errorf("GPUs %v", g)
	}
	if !slices.Equal(w.GetRoots(), []string{"/srv/sy", "/data"}) {
		t.Errorf("roots %v", w.GetRoots())
	}
}

func TestCommandJobsGoWhereCommandsRun(t *testing.T) {
	h := newHarness(t, 1, "")
	c := h.client(h.leader(), "")
	h.workerWith("w1", func(w *membership.WorkerInfo) { w.Labels = map[string]string{"allow_commands": "true"} }) // a label is not the setting
	h.workerWith("w2", func(w *membership.WorkerInfo) { w.Commands = true })
	h.worker("w3")
	const cmdSpec = `name: cmd
runtime: command
command: /bin/true
ranks: %d
resources: {cpu_cores: 1, memory_mib: 512}
`
	if _, err := c.SubmitJob(ctxT(t), &apiv1.SubmitJobRequest{JobId: "one", Spec: []byte(fmt.Sprintf(cmdSpec, 1))}); err != nil {
		t.Fatal(err)
	}
	j := waitJob(t, c, "one", "placed", func(j *pb.Job) bool { return j.State == pb.JobState_JOB_STATE_PLACED })
	if len(j.Placement) != 1 || j.Placement[0].WorkerId != "w2" {
		t.Fatalf("placement %v, want w2 (the one worker that runs commands)", j.Placement)
	}
	if _, err := c.SubmitJob(ctxT(t), &apiv1.SubmitJobRequest{JobId: "two", Spec: []byte(fmt.Sprintf(cmdSpec, 2))}); err != nil {
		t.Fatal(err)
	}
	j = waitJob(t, c, "two", "pending with a reason", func(j *pb.Job) bool {
		return strings.Contains(jobstate.PendingReason(j), "allowing command jobs (allow_commands: true in the worker's config); the cluster has only 1 such worker")
	})
	if j.State != pb.JobState_JOB_STATE_PENDING {
		t.Fatalf("two: %v %q", j.State, jobstate.PendingReason(j))
	}
	t.Logf("two waits: %s", jobstate.PendingReason(j))
	// an engine job still goes anywhere
	submit(t, c, "engine", 0)
	j = waitJob(t, c, "engine", "placed", func(j *pb.Job) bool { return j.State == pb.JobState_JOB_STATE_PLACED })
	for _, a := range j.Placement {
		if a.WorkerId == "w2" {
			t.Fatalf("engine job on w2, busy with the command job: %v", j.Placement)
		}
	}
}

// TestJobsAskForRankUserWorkers: a job whose placement asks for
// rank_user=true runs only on a worker whose config sets rank_user, not
// on one that merely claims the label; cluster status says which user.
func TestJobsAskForRankUserWorkers(t *testing.T) {
	h := newHarness(t, 1, "")
	c := h.client(h.leader(), "")
	h.workerWith("w1", func(w *membership.WorkerInfo) { w.Labels = map[string]string{"rank_user": "true"} }) // a label is not the setting
	h.workerWith("w2", func(w *membership.WorkerInfo) { w.RankUser = "trainer" })
	h.worker("w3")
	spec := "name: iso\nsteps: 5\nplacement: {host_labels: {rank_user: \"true\"}}\nresources: {cpu_cores: 1, memory_mib: 512}\n"
	if _, err := c.SubmitJob(ctxT(t), &apiv1.SubmitJobRequest{JobId: "iso", Spec: []byte(spec)}); err != nil {
		t.Fatal(err)
	}
	j := waitJob(t, c, "iso", "placed", func(j *pb.Job) bool { return j.State == pb.JobState_JOB_STATE_PLACED })
	if len(j.Placement) != 1 || j.Placement[0].WorkerId != "w2" {
		t.Fatalf("placement %v, want w2 (the one worker whose ranks run as rank_user)", j.Placement)
	}
	two := strings.Replace(spec, "name: iso", "name: iso\nparallel: {dp: 2}", 1)
	if _, err := c.SubmitJob(ctxT(t), &apiv1.SubmitJobRequest{JobId: "iso-2", Spec: []byte(two)}); err != nil {
		t.Fatal(err)
	}
	waitJob(t, c, "iso-2", "pending with a reason", func(j *pb.Job) bool {
		return strings.Contains(jobstate.PendingReason(j), "running ranks as another OS user (rank_user in the worker's config)")
	})
	cs, err := c.ClusterStatus(ctxT(t), &apiv1.ClusterStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range cs.Workers {
		if want := map[string]string{"w2": "trainer"}[w.Id]; w.GetRankUser() != want {
			t.Errorf("%s: rank user %q, want %q", w.Id, w.GetRankUser(), want)
		}
	}
}

// TestClusterStatusSaysWhoIsSilent: cluster status tells a worker that
// syncs (healthy) from one registered but silent (a worker killed -9,
// whose lease still runs) and one shutting down, whichever replica
// answers: a follower asks the leader, which alone sees the syncs.
func TestClusterStatusSaysWhoIsSilent(t *testing.T) {
	h := newHarness(t, 3, "")
	h.worker("w1")
	h.workerWith("w3", func(w *membership.WorkerInfo) { w.Draining = true })
	h.silentWorker("w2")
	want := map[string]string{"w1": "healthy", "w2": "silent", "w3": "draining"}
	for _, r := range []*replica{h.leader(), h.follower()} {
		c := h.client(r, "")
		var got map[string]string
		deadline := time.Now().Add(15 * time.Second)
		for {
			cs, err := c.ClusterStatus(ctxT(t), &apiv1.ClusterStatusRequest{})
			if err != nil {
				t.Fatal(err)
			}
			got = map[string]string{}
			var silentFor float64
			for _, w := range cs.Workers {
				got[w.Id] = w.Health
				if w.Healthy != (w.Health == "healthy") {
					t.Errorf("%s: healthy %v with health %q", w.Id, w.Healthy, w.Health)
				}
				if w.Id == "w2" {
					silentFor = w.SecondsSinceSync
				}
			}
			if maps.Equal(got, want) {
				if silentFor < 1.2 {
					t.Errorf("w2 silent for %.1fs, less than the silence limit", silentFor)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("answered by %s: health %v, want %v", cs.AnsweredBy, got, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}
