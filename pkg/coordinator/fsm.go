package coordinator

import (
	"fmt"
	"io"
	"sync"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard-ml/switchyard/pkg/coordinator/internal/state"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// Errors returned by Apply (inside ApplyResult) and by reads. They wrap
// with %w; match them with errors.Is.
var (
	ErrJobNotFound       = state.ErrJobNotFound
	ErrJobConflict       = state.ErrJobConflict
	ErrJobFinished       = state.ErrJobFinished
	ErrInvalidTransition = state.ErrInvalidTransition
	ErrInvalidCommand    = state.ErrInvalidCommand
)

// DefaultMaxEventsPerJob caps the event history of each job.
const DefaultMaxEventsPerJob = state.DefaultMaxEvents

// ApplyResult is what applying one command produced.
type ApplyResult struct {
	// Job is the affected job after the command (nil on error).
	Job *pb.Job
	// Created is true when a SubmitJob added a new job, false when it matched
	// an existing one (an idempotent retry).
	Created bool
	// Err is the command's deterministic failure, identical on every replica.
	Err error
}

// FSM is the coordinator's raft state machine. It implements raft.FSM.
type FSM struct {
	store *state.Store

	mu      sync.Mutex
	applied uint64 // raft index of the last applied entry, for tests and stats
}

var _ raft.FSM = (*FSM)(nil)

// NewFSM returns an empty FSM keeping at most maxEventsPerJob events per job
// (DefaultMaxEventsPerJob when <= 0). Every replica must use the same value.
func NewFSM(maxEventsPerJob int) *FSM {
	return &FSM{store: state.New(maxEventsPerJob)}
}

// Apply applies one committed log entry. It returns an ApplyResult.
func (f *FSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	f.applied = l.Index
	f.mu.Unlock()
	if l.Type != raft.LogCommand {
		return ApplyResult{}
	}
	var cmd pb.Command
	if err := proto.Unmarshal(l.Data, &cmd); err != nil {
		return ApplyResult{Err: fmt.Errorf("%w: decode log entry %d: %v", ErrInvalidCommand, l.Index, err)}
	}
	return f.ApplyCommand(&cmd)
}

// ApplyCommand applies a decoded command to the state. Raft calls it via
// Apply; tests and tools may call it directly.
func (f *FSM) ApplyCommand(cmd *pb.Command) ApplyResult {
	now := cmd.GetUnixNano()
	var (
		r   ApplyResult
		err error
	)
	switch op := cmd.GetOp().(type) {
	case *pb.Command_SubmitJob:
		r.Job, r.Created, err = f.store.Submit(now, op.SubmitJob)
	case *pb.Command_SetJobState:
		r.Job, err = f.store.SetState(now, op.SetJobState)
	case *pb.Command_PlaceJob:
		r.Job, err = f.store.Place(now, op.PlaceJob)
	case *pb.Command_RecordEvent:
		r.Job, err = f.store.RecordEvent(now, op.RecordEvent)
	case *pb.Command_JobProgress:
		r.Job, err = f.store.Progress(now, op.JobProgress)
	case *pb.Command_CancelJob:
		r.Job, err = f.store.Cancel(now, op.CancelJob)
	case *pb.Command_RequeueJob:
		r.Job, err = f.store.Requeue(now, op.RequeueJob)
	case *pb.Command_ResumeJob:
		r.Job, err = f.store.Resume(now, op.ResumeJob)
	case *pb.Command_DeleteJob:
		r.Job, err = f.store.Delete(op.DeleteJob)
	default:
		// A command from a newer version, or an empty envelope: every replica
		// refuses it the same way.
		err = fmt.Errorf("%w: unknown command %T", ErrInvalidCommand, op)
	}
	if err != nil {
		return ApplyResult{Err: err}
	}
	return r
}

// Job returns a copy of one job from the local state.
func (f *FSM) Job(id string) (*pb.Job, error) { return f.store.Job(id) }

// Jobs returns copies of every job in the local state, in submit order.
func (f *FSM) Jobs() []*pb.Job { return f.store.Jobs() }

// Unfinished returns copies of the jobs not in a final state, in submit
// order.
func (f *FSM) Unfinished() []*pb.Job { return f.store.Unfinished() }

// AppliedIndex is the raft index of the last entry this FSM applied.
func (f *FSM) AppliedIndex() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.applied
}

// State returns a deep copy of the whole state.
func (f *FSM) State() *pb.Snapshot { return f.store.Snapshot() }

// Snapshot captures the state now; Persist writes it later, concurrently
// with further Apply calls.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(f.store.Snapshot())
	if err != nil {
		return nil, fmt.Errorf("coordinator: encode snapshot: %w", err)
	}
	return fsmSnapshot(data), nil
}

// Restore replaces the state with a snapshot written by Persist.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("coordinator: read snapshot: %w", err)
	}
	var snap pb.Snapshot
	if err := proto.Unmarshal(data, &snap); err != nil {
		return fmt.Errorf("coordinator: decode snapshot: %w", err)
	}
	return f.store.Restore(&snap)
}

// fsmSnapshot is an encoded pb.Snapshot.
type fsmSnapshot []byte

func (s fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		sink.Cancel()
		return fmt.Errorf("coordinator: write snapshot: %w", err)
	}
	return sink.Close()
}

func (s fsmSnapshot) Release() {}
