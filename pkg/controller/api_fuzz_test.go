package controller

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
	"github.com/switchyard-ml/switchyard/pkg/coordinator"
	"github.com/switchyard-ml/switchyard/pkg/events"
	"github.com/switchyard-ml/switchyard/pkg/jobspec"
	"github.com/switchyard-ml/switchyard/pkg/jobstate"
	"github.com/switchyard-ml/switchyard/pkg/membership"
	"github.com/switchyard-ml/switchyard/pkg/security"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// FuzzAPI drives the coordinator's API handlers with arbitrary requests:
// the input is a short sequence of calls, each a method, a caller and the
// request's protobuf bytes (see apiCalls), some of them concurrent. Every
// call must return within its deadline, and every error must be a status
// with a deliberate code (never UNKNOWN or INTERNAL) and a message; what a
// call answers must fit what it asked (apiMethods). Afterwards ListJobs
// and GetJob answer, the jobs keep the state's invariants (apiInvariants),
// a job that will resume from a chosen checkpoint still has it, and every
// checkpoint committed and not deleted is still in the catalogue.
//
// The handlers are called directly rather than through gRPC: the request
// is what gRPC's codec would hand them (proto.Unmarshal), a panic fails
// the input with its stack (the server's interceptor would turn it into
// INTERNAL), and the caller's identity is put in the context as the token
// interceptor does (security.WithIdentity; a worker only on the methods a
// worker token may call). The server is a lone leader whose state is a
// coordinator.FSM (localReplica, no raft), restored for every input from
// a snapshot of jobs placed, running, failed and pending, with a
// checkpoint catalogue in memory over shards in a temporary directory. A
// "tick" pseudo-method moves the fake clock and runs one supervision pass,
// so that submitted jobs are placed, reports act and failures requeue.
func FuzzAPI(f *testing.F) {
	base := newAPIBase(f)
	for _, seed := range apiSeeds(f, base) {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		base.run(t, data)
	})
}

// The input's calls: each is an op byte (apiMethods index, mod their
// number, in the low 7 bits; the high bit runs it concurrently with the
// next call), a caller byte (apiCallers index), a 2-byte little-endian
// length and that many bytes of the request (fewer when the input ends).
const maxAPICalls = 8

// apiCallers are who a call comes from: no identity (a server without a
// token), an operator (the cluster token) or a worker (its worker token);
// a worker on a method a worker token may not call is an operator there
// (the interceptor would refuse it before the handler).
var apiCallers = []string{"", "operator", "w1", "w2", "g1", "w-stranger"}

type apiCall struct {
	op, who int
	msg     []byte
	// with: the call runs concurrently with the next one (the op byte's
	// high bit), as a real server's handlers and supervision do
	with bool
}

func apiCalls(data []byte) []apiCall {
	var calls []apiCall
	for len(data) >= 4 && len(calls) < maxAPICalls {
		n := int(binary.LittleEndian.Uint16(data[2:4]))
		c := apiCall{op: int(data[0]&0x7f) % len(apiMethods), who: int(data[1]) % len(apiCallers), with: data[0]&0x80 != 0}
		data = data[4:]
		n = min(n, len(data))
		c.msg, data = data[:n], data[n:]
		calls = append(calls, c)
	}
	return calls
}

// encodeAPICalls is apiCalls' inverse, for the seeds.
func encodeAPICalls(tb testing.TB, calls ...apiSeedCall) []byte {
	var out []byte
	for _, c := range calls {
		op := slices.IndexFunc(apiMethods, func(m apiMethod) bool { return m.name == c.method })
		if op < 0 {
			tb.Fatalf("no method %s", c.method)
		}
		var msg []byte
		if c.req != nil {
			var err error
			if msg, err = proto.Marshal(c.req); err != nil {
				tb.Fatal(err)
			}
		}
		if c.raw != nil {
			msg = c.raw
		}
		if c.with {
			op |= 0x80
		}
		out = append(out, byte(op), byte(slices.Index(apiCallers, c.who)), 0, 0)
		binary.LittleEndian.PutUint16(out[len(out)-2:], uint16(len(msg)))
		out = append(out, msg...)
	}
	return out
}

type apiSeedCall struct {
	with   bool // concurrently with the next call
	method string
	who    string
	req    proto.Message
	raw    []byte // the tick's bytes
}

// apiMethod calls one method with a request decoded from msg; skipped:
// msg is not such a request (nothing was called).
type apiMethod struct {
	name   string
	worker bool // a worker token may call it (security.WorkerMethods)
	call   func(a *apiRun, ctx context.Context, msg []byte) (skipped bool, err error)
	decode func(msg []byte) proto.Message // for messages
}

func decoder[Req any, PReq interface {
	*Req
	proto.Message
}]() func([]byte) proto.Message {
	return func(msg []byte) proto.Message {
		req := PReq(new(Req))
		proto.Unmarshal(msg, req) //nolint:errcheck // shown as far as it decodes
		return req
	}
}

// unary is an apiMethod of a unary handler.
func unary[Req any, PReq interface {
	*Req
	proto.Message
}, Resp any](name string, h func(*Server, context.Context, PReq) (Resp, error), after ...func(*apiRun, PReq, Resp) error) apiMethod {
	return apiMethod{name: name, worker: security.WorkerMethods["/switchyard.api.v1.Coordinator/"+name], decode: decoder[Req, PReq](), call: func(a *apiRun, ctx context.Context, msg []byte) (bool, error) {
		req := PReq(new(Req))
		if proto.Unmarshal(msg, req) != nil {
			return true, nil
		}
		if a.skip(req) {
			return true, nil
		}
		resp, err := h(a.s, ctx, req)
		if err == nil {
			for _, fn := range after {
				if berr := fn(a, req, resp); berr != nil {
					a.fail(fmt.Errorf("answered %v: %w", resp, berr))
				}
			}
		}
		return false, err
	}}
}

// apiStream is a server stream without gRPC whose client reads the first
// message and hangs up (or hangs up once the server subscribed to the bus:
// apiBus).
type apiStream[T any] struct {
	grpc.ServerStream
	ctx    context.Context
	cancel context.CancelFunc
	sent   int
}

func (s *apiStream[T]) Context() context.Context { return s.ctx }
func (s *apiStream[T]) Send(*T) error {
	if s.ctx.Err() != nil {
		return status.Error(codes.Canceled, "the client hung up")
	}
	s.sent++
	s.cancel()
	return nil
}

// apiBus is the memory bus whose subscriber hangs up as soon as it has
// subscribed (the stream's context carries its hang-up, apiHangUp): a
// stream that follows a job waits for lines or the job's end, and would
// otherwise hold an input until its deadline.
type apiBus struct{ *events.Memory }

type apiHangUp struct{}

func (b *apiBus) Subscribe(ctx context.Context, f events.Filter) (<-chan events.Message, error) {
	ch, err := b.Memory.Subscribe(ctx, f)
	if hangUp, ok := ctx.Value(apiHangUp{}).(context.CancelFunc); ok {
		hangUp()
	}
	return ch, err
}

func stream[Req any, PReq interface {
	*Req
	proto.Message
}, T any](name string, h func(*Server, PReq, grpc.ServerStreamingServer[T]) error) apiMethod {
	return apiMethod{name: name, decode: decoder[Req, PReq](), call: func(a *apiRun, ctx context.Context, msg []byte) (bool, error) {
		req := PReq(new(Req))
		if proto.Unmarshal(msg, req) != nil {
			return true, nil
		}
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		sctx = context.WithValue(sctx, apiHangUp{}, cancel)
		st := &apiStream[T]{ctx: sctx, cancel: cancel}
		err := h(a.s, req, st)
		if st.sent > 0 || sctx.Err() != nil {
			// the client hung up or stopped waiting: what the server
			// answers then reaches no one
			return false, nil
		}
		return false, err
	}}
}

const apiTick = "tick"

// apiMethods are the API's methods, with what an answer must say
// (checked when the call succeeds).
var apiMethods = []apiMethod{
	unary("SubmitJob", (*Server).SubmitJob, func(a *apiRun, req *apiv1.SubmitJobRequest, resp *apiv1.SubmitJobResponse) error {
		j := resp.GetJob()
		if j == nil || req.GetJobId() != "" && j.Id != req.GetJobId() || !bytes.Equal(j.Spec, req.GetSpec()) {
			return errors.New("not the job submitted")
		}
		return nil
	}),
	unary("GetJob", (*Server).GetJob, func(a *apiRun, req *apiv1.GetJobRequest, resp *apiv1.GetJobResponse) error {
		if resp.GetJob().GetId() != req.GetJobId() {
			return errors.New("another job")
		}
		return nil
	}),
	unary("ListJobs", (*Server).ListJobs, func(a *apiRun, req *apiv1.ListJobsRequest, resp *apiv1.ListJobsResponse) error {
		if size := req.GetPageSize(); size > 0 && len(resp.Jobs) > int(size) {
			return fmt.Errorf("%d jobs on a page of %d", len(resp.Jobs), size)
		}
		for i, j := range resp.Jobs {
			if len(req.GetStates()) > 0 && !slices.Contains(req.GetStates(), j.State) || i > 0 && j.SubmitSeq <= resp.Jobs[i-1].SubmitSeq {
				return fmt.Errorf("job %s (%v, submission %d) out of place", j.Id, j.State, j.SubmitSeq)
			}
		}
		return nil
	}),
	unary("CancelJob", (*Server).CancelJob, func(a *apiRun, req *apiv1.CancelJobRequest, resp *apiv1.CancelJobResponse) error {
		if j := resp.GetJob(); j.GetId() != req.GetJobId() || j.GetState() != pb.JobState_JOB_STATE_CANCELLED {
			return errors.New("not the job cancelled")
		}
		return nil
	}),
	unary("ResumeJob", (*Server).ResumeJob, func(a *apiRun, req *apiv1.ResumeJobRequest, resp *apiv1.ResumeJobResponse) error {
		if j := resp.GetJob(); j.GetId() != req.GetJobId() || j.GetState() != pb.JobState_JOB_STATE_PENDING || j.GetResumeFromStep() != req.GetFromStep() {
			return errors.New("not the job resumed")
		}
		return nil
	}),
	unary("DeleteJob", (*Server).DeleteJob, func(a *apiRun, req *apiv1.DeleteJobRequest, resp *apiv1.DeleteJobResponse) error {
		if j := resp.GetJob(); j.GetId() != req.GetJobId() || !jobstate.Final(j.GetState()) {
			return errors.New("not the job deleted, or one that had not ended")
		}
		if _, err := a.s.cfg.Node.Job(req.GetJobId()); err == nil {
			return errors.New("the job is still there")
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		for cp := range a.committed {
			if cp.job != req.GetJobId() || slices.Contains(a.deleted, cp) {
				continue
			}
			if !req.GetWithCheckpoints() {
				return fmt.Errorf("deleted without --checkpoints, its checkpoint of step %d left", cp.step)
			}
			a.deleted = append(a.deleted, cp) // deleted with the job
		}
		return nil
	}),
	stream("JobLogs", (*Server).JobLogs),
	stream("WatchJob", (*Server).WatchJob),
	unary("ClusterStatus", (*Server).ClusterStatus),
	unary("AddReplica", (*Server).AddReplica),
	unary("RemoveReplica", (*Server).RemoveReplica),
	unary("ListCheckpoints", (*Server).ListCheckpoints, func(a *apiRun, req *apiv1.ListCheckpointsRequest, resp *apiv1.ListCheckpointsResponse) error {
		for _, c := range resp.Checkpoints {
			if c.JobId != req.GetJobId() {
				return fmt.Errorf("a checkpoint of job %s", c.JobId)
			}
			if !req.GetManifests() {
				continue
			}
			if m, err := checkpoint.DecodeManifest(c.Manifest); err != nil || m.Job != c.JobId || m.Step != c.Step {
				return fmt.Errorf("checkpoint %d (%s) of job %s: its manifest %s/%d: %v", c.Step, c.Status, c.JobId, m.Job, m.Step, err)
			}
		}
		return nil
	}),
	unary("DeleteCheckpoint", (*Server).DeleteCheckpoint, func(a *apiRun, req *apiv1.DeleteCheckpointRequest, _ *apiv1.DeleteCheckpointResponse) error {
		a.mu.Lock()
		defer a.mu.Unlock()
		a.deleted = append(a.deleted, apiStep{req.GetJobId(), req.GetStep()})
		return nil
	}),
	unary("VerifyCheckpoint", (*Server).VerifyCheckpoint),
	unary("CommitCheckpoint", (*Server).CommitCheckpoint, func(a *apiRun, req *apiv1.CommitCheckpointRequest, _ *apiv1.CommitCheckpointResponse) error {
		m, err := checkpoint.DecodeManifest(req.GetManifest())
		if err != nil {
			return fmt.Errorf("a manifest that does not decode was committed: %v", err)
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		a.committed[apiStep{m.Job, m.Step}] = true
		return nil
	}),
	unary("RetireCheckpoint", (*Server).RetireCheckpoint, func(a *apiRun, req *apiv1.RetireCheckpointRequest, _ *apiv1.RetireCheckpointResponse) error {
		a.mu.Lock()
		defer a.mu.Unlock()
		a.deleted = append(a.deleted, apiStep{req.GetJobId(), req.GetStep()})
		return nil
	}),
	unary("SyncWorker", (*Server).SyncWorker, func(a *apiRun, req *apiv1.SyncWorkerRequest, resp *apiv1.SyncWorkerResponse) error {
		if req.GetProbe() && len(resp.Tasks) > 0 {
			return errors.New("a credential probe answered with tasks")
		}
		// a task is a rank of the current attempt of an active job that
		// the placement gives this worker, with every peer's address
		for _, tk := range resp.Tasks {
			j, err := a.fsm.Job(tk.JobId)
			switch {
			case err != nil:
				return fmt.Errorf("a task of job %s: %v", tk.JobId, err)
			case !active(j) || j.Restarts != tk.Attempt || int(tk.Rank) >= len(j.Placement) || tk.Rank < 0:
				return fmt.Errorf("rank %d of attempt %d of job %s, which is %v at attempt %d with %d ranks", tk.Rank, tk.Attempt, j.Id, j.State, j.Restarts, len(j.Placement))
			case !fencedAt(a.cat, j.Id, tk.Attempt):
				return fmt.Errorf("rank %d of attempt %d of job %s handed out before the catalogue was fenced for that attempt", tk.Rank, tk.Attempt, j.Id)
			case j.Placement[tk.Rank].WorkerId != req.GetWorkerId():
				return fmt.Errorf("rank %d of job %s, placed on %s", tk.Rank, j.Id, j.Placement[tk.Rank].WorkerId)
			case int(tk.WorldSize) != len(j.Placement) || len(tk.Peers) != len(j.Placement) || slices.Contains(tk.Peers, "") || !bytes.Equal(tk.Spec, j.Spec):
				return fmt.Errorf("rank %d of job %s: world %d, peers %q", tk.Rank, j.Id, tk.WorldSize, tk.Peers)
			}
		}
		return nil
	}),
	{name: apiTick, call: func(a *apiRun, ctx context.Context, msg []byte) (bool, error) {
		// the first byte: tenths of a second to move the clock first
		if len(msg) > 0 {
			a.clock.add(time.Duration(msg[0]) * 100 * time.Millisecond)
		}
		if err := a.s.refresh(ctx); err != nil {
			a.fail(fmt.Errorf("tick: %v", err))
		}
		flushFences(ctx, a.s)
		h := a.s.hold()
		h.tick(ctx)
		h.release()
		return false, nil
	}},
}

// apiReplica is localReplica with a raft membership to show and change:
// this replica alone, the leader.
type apiReplica struct {
	*localReplica
	mu      sync.Mutex
	servers []coordinator.ServerStatus
}

const apiRaftAddr = "127.0.0.1:7001"

func (r *apiReplica) Addr() string             { return apiRaftAddr }
func (r *apiReplica) State() string            { return "Leader" }
func (r *apiReplica) Stats() map[string]string { return map[string]string{"state": "Leader"} }
func (r *apiReplica) Servers() ([]coordinator.ServerStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.servers), nil
}
func (r *apiReplica) ProbeReplica(string, string) error { return nil }
func (r *apiReplica) AddVoter(_ context.Context, id, addr string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.servers = append(r.servers, coordinator.ServerStatus{Server: coordinator.Server{ID: id, Address: addr}, Voter: true})
	return nil
}
func (r *apiReplica) RemoveServer(_ context.Context, id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.servers = slices.DeleteFunc(r.servers, func(s coordinator.ServerStatus) bool { return s.ID == id })
	return nil
}

// apiBase is what every input starts from: the workers (never changed by
// the API), the state's snapshot and the committed checkpoints.
type apiBase struct {
	members, dir *membership.MemoryServer
	snapshot     []byte
	manifests    []checkpoint.Manifest
	root         string // the checkpoint storage, holding the manifests' shards
	storage      *checkpoint.DirStorage
	deleted      bool // an input called DeleteCheckpoint: some shards may be gone
	start        time.Time
	log          *slog.Logger
	// specs are the base jobs' parsed specs by job id, given to every
	// input's server as its cache (a spec is read, never changed) and to
	// apiInvariants: parsing them again is most of an input's time.
	specs map[string]*jobspec.Spec
}

// apiStep is a committed checkpoint.
type apiStep struct {
	job  string
	step int64
}

// apiRun is one input's server.
type apiRun struct {
	t         testing.TB
	base      *apiBase
	s         *Server
	fsm       *coordinator.FSM
	clock     *fakeClock
	cat       *checkpoint.MemCatalogue
	bus       *apiBus
	mu        sync.Mutex
	committed map[apiStep]bool // committed and not deleted
	// deleted are the checkpoints deleted by the calls running: a delete
	// that succeeds found its checkpoint committed, even when the commit's
	// call, running concurrently, answered later
	deleted []apiStep
	broken  error // what went wrong in the test itself, in a call's goroutine
}

func (a *apiRun) fail(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.broken = cmp.Or(a.broken, err)
}

// skip leaves out a request that would reach outside the test: a job spec
// whose checkpoint path is a directory (the coordinator would list and
// delete files there), an AddReplica of a DNS name (its dial would look
// the name up).
func (a *apiRun) skip(req proto.Message) bool {
	switch r := req.(type) {
	case *apiv1.SubmitJobRequest:
		if spec := r.GetSpec(); !bytes.Contains(spec, []byte("path")) && !bytes.Contains(spec, []byte(`\`)) {
			return false // no checkpoint path, even escaped: no need to parse it
		}
		sp, err := jobspec.Parse(r.GetSpec())
		return err == nil && sp.Checkpoint.Path != "" && !strings.HasPrefix(sp.Checkpoint.Path, "s3://")
	case *apiv1.AddReplicaRequest:
		sv := coordinator.Server{ID: r.GetId(), Address: r.GetRaftAddress()}
		host, _, _ := net.SplitHostPort(r.GetRaftAddress())
		return sv.Validate() == nil && net.ParseIP(host) == nil
	}
	return false
}

// The seeded jobs.
const (
	apiRunning = "job-a" // spec2, ranks on w1 (0) and w2 (1), step 3, checkpoint 2
	apiFailed  = "job-f" // spec2, failed, checkpoint 4
	apiPending = "moe-1" // jobspec's full.yaml: 8 GPU ranks, never fits
)

func newAPIBase(f testing.TB) *apiBase {
	f.Setenv(checkpoint.EnvS3Endpoint, "") // an s3:// checkpoint path is never dialled
	saved := reachTimeout
	reachTimeout = 0 // AddReplica's dial fails before it sends anything
	f.Cleanup(func() { reachTimeout = saved })
	b := &apiBase{members: membership.NewMemoryServer(), dir: membership.NewMemoryServer(), root: apiTempDir(f),
		start: time.Unix(1_700_000_000, 0), log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	f.Cleanup(b.members.Stop)
	f.Cleanup(b.dir.Stop)
	ctx := context.Background()
	for _, w := range []membership.WorkerInfo{
		{ID: "w1", Address: "127.0.0.1:11000", Host: "host-w1", Resources: membership.Resources{CPUCores: 2, MemoryBytes: 4 << 30}},
		{ID: "w2", Address: "127.0.0.1:12000", Host: "host-w2", Resources: membership.Resources{CPUCores: 2, MemoryBytes: 4 << 30}},
		{ID: "g1", Address: "127.0.0.1:13000", Host: "host-g1", Slots: 2, Labels: map[string]string{"zone": "eu-1"},
			Resources:  membership.Resources{CPUCores: 4, MemoryBytes: 8 << 30, GPUs: 2},
			GPUDevices: []membership.GPU{{Index: 0, Name: "H100", MemoryMiB: 81559}, {Index: 1, Name: "H100", MemoryMiB: 81559}}},
	} {
		if _, err := membership.NewMemory(b.members).Register(ctx, w, 24*time.Hour); err != nil {
			f.Fatal(err)
		}
	}
	full, err := os.ReadFile("../jobspec/testdata/full.yaml")
	if err != nil {
		f.Fatal(err)
	}
	fsm := coordinator.NewFSM(0)
	now := b.start.UnixNano()
	apply := func(op *pb.Command) {
		now += int64(time.Second)
		op.UnixNano = now
		if r := fsm.ApplyCommand(op); r.Err != nil {
			f.Fatal(r.Err)
		}
	}
	b.specs = map[string]*jobspec.Spec{}
	submit := func(id string, spec []byte) {
		sp, err := jobspec.Parse(spec)
		if err != nil {
			f.Fatal(err)
		}
		b.specs[id] = sp
		apply(&pb.Command{Op: &pb.Command_SubmitJob{SubmitJob: &pb.SubmitJob{JobId: id, Name: sp.Name, Spec: spec, Priority: int32(sp.Priority),
			WorldSize: int32(sp.Parallel.TP * sp.Parallel.DP), TotalSteps: int64(sp.Steps)}}})
	}
	place := func(id string) {
		apply(&pb.Command{Op: &pb.Command_PlaceJob{PlaceJob: &pb.PlaceJob{JobId: id, Placement: []*pb.RankAssignment{{Rank: 0, WorkerId: "w1"}, {Rank: 1, WorkerId: "w2"}}}}})
	}
	submit(apiRunning, fmt.Appendf(nil, spec2, 1))
	place(apiRunning)
	apply(&pb.Command{Op: &pb.Command_JobProgress{JobProgress: &pb.JobProgress{JobId: apiRunning, Step: 3, Loss: 2.5, TokensPerSecond: 1000}}})
	submit(apiFailed, fmt.Appendf(nil, spec2, 0))
	place(apiFailed)
	apply(&pb.Command{Op: &pb.Command_SetJobState{SetJobState: &pb.SetJobState{JobId: apiFailed, State: pb.JobState_JOB_STATE_FAILED, Reason: "RankFailed", Message: "rank 1 on worker w2: exit status 1"}}})
	submit(apiPending, full)
	snap, err := fsm.Snapshot()
	if err != nil {
		f.Fatal(err)
	}
	var sink memSnapshotSink
	if err := snap.Persist(&sink); err != nil {
		f.Fatal(err)
	}
	b.snapshot = sink.Bytes()
	b.manifests = []checkpoint.Manifest{apiManifest(apiRunning, 2), apiManifest(apiFailed, 4)}
	if b.storage, err = checkpoint.NewDirStorage(b.root); err != nil {
		f.Fatal(err)
	}
	b.deleted = true
	b.writeShards(f)
	return b
}

// apiTempDir is a temporary directory in memory where there is one
// (/dev/shm): the storage fsyncs each file it writes and each directory it
// deletes from, which on a disk costs an input milliseconds.
func apiTempDir(tb testing.TB) string {
	dir, err := os.MkdirTemp("/dev/shm", "switchyard-apifuzz-")
	if err != nil {
		return tb.TempDir()
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// apiManifest is a checkpoint of a spec2 job (tp 1, dp 2, ep 2) whose
// shards hold apiShard.
func apiManifest(job string, step int64) checkpoint.Manifest {
	m := checkpoint.Manifest{Job: job, Step: step, Layout: checkpoint.Layout{TP: 1, DP: 2, EP: 2},
		Meta: map[string]string{checkpoint.MetaValLoss: "2.25"}}
	for _, name := range []string{"rank-0000/state.bin", "rank-0001/state.bin"} {
		data := apiShard(job, step, name)
		sum := sha256.Sum256(data)
		m.Shards = append(m.Shards, checkpoint.ShardInfo{Name: name, Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:]), Kind: checkpoint.KindParams})
	}
	return m
}

func apiShard(job string, step int64, name string) []byte {
	return fmt.Appendf(nil, "%s step %d %s", job, step, name)
}

// writeShards puts the base checkpoints' files back where an input's
// DeleteCheckpoint removed them.
func (b *apiBase) writeShards(t testing.TB) {
	if !b.deleted {
		return
	}
	b.deleted = false
	ctx := context.Background()
	for _, m := range b.manifests {
		prefix := checkpoint.StepPrefix(m.Job, m.Step)
		for _, sh := range m.Shards {
			if _, err := os.Stat(filepath.Join(b.root, prefix, sh.Name)); err == nil {
				continue
			}
			if _, _, err := b.storage.Put(ctx, prefix+sh.Name, bytes.NewReader(apiShard(m.Job, m.Step, sh.Name))); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// memSnapshotSink collects a raft snapshot in memory.
type memSnapshotSink struct{ bytes.Buffer }

func (s *memSnapshotSink) ID() string    { return "fuzz" }
func (s *memSnapshotSink) Cancel() error { return nil }
func (s *memSnapshotSink) Close() error  { return nil }

// newRun restores the base for one input.
func (b *apiBase) newRun(t testing.TB) *apiRun {
	b.writeShards(t)
	fsm := coordinator.NewFSM(0)
	if err := fsm.Restore(io.NopCloser(bytes.NewReader(b.snapshot))); err != nil {
		t.Fatal(err)
	}
	a := &apiRun{t: t, base: b, fsm: fsm, clock: &fakeClock{t: b.start.Add(time.Minute)}, cat: checkpoint.NewMemCatalogue(), bus: &apiBus{Memory: events.NewMemory()},
		committed: map[apiStep]bool{}}
	ctx := context.Background()
	for _, m := range b.manifests {
		if err := a.cat.Commit(ctx, m); err != nil {
			t.Fatal(err)
		}
		a.committed[apiStep{m.Job, m.Step}] = true
	}
	for _, j := range fsm.Unfinished() {
		if active(j) { // placed by this version, which fenced the attempt first
			if err := a.cat.Fence(ctx, j.Id, int64(j.Restarts)); err != nil {
				t.Fatal(err)
			}
		}
	}
	for rank := range 2 {
		err := a.bus.Publish(events.Message{Kind: events.KindLog, JobID: apiRunning, Log: &events.LogLine{Rank: rank, WorkerID: fmt.Sprintf("w%d", rank+1), Stream: "stdout", Line: "step 3 loss 2.5"}})
		if err != nil {
			t.Fatal(err)
		}
	}
	err := a.bus.Publish(events.Message{Kind: events.KindMetrics, JobID: apiRunning, Metrics: &events.StepMetrics{Step: 3, Loss: 2.5, LBL: 0.01, TokensPerSecond: 1000,
		ExpertLoadLE: [][]float64{{0.5, 0.5}}, GPUUtilPct: []float64{97, 95}}})
	if err != nil {
		t.Fatal(err)
	}
	replica := &apiReplica{localReplica: &localReplica{fsm: fsm, now: a.clock.now},
		servers: []coordinator.ServerStatus{{Server: coordinator.Server{ID: "local", Address: apiRaftAddr}, Voter: true, Leader: true}}}
	s, err := New(Config{
		Node: replica, APIAddr: "local:0",
		Workers: membership.NewMemory(b.members), Replicas: membership.NewMemory(b.dir),
		Bus: a.bus, Checkpoints: etcdCheckpoints{cat: a.cat, root: b.root, log: b.log},
		Now: a.clock.now, Logger: b.log,
	})
	if err != nil {
		t.Fatal(err)
	}
	a.s = s
	maps.Copy(s.specs, b.specs)
	if err := s.refresh(ctx); err != nil {
		t.Fatal(err)
	}
	return a
}

// apiCallTimeout bounds every call; apiHang is when one that ignores its
// context is declared hung.
const (
	apiCallTimeout = 2 * time.Second
	apiHang        = 10 * time.Second
)

func (b *apiBase) run(t testing.TB, data []byte) {
	a := b.newRun(t)
	defer a.bus.Close()
	calls := apiCalls(data)
	for i := 0; i < len(calls); {
		n := 1 // the calls of this batch run concurrently
		for i+n < len(calls) && calls[i+n-1].with {
			n++
		}
		a.batch(i, calls[i:i+n])
		i += n
	}
	a.check()
}

// batch runs calls (numbered from first) concurrently and judges their
// answers.
func (a *apiRun) batch(first int, calls []apiCall) {
	t := a.t
	type result struct {
		skipped bool
		err     error
		took    time.Duration
	}
	done := make([]chan result, len(calls))
	for k, c := range calls {
		m := apiMethods[c.op]
		a.base.deleted = a.base.deleted || m.name == "DeleteCheckpoint"
		ctx := context.Background()
		switch who := apiCallers[c.who]; {
		case who == "":
		case who == "operator" || !m.worker:
			ctx = security.WithIdentity(ctx, security.Identity{})
		default:
			ctx = security.WithIdentity(ctx, security.Identity{Worker: who})
		}
		done[k] = make(chan result, 1)
		go func() {
			ctx, cancel := context.WithTimeout(ctx, apiCallTimeout)
			defer cancel()
			start := time.Now()
			skipped, err := m.call(a, ctx, c.msg)
			done[k] <- result{skipped, err, time.Since(start)}
		}()
	}
	hang := time.After(apiHang)
	for k, c := range calls {
		i, m := first+k, apiMethods[c.op]
		var r result
		select {
		case r = <-done[k]:
		case <-hang:
			t.Fatalf("call %d, %s(%s) by %q: no answer after %s", i, m.name, apiShow(m, c.msg), apiCallers[c.who], apiHang)
		}
		if testing.Verbose() {
			t.Logf("call %d, %s by %q: skipped %v, %v", i, m.name, apiCallers[c.who], r.skipped, r.err)
		}
		if r.skipped || r.err == nil {
			continue
		}
		if r.took >= apiCallTimeout {
			t.Fatalf("call %d, %s(%s): answered after %s: %v", i, m.name, apiShow(m, c.msg), r.took, r.err)
		}
		st, ok := status.FromError(r.err)
		switch {
		case !ok:
			t.Fatalf("call %d, %s(%s): not a status error (UNKNOWN to the client): %T %v", i, m.name, apiShow(m, c.msg), r.err, r.err)
		case !apiDeliberate[st.Code()]:
			t.Fatalf("call %d, %s(%s): code %v: %v", i, m.name, apiShow(m, c.msg), st.Code(), st.Message())
		case strings.TrimSpace(st.Message()) == "":
			t.Fatalf("call %d, %s(%s): code %v with no message", i, m.name, apiShow(m, c.msg), st.Code())
		}
	}
	if a.broken != nil {
		t.Fatalf("calls %d-%d: %v", first, first+len(calls)-1, a.broken)
	}
	for _, d := range a.deleted {
		delete(a.committed, d)
	}
	a.deleted = nil
}

// apiDeliberate are the codes a handler answers on purpose.
var apiDeliberate = map[codes.Code]bool{
	codes.InvalidArgument: true, codes.NotFound: true, codes.AlreadyExists: true, codes.FailedPrecondition: true,
	codes.PermissionDenied: true, codes.Unauthenticated: true, codes.Aborted: true, codes.ResourceExhausted: true,
	codes.Unavailable: true, codes.Unimplemented: true, codes.OutOfRange: true,
}

// apiShow is a request for a failure's message: its bytes (to pass to
// encodeAPICalls' raw) and what they decode to.
func apiShow(m apiMethod, msg []byte) string {
	if m.decode == nil {
		return fmt.Sprintf("%x", msg)
	}
	return fmt.Sprintf("%x = {%s}", msg, prototext.MarshalOptions{}.Format(m.decode(msg)))
}

// check is what must hold after any sequence of calls.
func (a *apiRun) check() {
	t := a.t
	ctx, cancel := context.WithTimeout(context.Background(), apiCallTimeout)
	defer cancel()
	want := a.fsm.Jobs()
	resp, err := a.s.ListJobs(ctx, &apiv1.ListJobsRequest{}) // an input has at most maxAPICalls more jobs than a page
	if err != nil {
		t.Fatalf("ListJobs after the calls: %v", err)
	}
	listed := resp.Jobs
	if len(listed) != len(want) || resp.NextPageToken != "" {
		t.Fatalf("ListJobs lists %d jobs, the state holds %d", len(listed), len(want))
	}
	for i, j := range listed {
		if !proto.Equal(j, want[i]) {
			t.Fatalf("ListJobs' job %d is %s, the state's %s", i, j.GetId(), want[i].GetId())
		}
		got, err := a.s.GetJob(ctx, &apiv1.GetJobRequest{JobId: j.Id})
		if err != nil || !proto.Equal(got.GetJob(), j) {
			t.Fatalf("GetJob(%s) after the calls: %v", j.Id, err)
		}
	}
	if err := apiInvariants(want, a.base.specs); err != nil {
		t.Fatal(err)
	}
	// a job that will run again from a chosen checkpoint has it
	for _, j := range want {
		if jobstate.Final(j.State) || j.ResumeFromStep == 0 {
			continue
		}
		resp, err := a.s.ListCheckpoints(ctx, &apiv1.ListCheckpointsRequest{JobId: j.Id})
		if err != nil {
			t.Fatalf("ListCheckpoints(%s): %v", j.Id, err)
		}
		if !slices.ContainsFunc(resp.Checkpoints, func(c *apiv1.Checkpoint) bool { return c.Step == j.ResumeFromStep && c.Status == "committed" }) {
			t.Fatalf("job %s (%v) resumes from step %d, which is not a committed checkpoint: %v", j.Id, j.State, j.ResumeFromStep, resp.Checkpoints)
		}
	}
	for cp := range a.committed {
		j, err := a.fsm.Job(cp.job)
		if err != nil {
			t.Fatalf("checkpoint %d of %s committed, its job gone: %v", cp.step, cp.job, err)
		}
		resp, err := a.s.ListCheckpoints(ctx, &apiv1.ListCheckpointsRequest{JobId: j.Id})
		if err != nil {
			t.Fatalf("ListCheckpoints(%s): %v", j.Id, err)
		}
		if !slices.ContainsFunc(resp.Checkpoints, func(c *apiv1.Checkpoint) bool { return c.Step == cp.step && c.Status == "committed" }) {
			t.Fatalf("checkpoint %d of %s committed and never deleted, not listed: %v", cp.step, cp.job, resp.Checkpoints)
		}
	}
}

// apiInvariants are what the state's jobs keep whatever the API was
// asked: valid ids and specs (the API parsed them), submission order,
// a placement of the world size for placed and running jobs, none for
// pending ones,
// finish times only of finished jobs, events in order and within their
// cap, and the strings the API bounds within their bounds.
func apiInvariants(jobs []*pb.Job, parsed map[string]*jobspec.Spec) error {
	seqs := map[uint64]string{}
	for i, j := range jobs {
		if err := jobspec.ValidJobID(j.Id); err != nil {
			return fmt.Errorf("job %q: %v", j.Id, err)
		}
		if prev, dup := seqs[j.SubmitSeq]; dup || j.SubmitSeq == 0 || i > 0 && j.SubmitSeq < jobs[i-1].SubmitSeq {
			return fmt.Errorf("job %s: submission %d (also %q's), after %d", j.Id, j.SubmitSeq, prev, jobs[max(i-1, 0)].SubmitSeq)
		}
		seqs[j.SubmitSeq] = j.Id
		sp, ok := parsed[j.Id]
		if !ok {
			var err error
			if sp, err = jobspec.Parse(j.Spec); err != nil {
				return fmt.Errorf("job %s: its spec does not parse: %v", j.Id, err)
			}
		}
		if w := int32(sp.Parallel.TP * sp.Parallel.DP); j.WorldSize != w {
			return fmt.Errorf("job %s: world size %d, its spec's %d", j.Id, j.WorldSize, w)
		}
		if _, known := pb.JobState_name[int32(j.State)]; !known || j.State == pb.JobState_JOB_STATE_UNSPECIFIED {
			return fmt.Errorf("job %s: state %v", j.Id, j.State)
		}
		if active(j) && len(j.Placement) == 0 || j.State == pb.JobState_JOB_STATE_PENDING && len(j.Placement) > 0 {
			return fmt.Errorf("job %s: %v with %d ranks placed", j.Id, j.State, len(j.Placement))
		}
		if len(j.Placement) > 0 && j.PlacedDp == 0 && len(j.Placement) != int(j.WorldSize) {
			return fmt.Errorf("job %s: %d ranks placed, world size %d", j.Id, len(j.Placement), j.WorldSize)
		}
		for r, p := range j.Placement {
			if p.Rank != int32(r) || p.WorkerId == "" {
				return fmt.Errorf("job %s: placement %d is %v", j.Id, r, p)
			}
		}
		if jobstate.Final(j.State) != (j.FinishedUnixNano != 0) {
			return fmt.Errorf("job %s: %v, finished at %d", j.Id, j.State, j.FinishedUnixNano)
		}
		if j.Restarts < 0 || j.FreeRestarts < 0 || j.FreeRestarts > j.Restarts {
			return fmt.Errorf("job %s: %d restarts, %d free", j.Id, j.Restarts, j.FreeRestarts)
		}
		if p := j.GetProgress(); p.GetStep() < 0 || len(p.GetGpus()) > max(int(j.WorldSize), 1) {
			return fmt.Errorf("job %s: progress step %d with %d GPUs", j.Id, p.GetStep(), len(p.GetGpus()))
		}
		if len(j.Events) > coordinator.DefaultMaxEventsPerJob {
			return fmt.Errorf("job %s: %d events", j.Id, len(j.Events))
		}
		for i, e := range j.Events {
			if e.Type == "" || len(e.Type) > apiMaxType || i > 0 && e.Seq <= j.Events[i-1].Seq {
				return fmt.Errorf("job %s: event %d: seq %d type %.80q", j.Id, i, e.Seq, e.Type)
			}
			if len(e.Message) > apiMaxText {
				return fmt.Errorf("job %s: event %d (%s): a message of %d bytes", j.Id, i, e.Type, len(e.Message))
			}
		}
		if len(j.Message) > apiMaxText {
			return fmt.Errorf("job %s: a message of %d bytes", j.Id, len(j.Message))
		}
	}
	return nil
}

// apiMaxText bounds a message in the state: a rank's message, cut, with
// what the coordinator says around it; apiMaxType an event's type, cut
// (bounded says how long it was).
const (
	apiMaxText = maxRankMessage + 512
	apiMaxType = maxEventType + len("... (cut from 18446744073709551615 bytes)")
)

// apiSeeds are realistic call sequences: a real job spec submitted and
// placed, a worker's syncs with reports, events and GPU samples, rank 0's
// checkpoint commit, cancel, resume, the checkpoint calls, the streams
// and the membership calls.
func apiSeeds(f *testing.F, b *apiBase) [][]byte {
	full, err := os.ReadFile("../jobspec/testdata/full.yaml")
	if err != nil {
		f.Fatal(err)
	}
	manifest := func(job string, step int64) []byte {
		m, err := checkpoint.EncodeManifest(apiManifest(job, step))
		if err != nil {
			f.Fatal(err)
		}
		return m
	}
	rank := func(r int32, st apiv1.TaskState, step int64) *apiv1.TaskStatus {
		ts := &apiv1.TaskStatus{JobId: apiRunning, Rank: r, State: st, Step: step, Loss: 2.4, TokensPerSecond: 1200}
		if r == 0 {
			ts.Gpus = []*pb.GPUStat{{Rank: 0, Uuid: "GPU-5e0c1f8a", UtilPct: 97, MemUsedBytes: 60 << 30, MemTotalBytes: 80 << 30}}
			ts.Events = []*apiv1.TaskEvent{{Seq: 1, Type: "Resumed", Message: "resumed from the checkpoint of step 2", UnixNano: b.start.UnixNano()}}
		}
		return ts
	}
	tick := func(tenths byte) apiSeedCall { return apiSeedCall{method: apiTick, raw: []byte{tenths}} }
	small := "name: tiny\nparallel: {dp: 2}\nsteps: 20\nresources: {cpu_cores: 1, memory_mib: 512}\nrestart: {max_restarts: 1, backoff_seconds: 0}\n"
	gpu := "name: gpu\nparallel: {dp: 2}\nsteps: 20\nresources: {cpu_cores: 1, memory_mib: 1024, gpus: 1}\nplacement: {host_labels: {zone: eu-1}}\n"
	seeds := [][]apiSeedCall{
		{
			{method: "SubmitJob", who: "operator", req: &apiv1.SubmitJobRequest{JobId: "moe-2", Spec: full}},
			{method: "SubmitJob", req: &apiv1.SubmitJobRequest{JobId: "gpu-1", Spec: []byte(gpu)}},
			tick(1),
			{method: "GetJob", req: &apiv1.GetJobRequest{JobId: "gpu-1"}},
			{method: "SyncWorker", who: "g1", req: &apiv1.SyncWorkerRequest{WorkerId: "g1"}},
			{method: "SyncWorker", who: "w1", req: &apiv1.SyncWorkerRequest{WorkerId: "w1", Probe: true}},
			{method: "ListJobs", req: &apiv1.ListJobsRequest{States: []pb.JobState{pb.JobState_JOB_STATE_PENDING}, PageSize: 2}},
		},
		{
			{method: "SyncWorker", who: "w1", req: &apiv1.SyncWorkerRequest{WorkerId: "w1", Tasks: []*apiv1.TaskStatus{rank(0, apiv1.TaskState_TASK_STATE_RUNNING, 5)}}},
			{method: "SyncWorker", who: "w2", req: &apiv1.SyncWorkerRequest{WorkerId: "w2", Tasks: []*apiv1.TaskStatus{rank(1, apiv1.TaskState_TASK_STATE_RUNNING, 5)}}},
			{method: "CommitCheckpoint", who: "w1", req: &apiv1.CommitCheckpointRequest{JobId: apiRunning, Manifest: manifest(apiRunning, 5)}},
			{method: "ListCheckpoints", req: &apiv1.ListCheckpointsRequest{JobId: apiRunning}},
			{method: "SyncWorker", who: "w2", req: &apiv1.SyncWorkerRequest{WorkerId: "w2", Tasks: []*apiv1.TaskStatus{rank(1, apiv1.TaskState_TASK_STATE_SUCCEEDED, 10)}}},
			{method: "SyncWorker", who: "w1", req: &apiv1.SyncWorkerRequest{WorkerId: "w1", Tasks: []*apiv1.TaskStatus{rank(0, apiv1.TaskState_TASK_STATE_SUCCEEDED, 10)}}},
			{method: "GetJob", req: &apiv1.GetJobRequest{JobId: apiRunning}},
		},
		{
			{method: "SyncWorker", req: &apiv1.SyncWorkerRequest{WorkerId: "w2", Tasks: []*apiv1.TaskStatus{{JobId: apiRunning, Rank: 1, State: apiv1.TaskState_TASK_STATE_FAILED, Message: "exit status 1: CUDA error: out of memory"}}}},
			tick(30),
			{method: "SyncWorker", who: "w1", req: &apiv1.SyncWorkerRequest{WorkerId: "w1", Draining: true}},
			tick(5),
			{method: "WatchJob", req: &apiv1.WatchJobRequest{JobId: apiRunning, Replay: true}},
		},
		{
			{method: "CancelJob", req: &apiv1.CancelJobRequest{JobId: apiRunning, Message: "wrong learning rate"}},
			{method: "DeleteCheckpoint", req: &apiv1.DeleteCheckpointRequest{JobId: apiRunning, Step: 2}},
			{method: "ResumeJob", req: &apiv1.ResumeJobRequest{JobId: apiFailed, FromStep: 4}},
			{method: "VerifyCheckpoint", req: &apiv1.VerifyCheckpointRequest{JobId: apiFailed, Step: 4}},
			tick(1),
			{method: "SyncWorker", req: &apiv1.SyncWorkerRequest{WorkerId: "w1"}},
		},
		{
			{method: "JobLogs", req: &apiv1.JobLogsRequest{JobId: apiRunning}},
			{method: "JobLogs", req: &apiv1.JobLogsRequest{JobId: apiRunning, Follow: true}},
			{method: "WatchJob", req: &apiv1.WatchJobRequest{JobId: apiFailed}},
			{method: "ClusterStatus", req: &apiv1.ClusterStatusRequest{}},
			{method: "AddReplica", req: &apiv1.AddReplicaRequest{Id: "c2", RaftAddress: "127.0.0.1:7002"}},
			{method: "AddReplica", req: &apiv1.AddReplicaRequest{Id: "local", RaftAddress: apiRaftAddr}},
			{method: "RemoveReplica", req: &apiv1.RemoveReplicaRequest{Id: "local"}},
		},
		{
			{method: "SubmitJob", req: &apiv1.SubmitJobRequest{JobId: "tiny-1", Spec: []byte(small)}},
			{method: "SubmitJob", req: &apiv1.SubmitJobRequest{JobId: "tiny-1", Spec: []byte(small)}},
			tick(1),
			{method: "SyncWorker", who: "w1", req: &apiv1.SyncWorkerRequest{WorkerId: "w1"}},
			{method: "ResumeJob", req: &apiv1.ResumeJobRequest{JobId: "tiny-1"}},
			{method: "CancelJob", req: &apiv1.CancelJobRequest{JobId: "tiny-1"}},
			{method: "ListJobs", req: &apiv1.ListJobsRequest{PageToken: "s2"}},
		},
	}
	long := strings.Repeat("CUDA error: an illegal memory access was encountered ", 78) // just past maxRankMessage
	odd := apiManifest(apiRunning, 999_999_999_999)
	oddBytes, err := checkpoint.EncodeManifest(odd)
	if err != nil {
		f.Fatal(err)
	}
	seeds = append(seeds, [][]apiSeedCall{
		{ // concurrent calls: a delete and a resume from the same step, a commit and a cancel, a failure report and a tick
			{with: true, method: "DeleteCheckpoint", req: &apiv1.DeleteCheckpointRequest{JobId: apiFailed, Step: 4}},
			{method: "ResumeJob", req: &apiv1.ResumeJobRequest{JobId: apiFailed, FromStep: 4}},
			{with: true, method: "CommitCheckpoint", who: "w1", req: &apiv1.CommitCheckpointRequest{JobId: apiRunning, Manifest: manifest(apiRunning, 5)}},
			{method: "CancelJob", req: &apiv1.CancelJobRequest{JobId: apiRunning}},
			{with: true, method: "SubmitJob", req: &apiv1.SubmitJobRequest{JobId: "tiny-1", Spec: []byte(small)}},
			{with: true, method: "SubmitJob", req: &apiv1.SubmitJobRequest{JobId: "tiny-1", Spec: []byte(small)}},
			tick(30),
		},
		{ // commits refused: a stale step, another worker, the wrong attempt, an implausible step, another job's manifest
			{method: "CommitCheckpoint", who: "w1", req: &apiv1.CommitCheckpointRequest{JobId: apiRunning, Manifest: manifest(apiRunning, 2)}},
			{method: "CommitCheckpoint", who: "w2", req: &apiv1.CommitCheckpointRequest{JobId: apiRunning, Manifest: manifest(apiRunning, 6)}},
			{method: "CommitCheckpoint", req: &apiv1.CommitCheckpointRequest{JobId: apiRunning, Attempt: 1, Manifest: manifest(apiRunning, 6)}},
			{method: "CommitCheckpoint", req: &apiv1.CommitCheckpointRequest{JobId: apiRunning, Manifest: oddBytes}},
			{method: "CommitCheckpoint", req: &apiv1.CommitCheckpointRequest{JobId: apiFailed, Manifest: manifest(apiFailed, 6)}},
			{method: "CommitCheckpoint", req: &apiv1.CommitCheckpointRequest{JobId: apiFailed, Manifest: manifest(apiRunning, 6)}},
		},
		{ // a rank's catalogue: read by its worker and a stranger, retired by rank 0, another worker, an attempt that is over
			{method: "ListCheckpoints", who: "w2", req: &apiv1.ListCheckpointsRequest{JobId: apiRunning, Manifests: true}},
			{method: "ListCheckpoints", who: "w-stranger", req: &apiv1.ListCheckpointsRequest{JobId: apiRunning, Manifests: true}},
			{method: "RetireCheckpoint", who: "w2", req: &apiv1.RetireCheckpointRequest{JobId: apiRunning, Step: 2}},
			{method: "RetireCheckpoint", who: "w1", req: &apiv1.RetireCheckpointRequest{JobId: apiRunning, Attempt: 1, Step: 2}},
			{method: "RetireCheckpoint", who: "w1", req: &apiv1.RetireCheckpointRequest{JobId: apiRunning, Step: 2, Remove: true}},
			{method: "RetireCheckpoint", who: "w1", req: &apiv1.RetireCheckpointRequest{JobId: apiRunning, Step: 2}},
			{method: "ListCheckpoints", who: "w1", req: &apiv1.ListCheckpointsRequest{JobId: apiRunning, Manifests: true}},
			{method: "RetireCheckpoint", who: "w1", req: &apiv1.RetireCheckpointRequest{JobId: apiRunning, Step: 2, Remove: true}},
			{method: "RetireCheckpoint", req: &apiv1.RetireCheckpointRequest{JobId: apiFailed, Step: 4}},
		},
		{ // long strings from a worker and a user
			{method: "SyncWorker", who: "w2", req: &apiv1.SyncWorkerRequest{WorkerId: "w2", Tasks: []*apiv1.TaskStatus{{JobId: apiRunning, Rank: 1, State: apiv1.TaskState_TASK_STATE_FAILED, Refused: true, Message: long,
				Events: []*apiv1.TaskEvent{{Seq: 1, Type: strings.Repeat("CheckpointUnusable", 5), Message: "step 40: sha256 mismatch"}}}}}},
			{method: "CancelJob", req: &apiv1.CancelJobRequest{JobId: apiRunning, Message: long[:maxUserMessage+1]}},
			tick(30),
			{method: "WatchJob", req: &apiv1.WatchJobRequest{JobId: apiRunning, Replay: true}},
			{method: "ResumeJob", req: &apiv1.ResumeJobRequest{JobId: apiRunning, FromStep: 2}},
		},
	}...)
	var out [][]byte
	for _, s := range seeds {
		out = append(out, encodeAPICalls(f, s...))
	}
	return out
}

// fencedAt reports whether cat's fence of job is at attempt or above.
func fencedAt(cat *checkpoint.MemCatalogue, job string, attempt int32) bool {
	f, ok := cat.FenceOf(job)
	return ok && f >= int64(attempt)
}
