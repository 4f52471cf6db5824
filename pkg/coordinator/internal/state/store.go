// Package state is the coordinator's replicated job state: the in-memory
// store that the raft FSM mutates, one method per command, plus deep-copy
// reads and whole-state snapshots. Every method is deterministic: the time it
// records comes from its caller (the command), never from a clock.
//
// The package knows nothing about raft, the network or the scheduler.
package state

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"

	"google.golang.org/protobuf/proto"

	"github.com/switchyard-ml/switchyard/pkg/jobstate"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// SnapshotFormat is the Snapshot.format_version this package writes and reads.
const SnapshotFormat = 1

// DefaultMaxEvents is the default cap on the events kept per job.
const DefaultMaxEvents = 256

var (
	// ErrJobNotFound: the command names a job the state does not hold.
	ErrJobNotFound = errors.New("coordinator: job not found")
	// ErrJobConflict: a submit reuses a job ID with a different spec, or
	// a deleted job's.
	ErrJobConflict = errors.New("coordinator: job id already used")
	// ErrJobFinished: the job is succeeded, failed or cancelled.
	ErrJobFinished = errors.New("coordinator: job already finished")
	// ErrInvalidTransition: the job's state does not allow the command.
	ErrInvalidTransition = errors.New("coordinator: invalid job state transition")
	// ErrInvalidCommand: the command is malformed.
	ErrInvalidCommand = errors.New("coordinator: invalid command")
)

// Store holds every job. Its zero value is not usable; call New.
// Reads may run concurrently with one writer.
type Store struct {
	mu        sync.RWMutex
	jobs      map[string]*pb.Job
	deleted   map[string]bool // IDs of deleted jobs, refused to new ones
	submitSeq uint64
	maxEvents int
}

// maxSlot bounds a rank's slot on its worker.
const maxSlot = 1023

// New returns an empty store that keeps at most maxEvents events per job
// (DefaultMaxEvents when maxEvents <= 0). All replicas must use the same cap.
func New(maxEvents int) *Store {
	if maxEvents <= 0 {
		maxEvents = DefaultMaxEvents
	}
	return &Store{jobs: map[string]*pb.Job{}, deleted: map[string]bool{}, maxEvents: maxEvents}
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidCommand, fmt.Sprintf(format, args...))
}

// Submit adds a pending job. It is idempotent on the job ID: resubmitting
// the same spec returns the existing job with created == false.
func (s *Store) Submit(now int64, c *pb.SubmitJob) (job *pb.Job, created bool, err error) {
	if c.GetJobId() == "" {
		return nil, false, invalid("submit: empty job id")
	}
	if c.GetWorldSize() < 0 || c.GetTotalSteps() < 0 {
		return nil, false, invalid("submit %s: negative world size or total steps", c.GetJobId())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.deleted[c.JobId] {
		return nil, false, fmt.Errorf("%w: %s is the ID of a deleted job; give the new one another", ErrJobConflict, c.JobId)
	}
	if j, ok := s.jobs[c.JobId]; ok {
		same := string(j.Spec) == string(c.Spec) && j.Name == c.Name && j.Priority == c.Priority &&
			j.WorldSize == c.WorldSize && j.GetProgress().GetTotalSteps() == c.TotalSteps
		if !same {
			return nil, false, fmt.Errorf("%w: job %s was submitted with a different spec (the same one again is no error)", ErrJobConflict, c.JobId)
		}
		return clone(j), false, nil
	}
	s.submitSeq++
	j := &pb.Job{
		Id:                c.JobId,
		Name:              c.Name,
		Spec:              slices.Clone(c.Spec),
		Priority:          c.Priority,
		WorldSize:         c.WorldSize,
		State:             pb.JobState_JOB_STATE_PENDING,
		Reason:            "Submitted",
		Progress:          &pb.Progress{TotalSteps: c.TotalSteps},
		SubmitSeq:         s.submitSeq,
		SubmittedUnixNano: now,
		UpdatedUnixNano:   now,
	}
	s.jobs[j.Id] = j
	s.event(j, now, "Submitted", fmt.Sprintf("job submitted (world size %d)", c.WorldSize), "")
	return clone(j), true, nil
}

// SetState moves a job to RUNNING, SUCCEEDED or FAILED (see the proto for
// the allowed moves). Setting the state a job is already in updates only
// the condition and is not an error.
func (s *Store) SetState(now int64, c *pb.SetJobState) (*pb.Job, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j, err := s.get(c.GetJobId())
	if err != nil {
		return nil, err
	}
	from, to := j.State, c.GetState()
	if from != to {
		ok := false
		switch to {
		case pb.JobState_JOB_STATE_RUNNING:
			ok = from == pb.JobState_JOB_STATE_PLACED
		case pb.JobState_JOB_STATE_SUCCEEDED:
			ok = from == pb.JobState_JOB_STATE_PLACED || from == pb.JobState_JOB_STATE_RUNNING
		case pb.JobState_JOB_STATE_FAILED:
			ok = !jobstate.Final(from)
		}
		if !ok {
			if jobstate.Final(from) {
				return nil, fmt.Errorf("%w: %s is %s", ErrJobFinished, j.Id, jobstate.Lower(from))
			}
			return nil, fmt.Errorf("%w: %s: %s -> %s", ErrInvalidTransition, j.Id, jobstate.Lower(from), jobstate.Lower(to))
		}
		s.transition(j, now, to, c.GetReason(), c.GetMessage())
	}
	if c.GetCondition() != nil {
		if c.Condition.GetType() == "" {
			return nil, invalid("set state %s: condition without type", j.Id)
		}
		setCondition(j, now, c.Condition)
	}
	j.UpdatedUnixNano = now
	return clone(j), nil
}

// Place records the placement of a pending job and moves it to PLACED.
func (s *Store) Place(now int64, c *pb.PlaceJob) (*pb.Job, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j, err := s.get(c.GetJobId())
	if err != nil {
		return nil, err
	}
	if j.State != pb.JobState_JOB_STATE_PENDING {
		if jobstate.Final(j.State) {
			return nil, fmt.Errorf("%w: %s is %s", ErrJobFinished, j.Id, jobstate.Lower(j.State))
		}
		return nil, fmt.Errorf("%w: %s: place while %s", ErrInvalidTransition, j.Id, jobstate.Lower(j.State))
	}
	n := len(c.GetPlacement())
	if c.GetDp() < 0 || c.GetEp() < 0 {
		return nil, invalid("place %s: negative degrees dp %d ep %d", j.Id, c.GetDp(), c.GetEp())
	}
	elastic := c.GetDp() > 0
	if n == 0 || (j.WorldSize > 0 && !elastic && n != int(j.WorldSize)) || (elastic && n > int(j.WorldSize)) {
		return nil, invalid("place %s: %d ranks for world size %d", j.Id, n, j.WorldSize)
	}
	placement := make([]*pb.RankAssignment, n)
	type workerSlot struct {
		worker string
		slot   int32
	}
	taken := make(map[workerSlot]int32, n)
	for _, a := range c.Placement {
		if a.GetRank() < 0 || int(a.GetRank()) >= n || placement[a.Rank] != nil {
			return nil, invalid("place %s: rank %d out of range or repeated", j.Id, a.GetRank())
		}
		if a.GetWorkerId() == "" {
			return nil, invalid("place %s: rank %d has no worker", j.Id, a.Rank)
		}
		if a.GetSlot() < 0 || a.GetSlot() > maxSlot {
			return nil, invalid("place %s: rank %d: slot %d out of range [0, %d]", j.Id, a.Rank, a.GetSlot(), maxSlot)
		}
		ws := workerSlot{a.WorkerId, a.GetSlot()}
		if r, dup := taken[ws]; dup {
			return nil, invalid("place %s: ranks %d and %d in the same slot %d of worker %s", j.Id, r, a.Rank, ws.slot, ws.worker)
		}
		taken[ws] = a.Rank
		placement[a.Rank] = &pb.RankAssignment{Rank: a.Rank, WorkerId: a.WorkerId, Slot: a.GetSlot()}
	}
	j.Placement = placement
	j.PlacedDp, j.PlacedEp = c.GetDp(), c.GetEp()
	msg := fmt.Sprintf("%d ranks placed", n)
	if n == 1 {
		msg = "1 rank placed"
	}
	if elastic {
		msg += fmt.Sprintf(" (elastic: dp %d, ep %d)", c.GetDp(), c.GetEp())
	}
	s.transition(j, now, pb.JobState_JOB_STATE_PLACED, "Placed", msg)
	return clone(j), nil
}

// RecordEvent appends an event to a job's history; the store assigns its
// sequence number and, when the event has none, the command's time.
func (s *Store) RecordEvent(now int64, c *pb.RecordEvent) (*pb.Job, error) {
	if c.GetEvent().GetType() == "" {
		return nil, invalid("record event %s: event without type", c.GetJobId())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	j, err := s.get(c.GetJobId())
	if err != nil {
		return nil, err
	}
	t := c.Event.UnixNano
	if t == 0 {
		t = now
	}
	s.event(j, t, c.Event.Type, c.Event.Message, c.Event.WorkerId)
	j.UpdatedUnixNano = now
	return clone(j), nil
}

// Progress records training progress. The first report of a PLACED job
// moves it to RUNNING.
func (s *Store) Progress(now int64, c *pb.JobProgress) (*pb.Job, error) {
	if c.GetStep() < 0 {
		return nil, invalid("progress %s: negative step", c.GetJobId())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	j, err := s.get(c.GetJobId())
	if err != nil {
		return nil, err
	}
	switch j.State {
	case pb.JobState_JOB_STATE_PLACED:
		s.transition(j, now, pb.JobState_JOB_STATE_RUNNING, "FirstStep", fmt.Sprintf("step %d reported", c.Step))
	case pb.JobState_JOB_STATE_RUNNING:
	default:
		if jobstate.Final(j.State) {
			return nil, fmt.Errorf("%w: %s is %s", ErrJobFinished, j.Id, jobstate.Lower(j.State))
		}
		return nil, fmt.Errorf("%w: %s: progress while %s", ErrInvalidTransition, j.Id, jobstate.Lower(j.State))
	}
	if j.Progress == nil {
		j.Progress = &pb.Progress{}
	}
	j.Progress.Step = c.Step
	j.Progress.Loss = c.Loss
	j.Progress.TokensPerSecond = c.TokensPerSecond
	j.Progress.Gpus = c.Gpus
	j.Progress.UpdatedUnixNano = now
	j.UpdatedUnixNano = now
	return clone(j), nil
}

// Cancel moves a job that has not finished to CANCELLED; cancelling a
// cancelled job is a no-op.
func (s *Store) Cancel(now int64, c *pb.CancelJob) (*pb.Job, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j, err := s.get(c.GetJobId())
	if err != nil {
		return nil, err
	}
	switch {
	case j.State == pb.JobState_JOB_STATE_CANCELLED:
		return clone(j), nil
	case jobstate.Final(j.State):
		return nil, fmt.Errorf("%w: %s is %s", ErrJobFinished, j.Id, jobstate.Lower(j.State))
	}
	reason := c.GetReason()
	if reason == "" {
		reason = "Cancelled"
	}
	if j.State == pb.JobState_JOB_STATE_PENDING {
		// the last scheduling verdict ("needs 8 workers ...") no longer
		// applies: the job will not be placed
		for _, cond := range j.Conditions {
			if cond.Type == jobstate.CondScheduled && !cond.Status {
				setCondition(j, now, &pb.Condition{Type: jobstate.CondScheduled, Reason: reason, Message: "cancelled before it was placed"})
			}
		}
	}
	s.transition(j, now, pb.JobState_JOB_STATE_CANCELLED, reason, c.GetMessage())
	return clone(j), nil
}

// Requeue moves a placed or running job back to PENDING, clears its
// placement and counts a restart.
func (s *Store) Requeue(now int64, c *pb.RequeueJob) (*pb.Job, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j, err := s.get(c.GetJobId())
	if err != nil {
		return nil, err
	}
	if j.State != pb.JobState_JOB_STATE_PLACED && j.State != pb.JobState_JOB_STATE_RUNNING {
		if jobstate.Final(j.State) {
			return nil, fmt.Errorf("%w: %s is %s", ErrJobFinished, j.Id, jobstate.Lower(j.State))
		}
		return nil, fmt.Errorf("%w: %s: requeue while %s", ErrInvalidTransition, j.Id, jobstate.Lower(j.State))
	}
	j.Placement = nil
	j.Restarts++
	if c.GetFree() {
		j.FreeRestarts++
	}
	j.ResumeFromStep = 0 // an automatic restart resumes from the newest checkpoint
	reason := c.GetReason()
	if reason == "" {
		reason = "Requeued"
	}
	s.transition(j, now, pb.JobState_JOB_STATE_PENDING, reason, c.GetMessage())
	return clone(j), nil
}

// Resume moves a failed or cancelled job back to PENDING, counts a restart
// (a new attempt) and records the step its next attempt resumes from; the
// restart policy's budget starts again from this attempt.
func (s *Store) Resume(now int64, c *pb.ResumeJob) (*pb.Job, error) {
	if c.GetFromStep() < 0 {
		return nil, invalid("resume %s: negative step", c.GetJobId())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	j, err := s.get(c.GetJobId())
	if err != nil {
		return nil, err
	}
	if j.State != pb.JobState_JOB_STATE_FAILED && j.State != pb.JobState_JOB_STATE_CANCELLED {
		return nil, fmt.Errorf("%w: %s: resume while %s (only failed or cancelled jobs resume)", ErrInvalidTransition, j.Id, jobstate.Lower(j.State))
	}
	j.Placement = nil
	j.Restarts++
	j.FreeRestarts = j.Restarts // the restart policy starts again
	j.ResumeFromStep = c.GetFromStep()
	j.FinishedUnixNano = 0
	msg := c.GetMessage()
	if msg == "" {
		msg = "resumed by the user"
	}
	s.transition(j, now, pb.JobState_JOB_STATE_PENDING, "Resumed", msg)
	return clone(j), nil
}

// Delete removes a job that has ended, and returns it as it was. A job
// that has not ended is refused (ErrInvalidTransition): it would leave
// ranks running that nothing supervises.
func (s *Store) Delete(c *pb.DeleteJob) (*pb.Job, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j, err := s.get(c.GetJobId())
	if err != nil {
		return nil, err
	}
	if !jobstate.Final(j.State) {
		return nil, fmt.Errorf("%w: %s: delete while %s (only a job that has ended is deleted: cancel it first)", ErrInvalidTransition, j.Id, jobstate.Lower(j.State))
	}
	delete(s.jobs, j.Id)
	s.deleted[j.Id] = true
	return j, nil
}

// Job returns a copy of one job.
func (s *Store) Job(id string) (*pb.Job, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	j, err := s.get(id)
	if err != nil {
		return nil, err
	}
	return clone(j), nil
}

// Jobs returns copies of every job in submit order.
// Unfinished returns copies of the jobs that have not reached a final
// state, in submit order: what scheduling and supervision look at, without
// copying the growing history of finished jobs.
func (s *Store) Unfinished() []*pb.Job {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []*pb.Job
	for _, j := range s.jobs {
		if !jobstate.Final(j.State) {
			out = append(out, clone(j))
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a].SubmitSeq < out[b].SubmitSeq })
	return out
}

func (s *Store) Jobs() []*pb.Job {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*pb.Job, 0, len(s.jobs))
	for _, j := range s.jobs {
		out = append(out, clone(j))
	}
	sort.Slice(out, func(a, b int) bool { return out[a].SubmitSeq < out[b].SubmitSeq })
	return out
}

// Len is the number of jobs.
func (s *Store) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.jobs)
}

// Snapshot returns a deep copy of the whole state, jobs sorted by ID.
func (s *Store) Snapshot() *pb.Snapshot {
	s.mu.RLock()
	defer s.mu.RUnlock()
	snap := &pb.Snapshot{FormatVersion: SnapshotFormat, SubmitSeq: s.submitSeq, Jobs: make([]*pb.Job, 0, len(s.jobs))}
	for _, j := range s.jobs {
		snap.Jobs = append(snap.Jobs, clone(j))
	}
	sort.Slice(snap.Jobs, func(a, b int) bool { return snap.Jobs[a].Id < snap.Jobs[b].Id })
	snap.DeletedJobIds = slices.Sorted(maps.Keys(s.deleted))
	return snap
}

// Restore replaces the whole state with a snapshot.
func (s *Store) Restore(snap *pb.Snapshot) error {
	if snap.GetFormatVersion() != SnapshotFormat {
		return fmt.Errorf("%w: snapshot format %d, want %d", ErrInvalidCommand, snap.GetFormatVersion(), SnapshotFormat)
	}
	jobs := make(map[string]*pb.Job, len(snap.Jobs))
	for _, j := range snap.Jobs {
		if j.GetId() == "" || jobs[j.Id] != nil {
			return invalid("snapshot: empty or repeated job id %q", j.GetId())
		}
		jobs[j.Id] = clone(j)
	}
	deleted := make(map[string]bool, len(snap.DeletedJobIds))
	for _, id := range snap.DeletedJobIds {
		if id == "" || deleted[id] || jobs[id] != nil {
			return invalid("snapshot: deleted job id %q empty, repeated or a job's", id)
		}
		deleted[id] = true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.jobs, s.deleted, s.submitSeq = jobs, deleted, snap.SubmitSeq
	return nil
}

func (s *Store) get(id string) (*pb.Job, error) {
	if id == "" {
		return nil, invalid("empty job id")
	}
	j, ok := s.jobs[id]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrJobNotFound, id)
	}
	return j, nil
}

func (s *Store) transition(j *pb.Job, now int64, to pb.JobState, reason, msg string) {
	j.State, j.Reason, j.Message = to, reason, msg
	j.UpdatedUnixNano = now
	if jobstate.Final(to) {
		j.FinishedUnixNano = now
	}
	text := reason
	if msg != "" {
		text += ": " + msg
	}
	s.event(j, now, strings.ToUpper(jobstate.Lower(to)[:1])+jobstate.Lower(to)[1:], text, "")
}

func (s *Store) event(j *pb.Job, now int64, typ, msg, worker string) {
	var seq uint64 = 1
	if n := len(j.Events); n > 0 {
		seq = j.Events[n-1].Seq + 1
	} else {
		seq += j.EventsDropped
	}
	j.Events = append(j.Events, &pb.JobEvent{Seq: seq, UnixNano: now, Type: typ, Message: msg, WorkerId: worker})
	if over := len(j.Events) - s.maxEvents; over > 0 {
		j.Events = slices.Delete(j.Events, 0, over)
		j.EventsDropped += uint64(over)
	}
}

func setCondition(j *pb.Job, now int64, c *pb.Condition) {
	for _, old := range j.Conditions {
		if old.Type == c.Type {
			if old.Status != c.Status {
				old.LastTransitionUnixNano = now
			}
			old.Status, old.Reason, old.Message = c.Status, c.Reason, c.Message
			return
		}
	}
	j.Conditions = append(j.Conditions, &pb.Condition{
		Type: c.Type, Status: c.Status, Reason: c.Reason, Message: c.Message, LastTransitionUnixNano: now,
	})
}

func clone(j *pb.Job) *pb.Job { return proto.Clone(j).(*pb.Job) }
