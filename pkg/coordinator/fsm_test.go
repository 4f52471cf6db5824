package coordinator

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// Command builders shared by the tests of this package.
func submitCmd(now int64, id string, world int32) *pb.Command {
	return &pb.Command{UnixNano: now, Op: &pb.Command_SubmitJob{SubmitJob: &pb.SubmitJob{
		JobId: id, Name: "tiny-" + id, Spec: []byte("model: tiny\nsteps: 10\n"), WorldSize: world, TotalSteps: 10,
	}}}
}

func placeCmd(now int64, id string, workers ...string) *pb.Command {
	p := &pb.PlaceJob{JobId: id}
	for r, w := range workers {
		p.Placement = append(p.Placement, &pb.RankAssignment{Rank: int32(r), WorkerId: w})
	}
	return &pb.Command{UnixNano: now, Op: &pb.Command_PlaceJob{PlaceJob: p}}
}

func progressCmd(now int64, id string, step int64, loss float64) *pb.Command {
	return &pb.Command{UnixNano: now, Op: &pb.Command_JobProgress{JobProgress: &pb.JobProgress{JobId: id, Step: step, Loss: loss}}}
}

func stateCmd(now int64, id string, st pb.JobState, reason, msg string, cond *pb.Condition) *pb.Command {
	return &pb.Command{UnixNano: now, Op: &pb.Command_SetJobState{SetJobState: &pb.SetJobState{
		JobId: id, State: st, Reason: reason, Message: msg, Condition: cond,
	}}}
}

func cancelCmd(now int64, id string) *pb.Command {
	return &pb.Command{UnixNano: now, Op: &pb.Command_CancelJob{CancelJob: &pb.CancelJob{JobId: id, Reason: "UserCancelled"}}}
}

func requeueCmd(now int64, id, msg string) *pb.Command {
	return &pb.Command{UnixNano: now, Op: &pb.Command_RequeueJob{RequeueJob: &pb.RequeueJob{JobId: id, Reason: "WorkerLost", Message: msg}}}
}

func eventCmd(now int64, id, typ, msg string) *pb.Command {
	return &pb.Command{UnixNano: now, Op: &pb.Command_RecordEvent{RecordEvent: &pb.RecordEvent{JobId: id, Event: &pb.JobEvent{Type: typ, Message: msg}}}}
}

// history is a command sequence that exercises every command and state.
func history() []*pb.Command {
	return []*pb.Command{
		submitCmd(100, "a", 2),
		submitCmd(101, "b", 1),
		submitCmd(102, "c", 4),
		submitCmd(103, "a", 2), // idempotent retry
		placeCmd(110, "a", "w1", "w2"),
		progressCmd(120, "a", 1, 5.5),
		eventCmd(121, "a", "Checkpoint", "step 1 saved"),
		stateCmd(122, "a", pb.JobState_JOB_STATE_RUNNING, "", "", &pb.Condition{Type: "WorkersHealthy", Status: true, Reason: "AllAlive"}),
		func() *pb.Command {
			c := progressCmd(130, "a", 10, 3.25)
			c.GetJobProgress().Gpus = []*pb.GPUStat{{Rank: 1, Uuid: "GPU-b", UtilPct: 93, MemUsedBytes: 7 << 30, MemTotalBytes: 80 << 30}}
			return c
		}(),
		stateCmd(131, "a", pb.JobState_JOB_STATE_SUCCEEDED, "Completed", "10/10 steps", nil),
		placeCmd(140, "b", "w3"),
		requeueCmd(141, "b", "worker w3 lease expired"),
		placeCmd(142, "b", "w4"),
		stateCmd(143, "b", pb.JobState_JOB_STATE_FAILED, "WorkerLost", "worker w4 lease expired",
			&pb.Condition{Type: "WorkersHealthy", Status: false, Reason: "LeaseExpired", Message: "w4"}),
		stateCmd(149, "c", pb.JobState_JOB_STATE_PENDING, "", "", &pb.Condition{Type: "Scheduled", Status: false, Reason: "Unplaceable", Message: "needs 4 workers"}),
		cancelCmd(150, "c"),
		submitCmd(160, "d", 1),
	}
}

func applyAll(t *testing.T, f *FSM, cmds []*pb.Command) {
	t.Helper()
	for i, c := range cmds {
		data, err := proto.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		r := f.Apply(&raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: data}).(ApplyResult)
		if r.Err != nil {
			t.Fatalf("command %d (%v): %v", i, c, r.Err)
		}
	}
}

func TestFSMLifecycle(t *testing.T) {
	f := NewFSM(0)
	applyAll(t, f, history())

	jobs := f.Jobs()
	if len(jobs) != 4 {
		t.Fatalf("%d jobs, want 4 (the retried submit must not duplicate)", len(jobs))
	}
	for i, want := range []string{"a", "b", "c", "d"} {
		if jobs[i].Id != want || jobs[i].SubmitSeq != uint64(i+1) {
			t.Fatalf("job %d = %s seq %d, want %s seq %d", i, jobs[i].Id, jobs[i].SubmitSeq, want, i+1)
		}
	}
	a, _ := f.Job("a")
	if a.State != pb.JobState_JOB_STATE_SUCCEEDED || a.Progress.Step != 10 || a.Progress.Loss != 3.25 ||
		a.FinishedUnixNano != 131 || len(a.Placement) != 2 || a.Placement[1].WorkerId != "w2" {
		t.Fatalf("job a: %v", a)
	}
	if g := a.Progress.Gpus; len(g) != 1 || g[0].Uuid != "GPU-b" || g[0].UtilPct != 93 || g[0].MemUsedBytes != 7<<30 {
		t.Fatalf("job a's GPUs: %v", g)
	}

	var types []string
	for _, e := range a.Events {
		types = append(types, e.Type)
	}
	if got, want := fmt.Sprint(types), "[Submitted Placed Running Checkpoint Succeeded]"; got != want {
		t.Fatalf("job a events %s, want %s", got, want)
	}
	b, _ := f.Job("b")
	for job, want := range map[*pb.Job]string{a: "Placed: 2 ranks placed", b: "Placed: 1 rank placed"} {
		for _, e := range job.Events {
			if e.Type == "Placed" && e.Message != want {
				t.Errorf("job %s: Placed event %q, want %q", job.Id, e.Message, want)
			}
		}
	}
	if b.State != pb.JobState_JOB_STATE_FAILED || b.Restarts != 1 || b.Reason != "WorkerLost" ||
		b.Message != "worker w4 lease expired" || len(b.Conditions) != 1 || b.Conditions[0].Status {
		t.Fatalf("job b: %v", b)
	}
	c, _ := f.Job("c")
	if c.State != pb.JobState_JOB_STATE_CANCELLED || c.Reason != "UserCancelled" {
		t.Fatalf("job c: %v", c)
	}
	// cancelled while pending, it no longer says why it waits
	if len(c.Conditions) != 1 || c.Conditions[0].Reason != "UserCancelled" || c.Conditions[0].Message != "cancelled before it was placed" {
		t.Fatalf("job c's conditions after the cancel: %v", c.Conditions)
	}
	// Reads are copies.
	a.State = pb.JobState_JOB_STATE_FAILED
	if a2, _ := f.Job("a"); a2.State != pb.JobState_JOB_STATE_SUCCEEDED {
		t.Fatal("Job returned shared state")
	}
}

func TestFSMRefusesBadCommands(t *testing.T) {
	f := NewFSM(0)
	applyAll(t, f, []*pb.Command{submitCmd(1, "a", 2), submitCmd(2, "done", 1), cancelCmd(3, "done")})
	conflict := submitCmd(4, "a", 3)
	for _, tc := range []struct {
		name string
		cmd  *pb.Command
		want error
	}{
		{"empty envelope", &pb.Command{UnixNano: 5}, ErrInvalidCommand},
		{"unknown job", placeCmd(5, "zzz", "w1"), ErrJobNotFound},
		{"submit conflict", conflict, ErrJobConflict},
		{"wrong rank count", placeCmd(5, "a", "w1"), ErrInvalidCommand},
		{"repeated rank", &pb.Command{Op: &pb.Command_PlaceJob{PlaceJob: &pb.PlaceJob{JobId: "a", Placement: []*pb.RankAssignment{{Rank: 0, WorkerId: "w"}, {Rank: 0, WorkerId: "v"}}}}}, ErrInvalidCommand},
		{"two ranks in one slot", &pb.Command{Op: &pb.Command_PlaceJob{PlaceJob: &pb.PlaceJob{JobId: "a", Placement: []*pb.RankAssignment{{Rank: 0, WorkerId: "w", Slot: 1}, {Rank: 1, WorkerId: "w", Slot: 1}}}}}, ErrInvalidCommand},
		{"negative slot", &pb.Command{Op: &pb.Command_PlaceJob{PlaceJob: &pb.PlaceJob{JobId: "a", Placement: []*pb.RankAssignment{{Rank: 0, WorkerId: "w", Slot: -1}, {Rank: 1, WorkerId: "w"}}}}}, ErrInvalidCommand},
		{"running before placed", stateCmd(5, "a", pb.JobState_JOB_STATE_RUNNING, "", "", nil), ErrInvalidTransition},
		{"progress while pending", progressCmd(5, "a", 1, 1), ErrInvalidTransition},
		{"requeue pending", requeueCmd(5, "a", ""), ErrInvalidTransition},
		{"fail finished", stateCmd(5, "done", pb.JobState_JOB_STATE_FAILED, "X", "", nil), ErrJobFinished},
		{"place finished", placeCmd(5, "done", "w1"), ErrJobFinished},
	} {
		r := f.ApplyCommand(tc.cmd)
		if !errors.Is(r.Err, tc.want) {
			t.Errorf("%s: err %v, want %v", tc.name, r.Err, tc.want)
		}
	}
	// A failed command changes nothing; cancelling twice is fine.
	if r := f.ApplyCommand(cancelCmd(6, "done")); r.Err != nil || r.Job.State != pb.JobState_JOB_STATE_CANCELLED {
		t.Fatalf("second cancel: %+v", r)
	}
	if a, _ := f.Job("a"); a.State != pb.JobState_JOB_STATE_PENDING || len(a.Events) != 1 {
		t.Fatalf("job a changed by refused commands: %v", a)
	}
	// Garbage in the log is refused, not a panic.
	if r := f.Apply(&raft.Log{Type: raft.LogCommand, Data: []byte{0xff, 0xff, 0xff}}).(ApplyResult); !errors.Is(r.Err, ErrInvalidCommand) {
		t.Fatalf("garbage entry: %v", r.Err)
	}
}

func TestFSMEventCap(t *testing.T) {
	f := NewFSM(4)
	cmds := []*pb.Command{submitCmd(1, "a", 1)}
	for i := range 10 {
		cmds = append(cmds, eventCmd(int64(10+i), "a", "Log", fmt.Sprint(i)))
	}
	applyAll(t, f, cmds)
	a, _ := f.Job("a")
	if len(a.Events) != 4 || a.EventsDropped != 7 || a.Events[0].Seq != 8 || a.Events[3].Seq != 11 || a.Events[3].Message != "9" {
		t.Fatalf("events %v dropped %d", a.Events, a.EventsDropped)
	}
}

type memSink struct {
	bytes.Buffer
	cancelled, closed bool
}

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }
func (s *memSink) Close() error  { s.closed = true; return nil }

func persist(t *testing.T, f *FSM) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	var sink memSink
	if err := snap.Persist(&sink); err != nil || !sink.closed {
		t.Fatalf("persist: %v (closed %v)", err, sink.closed)
	}
	return sink.Bytes()
}

func TestFSMSnapshotRoundTrip(t *testing.T) {
	cmds := history()
	f := NewFSM(0)
	applyAll(t, f, cmds[:10])
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	// Commands applied after Snapshot must not leak into it.
	applyAll(t, f, cmds[10:12])
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	mid := sink.Bytes()

	g := NewFSM(0)
	applyAll(t, g, []*pb.Command{submitCmd(1, "stale", 1)}) // Restore replaces, not merges.
	if err := g.Restore(io.NopCloser(bytes.NewReader(mid))); err != nil {
		t.Fatal(err)
	}
	ref := NewFSM(0)
	applyAll(t, ref, cmds[:10])
	if !proto.Equal(g.State(), ref.State()) {
		t.Fatalf("restored state differs:\n%v\n%v", g.State(), ref.State())
	}
	if !bytes.Equal(persist(t, g), mid) {
		t.Fatal("re-snapshot of a restored FSM is not byte-identical")
	}
	// The restored FSM continues exactly like the original: same submit
	// sequence, same events.
	applyAll(t, g, cmds[10:])
	applyAll(t, f, cmds[12:])
	if !bytes.Equal(persist(t, g), persist(t, f)) {
		t.Fatal("restored FSM diverged from the original after more commands")
	}
	if d, _ := g.Job("d"); d.SubmitSeq != 4 {
		t.Fatalf("submit seq after restore: %d", d.SubmitSeq)
	}
	if err := g.Restore(io.NopCloser(bytes.NewReader([]byte{0xff, 0x01}))); err == nil {
		t.Fatal("garbage snapshot restored")
	}
	bad, _ := proto.Marshal(&pb.Snapshot{FormatVersion: 99})
	if err := g.Restore(io.NopCloser(bytes.NewReader(bad))); err == nil {
		t.Fatal("unknown snapshot format restored")
	}
}

// FuzzFSMApply feeds arbitrary log entries to the FSM: it must never panic,
// and two replicas must stay identical.
func deleteCmd(now int64, id string) *pb.Command {
	return &pb.Command{UnixNano: now, Op: &pb.Command_DeleteJob{DeleteJob: &pb.DeleteJob{JobId: id}}}
}

// TestDeleteJob: a job that has ended is deleted with its history, and
// its ID is refused to a new job, also after a snapshot's restore; one
// that has not ended is refused and kept; an unknown one is not found.
func TestDeleteJob(t *testing.T) {
	f := NewFSM(0)
	applyAll(t, f, history())
	// a: succeeded, b: failed, c: cancelled, d: pending
	for _, id := range []string{"a", "b", "c"} {
		r := f.ApplyCommand(deleteCmd(200, id))
		if r.Err != nil || r.Job.GetId() != id {
			t.Fatalf("delete %s: %v %v", id, r.Job, r.Err)
		}
		if _, err := f.Job(id); !errors.Is(err, ErrJobNotFound) {
			t.Fatalf("%s after its delete: %v", id, err)
		}
	}
	if r := f.ApplyCommand(deleteCmd(201, "d")); !errors.Is(r.Err, ErrInvalidTransition) || !strings.Contains(r.Err.Error(), "cancel it first") {
		t.Fatalf("delete of a pending job: %v", r.Err)
	}
	if _, err := f.Job("d"); err != nil {
		t.Fatalf("the refused delete removed d: %v", err)
	}
	if r := f.ApplyCommand(deleteCmd(202, "a")); !errors.Is(r.Err, ErrJobNotFound) {
		t.Fatalf("a second delete: %v", r.Err)
	}
	if len(f.Jobs()) != 1 || len(f.State().GetJobs()) != 1 {
		t.Fatalf("after the deletes: %d jobs, a snapshot of %d", len(f.Jobs()), len(f.State().GetJobs()))
	}
	g := NewFSM(0)
	if err := g.store.Restore(f.State()); err != nil {
		t.Fatal(err)
	}
	for _, fsm := range []*FSM{f, g} {
		if r := fsm.ApplyCommand(submitCmd(203, "a", 2)); !errors.Is(r.Err, ErrJobConflict) || !strings.Contains(r.Err.Error(), "a deleted job") || strings.Contains(r.Err.Error(), "different spec") {
			t.Fatalf("a submitted again: %v %v", r.Job, r.Err)
		}
	}
	if got := g.State().GetDeletedJobIds(); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("deleted ids in the snapshot: %v", got)
	}
}

func FuzzFSMApply(f *testing.F) {
	for _, c := range append(history(), deleteCmd(200, "a"), deleteCmd(200, "d")) {
		data, _ := proto.Marshal(c)
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		a, b := NewFSM(8), NewFSM(8)
		for i, c := range history()[:6] {
			d, _ := proto.Marshal(c)
			a.Apply(&raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: d})
			b.Apply(&raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: d})
		}
		ra := a.Apply(&raft.Log{Index: 7, Type: raft.LogCommand, Data: data}).(ApplyResult)
		rb := b.Apply(&raft.Log{Index: 7, Type: raft.LogCommand, Data: data}).(ApplyResult)
		if (ra.Err == nil) != (rb.Err == nil) || !proto.Equal(a.State(), b.State()) {
			t.Fatal("replicas diverged")
		}
	})
}

// Resume brings a failed or cancelled job back to PENDING as a new
// attempt from a chosen step; an elastic placement records its degrees;
// Unfinished leaves out the jobs that ended.
func TestResumeElasticUnfinished(t *testing.T) {
	f := NewFSM(0)
	apply := func(c *pb.Command) ApplyResult {
		t.Helper()
		r := f.ApplyCommand(c)
		if r.Err != nil {
			t.Fatal(r.Err)
		}
		return r
	}
	for _, id := range []string{"a", "b", "c"} {
		apply(submitCmd(1, id, 2))
	}
	apply(stateCmd(2, "a", pb.JobState_JOB_STATE_FAILED, "RankFailed", "boom", nil))
	apply(cancelCmd(3, "b"))
	if got := len(f.Unfinished()); got != 1 {
		t.Fatalf("%d unfinished, want 1 (c)", got)
	}
	r := apply(&pb.Command{UnixNano: 4, Op: &pb.Command_ResumeJob{ResumeJob: &pb.ResumeJob{JobId: "a", FromStep: 40}}})
	if r.Job.State != pb.JobState_JOB_STATE_PENDING || r.Job.Restarts != 1 || r.Job.ResumeFromStep != 40 || r.Job.FinishedUnixNano != 0 {
		t.Fatalf("resumed %v", r.Job)
	}
	if r := f.ApplyCommand(&pb.Command{Op: &pb.Command_ResumeJob{ResumeJob: &pb.ResumeJob{JobId: "c"}}}); !errors.Is(r.Err, ErrInvalidTransition) {
		t.Fatalf("resume of a pending job: %v", r.Err)
	}
	// an elastic placement with fewer ranks than the world size
	r = apply(&pb.Command{UnixNano: 5, Op: &pb.Command_PlaceJob{PlaceJob: &pb.PlaceJob{JobId: "a", Dp: 1, Ep: 1,
		Placement: []*pb.RankAssignment{{Rank: 0, WorkerId: "w1"}}}}})
	if r.Job.PlacedDp != 1 || len(r.Job.Placement) != 1 {
		t.Fatalf("elastic placement %v", r.Job)
	}
	if r := f.ApplyCommand(&pb.Command{Op: &pb.Command_PlaceJob{PlaceJob: &pb.PlaceJob{JobId: "c",
		Placement: []*pb.RankAssignment{{Rank: 0, WorkerId: "w2"}}}}}); !errors.Is(r.Err, ErrInvalidCommand) {
		t.Fatalf("a short placement without elastic degrees: %v", r.Err)
	}
	// an automatic requeue resumes from the newest checkpoint again
	r = apply(requeueCmd(6, "a", "worker lost"))
	if r.Job.ResumeFromStep != 0 || r.Job.PlacedDp != 1 && len(r.Job.Placement) != 0 {
		t.Fatalf("requeued %v", r.Job)
	}
	if got := len(f.Unfinished()); got != 2 {
		t.Fatalf("%d unfinished, want 2", got)
	}
}
