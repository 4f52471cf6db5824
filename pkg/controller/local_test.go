package controller

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/switchyard-ml/switchyard/pkg/coordinator"
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

func (r *localReplica) ID() string                     { return "local" }
func (r *localReplica) IsLeader() bool                 { return true }
func (r *localReplica) Leader() (string, string)       { return "local", "" }
func (r *localReplica) Barrier(context.Context) error  { return nil }
func (r *localReplica) Job(id string) (*pb.Job, error) { return r.fsm.Job(id) }
func (r *localReplica) Jobs() []*pb.Job                { return r.fsm.Jobs() }
func (r *localReplica) Unfinished() []*pb.Job          { return r.fsm.Unfinished() }
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

// The leader's supervision, driven one tick at a time on a fake clock, with
// no raft, no gRPC and no goroutine of the server running: a job waits for
// workers with a reason, is gang-placed, hands out its tasks, and a rank
// failure is held for the grace period, then requeues the job.
func TestSupervisionWithoutNetwork(t *testing.T) {
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
	ctx := ctxT(t)
	tick := func() {
		t.Helper()
		if err := s.refresh(ctx); err != nil {
			t.Fatal(err)
		}
		h := s.hold()
		h.tick(ctx)
		h.release()
	}
	job := func() *pb.Job {
		t.Helper()
		r, err := s.GetJob(ctx, &apiv1.GetJobRequest{JobId: "j1"})
		if err != nil {
			t.Fatal(err)
		}
		return r.Job
	}
	sync := func(w string, ts ...*apiv1.TaskStatus) []*apiv1.Task {
		t.Helper()
		r, err := s.SyncWorker(ctx, &apiv1.SyncWorkerRequest{WorkerId: w, Tasks: ts})
		if err != nil {
			t.Fatal(err)
		}
		return r.Tasks
	}
	register := func(id string) {
		t.Helper()
		_, err := membership.NewMemory(members).Register(ctx, membership.WorkerInfo{ID: id, Address: id + ":9000", Host: "host-" + id,
			Resources: membership.Resources{CPUCores: 2, MemoryBytes: 4 << 30}}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
	}

	if _, err := s.SubmitJob(ctx, &apiv1.SubmitJobRequest{JobId: "j1", Spec: []byte(fmt.Sprintf(spec2, 1))}); err != nil {
		t.Fatal(err)
	}
	register("w1")
	tick()
	if r := pendingReason(job()); !strings.Contains(r, "needs 2 workers") {
		t.Fatalf("with one worker: pending reason %q", r)
	}
	register("w2")
	tick()
	if j := job(); j.State != pb.JobState_JOB_STATE_PLACED || len(j.Placement) != 2 {
		t.Fatalf("with two workers: %v placement %v, want PLACED on both", j.State, j.Placement)
	}
	t1, t2 := sync("w1"), sync("w2")
	if len(t1) != 1 || len(t2) != 1 || t1[0].Rank == t2[0].Rank {
		t.Fatalf("tasks %v and %v: want one rank each", t1, t2)
	}
	sync("w1", status_(t1[0], apiv1.TaskState_TASK_STATE_RUNNING, 1))
	sync("w2", status_(t2[0], apiv1.TaskState_TASK_STATE_FAILED, 1))
	tick()
	if j := job(); j.State != pb.JobState_JOB_STATE_RUNNING {
		t.Fatalf("a rank failure inside the grace period: job %v, want still RUNNING", j.State)
	}
	clock.add(s.cfg.FailureGrace)
	sync("w1", status_(t1[0], apiv1.TaskState_TASK_STATE_RUNNING, 2)) // both workers keep syncing
	sync("w2", status_(t2[0], apiv1.TaskState_TASK_STATE_FAILED, 1))
	tick()
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
