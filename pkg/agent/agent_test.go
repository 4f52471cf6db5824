package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-ml/switchyard/internal/syncbuf"
	"github.com/switchyard-ml/switchyard/pkg/etcdconn"
	"github.com/switchyard-ml/switchyard/pkg/events"
	"github.com/switchyard-ml/switchyard/pkg/membership"
	"github.com/switchyard-ml/switchyard/pkg/runconfig"
	"github.com/switchyard-ml/switchyard/pkg/security"
	"github.com/switchyard-ml/switchyard/pkg/train"
	"github.com/switchyard-ml/switchyard/pkg/workerconfig"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
)

// fakeTrainer stands in for `switchyard train`. It records its argv in
// <out>/args, its pid in <out>/pid and one line per start in <out>/starts
// (<out> is the directory of --config's run.yaml, the run directory),
// prints to stdout and stderr, and behaves by the job id in <out>:
//
// With SWITCHYARD_EVENTS=1 (the agent sets it) it announces two events.
//
//	ok-*        writes a metrics line and exits 0
//	fail-*      prints two stderr lines and exits 3
//	stubborn-*  ignores SIGTERM and runs until killed
//	nap-*       exits 0 after 0.6s
//	hog-*       starts a child (same process group) that holds 320 MB
//	otherwise   writes metrics (the first line in two writes) and runs
//	            until SIGTERM, which it records in <out>/terminated
const fakeTrainer = `#!/bin/sh
prev=
for a in "$@"; do
  case "$prev" in
    --config) out=$(dirname "$a") ;;
    --rank) rank=$a ;;
  esac
  prev=$a
done
# before the pid file: once the test sees it, a SIGTERM must be recorded
trap 'echo terminated > "$out/terminated"; exit 143' TERM
printf '%s\n' "$@" > "$out/args"
printf '%s\n' "$SWITCHYARD_TOKEN" > "$out/token"
printf '%s\n' "${SWITCHYARD_ETCD_USERNAME-unset}" "${SWITCHYARD_ETCD_PASSWORD-unset}" "${SWITCHYARD_NATS_CREDS-unset}" > "$out/etcd-user"
# renamed into place: a test that sees the pid file reads the whole pid
# (a plain "echo > pid" is seen empty between its open and its write)
echo $$ > "$out/pid.tmp"
mv "$out/pid.tmp" "$out/pid"
echo start >> "$out/starts"
echo "hello from rank $rank"
echo "loading rank $rank" >&2
if [ "$SWITCHYARD_EVENTS" = 1 ]; then
  echo 'switchyard-event {"type":"Resumed","message":"resumed from the checkpoint of step 40"}' >&2
  echo 'switchyard-event not json' >&2
fi
case "$out" in
  */jobs/ok-*)
    printf '{"step":1,"loss":2.5,"lbl":[0.5,1.5],"tokens_per_s":100,"expert_load":[[0.25,0.75],[0.5,0.5]],"gpus":[{"rank":0,"uuid":"GPU-1","util_pct":61,"mem_used_bytes":1024,"mem_total_bytes":4096},{"rank":0,"uuid":"GPU-dup","util_pct":1},{"rank":7,"uuid":"GPU-7","util_pct":2}]}\n' >> "$out/metrics.jsonl"
    exit 0 ;;
  */jobs/fail-*)
    echo "warming up" >&2
    echo "error: out of cheese" >&2
    exit 3 ;;
  */jobs/stubborn-*)
    trap '' TERM
    while :; do sleep 0.05; done ;;
  */jobs/nap-*)
    sleep 0.6
    exit 0 ;;
  */jobs/hog-*)
    sh -c 'echo $$ > "$1/child"; x=$(head -c 320000000 /dev/zero | tr "\0" a); sleep 60' hog "$out" &
    while :; do sleep 0.05; done ;;
esac
printf '{"step":7,"loss":' >> "$out/metrics.jsonl"
sleep 0.4
printf '1.25,"lbl":[2],"tokens_per_s":50}\n' >> "$out/metrics.jsonl"
while :; do sleep 0.05; done
`

// fakeCoordinator hands out a list of tasks and records what the worker
// reports. Only SyncWorker and ListCheckpoints are implemented.
type fakeCoordinator struct {
	apiv1.CoordinatorClient

	// committed: the steps ListCheckpoints lists as committed, by job
	committed map[string][]int64

	mu      sync.Mutex
	tasks   []*apiv1.Task
	down    bool
	calls   int
	failed  int // calls refused while down
	reports []*apiv1.TaskStatus
	worker  string
	refuse  codes.Code // nonzero: every call is refused with it (credentials)
	probes  []bool     // each call's probe flag, in order
	drains  int        // calls that said the worker is draining
}

func (f *fakeCoordinator) SyncWorker(ctx context.Context, req *apiv1.SyncWorkerRequest, _ ...grpc.CallOption) (*apiv1.SyncWorkerResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	f.probes = append(f.probes, req.GetProbe())
	if f.refuse != codes.OK {
		return nil, status.Error(f.refuse, "bad bearer token")
	}
	if f.down {
		f.failed++
		return nil, status.Error(codes.Unavailable, "no leader")
	}
	f.worker = req.GetWorkerId()
	f.reports = req.GetTasks()
	if req.GetDraining() {
		f.drains++
	}
	return &apiv1.SyncWorkerResponse{Tasks: f.tasks}, nil
}

func (f *fakeCoordinator) ListCheckpoints(ctx context.Context, req *apiv1.ListCheckpointsRequest, _ ...grpc.CallOption) (*apiv1.ListCheckpointsResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &apiv1.ListCheckpointsResponse{}
	for _, step := range f.committed[req.GetJobId()] {
		resp.Checkpoints = append(resp.Checkpoints, &apiv1.Checkpoint{JobId: req.GetJobId(), Step: step, Status: "committed"})
	}
	return resp, nil
}

func (f *fakeCoordinator) set(tasks ...*apiv1.Task) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tasks = tasks
}

func (f *fakeCoordinator) setDown(down bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = down
}

func (f *fakeCoordinator) counts() (calls, failed int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls, f.failed
}

// report is the last status the worker reported for the task, or nil.
func (f *fakeCoordinator) report(job string, rank int32) *apiv1.TaskStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.reports {
		if s.GetJobId() == job && s.GetRank() == rank {
			return s
		}
	}
	return nil
}

func (f *fakeCoordinator) reported() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.reports)
}

type harness struct {
	t       *testing.T
	coord   *fakeCoordinator
	srv     *membership.MemoryServer
	reg     membership.Registry
	bus     *events.Memory
	storage string
	cfg     workerconfig.Config
	cancel  context.CancelFunc
	done    chan error
}

func testConfig(t *testing.T, trainer string) workerconfig.Config {
	return workerconfig.Config{
		ID: "w1", Host: "node1", Coordinators: []string{"127.0.0.1:7000"}, EtcdEndpoints: []string{"127.0.0.1:2379"},
		AdvertiseAddress: "127.0.0.1:7171", ListenAddress: "127.0.0.1:7171",
		Resources:   workerconfig.Resources{CPUCores: 4, MemoryMiB: 2048, GPUs: 1},
		Labels:      map[string]string{"rack": "r1"},
		StoragePath: t.TempDir(), Trainer: trainer, LeaseTTLSeconds: 2,
		EnforceMemory: true,
	}
}

func writeTrainer(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "switchyard")
	if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// start runs an agent with the fake trainer; change adjusts the options.
func start(t *testing.T, change func(*Options)) *harness {
	t.Helper()
	h := &harness{t: t, coord: &fakeCoordinator{}, srv: membership.NewMemoryServer(), bus: events.NewMemory(), done: make(chan error, 1)}
	t.Cleanup(h.srv.Stop)
	mem := membership.NewMemory(h.srv)
	t.Cleanup(func() { mem.Close() })
	h.reg = mem
	h.cfg = testConfig(t, writeTrainer(t, fakeTrainer))
	h.storage = h.cfg.StoragePath
	o := Options{
		Config: h.cfg, Client: h.coord, Registry: h.reg, Bus: h.bus,
		SyncInterval: 20 * time.Millisecond, StopGrace: 5 * time.Second,
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})), Version: "v-test",
	}
	if change != nil {
		change(&o)
	}
	a, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-h.done:
		case <-time.After(30 * time.Second):
			t.Error("Run did not return")
		}
	})
	return h
}

// stop cancels Run and waits for it.
func (h *harness) stop() {
	h.t.Helper()
	h.cancel()
	select {
	case err := <-h.done:
		if err != nil {
			h.t.Fatalf("Run: %v", err)
		}
		h.done <- nil // for the cleanup
	case <-time.After(20 * time.Second):
		h.t.Fatal("Run did not return after cancel")
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (h *harness) runDir(job string, attempt, rank int) string {
	return filepath.Join(h.storage, "jobs", job, fmt.Sprintf("attempt-%d", attempt), fmt.Sprintf("rank-%d", rank))
}

func (h *harness) waitState(job string, rank int32, want apiv1.TaskState) *apiv1.TaskStatus {
	h.t.Helper()
	var last *apiv1.TaskStatus
	eventually(h.t, fmt.Sprintf("%s rank %d %v", job, rank, want), func() bool {
		last = h.coord.report(job, rank)
		return last != nil && last.GetState() == want
	})
	return last
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(raw), "\n"), "\n")
}

func newTestTask(job string, rank, world int32, spec string) *apiv1.Task {
	t := &apiv1.Task{JobId: job, Attempt: 1, Rank: rank, WorldSize: world, Tp: 1, Dp: world, Ep: 1, Balance: "dp", Spec: []byte(spec)}
	for i := range world {
		t.Peers = append(t.Peers, fmt.Sprintf("127.0.0.1:%d", 7170+i))
	}
	return t
}

const spec1 = "name: demo\nsteps: 5\n"

func pidAlive(t *testing.T, dir string) (int, bool) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "pid"))
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	if _, err := fmt.Sscan(string(raw), &pid); err != nil || pid <= 0 {
		// kill(0, 0) would ask about the test's own process group
		t.Fatalf("pid file holds %q", raw)
	}
	return pid, syscall.Kill(pid, 0) == nil
}

func TestRegisters(t *testing.T) {
	h := start(t, nil)
	var got []membership.WorkerInfo
	eventually(t, "registration", func() bool {
		got, _ = h.reg.List(context.Background())
		return len(got) == 1
	})
	want := membership.WorkerInfo{
		ID: "w1", Address: "127.0.0.1:7171", Host: "node1", Version: "v-test", Labels: map[string]string{"rack": "r1"},
		Resources: membership.Resources{CPUCores: 4, MemoryBytes: 2048 << 20, GPUs: 1}, Slots: 1, // one per GPU
		Roots: append([]string{h.cfg.StoragePath}, h.cfg.AllowedPaths...),
	}
	if !reflect.DeepEqual(got[0], want) {
		t.Fatalf("registered %+v\nwant %+v", got[0], want)
	}
	eventually(t, "a sync", func() bool { c, _ := h.coord.counts(); return c > 1 })
	if h.coord.worker != "w1" {
		t.Fatalf("synced as %q", h.coord.worker)
	}
	// the call before registering only checks the credentials: a sync then
	// would make a restarted worker look alive under its predecessor's
	// registration, whose lease may be about to end
	h.coord.mu.Lock()
	probes := slices.Clone(h.coord.probes)
	h.coord.mu.Unlock()
	if !probes[0] || slices.Contains(probes[1:], true) {
		t.Fatalf("probe flags of the calls %v: want only the first, before registering", probes)
	}
}

// TestRefusedCredentials: a worker whose token the coordinator refuses
// stops before it registers, saying why, instead of showing in etcd (and
// in cluster status) as a worker that can never take work.
func TestRefusedCredentials(t *testing.T) {
	for _, code := range []codes.Code{codes.Unauthenticated, codes.PermissionDenied} {
		h := start(t, func(o *Options) { o.Client = &fakeCoordinator{refuse: code} })
		var err error
		select {
		case err = <-h.done:
			h.done <- err // for the harness's cleanup
		case <-time.After(20 * time.Second):
			t.Fatalf("%v: Run did not stop", code)
		}
		if err == nil || !strings.Contains(err.Error(), "refuses this worker's credentials") {
			t.Fatalf("%v: Run returned %v", code, err)
		}
		if got, _ := h.reg.List(context.Background()); len(got) != 0 {
			t.Fatalf("%v: registered anyway: %v", code, got)
		}
	}
}

func TestSuccessArgvMetricsAndLogs(t *testing.T) {
	sharedRoot := t.TempDir() // a checkpoint volume the worker allows
	shared := filepath.Join(sharedRoot, "shared")
	h := start(t, func(o *Options) { o.Config.AllowedPaths = []string{sharedRoot} })
	multi := newTestTask("ok-multi", 1, 2, "name: demo\nparallel: {dp: 2, balance: node}\ncheckpoint: {interval_steps: 5, keep_last: 2, path: "+shared+"}\n")
	multi.Balance = "" // the spec's
	multi.ResumeFromStep = 40
	multi.Hosts = []string{"host-a", "host-b"} // the balance node groups
	h.coord.set(newTestTask("ok-one", 0, 1, spec1), multi)

	st := h.waitState("ok-one", 0, apiv1.TaskState_TASK_STATE_SUCCEEDED)
	if st.GetStep() != 1 || st.GetLoss() != 2.5 || st.GetTokensPerSecond() != 100 || st.GetMessage() != "" {
		t.Fatalf("rank 0 status %v", st)
	}
	// one sample per rank of the world (the trainer's line also had a
	// second for rank 0 and one for a rank 7 the world of 1 lacks)
	if g := st.GetGpus(); len(g) != 1 || g[0].GetRank() != 0 || g[0].GetUuid() != "GPU-1" || g[0].GetUtilPct() != 61 || g[0].GetMemUsedBytes() != 1024 || g[0].GetMemTotalBytes() != 4096 {
		t.Fatalf("rank 0 status GPUs %v", g)
	}
	h.waitState("ok-multi", 1, apiv1.TaskState_TASK_STATE_SUCCEEDED)

	// The command lines.
	dir := h.runDir("ok-one", 1, 0)
	ckpt := filepath.Join(h.storage, "checkpoints")
	want := []string{"train", "--config", filepath.Join(dir, "run.yaml"), "--rank", "0", "--json"}
	if got := readLines(t, filepath.Join(dir, "args")); !reflect.DeepEqual(got, want) {
		t.Errorf("rank 0 argv\n got %q\nwant %q", got, want)
	}
	dir1 := h.runDir("ok-multi", 1, 1)
	want1 := []string{"train", "--config", filepath.Join(dir1, "run.yaml"), "--rank", "1", "--json",
		"--peers", "127.0.0.1:7170,127.0.0.1:7171", "--listen", "127.0.0.1:7171", "--hosts", "host-a,host-b"}
	if got := readLines(t, filepath.Join(dir1, "args")); !reflect.DeepEqual(got, want1) {
		t.Errorf("rank 1 argv\n got %q\nwant %q", got, want1)
	}

	// run.yaml is the rank's whole configuration (jobspec's RankConfig),
	// read back by the trainer's loader.
	tc, err := train.Load(filepath.Join(dir, "run.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	wantCk := runconfig.Checkpoint{Dir: ckpt, Job: "ok-one", KeepLast: 3, Etcd: []string{}, CommitVia: []string{"127.0.0.1:7000"}, Attempt: 1}
	if tc.OutDir != dir || !tc.Resume || !reflect.DeepEqual(tc.Checkpoint, wantCk) ||
		tc.Dist != (runconfig.Dist{World: 1, TP: 1, DP: 1, EP: 1, Balance: "dp"}) {
		t.Errorf("rank 0 run.yaml: %+v\nwant checkpoint %+v", tc, wantCk)
	}
	tc, err = train.Load(filepath.Join(dir1, "run.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	wantCk = runconfig.Checkpoint{Dir: shared, Job: "ok-multi", Every: 5, KeepLast: 2, Etcd: []string{},
		CommitVia: []string{"127.0.0.1:7000"}, Attempt: 1, ResumeStep: 40}
	if tc.OutDir != dir1 || !tc.Resume || tc.Steps != 100 || !reflect.DeepEqual(tc.Checkpoint, wantCk) ||
		tc.Dist != (runconfig.Dist{World: 2, TP: 1, DP: 2, EP: 1, Balance: "node"}) {
		t.Errorf("rank 1 run.yaml: %+v\nwant checkpoint %+v", tc, wantCk)
	}
	if out := readLines(t, filepath.Join(dir, "stdout.log")); !reflect.DeepEqual(out, []string{"hello from rank 0"}) {
		t.Errorf("stdout.log %q", out)
	}

	// Rank 0's metrics, published.
	ms, _ := h.bus.History(context.Background(), events.Filter{Kind: events.KindMetrics, JobID: "ok-one"})
	if len(ms) != 1 {
		t.Fatalf("%d metrics messages", len(ms))
	}
	wantM := events.StepMetrics{Step: 1, Rank: 0, Loss: 2.5, LBL: 1, TokensPerSecond: 100, ExpertLoadLE: [][]float64{{0.25, 0.75}, {0.5, 0.5}},
		GPUUtilPct: []float64{61}} // rank 0's first sample only (the world has one rank)
	if !reflect.DeepEqual(*ms[0].Metrics, wantM) {
		t.Errorf("metrics %+v", *ms[0].Metrics)
	}
	if ms, _ := h.bus.History(context.Background(), events.Filter{Kind: events.KindMetrics, JobID: "ok-multi"}); len(ms) != 0 {
		t.Errorf("rank 1 published metrics: %+v", ms)
	}
	// Log lines of both streams, with rank and worker.
	var lines []string
	logs, _ := h.bus.History(context.Background(), events.Filter{Kind: events.KindLog, JobID: "ok-multi"})
	for _, m := range logs {
		if m.Log.WorkerID != "w1" || m.Log.Rank != 1 {
			t.Errorf("log %+v", *m.Log)
		}
		lines = append(lines, m.Log.Stream+": "+m.Log.Line)
	}
	if !reflect.DeepEqual(lines, []string{"stdout: hello from rank 1", "stderr: loading rank 1"}) &&
		!reflect.DeepEqual(lines, []string{"stderr: loading rank 1", "stdout: hello from rank 1"}) {
		t.Errorf("log lines %q", lines)
	}

	// Finished tasks still listed are reported, never restarted.
	c0, _ := h.coord.counts()
	eventually(t, "more syncs", func() bool { c, _ := h.coord.counts(); return c > c0+10 })
	if n := len(readLines(t, filepath.Join(dir, "starts"))); n != 1 {
		t.Fatalf("a finished task was started %d times", n)
	}
	if st := h.coord.report("ok-one", 0); st.GetState() != apiv1.TaskState_TASK_STATE_SUCCEEDED {
		t.Fatalf("after more syncs: %v", st)
	}
	// Once no longer listed, they are forgotten.
	h.coord.set()
	eventually(t, "finished tasks forgotten", func() bool { return h.coord.reported() == 0 })
}

func TestFailureReported(t *testing.T) {
	h := start(t, nil)
	h.coord.set(newTestTask("fail-a", 0, 1, spec1), newTestTask("bad-spec", 0, 1, "name: demo\nbogus: 1\n"))
	st := h.waitState("fail-a", 0, apiv1.TaskState_TASK_STATE_FAILED)
	if want := "rank 0 exited with exit status 3: error: out of cheese"; st.GetMessage() != want {
		t.Errorf("message %q, want %q", st.GetMessage(), want)
	}
	if st.GetRefused() {
		t.Error("a rank that ran and failed was reported refused")
	}
	// a spec the worker cannot use is refused: a restart would be too
	st = h.waitState("bad-spec", 0, apiv1.TaskState_TASK_STATE_FAILED)
	if !strings.Contains(st.GetMessage(), "rank 0: job spec: jobspec: malformed spec") || !strings.Contains(st.GetMessage(), "bogus") || !st.GetRefused() {
		t.Errorf("message %q, refused %v", st.GetMessage(), st.GetRefused())
	}
}

func TestMemoryLimitEnforced(t *testing.T) {
	h := start(t, nil)
	hog := "name: demo\nsteps: 5\nresources: {cpu_cores: 1, memory_mib: 256}\n"
	h.coord.set(newTestTask("hog-a", 0, 1, hog), newTestTask("nap-a", 0, 1, hog))
	st := h.waitState("hog-a", 0, apiv1.TaskState_TASK_STATE_FAILED)
	if want := "over the 256 MiB of its resources.memory_mib: killed by the worker"; !strings.Contains(st.GetMessage(), want) {
		t.Errorf("message %q, want it to hold %q", st.GetMessage(), want)
	}
	if !strings.HasPrefix(st.GetMessage(), "rank 0 used ") {
		t.Errorf("message %q does not name the rank", st.GetMessage())
	}
	var oom bool
	for _, e := range st.GetEvents() {
		// the history says "rank 0: " before a rank's event: not again
		oom = oom || e.GetType() == "OutOfMemory" && strings.HasPrefix(e.GetMessage(), "used ")
	}
	if !oom {
		t.Errorf("no OutOfMemory event saying \"used ...\" in %v", st.GetEvents())
	}
	// the whole group went: the child that held the memory too
	child := readLines(t, filepath.Join(h.runDir("hog-a", 1, 0), "child"))[0]
	eventually(t, "the hog's child gone", func() bool {
		st, err := os.ReadFile("/proc/" + child + "/stat")
		return err != nil || strings.Contains(string(st), ") Z ")
	})
	// a rank within its memory ends as it would have, and the history
	// says how much it used
	st = h.waitState("nap-a", 0, apiv1.TaskState_TASK_STATE_SUCCEEDED)
	var peak string
	for _, e := range st.GetEvents() {
		if e.GetType() == "MemoryPeak" {
			peak = e.GetMessage()
		}
	}
	if !strings.HasPrefix(peak, "used at most ") || !strings.HasSuffix(peak, " of the 256 MiB of its resources.memory_mib") {
		t.Errorf("MemoryPeak event %q in %v", peak, st.GetEvents())
	}
}

func TestGroupMemory(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("memory is measured through Linux's /proc")
	}
	debug.FreeOSMemory() // what earlier runs freed (-count) would take the ballast without growing
	before, err := groupMemory(syscall.Getpgrp())
	if err != nil || before <= 0 {
		t.Fatalf("this test's own group: %d bytes, %v", before, err)
	}
	ballast := make([]byte, 64<<20)
	for i := range ballast {
		ballast[i] = 1
	}
	after, err := groupMemory(syscall.Getpgrp())
	if err != nil || after < before+60<<20 {
		t.Errorf("after touching 64 MiB: %d bytes, before %d (%v)", after, before, err)
	}
	runtime.KeepAlive(ballast)
	if n, err := groupMemory(1 << 30); err != nil || n != 0 {
		t.Errorf("a group with no process: %d, %v", n, err)
	}
}

// TestPathsConfined: a job may read and write only under the worker's
// storage_path and allowed_paths; what it names elsewhere (directly, or
// through a link) is refused before anything is written there.
func TestPathsConfined(t *testing.T) {
	allowed, outside := t.TempDir(), t.TempDir()
	corpus := filepath.Join(allowed, "corpus.jsonl")
	if err := os.WriteFile(corpus, []byte(`{"domain": "a", "text": "b"}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	h := start(t, func(o *Options) { o.Config.AllowedPaths = []string{allowed} })
	link := filepath.Join(h.storage, "out")
	if err := os.Symlink(outside, link); err != nil {
		t.Fatal(err)
	}
	h.coord.set(
		newTestTask("ckpt-etc", 0, 1, spec1+"checkpoint: {path: /etc/sy}\n"),
		newTestTask("ckpt-link", 0, 1, spec1+"checkpoint: {path: "+link+"/ck}\n"),
		newTestTask("corpus-shadow", 0, 1, spec1+"data: {corpus: /etc/shadow}\n"),
		newTestTask("ok-allowed", 0, 1, spec1+"data: {corpus: "+corpus+"}\ncheckpoint: {path: "+allowed+"/ck}\n"),
	)
	for job, says := range map[string]string{
		"ckpt-etc":      "checkpoint.path /etc/sy is outside this worker's storage_path",
		"ckpt-link":     "checkpoint.path " + link + "/ck is outside",
		"corpus-shadow": "data.corpus /etc/shadow is outside",
	} {
		st := h.waitState(job, 0, apiv1.TaskState_TASK_STATE_FAILED)
		if !strings.Contains(st.GetMessage(), says) || !st.GetRefused() {
			t.Errorf("%s: message %q (refused %v), want it refused saying %q", job, st.GetMessage(), st.GetRefused(), says)
		}
	}
	if _, err := os.Stat("/etc/sy"); err == nil {
		t.Error("/etc/sy was made")
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Errorf("written through the link: %v", entries)
	}
	// the fake trainer exits 0: inside the allowed paths the rank runs
	h.waitState("ok-allowed", 0, apiv1.TaskState_TASK_STATE_SUCCEEDED)
}

// TestUnrunnableRanksRefused: a rank that would fail at its start, and
// at every restart, is refused before anything runs: a corpus the worker
// cannot open (missing, a directory), a command not found in the rank's
// PATH or not executable, a working_dir that is missing or not a
// directory. The message is the one the rank would give.
func TestUnrunnableRanksRefused(t *testing.T) {
	h := start(t, func(o *Options) { o.Config.AllowCommands = true })
	missing := filepath.Join(h.storage, "nosuch.jsonl")
	plain := filepath.Join(h.storage, "plain.sh")
	if err := os.WriteFile(plain, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := "runtime: command\ncommand: "
	h.coord.set(
		newTestTask("corpus-missing", 0, 1, spec1+"data: {corpus: "+missing+"}\n"),
		newTestTask("corpus-dir", 0, 1, spec1+"data: {corpus: "+h.storage+"}\n"),
		newTestTask("cmd-missing", 0, 1, "name: c\n"+cmd+"nosuch-trainer\n"),
		newTestTask("cmd-plain", 0, 1, "name: c\n"+cmd+plain+"\n"),
		newTestTask("wd-missing", 0, 1, "name: c\n"+cmd+"sh\nworking_dir: "+missing+"\n"),
		newTestTask("wd-file", 0, 1, "name: c\n"+cmd+"sh\nworking_dir: "+plain+"\n"),
		newTestTask("ok-cmd", 0, 1, "name: c\n"+cmd+"sh\n"), // on PATH: it runs
	)
	for job, says := range map[string]string{
		"corpus-missing": "rank 0: data: open corpus: open " + missing + ": no such file or directory",
		"corpus-dir":     "rank 0: data: corpus is not a regular file: " + h.storage + " is a directory",
		"cmd-missing":    `rank 0: command "nosuch-trainer" not found in the rank's PATH (` + os.Getenv("PATH") + ":",
		"cmd-plain":      `rank 0: command "` + plain + `": ` + plain + " is not executable (mode -rw-r--r--)",
		"wd-missing":     "rank 0: working_dir " + missing + " does not exist on worker",
		"wd-file":        "rank 0: working_dir " + plain + " is not a directory",
	} {
		st := h.waitState(job, 0, apiv1.TaskState_TASK_STATE_FAILED)
		if !strings.HasPrefix(st.GetMessage(), says) || !st.GetRefused() {
			t.Errorf("%s: message %q (refused %v), want it refused saying %q", job, st.GetMessage(), st.GetRefused(), says)
		}
		if _, err := os.Stat(filepath.Join(h.runDir(job, 1, 0), "starts")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: the rank was started (%v)", job, err)
		}
	}
	h.waitState("ok-cmd", 0, apiv1.TaskState_TASK_STATE_SUCCEEDED)
}

func TestTrainerCannotStart(t *testing.T) {
	h := start(t, func(o *Options) {
		o.Config.Trainer = writeTrainer(t, "#!/nonexistent/interpreter\n")
	})
	h.coord.set(newTestTask("any", 0, 1, spec1))
	st := h.waitState("any", 0, apiv1.TaskState_TASK_STATE_FAILED)
	if !strings.HasPrefix(st.GetMessage(), "rank 0: start trainer: ") || st.GetRefused() {
		t.Errorf("message %q, refused %v (a worker that cannot start its trainer is not a refusal of the job)", st.GetMessage(), st.GetRefused())
	}
	// The agent lives on and runs what comes next.
	h.coord.set(newTestTask("any", 0, 1, spec1), newTestTask("fail-b", 0, 1, spec1))
	h.waitState("fail-b", 0, apiv1.TaskState_TASK_STATE_FAILED)
}

func TestRemovedTaskStoppedAndForgotten(t *testing.T) {
	h := start(t, nil)
	h.coord.set(newTestTask("run-a", 0, 1, spec1))
	h.waitState("run-a", 0, apiv1.TaskState_TASK_STATE_RUNNING)
	// The metrics line arrives in two writes: it counts once complete.
	var st *apiv1.TaskStatus
	eventually(t, "metrics of step 7", func() bool {
		st = h.coord.report("run-a", 0)
		return st.GetStep() == 7
	})
	if st.GetLoss() != 1.25 || st.GetTokensPerSecond() != 50 || st.GetState() != apiv1.TaskState_TASK_STATE_RUNNING {
		t.Fatalf("status %v", st)
	}
	dir := h.runDir("run-a", 1, 0)
	pid, alive := pidAlive(t, dir)
	if !alive {
		t.Fatal("rank not running")
	}
	h.coord.set()
	eventually(t, "task forgotten", func() bool { return h.coord.reported() == 0 })
	if _, err := os.Stat(filepath.Join(dir, "terminated")); err != nil {
		t.Fatalf("rank did not get SIGTERM: %v", err)
	}
	if syscall.Kill(pid, 0) == nil {
		t.Fatalf("pid %d still alive", pid)
	}
}

func TestStubbornRankKilled(t *testing.T) {
	h := start(t, func(o *Options) { o.StopGrace = 200 * time.Millisecond })
	h.coord.set(newTestTask("stubborn-a", 0, 1, spec1))
	h.waitState("stubborn-a", 0, apiv1.TaskState_TASK_STATE_RUNNING)
	eventually(t, "pid file", func() bool {
		_, err := os.Stat(filepath.Join(h.runDir("stubborn-a", 1, 0), "pid"))
		return err == nil
	})
	h.coord.set()
	eventually(t, "task forgotten", func() bool { return h.coord.reported() == 0 })
	if pid, alive := pidAlive(t, h.runDir("stubborn-a", 1, 0)); alive {
		t.Fatalf("pid %d survived SIGKILL", pid)
	}
}

func TestCoordinatorUnreachable(t *testing.T) {
	defer func(d time.Duration) { unreachableReminder = d }(unreachableReminder)
	unreachableReminder = 100 * time.Millisecond
	var logs syncbuf.Buffer
	h := start(t, func(o *Options) {
		o.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(testWriter{t}, &logs), &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	h.coord.set(newTestTask("run-b", 0, 1, spec1))
	h.waitState("run-b", 0, apiv1.TaskState_TASK_STATE_RUNNING)
	dir := h.runDir("run-b", 1, 0)
	eventually(t, "pid file", func() bool { _, err := os.Stat(filepath.Join(dir, "pid")); return err == nil })
	pid, _ := pidAlive(t, dir)

	h.coord.setDown(true)
	eventually(t, "failed syncs", func() bool { _, f := h.coord.counts(); return f >= 20 })
	h.coord.setDown(false)
	c0, _ := h.coord.counts()
	eventually(t, "syncs again", func() bool { c, _ := h.coord.counts(); return c > c0+5 })

	if p, alive := pidAlive(t, dir); !alive || p != pid {
		t.Fatalf("rank restarted or died: pid %d -> %d alive %v", pid, p, alive)
	}
	if n := len(readLines(t, filepath.Join(dir, "starts"))); n != 1 {
		t.Fatalf("started %d times", n)
	}
	if st := h.coord.report("run-b", 0); st.GetState() != apiv1.TaskState_TASK_STATE_RUNNING {
		t.Fatalf("status %v", st)
	}
	// the outage is told once, then reminded of while it lasts (the
	// failed syncs took at least 20 sync intervals, 400ms), and its end
	// says how long it lasted
	log := logs.String()
	if n := strings.Count(log, `msg="coordinator unreachable; tasks keep running"`); n != 1 {
		t.Errorf("outage told %d times, want once:\n%s", n, log)
	}
	if !regexp.MustCompile(`msg="coordinator still unreachable; tasks keep running" worker-id=\S+ for=\d`).MatchString(log) {
		t.Errorf("no reminder of the outage with its length:\n%s", log)
	}
	if !regexp.MustCompile(`msg="coordinator reachable again" worker-id=\S+ after=\d`).MatchString(log) {
		t.Errorf("the outage's end not told with its length:\n%s", log)
	}
}

func TestShutdownStopsAndDeregisters(t *testing.T) {
	h := start(t, nil)
	h.coord.set(newTestTask("run-c", 0, 2, spec1), newTestTask("run-d", 0, 1, spec1))
	h.waitState("run-c", 0, apiv1.TaskState_TASK_STATE_RUNNING)
	h.waitState("run-d", 0, apiv1.TaskState_TASK_STATE_RUNNING)
	dirs := []string{h.runDir("run-c", 1, 0), h.runDir("run-d", 1, 0)}
	for _, d := range dirs {
		eventually(t, "pid file", func() bool { _, err := os.Stat(filepath.Join(d, "pid")); return err == nil })
	}
	h.stop()
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "terminated")); err != nil {
			t.Errorf("%s: no SIGTERM: %v", d, err)
		}
		if pid, alive := pidAlive(t, d); alive {
			t.Errorf("pid %d alive after Run returned", pid)
		}
	}
	if ws, _ := h.reg.List(context.Background()); len(ws) != 0 {
		t.Fatalf("still registered: %+v", ws)
	}
}

// lossyRegistry hands out registrations whose loss the test controls.
type lossyRegistry struct {
	membership.Registry
	mu   sync.Mutex
	regs []*lossyReg
}

type lossyReg struct {
	membership.Registration
	lost     chan struct{}
	loseOnce sync.Once
}

func (r *lossyReg) Lost() <-chan struct{} { return r.lost }

func (l *lossyRegistry) Register(ctx context.Context, info membership.WorkerInfo, ttl time.Duration) (membership.Registration, error) {
	reg, err := l.Registry.Register(ctx, info, ttl)
	if err != nil {
		return nil, err
	}
	r := &lossyReg{Registration: reg, lost: make(chan struct{})}
	go func() { // the real loss too
		select {
		case <-reg.Lost():
			r.loseOnce.Do(func() { close(r.lost) })
		case <-r.lost:
		}
	}()
	l.mu.Lock()
	l.regs = append(l.regs, r)
	l.mu.Unlock()
	return r, nil
}

func (l *lossyRegistry) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.regs)
}

func (l *lossyRegistry) lose(i int) {
	l.mu.Lock()
	r := l.regs[i]
	l.mu.Unlock()
	r.loseOnce.Do(func() { close(r.lost) })
}

func TestRegistrationLostRegistersAgain(t *testing.T) {
	var lossy *lossyRegistry
	h := start(t, func(o *Options) {
		lossy = &lossyRegistry{Registry: o.Registry}
		o.Registry = lossy
	})
	h.coord.set(newTestTask("run-e", 0, 1, spec1))
	h.waitState("run-e", 0, apiv1.TaskState_TASK_STATE_RUNNING)
	eventually(t, "registration", func() bool { return lossy.count() == 1 })
	lossy.lose(0)
	eventually(t, "registered again", func() bool {
		ws, _ := h.reg.List(context.Background())
		return lossy.count() == 2 && len(ws) == 1
	})
	if st := h.coord.report("run-e", 0); st.GetState() != apiv1.TaskState_TASK_STATE_RUNNING {
		t.Fatalf("status %v", st)
	}
	h.stop()
	if ws, _ := h.reg.List(context.Background()); len(ws) != 0 {
		t.Fatalf("still registered: %+v", ws)
	}
}

// An operator's etcdctl del of the worker's key (its lease alive): the
// worker registers again instead of renewing a lease that holds nothing,
// and its rank runs on.
func TestDeletedRegistrationRegistersAgain(t *testing.T) {
	h := start(t, nil)
	h.coord.set(newTestTask("run-d", 0, 1, spec1))
	h.waitState("run-d", 0, apiv1.TaskState_TASK_STATE_RUNNING)
	ws, _ := h.reg.List(context.Background())
	if len(ws) != 1 {
		t.Fatalf("registered: %+v", ws)
	}
	watch, err := h.reg.Watch(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	h.srv.Delete(ws[0].ID)
	// the join at watch start, the delete, the new join (updates aside)
	var seen []membership.EventType
	for !slices.Equal(seen, []membership.EventType{membership.Join, membership.Leave, membership.Join}) {
		select {
		case ev := <-watch:
			if ev.Type != membership.Update {
				seen = append(seen, ev.Type)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("membership events %v: the worker did not register again", seen)
		}
		if len(seen) > 3 {
			t.Fatalf("membership events %v, want join, leave, join", seen)
		}
	}
	if st := h.coord.report("run-d", 0); st.GetState() != apiv1.TaskState_TASK_STATE_RUNNING {
		t.Fatalf("status %v", st)
	}
	h.stop()
}

func TestNewChecksOptions(t *testing.T) {
	srv := membership.NewMemoryServer()
	defer srv.Stop()
	reg := membership.NewMemory(srv)
	cfg := testConfig(t, writeTrainer(t, fakeTrainer))
	if _, err := New(Options{Config: cfg, Registry: reg}); !errors.Is(err, ErrOptions) {
		t.Errorf("no client: %v", err)
	}
	bad := cfg
	bad.StoragePath = "relative"
	if _, err := New(Options{Config: bad, Client: &fakeCoordinator{}, Registry: reg}); !errors.Is(err, workerconfig.ErrInvalid) || !strings.Contains(err.Error(), "storage_path") {
		t.Errorf("bad config: %v", err)
	}
	bad = cfg
	bad.Trainer = filepath.Join(t.TempDir(), "missing")
	if _, err := New(Options{Config: bad, Client: &fakeCoordinator{}, Registry: reg}); !errors.Is(err, workerconfig.ErrInvalid) || !strings.Contains(err.Error(), "trainer") {
		t.Errorf("missing trainer: %v", err)
	}
	// a storage path that cannot be made or written: refused at the start,
	// not by every rank placed on the worker later
	for _, dir := range []string{"/proc/switchyard-store", writeTrainer(t, fakeTrainer)} {
		bad = cfg
		bad.StoragePath = dir
		if _, err := New(Options{Config: bad, Client: &fakeCoordinator{}, Registry: reg}); !errors.Is(err, ErrOptions) || !strings.Contains(err.Error(), "storage_path "+dir+" cannot be used") {
			t.Errorf("storage_path %s: %v", dir, err)
		}
	}
	a, err := New(Options{Config: cfg, Client: &fakeCoordinator{}, Registry: reg})
	if err != nil || a.Trainer() != cfg.Trainer || a.o.SyncInterval != DefaultSyncInterval || a.o.StopGrace != DefaultStopGrace {
		t.Fatalf("%v %+v", err, a)
	}
}

// TestControlMessageSyncsAtOnce: with a sync period far too long to
// matter, a cancel control message for a job the worker runs makes it sync
// at once, and the rank the coordinator no longer lists stops.
func TestControlMessageSyncsAtOnce(t *testing.T) {
	h := start(t, func(o *Options) {
		o.SyncInterval = time.Hour
		o.Client.(*fakeCoordinator).set(newTestTask("run-c", 0, 1, spec1))
	})
	dir := h.runDir("run-c", 1, 0)
	var pid int
	eventually(t, "rank started", func() bool {
		if _, err := os.Stat(filepath.Join(dir, "pid")); err != nil {
			return false
		}
		p, alive := pidAlive(t, dir)
		pid = p
		return p > 0 && alive
	})
	// The rank's start asks for a sync at once (the report that says it
	// runs): that sync must be over before the coordinator forgets the
	// task, or it would stop the rank without any control message. With
	// the hour-long sync period the next sync is one a message asks for.
	h.waitState("run-c", 0, apiv1.TaskState_TASK_STATE_RUNNING)
	h.coord.set()
	// a control message for another job changes nothing
	if err := h.bus.Publish(events.Message{Kind: events.KindControl, JobID: "other", Control: &events.Control{Action: "cancel"}}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if syscall.Kill(pid, 0) != nil {
		t.Fatal("a control message for another job stopped this rank")
	}
	if err := h.bus.Publish(events.Message{Kind: events.KindControl, JobID: "run-c", Control: &events.Control{Action: "cancel"}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "rank stopped", func() bool { return syscall.Kill(pid, 0) != nil })
}

// TestRankEventsReported: event lines of a rank become task events (in
// order, numbered, a malformed one kept as a plain "Event") and never log
// lines.
func TestRankEventsReported(t *testing.T) {
	h := start(t, nil)
	h.coord.set(newTestTask("run-e", 0, 1, spec1))
	var st *apiv1.TaskStatus
	eventually(t, "two events", func() bool {
		st = h.coord.report("run-e", 0)
		return len(st.GetEvents()) == 2
	})
	ev := st.GetEvents()
	if ev[0].Seq != 1 || ev[0].Type != "Resumed" || ev[0].Message != "resumed from the checkpoint of step 40" ||
		ev[1].Seq != 2 || ev[1].Type != "Event" || ev[1].Message != "not json" {
		t.Fatalf("events %v", ev)
	}
	msgs, err := h.bus.History(context.Background(), events.Filter{Kind: events.KindLog, JobID: "run-e"})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if strings.Contains(m.Log.Line, "switchyard-event") {
			t.Fatalf("an event line went to the logs: %q", m.Log.Line)
		}
	}
	if len(msgs) == 0 {
		t.Fatal("no log lines at all")
	}
}

// A job whose checkpoints go to S3 gets the s3:// location as its
// checkpoint directory (the rank reaches the server with the worker's
// environment); nothing is created on the local disk for it.
func TestS3CheckpointLocationPassedThrough(t *testing.T) {
	h := start(t, nil)
	spec := "name: demo\nsteps: 5\ncheckpoint: {storage: s3, path: s3://bucket/runs}\n"
	h.coord.set(newTestTask("ok-s3", 0, 1, spec))
	h.waitState("ok-s3", 0, apiv1.TaskState_TASK_STATE_SUCCEEDED)
	tc, err := train.Load(filepath.Join(h.runDir("ok-s3", 1, 0), "run.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if tc.Checkpoint.Dir != "s3://bucket/runs" || tc.Checkpoint.Job != "ok-s3" {
		t.Fatalf("run.yaml checkpoint %+v", tc.Checkpoint)
	}
	if _, err := os.Stat(filepath.Join(h.storage, "checkpoints")); !os.IsNotExist(err) {
		t.Fatalf("a local checkpoint directory was made for an S3 job: %v", err)
	}
}

func TestOwnToken(t *testing.T) {
	mine := security.WorkerToken("s3cret", "w1")
	for _, tc := range []struct{ given, want, err string }{
		{"", "", ""},
		{"s3cret", mine, ""},
		{mine, mine, ""},
		{security.WorkerToken("s3cret", "w2"), "", "worker w2's token; this worker is w1"},
	} {
		got, err := OwnToken(tc.given, "w1")
		if got != tc.want || (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("OwnToken(%q) = %q, %v; want %q, %q", tc.given, got, err, tc.want, tc.err)
		}
	}
}

// TestRanksGetTheirOwnToken: a rank (rank 0 commits checkpoints) calls
// the coordinator with a token of its own, made from its worker's (good
// for its job and attempt only), not the worker's nor the cluster token
// the worker was started with, and gets no way into etcd or NATS at hand:
// neither the worker's etcd user nor an etcd endpoint (it reads the
// checkpoint catalogue through the coordinator), nor its NATS credentials.
func TestRanksGetTheirOwnToken(t *testing.T) {
	t.Setenv(TokenEnv, "s3cret")
	t.Setenv(etcdconn.UsernameEnv, "worker")
	t.Setenv(etcdconn.PasswordEnv, "etcd-s3cret")
	t.Setenv(events.CredsEnv, "/etc/switchyard/worker.creds")
	h := start(t, func(o *Options) {
		o.Token = security.WorkerToken("s3cret", o.Config.ID)
	})
	h.coord.set(newTestTask("ok-token", 0, 1, spec1))
	h.waitState("ok-token", 0, apiv1.TaskState_TASK_STATE_SUCCEEDED)
	dir := h.runDir("ok-token", 1, 0)
	env := readLines(t, filepath.Join(dir, "token"))
	if want := security.RankToken(security.WorkerToken("s3cret", "w1"), security.RankScope{Job: "ok-token", Attempt: 1, Rank: 0}); len(env) != 1 || want == "" || env[0] != want {
		t.Fatalf("the rank's %s: %q", TokenEnv, env)
	}
	if got := readLines(t, filepath.Join(dir, "etcd-user")); !slices.Equal(got, []string{"unset", "unset", "unset"}) {
		t.Fatalf("the rank's %s, %s and %s: %q, want all unset", etcdconn.UsernameEnv, etcdconn.PasswordEnv, events.CredsEnv, got)
	}
	tc, err := train.Load(filepath.Join(dir, "run.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(tc.Checkpoint.Etcd) != 0 || !slices.Equal(tc.Checkpoint.CommitVia, h.cfg.Coordinators) {
		t.Fatalf("run.yaml checkpoint etcd %v, commit_via %v: want no etcd, the catalogue through the coordinators %v", tc.Checkpoint.Etcd, tc.Checkpoint.CommitVia, h.cfg.Coordinators)
	}
}

// BenchmarkGroupMemory is what the memory guard costs each interval.
func BenchmarkGroupMemory(b *testing.B) {
	for b.Loop() {
		if _, err := groupMemory(syscall.Getpgrp()); err != nil {
			b.Fatal(err)
		}
	}
}

// The job's training series belong to the latest attempt's rank 0 on this
// worker while it runs: an old attempt's rank 0 ending after it started
// does not drop them; once it has ended (refused, failed to start, or
// done first), the old one's end does.
func TestLaterRankZeroKeepsSeries(t *testing.T) {
	a := &Agent{tasks: map[taskKey]*task{}}
	add := func(job string, attempt, rank int32) *task {
		k := taskKey{jobID: job, attempt: attempt, rank: rank}
		a.tasks[k] = newTask(k, &apiv1.Task{JobId: job, Attempt: attempt, Rank: rank})
		return a.tasks[k]
	}
	old := taskKey{jobID: "j", attempt: 0, rank: 0}
	add("j", 0, 0)
	add("j", 0, 1)
	add("other", 3, 0)
	if a.laterRankZero(old) {
		t.Fatal("alone, attempt 0's rank 0 owns the series")
	}
	add("j", 1, 1)
	if a.laterRankZero(old) {
		t.Fatal("a later attempt's rank 1 does not own the series")
	}
	later := add("j", 1, 0)
	if !a.laterRankZero(old) {
		t.Fatal("attempt 1's rank 0 runs here: attempt 0's end must keep its series")
	}
	if a.laterRankZero(taskKey{jobID: "j", attempt: 1, rank: 0}) {
		t.Fatal("attempt 1's rank 0 is the latest")
	}
	later.setState(apiv1.TaskState_TASK_STATE_FAILED, "refused")
	if a.laterRankZero(old) {
		t.Fatal("attempt 1's rank 0 ended: attempt 0's end must drop the series")
	}
}

// leftoverTrainer leaves a process behind, by the job id in its run
// directory <out> (the child's pid in <out>/child):
//
//	bg-*      a child in its group holding its stdout, then exits 0
//	escape-*  a child out of its group (setsid) that ignores SIGTERM,
//	          then exits 1
//	hold-*    a child that ignores SIGTERM, and waits for its own
const leftoverTrainer = `#!/bin/sh
prev=
for a in "$@"; do
  [ "$prev" = --config ] && out=$(dirname "$a")
  prev=$a
done
case "$out" in
*/bg-*)
  sleep 300 &
  echo $! > "$out/child.tmp"; mv "$out/child.tmp" "$out/child"
  exit 0 ;;
*/escape-*)
  setsid sh -c 'trap "" TERM; echo $$ > "$1/child.tmp"; mv "$1/child.tmp" "$1/child"; exec sleep 300' sh "$out" </dev/null >/dev/null 2>&1 &
  while [ ! -e "$out/child" ]; do sleep 0.05; done
  exit 1 ;;
*)
  sh -c 'trap "" TERM; exec sleep 300' </dev/null >/dev/null 2>&1 &
  echo $! > "$out/child.tmp"; mv "$out/child.tmp" "$out/child"
  trap 'exit 143' TERM
  while :; do sleep 0.05; done ;;
esac
`

// TestLeftoverProcessesStopped: what a rank leaves running when it ends
// (exits 0 with a child holding its output, fails with a child out of
// its process group, is stopped with a child that ignores SIGTERM) is
// stopped, said in the history, and a rank that exited 0 succeeds.
func TestLeftoverProcessesStopped(t *testing.T) {
	h := start(t, func(o *Options) {
		o.Config.Trainer = writeTrainer(t, leftoverTrainer)
		o.StopGrace = 300 * time.Millisecond
	})
	childGone := func(job string) {
		t.Helper()
		raw, err := os.ReadFile(filepath.Join(h.runDir(job, 1, 0), "child"))
		if err != nil {
			t.Fatal(err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
		if err != nil || pid <= 0 {
			t.Fatalf("child file %q", raw)
		}
		eventually(t, job+"'s child gone", func() bool { return syscall.Kill(pid, 0) != nil || zombie(pid) })
	}
	leftEvent := func(st *apiv1.TaskStatus) bool {
		return slices.ContainsFunc(st.GetEvents(), func(e *apiv1.TaskEvent) bool {
			return e.Type == "LeftoverProcesses" && strings.Contains(e.Message, "left 1 process(es) running")
		})
	}
	h.coord.set(newTestTask("bg-a", 0, 1, spec1), newTestTask("escape-a", 0, 1, spec1), newTestTask("hold-a", 0, 1, spec1))
	if st := h.waitState("bg-a", 0, apiv1.TaskState_TASK_STATE_SUCCEEDED); !leftEvent(st) {
		t.Errorf("bg-a: %v, no LeftoverProcesses event", st)
	}
	childGone("bg-a")
	st := h.waitState("escape-a", 0, apiv1.TaskState_TASK_STATE_FAILED)
	if !strings.Contains(st.GetMessage(), "exit status 1") || !leftEvent(st) {
		t.Errorf("escape-a: %v", st)
	}
	childGone("escape-a")
	h.waitState("hold-a", 0, apiv1.TaskState_TASK_STATE_RUNNING)
	eventually(t, "hold-a's child", func() bool {
		_, err := os.Stat(filepath.Join(h.runDir("hold-a", 1, 0), "child"))
		return err == nil
	})
	h.coord.set(newTestTask("bg-a", 0, 1, spec1), newTestTask("escape-a", 0, 1, spec1)) // hold-a stopped
	eventually(t, "hold-a forgotten", func() bool { return h.coord.report("hold-a", 0) == nil })
	childGone("hold-a")
}

// zombie reports whether pid is a zombie (ended, not yet reaped by its
// new parent).
func zombie(pid int) bool {
	_, state, ok := groupAndState(strconv.Itoa(pid))
	return ok && state == 'Z'
}
