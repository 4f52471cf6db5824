package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
	"github.com/switchyard-ml/switchyard/pkg/coordinator"
	"github.com/switchyard-ml/switchyard/pkg/events"
	"github.com/switchyard-ml/switchyard/pkg/jobspec"
	"github.com/switchyard-ml/switchyard/pkg/jobstate"
	"github.com/switchyard-ml/switchyard/pkg/membership"
	"github.com/switchyard-ml/switchyard/pkg/metrics"
	"github.com/switchyard-ml/switchyard/pkg/security"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// ReplicaPrefix is where coordinator replicas register in etcd.
const ReplicaPrefix = "/switchyard/coordinators/"

// raftLabel is the label of a replica's directory entry holding its raft
// address.
const raftLabel = "raft"

// Replica is what the controller needs from this process's replica of the
// control-plane state: the leader proposes commands and reads the jobs,
// a follower reads them and forwards writes. *coordinator.Node is the raft
// one; a test can put a coordinator.FSM behind it with no network.
type Replica interface {
	ID() string
	IsLeader() bool
	Leader() (id, addr string)
	// Apply proposes cmd (leader only) and returns once this replica
	// applied it; the error is the replication's or the command's own.
	Apply(ctx context.Context, cmd *pb.Command) (coordinator.ApplyResult, error)
	// Barrier waits until every committed entry is applied here.
	Barrier(ctx context.Context) error
	// ReadBarrier confirms this replica leads and has applied what its
	// log holds, so that a read of its state is current (leader only).
	ReadBarrier(ctx context.Context) error
	Job(id string) (*pb.Job, error)
	Jobs() []*pb.Job
	Unfinished() []*pb.Job
}

// ReplicaSet is the replicas' membership, which ClusterStatus,
// AddReplica and RemoveReplica read and change when the Replica is one
// (raft's is); otherwise they answer UNIMPLEMENTED.
type ReplicaSet interface {
	Addr() string // this replica's raft address
	State() string
	Stats() map[string]string
	Servers() ([]coordinator.ServerStatus, error)
	// ProbeReplica checks that raft replica id answers at addr.
	ProbeReplica(id, addr string) error
	AddVoter(ctx context.Context, id, addr string) error
	RemoveServer(ctx context.Context, id string) error
}

// Config wires a Server.
type Config struct {
	// Node is this replica; required.
	Node Replica
	// APIAddr is the API address other replicas and clients reach this
	// replica on; required.
	APIAddr string
	// Workers is the worker membership (etcd prefix /switchyard/workers/).
	Workers membership.Registry
	// Replicas is the replica directory (etcd prefix ReplicaPrefix).
	Replicas membership.Registry
	// Bus carries lifecycle events, logs and metrics; nil: none.
	Bus events.Bus
	// Metrics records the replica's Prometheus metrics; nil: none.
	Metrics *metrics.Coordinator
	// Checkpoints lists and deletes committed checkpoints; nil: the
	// checkpoint calls answer UNIMPLEMENTED.
	Checkpoints Checkpoints
	// Token and TLS are what this replica presents when it forwards a
	// write to the leader (the same as its clients use).
	Token string
	TLS   security.TLSFiles

	// Tick is the supervision period (default 250ms).
	Tick time.Duration
	// ProgressEvery bounds how often a job's progress is written to raft
	// (default 2s).
	ProgressEvery time.Duration
	// ReplicaTTL is the lease of this replica's directory entry (default 5s).
	ReplicaTTL time.Duration
	// Silence is how long a worker may go without SyncWorker before it is
	// treated as unresponsive (default 1.2s; workers sync every 500ms).
	// Keep it below the workers' lease TTL (at least 2s): when several
	// workers die together their leases expire one by one, and the job
	// must not be placed again on one whose lease has not expired yet.
	Silence time.Duration
	// FailureGrace is how long a rank failure waits for a worker loss
	// that explains it (default 2.5s).
	FailureGrace time.Duration
	// StartSilence is how long a worker holding ranks of a placed job
	// that have not started may go without SyncWorker before the job is
	// requeued elsewhere (default 15s).
	StartSilence time.Duration
	// ReplicaLag bounds how long a follower waits for a job the leader
	// knows to be replicated to it before answering UNAVAILABLE (default
	// 30s; a replica that just restarted can be 10s behind).
	ReplicaLag time.Duration
	Logger     *slog.Logger
	// Now is the clock of the leader's bookkeeping (backoff, progress rate).
	Now func() time.Time
}

// Server serves the API and, on the leader, supervises jobs.
type Server struct {
	apiv1.UnimplementedCoordinatorServer
	cfg Config
	log *slog.Logger

	mu       sync.Mutex
	workers  map[string]membership.WorkerInfo // live, from etcd
	replicas map[string]membership.WorkerInfo // live replica directory
	specs    map[string]*jobspec.Spec         // parsed specs by job id

	// lead serialises the leader's decisions (reports, supervision) so two
	// failure reports of one attempt cannot both act; see held.
	lead     sync.Mutex
	term     leaderMemory
	fwd      forwarder
	watchers sync.WaitGroup
	// etcdOK is when a membership list last succeeded (Unix nanoseconds;
	// 0: never), for readiness.
	etcdOK atomic.Int64

	// resumeFrom serialises a resume from a chosen checkpoint (its check
	// that the step is committed, then its command) with checkpoint
	// deletion (its check that no attempt resumes from the step, then the
	// delete), so that neither runs between the other's check and act:
	// interleaved, a job could be left to resume from a checkpoint just
	// deleted. Taken before lead, never while holding it.
	resumeFrom sync.Mutex

	// arrivals is when each worker's sync reached the leader, recorded
	// before the sync waits for lead: a sync held up behind a long
	// decision (a checkpoint commit waiting on etcd) is no silence of its
	// worker. tick moves them into lastSync.
	arrivals syncArrivals

	// health is the leader's view of the workers' syncs, published by
	// every supervision pass.
	health healthView

	// commits is the checkpoint commits admitted under lead and in
	// flight without it; what ends an attempt waits for its job's.
	commits commitsInFlight

	// fences is the catalogue fences of the attempts to place, written
	// off the lead lock by a goroutine of Run.
	fences *fences
}

// syncArrivals is the workers' newest sync arrivals, not yet in lastSync
// (at), and the newest of each worker this term (last).
type syncArrivals struct {
	mu   sync.Mutex
	at   map[string]time.Time
	last map[string]time.Time
}

func (a *syncArrivals) note(worker string, t time.Time) {
	a.mu.Lock()
	if a.at == nil {
		a.at, a.last = map[string]time.Time{}, map[string]time.Time{}
	}
	a.at[worker], a.last[worker] = t, t
	a.mu.Unlock()
}

// latest is a copy of last.
func (a *syncArrivals) latest() map[string]time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return maps.Clone(a.last)
}

// forget drops the workers no longer registered from last.
func (a *syncArrivals) forget(live map[string]membership.WorkerInfo) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for w := range a.last {
		if _, ok := live[w]; !ok {
			delete(a.last, w)
		}
	}
}

// healthView is what the leader knew of the workers' syncs at its last
// supervision pass, for cluster status, which reads it without the lead
// lock: a pass held up (on etcd, say) must not hold up the answer.
type healthView struct {
	mu sync.Mutex
	m  leaderMemory // leading, lastSync and draining only
}

// publish copies what health reads from m; called under the lead lock.
func (v *healthView) publish(m leaderMemory) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.m = leaderMemory{leading: m.leading, lastSync: maps.Clone(m.lastSync), draining: maps.Clone(m.draining)}
}

// read is a copy of the last one published, its maps the caller's.
func (v *healthView) read() leaderMemory {
	v.mu.Lock()
	defer v.mu.Unlock()
	m := v.m
	m.lastSync, m.draining = maps.Clone(m.lastSync), maps.Clone(m.draining)
	if m.lastSync == nil {
		m.lastSync = map[string]time.Time{}
	}
	return m
}

// drain moves the arrivals into lastSync where they are newer.
func (a *syncArrivals) drain(lastSync map[string]time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for w, t := range a.at {
		if lastSync != nil && t.After(lastSync[w]) {
			lastSync[w] = t
		}
		delete(a.at, w)
	}
	if lastSync == nil {
		clear(a.last) // a new term
	}
}

// leaderMemory is what the leader keeps outside raft; a new leader starts
// it empty and rebuilds it from the workers' repeated reports.
type leaderMemory struct {
	// leading: this memory is the current term's (set once supervision
	// took over after the election's barrier, cleared when it lost
	// leadership).
	leading      bool
	reports      map[taskKey]*apiv1.TaskStatus
	lastProgress map[string]time.Time
	notBefore    map[string]time.Time
	// lastSync is when each worker last called SyncWorker (seeded with the
	// takeover time): a worker silent for Silence is not given new work,
	// and a rank failure next to it is blamed on it.
	lastSync map[string]time.Time
	// draining holds the workers that said they are shutting down: no new
	// work goes to them.
	draining map[string]bool
	// failing holds a job's first rank failure of the current attempt for
	// FailureGrace before it is acted on: when a worker dies, its peers'
	// ranks fail at once, long before its lease expires, and the job's
	// failure should name the dead worker, not a survivor.
	failing map[string]pendingFailure
	// eventSeq is the last rank event recorded per task.
	eventSeq map[taskKey]uint32
}

type pendingFailure struct {
	attempt int32
	at      time.Time
	msg     string
	worker  string
	// refused: the worker refused to start the rank (TaskStatus.refused);
	// a restart would meet the same refusal
	refused bool
}

type taskKey struct {
	job     string
	attempt int32
	rank    int32
}

// New checks cfg and returns a Server; Run starts its background work.
func New(cfg Config) (*Server, error) {
	switch {
	case cfg.Node == nil:
		return nil, errors.New("controller: no raft node")
	case cfg.APIAddr == "":
		return nil, errors.New("controller: no API address")
	case cfg.Workers == nil || cfg.Replicas == nil:
		return nil, errors.New("controller: worker membership and replica directory are required")
	}
	if cfg.Tick <= 0 {
		cfg.Tick = 250 * time.Millisecond
	}
	if cfg.ProgressEvery <= 0 {
		cfg.ProgressEvery = 2 * time.Second
	}
	if cfg.ReplicaTTL <= 0 {
		cfg.ReplicaTTL = 5 * time.Second
	}
	if cfg.Silence <= 0 {
		cfg.Silence = 1200 * time.Millisecond
	}
	if cfg.StartSilence <= 0 {
		cfg.StartSilence = 15 * time.Second
	}
	if cfg.FailureGrace <= 0 {
		cfg.FailureGrace = 2500 * time.Millisecond
	}
	if cfg.ReplicaLag <= 0 {
		cfg.ReplicaLag = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Server{
		cfg:      cfg,
		log:      cfg.Logger,
		workers:  map[string]membership.WorkerInfo{},
		replicas: map[string]membership.WorkerInfo{},
		specs:    map[string]*jobspec.Spec{},
		fences:   newFences(),
	}
	s.fwd = forwarder{token: cfg.Token, tls: cfg.TLS, conns: map[string]*forwardConn{}}
	held{s}.resetLeaderMemory() // not shared yet: no lock needed
	return s, nil
}

// held is the Server while the calling goroutine holds s.lead, the lock
// of the leader's decisions. What reads or changes the leader's memory
// (term) or decides about jobs (supervision, reports, placement, failing
// an attempt) is a method of held, not of Server, so it cannot be called
// without the lock. hold takes it, release gives it back.
type held struct{ *Server }

func (s *Server) hold() held { s.lead.Lock(); return held{s} }

func (h held) release() { h.lead.Unlock() }

func (s held) resetLeaderMemory() {
	s.term = leaderMemory{
		reports:      map[taskKey]*apiv1.TaskStatus{},
		lastProgress: map[string]time.Time{},
		notBefore:    map[string]time.Time{},
		lastSync:     map[string]time.Time{},
		draining:     map[string]bool{},
		failing:      map[string]pendingFailure{},
		eventSeq:     map[taskKey]uint32{},
	}
	s.arrivals.drain(nil) // the last term's
}

// Run registers this replica in the directory, follows the worker and
// replica memberships and supervises jobs while this replica leads. It
// returns when ctx ends.
func (s *Server) Run(ctx context.Context) error {
	defer s.fwd.close()
	if err := s.refresh(ctx); err != nil {
		s.log.Warn("initial membership list failed", "error", err)
	}
	var wg sync.WaitGroup
	if s.cfg.Checkpoints != nil {
		wg.Go(func() { s.fences.run(ctx, s.cfg.Checkpoints, s.log, s.cfg.Node.IsLeader) })
	}
	wg.Add(3)
	go func() { defer wg.Done(); s.registerLoop(ctx) }()
	go func() { defer wg.Done(); s.follow(ctx, s.cfg.Workers, s.workersMap) }()
	go func() { defer wg.Done(); s.follow(ctx, s.cfg.Replicas, s.replicasMap) }()
	s.superviseLoop(ctx)
	wg.Wait()
	s.watchers.Wait()
	return nil
}

// replicaSet is the replicas' membership, when the Replica has one.
func (s *Server) replicaSet() (ReplicaSet, error) {
	rs, ok := s.cfg.Node.(ReplicaSet)
	if !ok {
		return nil, failure(errNoRaft, "replica %s has no replica membership to show or change", s.cfg.Node.ID())
	}
	return rs, nil
}

func (s *Server) workersMap() map[string]membership.WorkerInfo  { return s.workers }
func (s *Server) replicasMap() map[string]membership.WorkerInfo { return s.replicas }

// registerLoop keeps this replica's directory entry alive.
func (s *Server) registerLoop(ctx context.Context) {
	info := membership.WorkerInfo{ID: s.cfg.Node.ID(), Address: s.cfg.APIAddr}
	if rs, err := s.replicaSet(); err == nil {
		info.Labels = map[string]string{raftLabel: rs.Addr()}
	}
	for ctx.Err() == nil {
		reg, err := s.cfg.Replicas.Register(ctx, info, s.cfg.ReplicaTTL)
		if err != nil {
			s.log.Warn("replica registration failed", "error", err)
			sleep(ctx, time.Second)
			continue
		}
		select {
		case <-ctx.Done():
			cctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			reg.Close(cctx) //nolint:errcheck // best effort on shutdown
			cancel()
			return
		case <-reg.Lost():
			s.log.Warn("replica registration lost; registering again")
			// revoke it first: the etcd client gives a lease up on its own
			// deadline while the server may still hold it, and the id
			// cannot be registered again while it does
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			reg.Close(cctx) //nolint:errcheck // best effort: it may be gone already
			cancel()
		}
	}
}

// follow keeps a membership cache current: a watch for fast changes and a
// full list every few seconds so that nothing missed stays.
func (s *Server) follow(ctx context.Context, reg membership.Registry, m func() map[string]membership.WorkerInfo) {
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(ctx)
		ch, err := reg.Watch(wctx)
		if err != nil {
			cancel()
			s.log.Warn("membership watch failed", "error", err)
			sleep(ctx, time.Second)
			continue
		}
		relist := time.NewTicker(5 * time.Second)
	loop:
		for {
			select {
			case ev, ok := <-ch:
				if !ok {
					break loop
				}
				s.mu.Lock()
				if ev.Type == membership.Join || ev.Type == membership.Update {
					m()[ev.Worker.ID] = ev.Worker
				} else {
					delete(m(), ev.Worker.ID)
				}
				s.mu.Unlock()
			case <-relist.C:
				if err := s.relist(ctx, reg, m); err != nil {
					s.log.Warn("membership list failed", "error", err)
				}
			}
		}
		relist.Stop()
		cancel()
		sleep(ctx, 200*time.Millisecond)
	}
}

func (s *Server) relist(ctx context.Context, reg membership.Registry, m func() map[string]membership.WorkerInfo) error {
	lctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	list, err := reg.List(lctx)
	if reg == s.cfg.Workers {
		s.cfg.Metrics.EtcdReached(err == nil)
	}
	if err != nil {
		return err
	}
	s.etcdOK.Store(time.Now().UnixNano())
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := m()
	clear(cur)
	for _, w := range list {
		cur[w.ID] = w
	}
	return nil
}

// EtcdReached is when etcd (the membership store) last answered a list;
// zero if never.
func (s *Server) EtcdReached() time.Time {
	if ns := s.etcdOK.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// refresh lists both memberships now.
func (s *Server) refresh(ctx context.Context) error {
	return errors.Join(s.relist(ctx, s.cfg.Workers, s.workersMap), s.relist(ctx, s.cfg.Replicas, s.replicasMap))
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// liveWorkers copies the worker cache.
func (s *Server) liveWorkers() map[string]membership.WorkerInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]membership.WorkerInfo, len(s.workers))
	for k, v := range s.workers {
		out[k] = v
	}
	return out
}

// spec returns the job's parsed spec (cached).
func (s *Server) spec(j *pb.Job) (*jobspec.Spec, error) {
	s.mu.Lock()
	sp, ok := s.specs[j.Id]
	s.mu.Unlock()
	if ok {
		return sp, nil
	}
	sp, err := jobspec.Parse(j.Spec)
	if err != nil {
		return nil, fmt.Errorf("job %s: stored spec: %w", j.Id, err)
	}
	s.mu.Lock()
	s.specs[j.Id] = sp
	s.mu.Unlock()
	return sp, nil
}

// ---- API: jobs ----

func (s *Server) SubmitJob(ctx context.Context, req *apiv1.SubmitJobRequest) (*apiv1.SubmitJobResponse, error) {
	sp, err := jobspec.Parse(req.GetSpec())
	if err != nil {
		return nil, apiError(failure(errBadRequest, "%v", err))
	}
	id := req.GetJobId()
	if id == "" {
		id = jobspec.NewJobID(sp.Name)
	}
	if err := jobspec.ValidJobID(id); err != nil {
		return nil, apiError(failure(errBadRequest, "%v", err))
	}
	if !s.cfg.Node.IsLeader() {
		req.JobId = id
		return forward(ctx, s, req, apiv1.CoordinatorClient.SubmitJob)
	}
	r, err := s.cfg.Node.Apply(ctx, &pb.Command{Op: &pb.Command_SubmitJob{SubmitJob: &pb.SubmitJob{
		JobId:      id,
		Name:       sp.Name,
		Spec:       req.GetSpec(),
		Priority:   int32(sp.Priority),
		WorldSize:  int32(sp.Parallel.TP * sp.Parallel.DP),
		TotalSteps: int64(sp.Steps),
	}}})
	if err != nil {
		return nil, apiError(err)
	}
	if r.Created {
		steps := fmt.Sprintf("%d steps", sp.Steps)
		if sp.Steps == 0 {
			steps = "the command decides its steps" // runtime: command without steps
		}
		s.publish(id, "Submitted", r.Job.State, fmt.Sprintf("job %s submitted (%d ranks, %s)", sp.Name, r.Job.WorldSize, steps), "")
	}
	return &apiv1.SubmitJobResponse{Job: r.Job, Created: r.Created}, nil
}

// GetJob answers from the leader's state, as ListJobs does: a follower
// may be behind (a job cancelled a moment ago through the leader would
// still show as running, one just submitted as not found).
func (s *Server) GetJob(ctx context.Context, req *apiv1.GetJobRequest) (*apiv1.GetJobResponse, error) {
	if !s.cfg.Node.IsLeader() {
		return forward(ctx, s, req, apiv1.CoordinatorClient.GetJob)
	}
	if err := s.current(ctx); err != nil {
		return nil, err
	}
	j, err := s.cfg.Node.Job(req.GetJobId())
	if err != nil {
		return nil, apiError(err)
	}
	return &apiv1.GetJobResponse{Job: j, PendingReason: pendingReason(j)}, nil
}

// pendingReason is why a pending job waits.
func pendingReason(j *pb.Job) string { return jobstate.PendingReason(j) }

// ListJobs answers from the leader's state: a follower forwards (it may be
// behind, or, just restarted and with no leader, hold nothing yet), and a
// leader first applies what is committed (one just elected may not have),
// so that no answer is an empty or partial list that looks complete.
func (s *Server) ListJobs(ctx context.Context, req *apiv1.ListJobsRequest) (*apiv1.ListJobsResponse, error) {
	if !s.cfg.Node.IsLeader() {
		return forward(ctx, s, req, apiv1.CoordinatorClient.ListJobs)
	}
	if err := s.current(ctx); err != nil {
		return nil, err
	}
	resp, err := listPage(s.cfg.Node.Jobs(), req)
	return resp, apiError(err)
}

// current readies the leader's read of the jobs: its ReadBarrier (an
// error is UNAVAILABLE: the client retries, on another replica if need
// be).
func (s *Server) current(ctx context.Context) error {
	bctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := s.cfg.Node.ReadBarrier(bctx); err != nil {
		return apiError(failure(errUnavailable, "replica %s cannot confirm it leads with the log applied (%v); retry", s.cfg.Node.ID(), err))
	}
	return nil
}

func (s *Server) CancelJob(ctx context.Context, req *apiv1.CancelJobRequest) (*apiv1.CancelJobResponse, error) {
	if !s.cfg.Node.IsLeader() {
		return forward(ctx, s, req, apiv1.CoordinatorClient.CancelJob)
	}
	msg := req.GetMessage()
	if len(msg) > maxUserMessage {
		return nil, apiError(failure(errBadRequest, "cancel: the message is %d bytes; at most %d", len(msg), maxUserMessage))
	}
	if msg == "" {
		msg = "cancelled by the user"
	}
	h := s.hold()
	defer h.release()
	if !s.commits.wait(ctx, req.GetJobId()) {
		return nil, apiError(failure(errUnavailable, "cancel %s: a checkpoint commit of the job is still in flight; cancel again", req.GetJobId()))
	}
	if j, err := s.cfg.Node.Job(req.GetJobId()); err == nil && active(j) {
		// rank 0's newest report first: progress is recorded at most
		// every ProgressEvery, and a cancelled job would keep an older
		// step than the checkpoints its history shows committed
		if ts, ok := h.term.reports[taskKey{job: j.Id, attempt: j.Restarts, rank: 0}]; ok && ts.GetStep() > j.GetProgress().GetStep() {
			h.progress(ctx, j, ts, true)
		}
	}
	r, err := s.cfg.Node.Apply(ctx, &pb.Command{Op: &pb.Command_CancelJob{CancelJob: &pb.CancelJob{JobId: req.GetJobId(), Reason: "Cancelled", Message: msg}}})
	if err != nil {
		return nil, apiError(err)
	}
	s.publish(r.Job.Id, "Cancelled", r.Job.State, msg, "")
	s.control(r.Job.Id, "cancel", msg)
	return &apiv1.CancelJobResponse{Job: r.Job}, nil
}

func (s *Server) ResumeJob(ctx context.Context, req *apiv1.ResumeJobRequest) (*apiv1.ResumeJobResponse, error) {
	if !s.cfg.Node.IsLeader() {
		return forward(ctx, s, req, apiv1.CoordinatorClient.ResumeJob)
	}
	if step := req.GetFromStep(); step > 0 && s.cfg.Checkpoints != nil {
		// the step must be a committed checkpoint: an attempt told to
		// resume from one that is not fails, and costs a restart; and it
		// must stay one until the job says it resumes from it
		s.resumeFrom.Lock()
		defer s.resumeFrom.Unlock()
		j, err := s.cfg.Node.Job(req.GetJobId())
		if err != nil {
			return nil, apiError(err)
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if _, err := s.committed(cctx, j, step, "resume"); err != nil {
			return nil, apiError(err)
		}
	}
	msg := "resumed by the user from the newest committed checkpoint"
	if req.GetFromStep() > 0 {
		msg = fmt.Sprintf("resumed by the user from the checkpoint of step %d", req.GetFromStep())
	} else if newest, ok := s.resumeWording(ctx, req.GetJobId()); ok {
		msg = newest
	}
	h := s.hold()
	defer h.release()
	r, err := s.cfg.Node.Apply(ctx, &pb.Command{Op: &pb.Command_ResumeJob{ResumeJob: &pb.ResumeJob{JobId: req.GetJobId(), FromStep: req.GetFromStep(), Message: msg}}})
	if err != nil {
		return nil, apiError(err)
	}
	delete(h.term.notBefore, r.Job.Id)
	s.publish(r.Job.Id, "Resumed", r.Job.State, msg, "")
	return &apiv1.ResumeJobResponse{Job: r.Job}, nil
}

// resumeWording says what a resume of job id from the newest checkpoint
// starts from, as the catalogue holds it now: the newest committed step
// (the attempt takes the newest that verifies), or step 0 when there is
// none. ok is false when it cannot tell (no catalogue, or no answer).
func (s *Server) resumeWording(ctx context.Context, id string) (string, bool) {
	j, err := s.cfg.Node.Job(id)
	if err != nil || s.cfg.Checkpoints == nil {
		return "", false
	}
	switch step := s.newestCheckpoint(ctx, j); {
	case step < 0:
		return "", false
	case step == 0:
		return "resumed by the user; the job has no committed checkpoint: it starts from step 0", true
	default:
		return fmt.Sprintf("resumed by the user from the newest committed checkpoint (step %d; an older one if it does not verify)", step), true
	}
}

func (s *Server) DeleteJob(ctx context.Context, req *apiv1.DeleteJobRequest) (*apiv1.DeleteJobResponse, error) {
	if !s.cfg.Node.IsLeader() {
		return forward(ctx, s, req, apiv1.CoordinatorClient.DeleteJob)
	}
	// serialised with a resume from a chosen checkpoint and a checkpoint's
	// deletion: between the check that the job has no checkpoint and the
	// delete, none is resumed from nor half deleted
	s.resumeFrom.Lock()
	defer s.resumeFrom.Unlock()
	j, err := s.cfg.Node.Job(req.GetJobId())
	if err != nil {
		return nil, apiError(err)
	}
	if !jobstate.Final(j.State) {
		return nil, apiError(failure(errRefused, "job %s is %s: only a job that has ended is deleted (switchyard job cancel %s first)", j.Id, jobstate.Lower(j.State), j.Id))
	}
	if s.cfg.Checkpoints != nil {
		// a write of its attempts still in flight from a deposed leader
		// would leave an entry of a deleted job: fenced out first (at the
		// next attempt, which a resume would place if the deletion fails;
		// a fence above it already keeps them out: a job that failed
		// CatalogueFenced is deleted as any other)
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := s.cfg.Checkpoints.Fence(lctx, j, j.Restarts+1)
		cancel()
		if err != nil && !errors.Is(err, checkpoint.ErrFenced) {
			return nil, apiError(failure(errUnavailable, "delete job %s: its checkpoint catalogue cannot be fenced: %v", j.Id, err))
		}
		// a job's checkpoints are reached through it: deleted with them
		// left, they would be out of every command's reach
		lctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		live, deleting, err := s.cfg.Checkpoints.List(lctx, j)
		cancel()
		if err != nil {
			return nil, apiError(failure(errUnavailable, "delete job %s: its checkpoints cannot be listed: %v", j.Id, err))
		}
		steps := slices.Clone(deleting)
		for _, m := range live {
			steps = append(steps, m.Step)
		}
		slices.Sort(steps)
		if len(steps) > 0 && !req.GetWithCheckpoints() {
			return nil, apiError(failure(errRefused, "job %s has checkpoints (steps %s): delete them first (switchyard checkpoints delete %s STEP, or job delete --checkpoints), then the job",
				j.Id, joinSteps(steps), j.Id))
		}
		for i, step := range steps {
			// the job has ended and resumeFrom is held: no commit, no
			// resume from a chosen step and no other deletion meanwhile
			if err := s.cfg.Checkpoints.Delete(ctx, j, step); err != nil {
				return nil, apiError(failure(errRefused, "delete job %s: its checkpoint of step %d: %v (%d of its %d checkpoints deleted; the job is kept)", j.Id, step, err, i, len(steps)))
			}
			s.publish(j.Id, "CheckpointDeleted", j.State, fmt.Sprintf("checkpoint of step %d deleted with the job", step), "")
		}
	}
	// a resume without a chosen step takes lead only: one since the
	// first look started an attempt whose checkpoints the list missed
	h := s.hold()
	defer h.release()
	again, err := s.cfg.Node.Job(j.Id)
	if err != nil {
		return nil, apiError(err)
	}
	if again.Restarts != j.Restarts {
		return nil, apiError(failure(errRefused, "job %s was resumed while its deletion was checked: delete it again once it has ended", j.Id))
	}
	r, err := s.cfg.Node.Apply(ctx, &pb.Command{Op: &pb.Command_DeleteJob{DeleteJob: &pb.DeleteJob{JobId: j.Id}}})
	if err != nil {
		return nil, apiError(err)
	}
	h.forgetJob(j.Id)
	s.log.Info("job deleted", "job-id", j.Id)
	s.publish(j.Id, "Deleted", r.Job.State, "deleted by the user", "")
	return &apiv1.DeleteJobResponse{Job: r.Job}, nil
}

// joinSteps reads "10, 20, 30".
func joinSteps(steps []int64) string {
	s := make([]string, len(steps))
	for i, st := range steps {
		s[i] = strconv.FormatInt(st, 10)
	}
	return strings.Join(s, ", ")
}

// forgetJob drops what the leader remembers of a deleted job.
func (s held) forgetJob(id string) {
	delete(s.term.lastProgress, id)
	delete(s.term.notBefore, id)
	delete(s.term.failing, id)
	maps.DeleteFunc(s.term.reports, func(k taskKey, _ *apiv1.TaskStatus) bool { return k.job == id })
	maps.DeleteFunc(s.term.eventSeq, func(k taskKey, _ uint32) bool { return k.job == id })
	s.mu.Lock()
	delete(s.specs, id)
	s.mu.Unlock()
}

// ---- API: cluster ----

func (s *Server) ClusterStatus(ctx context.Context, _ *apiv1.ClusterStatusRequest) (*apiv1.ClusterStatusResponse, error) {
	rs, err := s.replicaSet()
	if err != nil {
		return nil, apiError(err)
	}
	servers, err := rs.Servers()
	if err != nil {
		return nil, apiError(failure(errUnavailable, "raft configuration: %v", err))
	}
	if !forwarded(ctx) { // a follower asking for the workers' health wants it now
		lctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		if err := s.refresh(lctx); err != nil {
			s.log.Warn("cluster status: membership list failed; answering from the cache", "error", err)
		}
	}
	leaderID, _ := s.cfg.Node.Leader()
	resp := &apiv1.ClusterStatusResponse{AnsweredBy: s.cfg.Node.ID(), LeaderId: leaderID, Raft: rs.Stats()}
	s.mu.Lock()
	for _, sv := range servers {
		r := &apiv1.Replica{Id: sv.ID, RaftAddress: sv.Address, Leader: sv.Leader, Voter: sv.Voter}
		if d, ok := s.replicas[sv.ID]; ok {
			r.ApiAddress, r.Alive = d.Address, true
		}
		if sv.ID == s.cfg.Node.ID() {
			r.State, r.Alive = rs.State(), true
		}
		resp.Replicas = append(resp.Replicas, r)
	}
	workers := make(map[string]*apiv1.Worker, len(s.workers))
	for id, w := range s.workers {
		workers[id] = &apiv1.Worker{
			Id: id, Address: w.Address, Host: w.Host, Version: w.Version, Labels: w.Labels, Rank: -1, Slots: int32(w.SlotCount()), Commands: w.Commands, RankUser: w.RankUser, Roots: w.Roots,
			Resources: &apiv1.Resources{CpuCores: int32(w.Resources.CPUCores), MemoryMib: w.Resources.MemoryBytes >> 20, Gpus: int32(w.Resources.GPUs)},
		}
		for _, g := range w.GPUDevices {
			var links map[int32]string
			for j, l := range g.Links {
				if links == nil {
					links = map[int32]string{}
				}
				links[int32(j)] = l
			}
			workers[id].GpuDevices = append(workers[id].GpuDevices, &apiv1.GPUDevice{Index: int32(g.Index), Uuid: g.UUID, Name: g.Name, MemoryMib: g.MemoryMiB, Links: links})
		}
	}
	s.mu.Unlock()
	for id, h := range s.workerHealth(ctx) {
		if w, ok := workers[id]; ok {
			w.Health, w.SecondsSinceSync = h.Health, h.SecondsSinceSync
		}
	}
	for _, w := range workers {
		if w.Health == "" {
			w.Health = healthUnknown
		}
		w.Healthy = w.Health == healthHealthy
	}
	for _, j := range s.cfg.Node.Unfinished() {
		if !active(j) {
			continue
		}
		for _, a := range j.Placement {
			w, ok := workers[a.WorkerId]
			if !ok { // placed but gone: its loss is being handled
				w = &apiv1.Worker{Id: a.WorkerId}
				workers[a.WorkerId] = w
			}
			if w.BusySlots == 0 || (w.JobId == j.Id && a.Rank < w.Rank) {
				w.JobId, w.Rank = j.Id, a.Rank // the first job's lowest rank
			}
			w.BusySlots++
		}
	}
	for _, w := range workers {
		resp.Workers = append(resp.Workers, w)
	}
	sort.Slice(resp.Workers, func(a, b int) bool { return resp.Workers[a].Id < resp.Workers[b].Id })
	return resp, nil
}

// workerHealth is the registered workers' health (only Health and
// SecondsSinceSync set): the leader's own view (its last supervision
// pass, with the syncs that arrived since; not waiting for the lead
// lock), or a follower's copy of the leader's answer, which alone sees
// the workers' syncs. Missing where the leader did not answer within two
// seconds.
func (s *Server) workerHealth(ctx context.Context) map[string]*apiv1.Worker {
	out := map[string]*apiv1.Worker{}
	if !s.cfg.Node.IsLeader() {
		fctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		resp, err := forward(fctx, s, &apiv1.ClusterStatusRequest{}, apiv1.CoordinatorClient.ClusterStatus)
		if err != nil {
			s.log.Debug("cluster status: the leader did not say the workers' health", "error", err)
			return out
		}
		for _, w := range resp.GetWorkers() {
			switch {
			case w.GetHealth() != "":
				out[w.GetId()] = &apiv1.Worker{Health: w.GetHealth(), SecondsSinceSync: w.GetSecondsSinceSync()}
			case w.GetHealthy(): // a leader older than this replica says only that
				out[w.GetId()] = &apiv1.Worker{Health: healthHealthy}
			}
		}
		return out
	}
	m := s.health.read()
	if !m.leading {
		return out // leadership just changed: the memory is not this term's yet
	}
	for w, t := range s.arrivals.latest() {
		if t.After(m.lastSync[w]) {
			m.lastSync[w] = t
		}
	}
	now := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, w := range s.workers {
		health, since := m.health(id, w, now, s.cfg.Silence)
		out[id] = &apiv1.Worker{Health: health, SecondsSinceSync: math.Round(since.Seconds()*10) / 10}
	}
	return out
}

func (s *Server) AddReplica(ctx context.Context, req *apiv1.AddReplicaRequest) (*apiv1.AddReplicaResponse, error) {
	sv := coordinator.Server{ID: req.GetId(), Address: req.GetRaftAddress()}
	if err := sv.Validate(); err != nil {
		return nil, apiError(failure(errBadRequest, "add replica: %v", err))
	}
	if !s.cfg.Node.IsLeader() {
		return forward(ctx, s, req, apiv1.CoordinatorClient.AddReplica)
	}
	rs, err := s.replicaSet()
	if err != nil {
		return nil, apiError(err)
	}
	cs, err := s.ClusterStatus(ctx, nil)
	if err != nil {
		return nil, err
	}
	noop, err := planAdd(cs.Replicas, addChange{id: sv.ID, addr: sv.Address,
		reach: func() error { return reach(ctx, sv.Address) },
		probe: func() error { return rs.ProbeReplica(sv.ID, sv.Address) }})
	if err != nil {
		return nil, apiError(err)
	}
	if noop {
		return &apiv1.AddReplicaResponse{Replicas: cs.Replicas}, nil
	}
	if err := rs.AddVoter(ctx, sv.ID, sv.Address); err != nil {
		return nil, apiError(err)
	}
	if cs, err = s.ClusterStatus(ctx, nil); err != nil {
		return nil, err
	}
	return &apiv1.AddReplicaResponse{Replicas: cs.Replicas}, nil
}

func (s *Server) RemoveReplica(ctx context.Context, req *apiv1.RemoveReplicaRequest) (*apiv1.RemoveReplicaResponse, error) {
	if err := coordinator.ValidReplicaID(req.GetId()); err != nil {
		return nil, apiError(failure(errBadRequest, "remove replica: %v", err))
	}
	if !s.cfg.Node.IsLeader() {
		return forward(ctx, s, req, apiv1.CoordinatorClient.RemoveReplica)
	}
	rs, err := s.replicaSet()
	if err != nil {
		return nil, apiError(err)
	}
	cs, err := s.ClusterStatus(ctx, nil)
	if err != nil {
		return nil, err
	}
	if err := planRemove(cs.Replicas, req.GetId()); err != nil {
		return nil, apiError(err)
	}
	if err := rs.RemoveServer(ctx, req.GetId()); err != nil {
		return nil, apiError(err)
	}
	if cs, err = s.ClusterStatus(ctx, nil); err != nil {
		return nil, err
	}
	return &apiv1.RemoveReplicaResponse{Replicas: cs.Replicas}, nil
}

func active(j *pb.Job) bool {
	return j.State == pb.JobState_JOB_STATE_PLACED || j.State == pb.JobState_JOB_STATE_RUNNING
}

// publish sends a lifecycle event to the bus (never blocks).
func (s *Server) publish(jobID, typ string, st pb.JobState, msg, worker string) {
	if s.cfg.Bus == nil {
		return
	}
	err := s.cfg.Bus.Publish(events.Message{Kind: events.KindEvent, JobID: jobID, Event: &events.JobEvent{
		Type: typ, State: jobstate.Name(st), Message: msg, WorkerID: worker,
	}})
	if err != nil {
		s.log.Debug("event not published", "job-id", jobID, "type", typ, "error", err)
	}
}

// control tells the job's workers to sync now (their ranks of an ended
// attempt stop at once); the periodic sync does the same a little later.
func (s *Server) control(jobID, action, reason string) {
	if s.cfg.Bus == nil {
		return
	}
	err := s.cfg.Bus.Publish(events.Message{Kind: events.KindControl, JobID: jobID, Control: &events.Control{Action: action, Reason: reason}})
	if err != nil {
		s.log.Debug("control message not published", "job-id", jobID, "error", err)
	}
}
