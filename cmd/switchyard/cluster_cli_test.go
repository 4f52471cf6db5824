package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-ml/switchyard/internal/testnet"
	"github.com/switchyard-ml/switchyard/pkg/jobstate"
	"github.com/switchyard-ml/switchyard/pkg/security"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	coordinatorv1 "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// testNow is the CLI's clock in tests.
var testNow = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func ago(d time.Duration) int64 { return testNow.Add(-d).UnixNano() }

// fakeCoordinator is an in-memory apiv1.CoordinatorServer with a few jobs.
type fakeCoordinator struct {
	apiv1.UnimplementedCoordinatorServer

	mu        sync.Mutex
	jobs      map[string]*coordinatorv1.Job
	pending   map[string]string // job -> pending reason
	submitted []*apiv1.SubmitJobRequest
	cancelled []string
	resumed   []*apiv1.ResumeJobRequest
	deleted   []*apiv1.DeleteCheckpointRequest
	gone      map[string]bool // deleted jobs' IDs
	logs      map[string][]*apiv1.LogEntry
	logFollow []bool
	watch     map[string][]*apiv1.WatchJobResponse
	// watchBreaks: the first this many WatchJob streams send one message
	// and fail with UNAVAILABLE (a replica going away).
	watchBreaks int
	watchCalls  int
	watchReplay []bool // each WatchJob's replay flag
	checkpoints map[string][]*apiv1.Checkpoint
	cluster     *apiv1.ClusterStatusResponse
	replicas    []*apiv1.Replica
}

func newFakeCoordinator() *fakeCoordinator {
	f := &fakeCoordinator{
		jobs: map[string]*coordinatorv1.Job{
			"moe-1": {
				Id: "moe-1", Name: "moe-global-lbl", State: coordinatorv1.JobState_JOB_STATE_RUNNING, WorldSize: 2, Priority: 5,
				Reason: "Started", Message: "all ranks running",
				Spec:      []byte("name: moe-global-lbl\nsteps: 1000\n"),
				Placement: []*coordinatorv1.RankAssignment{{Rank: 0, WorkerId: "w-a"}, {Rank: 1, WorkerId: "w-b"}},
				Restarts:  1,
				Progress: &coordinatorv1.Progress{Step: 120, TotalSteps: 1000, Loss: 2.3456, TokensPerSecond: 16384, UpdatedUnixNano: ago(5 * time.Second),
					Gpus: []*coordinatorv1.GPUStat{{Rank: 0, Uuid: "GPU-a", UtilPct: 87, MemUsedBytes: 41 << 30, MemTotalBytes: 80 << 30}, {Rank: 1, UtilPct: 12.4, MemUsedBytes: 3 << 29, MemTotalBytes: 80 << 30}}},
				Conditions: []*coordinatorv1.Condition{
					{Type: "Scheduled", Status: true, Reason: "Placed", Message: "2 workers", LastTransitionUnixNano: ago(time.Hour)},
					{Type: "WorkersHealthy", Status: false, Reason: "WorkerLost", Message: "w-c lease expired", LastTransitionUnixNano: ago(30 * time.Minute)},
				},
				Events: []*coordinatorv1.JobEvent{
					{Seq: 1, UnixNano: ago(2 * time.Hour), Type: "Submitted", Message: "submitted"},
					{Seq: 2, UnixNano: ago(time.Hour), Type: "WorkerLost", WorkerId: "w-c", Message: "lease expired"},
				},
				SubmittedUnixNano: ago(2 * time.Hour),
			},
			"queued": {
				Id: "queued", Name: "big", State: coordinatorv1.JobState_JOB_STATE_PENDING, WorldSize: 64,
				Progress:          &coordinatorv1.Progress{TotalSteps: 500},
				SubmittedUnixNano: ago(3 * time.Minute),
			},
		},
		pending: map[string]string{"queued": "needs 64 workers with gpu=h100, 3 free"},
		logs: map[string][]*apiv1.LogEntry{
			"moe-1": {
				{UnixNano: ago(time.Minute), Rank: 0, WorkerId: "w-a", Stream: "stderr", Line: "step 1 loss 5.5"},
				{UnixNano: ago(time.Minute), Rank: 1, Stream: "stdout", Line: "rank 1 ready\n"},
			},
		},
		watch:       map[string][]*apiv1.WatchJobResponse{},
		checkpoints: map[string][]*apiv1.Checkpoint{},
		cluster: &apiv1.ClusterStatusResponse{
			AnsweredBy: "c2", LeaderId: "c1",
			Replicas: []*apiv1.Replica{
				{Id: "c1", RaftAddress: "10.0.0.1:7401", ApiAddress: "10.0.0.1:7400", Leader: true, Voter: true, Alive: true},
				{Id: "c2", RaftAddress: "10.0.0.2:7401", ApiAddress: "10.0.0.2:7400", Voter: true, Alive: true, State: "Follower"},
				{Id: "c3", RaftAddress: "10.0.0.3:7401", ApiAddress: "10.0.0.3:7400", Voter: true, Alive: false},
			},
			Workers: []*apiv1.Worker{
				{Id: "w-a", Host: "gpu-01", Address: "10.0.1.1:7500", Resources: &apiv1.Resources{CpuCores: 32, MemoryMib: 262144, Gpus: 8},
					Labels: map[string]string{"zone": "eu-1", "gpu": "h100"}, Healthy: true, JobId: "moe-1", Rank: 0, Slots: 8, BusySlots: 3, Commands: true, Roots: []string{"/var/lib/switchyard", "/data/corpora"},
					GpuDevices: []*apiv1.GPUDevice{{Index: 0, Uuid: "GPU-5d1c0a7e", Name: "NVIDIA H100 80GB HBM3", MemoryMib: 81559,
						Links: map[int32]string{1: "NV18", 2: "NV18", 3: "NV18", 5: "NV18", 4: "SYS", 7: "SYS"}}}},
				{Id: "w-idle", Host: "cpu-07", Address: "10.0.1.7:7500", Resources: &apiv1.Resources{CpuCores: 16, MemoryMib: 65536}, Healthy: false, Health: "silent", SecondsSinceSync: 4.2, Slots: 1,
					Labels: map[string]string{"allow_commands": "true"}}, // a label, not the setting: not shown
			},
			Raft: map[string]string{"term": "7", "commit_index": "1234"},
		},
	}
	f.checkpoints["moe-1"] = []*apiv1.Checkpoint{
		{JobId: "moe-1", Step: 100, Status: "committed", CommittedUnixNano: ago(20 * time.Minute), Bytes: 3 << 30, Tp: 1, Dp: 2, Ep: 2, ValLoss: 2.5,
			Shards: []*apiv1.Shard{
				{Name: "rank-0.bin", Size: 1610612736, Sha256: "aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11"},
				{Name: "rank-1.bin", Size: 1610612736, Sha256: "bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22"},
			}},
		{JobId: "moe-1", Step: 200, Status: "committed", CommittedUnixNano: ago(time.Minute), Bytes: 3 << 30, Tp: 1, Dp: 2, Ep: 2},
	}
	return f
}

func (f *fakeCoordinator) SubmitJob(_ context.Context, req *apiv1.SubmitJobRequest) (*apiv1.SubmitJobResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.submitted = append(f.submitted, req)
	id := req.GetJobId()
	if f.gone[id] {
		return nil, status.Errorf(codes.AlreadyExists, "coordinator: job conflict: %s is the ID of a deleted job; give the new one another", id)
	}
	if id == "" {
		id = fmt.Sprintf("job-%d", len(f.submitted))
	}
	j := &coordinatorv1.Job{Id: id, Spec: req.GetSpec(), State: coordinatorv1.JobState_JOB_STATE_PENDING, SubmittedUnixNano: testNow.UnixNano()}
	f.jobs[id] = j
	return &apiv1.SubmitJobResponse{Job: j, Created: true}, nil
}

func (f *fakeCoordinator) job(id string) (*coordinatorv1.Job, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	j, ok := f.jobs[id]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "job %q not found", id)
	}
	return j, nil
}

func (f *fakeCoordinator) GetJob(_ context.Context, req *apiv1.GetJobRequest) (*apiv1.GetJobResponse, error) {
	j, err := f.job(req.GetJobId())
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return &apiv1.GetJobResponse{Job: j, PendingReason: f.pending[j.GetId()]}, nil
}

func (f *fakeCoordinator) ListJobs(_ context.Context, req *apiv1.ListJobsRequest) (*apiv1.ListJobsResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*coordinatorv1.Job
	for _, id := range slices.Sorted(maps.Keys(f.jobs)) {
		j := f.jobs[id]
		if id > req.GetPageToken() && (len(req.GetStates()) == 0 || containsState(req.GetStates(), j.GetState())) {
			out = append(out, j)
		}
	}
	// pages of one job, so that the CLI must follow the tokens
	if len(out) > 1 {
		return &apiv1.ListJobsResponse{Jobs: out[:1], NextPageToken: out[0].GetId()}, nil
	}
	return &apiv1.ListJobsResponse{Jobs: out}, nil
}

func containsState(states []coordinatorv1.JobState, s coordinatorv1.JobState) bool {
	for _, x := range states {
		if x == s {
			return true
		}
	}
	return false
}

func (f *fakeCoordinator) CancelJob(_ context.Context, req *apiv1.CancelJobRequest) (*apiv1.CancelJobResponse, error) {
	j, err := f.job(req.GetJobId())
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cancelled = append(f.cancelled, req.GetJobId())
	j.State, j.Reason, j.Message = coordinatorv1.JobState_JOB_STATE_CANCELLED, "Cancelled", req.GetMessage()
	return &apiv1.CancelJobResponse{Job: j}, nil
}

func (f *fakeCoordinator) DeleteJob(_ context.Context, req *apiv1.DeleteJobRequest) (*apiv1.DeleteJobResponse, error) {
	j, err := f.job(req.GetJobId())
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !jobstate.Final(j.State) {
		return nil, status.Errorf(codes.FailedPrecondition, "job %s is %s: only a job that has ended is deleted", j.Id, jobstate.Lower(j.State))
	}
	delete(f.jobs, j.Id)
	if f.gone == nil {
		f.gone = map[string]bool{}
	}
	f.gone[j.Id] = true
	return &apiv1.DeleteJobResponse{Job: j}, nil
}

func (f *fakeCoordinator) ResumeJob(_ context.Context, req *apiv1.ResumeJobRequest) (*apiv1.ResumeJobResponse, error) {
	j, err := f.job(req.GetJobId())
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.resumed = append(f.resumed, req)
	j.State = coordinatorv1.JobState_JOB_STATE_PENDING
	return &apiv1.ResumeJobResponse{Job: j}, nil
}

func (f *fakeCoordinator) JobLogs(req *apiv1.JobLogsRequest, s grpc.ServerStreamingServer[apiv1.LogEntry]) error {
	if _, err := f.job(req.GetJobId()); err != nil {
		return err
	}
	f.mu.Lock()
	f.logFollow = append(f.logFollow, req.GetFollow())
	entries := f.logs[req.GetJobId()]
	f.mu.Unlock()
	for _, e := range entries {
		if err := s.Send(e); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeCoordinator) WatchJob(req *apiv1.WatchJobRequest, s grpc.ServerStreamingServer[apiv1.WatchJobResponse]) error {
	if _, err := f.job(req.GetJobId()); err != nil {
		return err
	}
	f.mu.Lock()
	msgs := f.watch[req.GetJobId()]
	f.watchCalls++
	f.watchReplay = append(f.watchReplay, req.GetReplay())
	broken := f.watchCalls <= f.watchBreaks
	f.mu.Unlock()
	if broken && len(msgs) > 0 {
		if err := s.Send(msgs[0]); err != nil {
			return err
		}
		return status.Error(codes.Unavailable, "replica shutting down")
	}
	for _, m := range msgs {
		if err := s.Send(m); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeCoordinator) ClusterStatus(context.Context, *apiv1.ClusterStatusRequest) (*apiv1.ClusterStatusResponse, error) {
	return f.cluster, nil
}

func (f *fakeCoordinator) AddReplica(_ context.Context, req *apiv1.AddReplicaRequest) (*apiv1.AddReplicaResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.replicas = append(f.cluster.GetReplicas(), &apiv1.Replica{Id: req.GetId(), RaftAddress: req.GetRaftAddress(), Voter: true})
	return &apiv1.AddReplicaResponse{Replicas: f.replicas}, nil
}

func (f *fakeCoordinator) RemoveReplica(_ context.Context, req *apiv1.RemoveReplicaRequest) (*apiv1.RemoveReplicaResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*apiv1.Replica
	found := false
	for _, r := range f.cluster.GetReplicas() {
		if r.GetId() == req.GetId() {
			found = true
			continue
		}
		out = append(out, r)
	}
	if !found {
		return nil, status.Errorf(codes.NotFound, "replica %q not in the configuration", req.GetId())
	}
	return &apiv1.RemoveReplicaResponse{Replicas: out}, nil
}

func (f *fakeCoordinator) ListCheckpoints(_ context.Context, req *apiv1.ListCheckpointsRequest) (*apiv1.ListCheckpointsResponse, error) {
	if _, err := f.job(req.GetJobId()); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return &apiv1.ListCheckpointsResponse{Checkpoints: f.checkpoints[req.GetJobId()]}, nil
}

func (f *fakeCoordinator) DeleteCheckpoint(_ context.Context, req *apiv1.DeleteCheckpointRequest) (*apiv1.DeleteCheckpointResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deleted = append(f.deleted, req)
	return &apiv1.DeleteCheckpointResponse{}, nil
}

// locked reads what the fake recorded under its lock.
func locked[T any](f *fakeCoordinator, get func() T) T {
	f.mu.Lock()
	defer f.mu.Unlock()
	return get()
}

// startFake serves f on a loopback port and returns the address.
func startFake(t *testing.T, f *fakeCoordinator, opts ...grpc.ServerOption) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(opts...)
	apiv1.RegisterCoordinatorServer(srv, f)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

type result struct {
	code           int
	stdout, stderr string
}

// runCmd runs the CLI in-process with captured output and the test clock.
func runCmd(t *testing.T, tty bool, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	c := &cli{out: &out, errOut: &errOut, now: func() time.Time { return testNow }, tty: tty}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code := runCLI(ctx, args, c)
	return result{code, out.String(), errOut.String()}
}

// runAt runs a cluster command against addr: args, then --coordinator.
func runAt(t *testing.T, addr string, args ...string) result {
	t.Helper()
	return runCmd(t, false, append(args, "--coordinator", addr, "--timeout", "5s")...)
}

func wantCode(t *testing.T, r result, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, code, r.stdout, r.stderr)
	}
}

func wantContains(t *testing.T, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("output lacks %q:\n%s", sub, s)
		}
	}
}

// decodeJSON parses one JSON object.
func decodeJSON(t *testing.T, s string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, s)
	}
	return m
}

func TestCLIExitCodeMapping(t *testing.T) {
	tests := []struct {
		err  error
		want int
	}{
		{nil, exitOK},
		{flag.ErrHelp, exitOK},
		{errors.New("boom"), exitFailure},
		{usageError{errors.New("bad flag")}, exitUsage},
		{fmt.Errorf("wrapped: %w", usageError{errors.New("bad spec")}), exitUsage},
		{status.Error(codes.NotFound, "x"), exitNotFound},
		{callError("op", &remoteFlags{}, status.Error(codes.NotFound, "x")), exitNotFound},
		{status.Error(codes.Unavailable, "x"), exitUnavailable},
		{callError("op", &remoteFlags{}, status.Error(codes.DeadlineExceeded, "x")), exitUnavailable},
		{status.Error(codes.Unauthenticated, "x"), exitPermission},
		{fmt.Errorf("op: %w", status.Error(codes.PermissionDenied, "x")), exitPermission},
		{status.Error(codes.Internal, "x"), exitFailure},
		{jobEndedError{&coordinatorv1.Job{Id: "j", State: coordinatorv1.JobState_JOB_STATE_FAILED}}, exitFailure},
	}
	for _, tt := range tests {
		if got := exitCode(tt.err); got != tt.want {
			t.Errorf("exitCode(%v) = %d, want %d", tt.err, got, tt.want)
		}
	}
}

func TestCLIParseInterspersed(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o := fs.String("o", "table", "")
	f := fs.Bool("f", false, "")
	from := fs.Int("from", 0, "")
	pos, err := parseInterspersed(fs, []string{"a", "-o", "json", "b", "-f", "--from=3", "--", "-c"})
	if err != nil {
		t.Fatal(err)
	}
	if *o != "json" || !*f || *from != 3 || strings.Join(pos, " ") != "a b -c" {
		t.Fatalf("o=%q f=%v from=%d pos=%q", *o, *f, *from, pos)
	}
	if _, err := parseInterspersed(fs, []string{"a", "--nope"}); err == nil {
		t.Fatal("unknown flag accepted")
	}
}

// Flags after the positional arguments are parsed, not taken as more
// arguments.
func TestCLIFlagsAfterPositionalArgs(t *testing.T) {
	f := newFakeCoordinator()
	addr := startFake(t, f)
	r := runCmd(t, false, "job", "status", "moe-1", "-o", "json", "--coordinator", addr, "--timeout=5s")
	wantCode(t, r, exitOK)
	m := decodeJSON(t, r.stdout)
	if m["job"].(map[string]any)["id"] != "moe-1" {
		t.Fatalf("json: %v", m)
	}
	// Mixed: some flags before, some after.
	r = runCmd(t, false, "job", "resume", "--coordinator", addr, "moe-1", "--from", "100")
	wantCode(t, r, exitOK)
	resumed := locked(f, func() []*apiv1.ResumeJobRequest { return f.resumed })
	if len(resumed) != 1 || resumed[0].GetFromStep() != 100 {
		t.Fatalf("resumed: %v", resumed)
	}
	wantContains(t, r.stdout, "job moe-1: PENDING") // what the coordinator says of it
}

func TestCLIUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"job"},
		{"job", "frobnicate"},
		{"job", "status"},
		{"job", "status", "a", "b"},
		{"job", "status", "a", "-o", "yaml"},
		{"job", "list", "--state", "sleeping"},
		{"job", "status", "a", "--bogus"},
		{"checkpoints", "show", "moe-1", "latest"},
		{"job", "list", "--tls-ca", "/nonexistent/ca.pem"}, // TLS needs ca, cert and key
		{"job", "resume", "moe-1", "--from", "-1"},
	} {
		r := runCmd(t, false, args...)
		if r.code != exitUsage {
			t.Errorf("%q: exit %d, want %d\n%s", args, r.code, exitUsage, r.stderr)
		}
	}
	r := runCmd(t, false, "checkpoints", "commit", "--step", "1", "--retry-for", "-1s", "ckpt")
	wantCode(t, r, exitUsage)
	wantContains(t, r.stderr, "--retry-for -1s: must be >= 0")
	r = runCmd(t, false, "help")
	wantCode(t, r, exitOK)
	wantContains(t, r.stdout, "job submit", "cluster status", "checkpoints show", "4  coordinator unreachable")
	r = runCmd(t, false, "job", "status", "-h")
	wantCode(t, r, exitOK)
	wantContains(t, r.stderr, "-coordinator", "SWITCHYARD_TOKEN", "usage: switchyard job status ID")
}

// A coordinator that does not answer is exit 4, within about --timeout.
func TestCLIUnreachableCoordinator(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close() // nothing listens there now
	for _, args := range [][]string{
		{"job", "list"},
		{"job", "watch", "moe-1"},
		{"job", "logs", "-f", "moe-1"},
	} {
		start := time.Now()
		r := runCmd(t, false, append(args, "--coordinator", addr, "--timeout", "300ms")...)
		wantCode(t, r, exitUnavailable)
		wantContains(t, r.stderr, "unreachable")
		if el := time.Since(start); el > 10*time.Second {
			t.Errorf("%q took %s", args, el)
		}
		if strings.Contains(r.stderr, "rpc error:") {
			t.Errorf("Go error dump instead of the message: %s", r.stderr)
		}
	}
	// with the default --timeout (15s) a wrong address is told at once
	r := runCmd(t, false, "job", "list", "--coordinator", addr)
	wantCode(t, r, exitUnavailable)
	wantContains(t, r.stderr, "nothing listens there", "is the coordinator running")
}

// A coordinator that wants a token: none or a wrong one is exit 5; the
// right one works, from the flag or the environment.
func TestCLIBadToken(t *testing.T) {
	t.Setenv("SWITCHYARD_TOKEN", "")
	f := newFakeCoordinator()
	addr := startFake(t, f, security.ServerOptions("secret", false)...)
	r := runAt(t, addr, "job", "list")
	wantCode(t, r, exitPermission)
	r = runAt(t, addr, "job", "list", "--token", "wrong")
	wantCode(t, r, exitPermission)
	wantContains(t, r.stderr, "permission denied", "bearer token")
	r = runAt(t, addr, "job", "watch", "moe-1", "--token", "wrong")
	wantCode(t, r, exitPermission)
	r = runAt(t, addr, "job", "list", "--token", "secret")
	wantCode(t, r, exitOK)
	t.Setenv("SWITCHYARD_TOKEN", "secret")
	r = runAt(t, addr, "job", "list")
	wantCode(t, r, exitOK)
}

// The cluster flags may come before the command: "switchyard --token T
// cluster status" works as "switchyard cluster status --token T".
func TestCLIFlagsBeforeTheCommand(t *testing.T) {
	t.Setenv("SWITCHYARD_TOKEN", "")
	f := newFakeCoordinator()
	addr := startFake(t, f, security.ServerOptions("secret", false)...)
	r := runCmd(t, false, "--token", "secret", "--coordinator="+addr, "cluster", "status")
	wantCode(t, r, exitOK)
	r = runCmd(t, false, "--token", "secret", "--coordinator", addr, "-o", "json", "job", "status", "moe-1")
	wantCode(t, r, exitOK)
	decodeJSON(t, r.stdout)
	r = runCmd(t, false, "--token", "wrong", "--coordinator", addr, "job", "list")
	wantCode(t, r, exitPermission)
	for _, tc := range []struct {
		args []string
		says string
	}{
		{[]string{"--steps", "3", "train"}, "only the cluster flags"},
		{[]string{"--token", "secret", "train"}, `apply to job, cluster, checkpoints and experiment, not "train"`},
		{[]string{"--token"}, "needs a value"},
		{[]string{"--token", "secret"}, "no command after the flags"},
	} {
		r := runCmd(t, false, tc.args...)
		wantCode(t, r, exitUsage)
		wantContains(t, r.stderr, tc.says)
	}
}

// The environment names the coordinator when the flag does not.
func TestCLICoordinatorFromEnv(t *testing.T) {
	addr := startFake(t, newFakeCoordinator())
	t.Setenv("SWITCHYARD_COORDINATOR", "127.0.0.1:1,"+addr)
	r := runCmd(t, false, "job", "status", "moe-1", "--timeout", "10s")
	wantCode(t, r, exitOK)
	wantContains(t, r.stdout, "moe-1")
}

// No usage message prints the token $SWITCHYARD_TOKEN holds (they end up
// in terminals and CI logs), which still serves as --token's default.
func TestUsageHidesTheToken(t *testing.T) {
	t.Setenv("SWITCHYARD_TOKEN", "s3cret-in-env")
	for _, args := range [][]string{{"job", "list", "--help"}, {"job", "list", "--bogus"}, {"job", "status", "a", "b"}, {"cluster", "status", "-h"}} {
		r := runCmd(t, false, args...)
		if strings.Contains(r.stdout+r.stderr, "s3cret-in-env") {
			t.Errorf("%v printed the token:\n%s%s", args, r.stdout, r.stderr)
		}
		if !strings.Contains(r.stdout+r.stderr, "$SWITCHYARD_TOKEN") {
			t.Errorf("%v: usage does not name $SWITCHYARD_TOKEN:\n%s%s", args, r.stdout, r.stderr)
		}
	}
	r := runCmd(t, false, "cluster", "worker-token", "w-1") // the default still applies
	wantCode(t, r, exitOK)
	if got := strings.TrimSpace(r.stdout); got != security.WorkerToken("s3cret-in-env", "w-1") {
		t.Fatalf("printed %q", got)
	}
}

// `cluster worker-token` prints the token the coordinator accepts from that
// worker only, computed from the cluster token without a call.
func TestClusterWorkerToken(t *testing.T) {
	t.Setenv("SWITCHYARD_TOKEN", "s3cret")
	r := runCmd(t, false, "cluster", "worker-token", "w-7")
	wantCode(t, r, exitOK)
	if got := strings.TrimSpace(r.stdout); got != security.WorkerToken("s3cret", "w-7") {
		t.Fatalf("printed %q", got)
	}
	for _, tc := range []struct {
		args []string
		says string
	}{
		{[]string{"cluster", "worker-token", "bad id!"}, "worker id"},
		{[]string{"cluster", "worker-token", "w1", "--token", security.WorkerToken("s3cret", "w1")}, "a worker's token"},
		{[]string{"cluster", "worker-token", "w1", "--token", ""}, "needs the cluster token"},
	} {
		r := runCmd(t, false, tc.args...)
		wantCode(t, r, exitUsage)
		wantContains(t, r.stderr, tc.says)
	}
}

// TestCLITLSMismatchHint: a CLI without TLS files against a coordinator
// that speaks TLS says so, instead of only that it is unreachable.
func TestCLITLSMismatchHint(t *testing.T) {
	cfg, err := security.EphemeralMutualTLS("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	lis, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: cfg.Certificates, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	testnet.Accept(t, lis, func(c net.Conn) {
		c.(*tls.Conn).Handshake() //nolint:errcheck // a plaintext client fails it
		c.Close()
	})
	r := runCmd(t, false, "job", "list", "--coordinator", lis.Addr().String(), "--timeout", "2s")
	wantCode(t, r, exitUnavailable)
	wantContains(t, r.stderr, "do not agree on TLS")
	// with the default --timeout (15s) it is told at once
	r = runCmd(t, false, "job", "list", "--coordinator", lis.Addr().String())
	wantCode(t, r, exitUnavailable)
	wantContains(t, r.stderr, "the TLS handshake fails", "do not agree on TLS")
}

// The top-level help lists every command of every group.
func TestHelpListsEveryCommand(t *testing.T) {
	top := runCmd(t, false, "help")
	wantCode(t, top, exitOK)
	re := regexp.MustCompile(`(?m)^  switchyard (\S+ \S+)`)
	for _, group := range []string{"job", "cluster", "checkpoints", "experiment"} {
		r := runCmd(t, false, group, "help")
		wantCode(t, r, exitOK)
		cmds := re.FindAllStringSubmatch(r.stdout, -1)
		if len(cmds) == 0 {
			t.Fatalf("%s help lists no commands:\n%s", group, r.stdout)
		}
		for _, m := range cmds {
			if !strings.Contains(top.stdout, "switchyard "+m[1]+" ") && !strings.Contains(top.stdout, "switchyard "+m[1]+"\n") {
				t.Errorf("switchyard help does not list %q", m[1])
			}
		}
	}
}

// The top-level help's bench line names every benchmark `switchyard
// bench` runs (it named only engine, so collectives and checkpoint, which
// the README uses, were not to be found from `switchyard help`).
func TestHelpListsEveryBench(t *testing.T) {
	top := runCmd(t, false, "help")
	wantCode(t, top, exitOK)
	r := runCmd(t, false, "bench")
	m := regexp.MustCompile(`say what to measure: ([a-z, ]+)`).FindStringSubmatch(r.stderr)
	if m == nil {
		t.Fatalf("switchyard bench does not list what it measures:\n%s", r.stderr)
	}
	line := regexp.MustCompile(`(?m)^  switchyard bench .*$`).FindString(top.stdout)
	for _, name := range strings.Split(strings.TrimSpace(m[1]), ", ") {
		if !strings.Contains(line, name) {
			t.Errorf("switchyard help's bench line %q does not name %q", line, name)
		}
	}
}
