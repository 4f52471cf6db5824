package controller

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
	"github.com/switchyard-ml/switchyard/pkg/coordinator"
	"github.com/switchyard-ml/switchyard/pkg/events"
	"github.com/switchyard-ml/switchyard/pkg/fsutil"
	"github.com/switchyard-ml/switchyard/pkg/jobstate"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// Checkpoints is the coordinator's view of committed checkpoints.
type Checkpoints interface {
	// Commit records a manifest whose shards are durable and verified, as
	// job j's current attempt (j.Restarts): refused (wrapping
	// checkpoint.ErrFenced) once a later attempt was fenced.
	Commit(ctx context.Context, j *pb.Job, m checkpoint.Manifest) error
	// Fence raises the job's fence to attempt: from then on, commits and
	// retention steps of earlier attempts are refused, whichever
	// coordinator admitted them. Called before an attempt's ranks are
	// handed out, and before a job's deletion (with its next attempt).
	Fence(ctx context.Context, j *pb.Job, attempt int32) error
	// List returns the job's checkpoints, newest first, live and deleting.
	List(ctx context.Context, job *pb.Job) (live []checkpoint.Manifest, deleting []int64, err error)
	// Delete removes one checkpoint (catalogued deletion, then files).
	Delete(ctx context.Context, job *pb.Job, step int64) error
	// Verify reads every shard of m and checks it against the manifest:
	// one error (nil: verified) per shard, in m's order.
	Verify(ctx context.Context, job *pb.Job, m checkpoint.Manifest) ([]error, error)
	// Manifest is the entry of step, live or deleting (wraps
	// checkpoint.ErrNotFound when there is none).
	Manifest(ctx context.Context, job *pb.Job, step int64) (checkpoint.Manifest, error)
	// Retire is a step of a rank's retention, which deletes the files:
	// mark step deleting (remove false; checkpoint.ErrNotFound when it
	// is not there), or remove its entry (remove true; marked deleting
	// before, else checkpoint.ErrNotDeleting). Fenced as Commit.
	Retire(ctx context.Context, job *pb.Job, step int64, remove bool) error
}

// pollEvery is how often streams look at the job record.
const pollEvery = 250 * time.Millisecond

// quietAfterEnd is how long `logs -f` keeps listening after the job ended,
// for the last lines of its ranks.
const quietAfterEnd = 2 * time.Second

func (s *Server) JobLogs(req *apiv1.JobLogsRequest, stream apiv1.Coordinator_JobLogsServer) error {
	ctx := stream.Context()
	if _, err := s.localJob(ctx, req.GetJobId()); err != nil {
		return apiError(err)
	}
	if s.cfg.Bus == nil {
		return apiError(failure(errNoBus, "this coordinator has no event bus (start it with --nats-url), so it keeps no logs"))
	}
	f := events.Filter{Kind: events.KindLog, JobID: req.GetJobId(), Replay: true}
	send := func(m events.Message) error {
		if m.Log == nil {
			return nil
		}
		return stream.Send(&apiv1.LogEntry{UnixNano: m.Time.UnixNano(), Rank: int32(m.Log.Rank), WorkerId: m.Log.WorkerID, Stream: m.Log.Stream, Line: m.Log.Line})
	}
	if !req.GetFollow() {
		msgs, err := s.cfg.Bus.History(ctx, f)
		if err != nil {
			return apiError(failure(errUnavailable, "log history: %v", err))
		}
		for _, m := range msgs {
			if err := send(m); err != nil {
				return err
			}
		}
		return nil
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch, err := s.cfg.Bus.Subscribe(sctx, f)
	if err != nil {
		return apiError(failure(errUnavailable, "log subscription: %v", err))
	}
	t := time.NewTicker(pollEvery)
	defer t.Stop()
	last := time.Now()
	var ended time.Time
	for {
		select {
		case m, ok := <-ch:
			if !ok {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return apiError(failure(errUnavailable, "event bus closed"))
			}
			last = time.Now()
			if err := send(m); err != nil {
				return err
			}
		case <-t.C:
			j, err := s.cfg.Node.Job(req.GetJobId())
			if err != nil {
				return apiError(err)
			}
			if jobstate.Final(j.State) && ended.IsZero() {
				ended = time.Now()
			}
			if !ended.IsZero() && time.Since(ended) > quietAfterEnd && time.Since(last) > quietAfterEnd/2 {
				return nil
			}
		}
	}
}

func (s *Server) WatchJob(req *apiv1.WatchJobRequest, stream apiv1.Coordinator_WatchJobServer) error {
	ctx := stream.Context()
	j, err := s.localJob(ctx, req.GetJobId())
	if err != nil {
		return apiError(err)
	}
	if req.GetReplay() && s.cfg.Bus == nil {
		return apiError(failure(errNoBus, "this coordinator has no event bus (start it with --nats-url), so it keeps no metrics history"))
	}
	if err := stream.Send(&apiv1.WatchJobResponse{Job: j}); err != nil {
		return err
	}
	if jobstate.Final(j.State) && !req.GetReplay() {
		return nil
	}
	var metrics <-chan events.Message
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Subscribed before the history is read, so that no step falls between
	// them; what both deliver is sent once (seen).
	if s.cfg.Bus != nil && !jobstate.Final(j.State) {
		if metrics, err = s.cfg.Bus.Subscribe(sctx, events.Filter{Kind: events.KindMetrics, JobID: j.Id}); err != nil {
			if req.GetReplay() {
				return apiError(failure(errUnavailable, "metrics subscription: %v", err))
			}
			s.log.Warn("watch: metrics subscription failed; sending job updates only", "error", err)
			metrics = nil
		}
	}
	var seen replayed
	if req.GetReplay() {
		history, err := s.cfg.Bus.History(ctx, events.Filter{Kind: events.KindMetrics, JobID: j.Id})
		if err != nil {
			return apiError(failure(errUnavailable, "metrics history: %v", err))
		}
		for _, m := range history {
			if sm := rank0Metrics(m); sm != nil {
				seen.add(m)
				if err := stream.Send(&apiv1.WatchJobResponse{Metrics: sm}); err != nil {
					return err
				}
			}
		}
		if err := stream.Send(&apiv1.WatchJobResponse{Replayed: true}); err != nil {
			return err
		}
		if jobstate.Final(j.State) {
			return nil
		}
	}
	t := time.NewTicker(pollEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case m, ok := <-metrics:
			if !ok {
				metrics = nil
				continue
			}
			sm := rank0Metrics(m)
			if sm == nil || seen.has(m) {
				continue
			}
			if err := stream.Send(&apiv1.WatchJobResponse{Metrics: sm}); err != nil {
				return err
			}
		case <-t.C:
			nj, err := s.cfg.Node.Job(req.GetJobId())
			if err != nil {
				return apiError(err)
			}
			if proto.Equal(nj, j) {
				continue
			}
			j = nj
			if err := stream.Send(&apiv1.WatchJobResponse{Job: j}); err != nil {
				return err
			}
			if jobstate.Final(j.State) {
				return nil
			}
		}
	}
}

// rank0Metrics is m as WatchJob sends it; nil unless m is rank 0's step
// metrics.
func rank0Metrics(m events.Message) *apiv1.StepMetrics {
	if m.Metrics == nil || m.Metrics.Rank != 0 {
		return nil
	}
	sm := &apiv1.StepMetrics{Step: m.Metrics.Step, Loss: m.Metrics.Loss, Lbl: m.Metrics.LBL, NoLbl: m.Metrics.NoLBL, TokensPerSecond: m.Metrics.TokensPerSecond, GpuUtilPct: m.Metrics.GPUUtilPct}
	for _, row := range m.Metrics.ExpertLoadLE {
		sm.ExpertLoad = append(sm.ExpertLoad, &apiv1.ExpertLoad{Share: row})
	}
	return sm
}

// replayed is the end of the replayed history: a live message at or
// before it was sent already. Stored messages carry their position in the
// stream (Seq), which tells exactly; without one, the step does (a
// restarted attempt's repeated steps would then be dropped until it
// passes the last replayed step).
type replayed struct {
	any       bool
	seq, step int64
}

func (r *replayed) add(m events.Message) {
	r.any = true
	r.seq = max(r.seq, int64(m.Seq))
	r.step = max(r.step, m.Metrics.Step)
}

func (r *replayed) has(m events.Message) bool {
	switch {
	case !r.any:
		return false
	case m.Seq != 0 && r.seq != 0:
		return int64(m.Seq) <= r.seq
	}
	return m.Metrics.Step <= r.step
}

func (s *Server) ListCheckpoints(ctx context.Context, req *apiv1.ListCheckpointsRequest) (*apiv1.ListCheckpointsResponse, error) {
	if s.cfg.Checkpoints == nil {
		return nil, apiError(failure(errNoCatalogue, "this coordinator has no checkpoint catalogue"))
	}
	j, err := s.localJob(ctx, req.GetJobId())
	if err != nil {
		return nil, apiError(err)
	}
	// a worker's ranks read their own job's catalogue, no other
	if id, ok := caller(ctx); ok && id.Ranked() && id.Scope.Job != j.Id {
		return nil, apiError(failure(errPermission, "the token of rank %d of job %s reads that job's checkpoints only, not job %s's", id.Scope.Rank, id.Scope.Job, j.Id))
	}
	if id, ok := caller(ctx); ok && id.Worker != "" && !slices.ContainsFunc(j.Placement, func(p *pb.RankAssignment) bool { return p.WorkerId == id.Worker }) {
		if !s.cfg.Node.IsLeader() {
			// this replica may not have seen the attempt yet: the leader
			// has (a call forwarded here gets UNAVAILABLE: leadership is
			// changing, retry)
			return forward(ctx, s, req, apiv1.CoordinatorClient.ListCheckpoints)
		}
		return nil, apiError(failure(errPermission, "worker %s holds no rank of job %s's attempt %d: a worker reads the checkpoints of its own jobs only", id.Worker, j.Id, j.Restarts))
	}
	live, deleting, err := s.cfg.Checkpoints.List(ctx, j)
	if err != nil {
		return nil, apiError(failure(errUnavailable, "checkpoint catalogue: %v", err))
	}
	resp := &apiv1.ListCheckpointsResponse{}
	for _, m := range live {
		c := &apiv1.Checkpoint{
			JobId: j.Id, Step: m.Step, Status: "committed", CommittedUnixNano: m.CreatedUnixNano, Bytes: m.TotalSize(),
			Tp: int32(m.Layout.TP), Dp: int32(m.Layout.DP), Ep: int32(m.Layout.EP),
		}
		if v, ok := m.ValLoss(); ok {
			c.ValLoss = v
		}
		for _, sh := range m.Shards {
			c.Shards = append(c.Shards, &apiv1.Shard{Name: sh.Name, Size: sh.Size, Sha256: sh.SHA256})
		}
		if req.GetManifests() {
			if c.Manifest, err = checkpoint.EncodeManifest(m); err != nil {
				return nil, apiError(failure(errRefused, "checkpoint %d of %s: %v", m.Step, j.Id, err))
			}
		}
		resp.Checkpoints = append(resp.Checkpoints, c)
	}
	for _, step := range deleting {
		c := &apiv1.Checkpoint{JobId: j.Id, Step: step, Status: "deleting"}
		if req.GetManifests() {
			m, err := s.cfg.Checkpoints.Manifest(ctx, j, step)
			switch {
			case errors.Is(err, checkpoint.ErrNotFound):
				continue // removed since the list: gone
			case err != nil:
				return nil, apiError(failure(errUnavailable, "checkpoint catalogue: %v", err))
			}
			if c.Manifest, err = checkpoint.EncodeManifest(m); err != nil {
				return nil, apiError(failure(errRefused, "checkpoint %d of %s: %v", m.Step, j.Id, err))
			}
		}
		resp.Checkpoints = append(resp.Checkpoints, c)
	}
	return resp, nil
}

// stepCall is the checks a call on one checkpoint (what: "delete
// checkpoint") starts with: this coordinator has a catalogue, and the
// step is one.
func (s *Server) stepCall(what string, step int64) error {
	if s.cfg.Checkpoints == nil {
		return apiError(failure(errNoCatalogue, "this coordinator has no checkpoint catalogue"))
	}
	if step < 0 {
		return apiError(failure(errBadRequest, "%s: step %d: steps are >= 0", what, step))
	}
	return nil
}

func (s *Server) DeleteCheckpoint(ctx context.Context, req *apiv1.DeleteCheckpointRequest) (*apiv1.DeleteCheckpointResponse, error) {
	if err := s.stepCall("delete checkpoint", req.GetStep()); err != nil {
		return nil, err
	}
	if !s.cfg.Node.IsLeader() {
		// the job's current state (a resume from this step) is the leader's
		return forward(ctx, s, req, apiv1.CoordinatorClient.DeleteCheckpoint)
	}
	// no resume from this step may be decided between the check below
	// and the delete
	s.resumeFrom.Lock()
	defer s.resumeFrom.Unlock()
	j, err := s.cfg.Node.Job(req.GetJobId())
	if err != nil {
		return nil, apiError(err)
	}
	if _, err := s.committed(ctx, j, req.GetStep(), "delete checkpoint"); err != nil {
		// a step marked deleting (a deletion cut short: a rank that
		// died in its retention, a coordinator that stopped) is
		// finished: nothing else ever would for a job that does not run
		// again
		_, deleting, lerr := s.cfg.Checkpoints.List(ctx, j)
		if lerr != nil || !slices.Contains(deleting, req.GetStep()) {
			return nil, apiError(err)
		}
	}
	if !jobstate.Final(j.State) && j.ResumeFromStep == req.GetStep() {
		return nil, apiError(failure(errRefused, "delete checkpoint %d of %s: the job's attempt resumes from it (job resume --from); cancel the job first, or resume it from another step", req.GetStep(), j.Id))
	}
	if err := s.cfg.Checkpoints.Delete(ctx, j, req.GetStep()); err != nil {
		return nil, apiError(failure(errRefused, "delete checkpoint %d of %s: %v", req.GetStep(), j.Id, err))
	}
	s.publish(j.Id, "CheckpointDeleted", j.State, "checkpoint of step deleted by the user", "")
	return &apiv1.DeleteCheckpointResponse{}, nil
}

// plausible refuses a manifest the job's current attempt cannot have
// written: a step past the job's last, or a layout of another world size.
// One such commit (step 999999999999) made every later save of the job
// stale.
func (s *Server) plausible(j *pb.Job, m checkpoint.Manifest) error {
	sp, err := s.spec(j)
	if err != nil {
		return failure(errBadRequest, "job %s: its spec: %v", j.Id, err)
	}
	if sp.Steps > 0 && m.Step > int64(sp.Steps) { // a command job may not say (0)
		return failure(errBadRequest, "job %s: a checkpoint of step %d is past the job's last step %d", j.Id, m.Step, sp.Steps)
	}
	if w := m.Layout.TP * m.Layout.DP; w != len(j.Placement) {
		return failure(errBadRequest, "job %s: a checkpoint of %d ranks (tp %d x dp %d) from an attempt of %d", j.Id, w, m.Layout.TP, m.Layout.DP, len(j.Placement))
	}
	return nil
}

// committed is job j's committed checkpoint of step (op names the call in
// errors): NotFound when the catalogue has none.
func (s *Server) committed(ctx context.Context, j *pb.Job, step int64, op string) (checkpoint.Manifest, error) {
	live, _, err := s.cfg.Checkpoints.List(ctx, j)
	if err != nil {
		return checkpoint.Manifest{}, failure(errUnavailable, "%s: list the catalogue of %s: %v", op, j.Id, err)
	}
	i := slices.IndexFunc(live, func(m checkpoint.Manifest) bool { return m.Step == step })
	if i < 0 {
		have := "none is"
		if len(live) > 0 {
			steps := make([]string, len(live))
			for k, m := range live {
				steps[k] = strconv.FormatInt(m.Step, 10)
			}
			have = "steps " + strings.Join(steps, ", ") + " are"
		}
		return checkpoint.Manifest{}, failure(checkpoint.ErrNoCheckpoint, "job %s has no committed checkpoint of step %d (%s)", j.Id, step, have+" committed")
	}
	return live[i], nil
}

func (s *Server) VerifyCheckpoint(ctx context.Context, req *apiv1.VerifyCheckpointRequest) (*apiv1.VerifyCheckpointResponse, error) {
	if s.cfg.Checkpoints == nil {
		return nil, apiError(failure(errNoCatalogue, "this coordinator has no checkpoint catalogue"))
	}
	if req.GetStep() < 0 {
		return nil, apiError(failure(errBadRequest, "verify checkpoint: step %d: steps are >= 0", req.GetStep()))
	}
	j, err := s.localJob(ctx, req.GetJobId())
	if err != nil {
		return nil, apiError(err)
	}
	m, err := s.committed(ctx, j, req.GetStep(), "verify checkpoint")
	if err != nil {
		return nil, apiError(err)
	}
	errs, err := s.cfg.Checkpoints.Verify(ctx, j, m)
	if err != nil {
		return nil, apiError(failure(errRefused, "verify checkpoint %d of %s: %v", req.GetStep(), j.Id, err))
	}
	resp := &apiv1.VerifyCheckpointResponse{Ok: true}
	for k, sh := range m.Shards {
		st := "ok"
		if errs[k] != nil {
			st, resp.Ok = errs[k].Error(), false
		}
		resp.Shards = append(resp.Shards, &apiv1.ShardCheck{Name: sh.Name, Status: st})
	}
	return resp, nil
}

// commitTimeout bounds a checkpoint's commit in etcd and its event.
const commitTimeout = 15 * time.Second

func (s *Server) CommitCheckpoint(ctx context.Context, req *apiv1.CommitCheckpointRequest) (*apiv1.CommitCheckpointResponse, error) {
	if s.cfg.Checkpoints == nil {
		return nil, apiError(failure(errNoCatalogue, "this coordinator has no checkpoint catalogue"))
	}
	if !s.cfg.Node.IsLeader() {
		return forward(ctx, s, req, apiv1.CoordinatorClient.CommitCheckpoint)
	}
	m, err := checkpoint.DecodeManifest(req.GetManifest())
	if err != nil {
		s.cfg.Metrics.CheckpointRefused("bad_manifest")
		return nil, apiError(failure(errBadRequest, "manifest: %v", err))
	}
	if m.Job != req.GetJobId() {
		s.cfg.Metrics.CheckpointRefused("bad_manifest")
		return nil, apiError(failure(errBadRequest, "manifest of job %q sent for job %q", m.Job, req.GetJobId()))
	}
	// The attempt check happens under the leader's lock, and the commit
	// after it without the lock (an etcd that is slow or down must not
	// stall every sync and supervision pass), registered as in flight
	// before the lock is released: whatever ends the job's attempt waits
	// for it, so no requeue comes between the check and the commit.
	h := s.hold()
	j, err := h.admitCommit(ctx, req, m)
	h.release()
	if err != nil {
		return nil, err
	}
	defer s.commits.end(j.Id)
	return s.commitIt(ctx, j, m)
}

// admitCommit checks that the commit comes from the job's current attempt
// (and its rank 0) and is plausible, and registers it as in flight.
func (s held) admitCommit(ctx context.Context, req *apiv1.CommitCheckpointRequest, m checkpoint.Manifest) (*pb.Job, error) {
	j, err := s.fenced(ctx, req.GetJobId(), req.GetAttempt(), "CommitRefused", fmt.Sprintf("its checkpoint of step %d is not committed", m.Step))
	if err != nil {
		return nil, err
	}
	if err := s.plausible(j, m); err != nil {
		s.recordEvent(ctx, j.Id, "CommitRefused", err.Error(), "")
		s.cfg.Metrics.CheckpointRefused("implausible")
		return nil, apiError(err)
	}
	s.commits.begin(j.Id)
	return j, nil
}

// fenced is job id's record when attempt is its current attempt and the
// caller (a worker) holds its rank 0: what a commit or a retention step
// must come from. A refusal is an API error, recorded as an event of
// type event; refused says what it leaves undone ("its checkpoint of
// step 10 is not committed"). A job that is gone (deleted) has no
// current attempt: the caller's is over.
func (s held) fenced(ctx context.Context, id string, attempt int32, event, refused string) (*pb.Job, error) {
	j, err := s.cfg.Node.Job(id)
	if errors.Is(err, coordinator.ErrJobNotFound) {
		s.cfg.Metrics.CheckpointRefused("attempt_over")
		return nil, apiError(failure(errAttemptOver, "job %s is not there (deleted?): attempt %d is over; %s", id, attempt, refused))
	}
	if err != nil {
		return nil, apiError(err)
	}
	if !active(j) || j.Restarts != attempt {
		msg := fmt.Sprintf("job %s: attempt %d is over (the job is %s at attempt %d); %s",
			j.Id, attempt, jobstate.Name(j.State), j.Restarts, refused)
		if !jobstate.Final(j.State) {
			s.recordEvent(ctx, j.Id, event, msg, "")
		}
		s.cfg.Metrics.CheckpointRefused("attempt_over")
		return nil, apiError(failure(errAttemptOver, "%s", msg))
	}
	if id, ok := caller(ctx); ok && id.Ranked() && (id.Scope.Job != j.Id || id.Scope.Attempt != attempt || id.Scope.Rank != 0) {
		s.cfg.Metrics.CheckpointRefused("not_rank_0")
		return nil, apiError(failure(errPermission, "the token of rank %d of job %s's attempt %d cannot act for rank 0 of job %s's attempt %d: only that rank commits and retires its checkpoints",
			id.Scope.Rank, id.Scope.Job, id.Scope.Attempt, j.Id, attempt))
	}
	if id, ok := caller(ctx); ok && id.Worker != "" && (len(j.Placement) == 0 || j.Placement[0].WorkerId != id.Worker) {
		s.cfg.Metrics.CheckpointRefused("not_rank_0")
		return nil, apiError(failure(errPermission, "worker %s does not hold rank 0 of job %s's attempt %d: only that rank commits and retires its checkpoints", id.Worker, j.Id, j.Restarts))
	}
	return j, nil
}

// RetireCheckpoint is one step of a rank 0's retention, under its
// attempt's fence: the entry marked deleting before the rank deletes the
// files, removed after. Registered as in flight like a commit, so no
// retention step of an attempt lands after the attempt ended.
func (s *Server) RetireCheckpoint(ctx context.Context, req *apiv1.RetireCheckpointRequest) (*apiv1.RetireCheckpointResponse, error) {
	if err := s.stepCall("retire checkpoint", req.GetStep()); err != nil {
		return nil, err
	}
	if !s.cfg.Node.IsLeader() {
		return forward(ctx, s, req, apiv1.CoordinatorClient.RetireCheckpoint)
	}
	what := fmt.Sprintf("its checkpoint of step %d is not marked deleting", req.GetStep())
	if req.GetRemove() {
		what = fmt.Sprintf("the entry of its checkpoint of step %d is not removed", req.GetStep())
	}
	h := s.hold()
	j, err := h.fenced(ctx, req.GetJobId(), req.GetAttempt(), "RetireRefused", what)
	if err == nil {
		s.commits.begin(j.Id)
	}
	h.release()
	if err != nil {
		return nil, err
	}
	defer s.commits.end(j.Id)
	// like a commit, it happens once begun, whether or not the caller waits
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), commitTimeout)
	defer cancel()
	switch err := s.cfg.Checkpoints.Retire(cctx, j, req.GetStep(), req.GetRemove()); {
	case err == nil:
		return &apiv1.RetireCheckpointResponse{}, nil
	case errors.Is(err, checkpoint.ErrFenced):
		return nil, s.fencedOut(cctx, j, "RetireRefused", what, err)
	case errors.Is(err, checkpoint.ErrNotFound):
		return nil, apiError(failure(errNotFound, "retire checkpoint: %v", err))
	case errors.Is(err, checkpoint.ErrNotDeleting):
		// its own code: an attempt that is over is FAILED_PRECONDITION
		return nil, status.Errorf(codes.Aborted, "retire checkpoint: %v (mark it deleting first)", err)
	default:
		return nil, apiError(failure(errUnavailable, "retire checkpoint: %v", err))
	}
}

// fencedOut is the refusal of a commit or retention step that this
// replica admitted (its attempt was current here) but the catalogue
// refused: a later attempt was fenced meanwhile, by a newer leader. The
// attempt is over, as fenced says; recorded as an event of type event.
func (s *Server) fencedOut(ctx context.Context, j *pb.Job, event, refused string, err error) error {
	msg := fmt.Sprintf("job %s: attempt %d is over (the catalogue is fenced for a later attempt: %v); %s", j.Id, j.Restarts, err, refused)
	if now, err := s.cfg.Node.Job(j.Id); err == nil && !jobstate.Final(now.State) {
		s.recordEvent(ctx, j.Id, event, msg, "")
	}
	s.cfg.Metrics.CheckpointRefused("attempt_over")
	return apiError(failure(errAttemptOver, "%s", msg))
}

// commitIt commits an admitted checkpoint in etcd and records its event.
func (s *Server) commitIt(ctx context.Context, j *pb.Job, m checkpoint.Manifest) (*apiv1.CommitCheckpointResponse, error) {
	// Once begun, the commit and its event happen whether or not the
	// caller is still there: a rank killed while its commit is in flight
	// must not leave a checkpoint committed in etcd without its event.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), commitTimeout)
	defer cancel()
	if err := s.cfg.Checkpoints.Commit(cctx, j, m); err != nil {
		if errors.Is(err, checkpoint.ErrFenced) {
			return nil, s.fencedOut(cctx, j, "CommitRefused", fmt.Sprintf("its checkpoint of step %d is not committed", m.Step), err)
		}
		// a stale step (checkpoint.ErrStale) answers AlreadyExists
		s.cfg.Metrics.CheckpointRefused("catalogue")
		return nil, apiError(failure(errUnavailable, "commit checkpoint: %v", err))
	}
	msg := committedMessage(m)
	s.cfg.Metrics.CheckpointCommitted()
	s.recordEvent(cctx, j.Id, "CheckpointCommitted", msg, "")
	s.publish(j.Id, "CheckpointCommitted", j.State, msg, "")
	return &apiv1.CommitCheckpointResponse{}, nil
}

// committedMessage is the history's line for a committed checkpoint:
// "checkpoint of step 10 committed (1 shard, 4 KiB, layout tp 1 dp 2 ep 1)".
func committedMessage(m checkpoint.Manifest) string {
	shards := fmt.Sprintf("%d shards", len(m.Shards))
	if len(m.Shards) == 1 {
		shards = "1 shard"
	}
	return fmt.Sprintf("checkpoint of step %d committed (%s, %s, layout tp %d dp %d ep %d)",
		m.Step, shards, fsutil.Size(m.TotalSize()), m.Layout.TP, m.Layout.DP, m.Layout.EP)
}
