package metrics

import (
	"errors"
	"io"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestBoundGPUs: what a trainer's step line says of its GPUs is kept to
// one sample per rank of the world, short UUIDs, in rank order.
func TestBoundGPUs(t *testing.T) {
	long := "GPU-" + strings.Repeat("a", 200)
	in := []GPU{{Rank: 2, UUID: "GPU-c"}, {Rank: 0, UUID: long}, {Rank: 2, UUID: "GPU-dup"}, {Rank: -1}, {Rank: 3}, {Rank: 1, UUID: "GPU-b"}}
	got := BoundGPUs(in, 3)
	if len(got) != 3 || got[0].Rank != 0 || len(got[0].UUID) != maxUUID || got[1].UUID != "GPU-b" || got[2].UUID != "GPU-c" {
		t.Fatalf("bounded %+v", got)
	}
	many := make([]GPU, 3*MaxRanks)
	for i := range many {
		many[i] = GPU{Rank: i % (2 * MaxRanks)}
	}
	if got := BoundGPUs(many, 0); len(got) != MaxRanks || got[MaxRanks-1].Rank != MaxRanks-1 {
		t.Fatalf("without a world: %d samples, last rank %d", len(got), got[len(got)-1].Rank)
	}
}

func TestTrainingObserveAndForget(t *testing.T) {
	reg := prometheus.NewRegistry()
	tr := NewTraining(reg)
	step := Step{Step: 7, Loss: 2.5, LBL: []float64{1.01, 1.2}, TokensPerS: 9000, StepS: 0.2,
		ExpertLoad: [][]float64{{0.25, 0.25, 0.25, 0.25}, {0.7, 0.1, 0.1, 0.1}}, LBLSyncS: 0.01, GradSyncS: 0.05,
		CheckpointStallS: 0.5, CheckpointWriteMBps: 200, DeviceMemBytes: 3 << 30,
		GPUs: []GPU{{Rank: 0, UtilPct: 87, MemUsedBytes: 40 << 30, MemTotalBytes: 80 << 30}, {Rank: 1, UtilPct: 12, MemUsedBytes: 5 << 30}, {Rank: -1, UtilPct: 50}}}
	tr.Observe("job-a", step)
	if a, b := testutil.ToFloat64(tr.gpuUtil.WithLabelValues("job-a", "0")), testutil.ToFloat64(tr.gpuMem.WithLabelValues("job-a", "1")); a != 87 || b != 5<<30 {
		t.Errorf("rank 0 GPU %v%% busy, rank 1 %v bytes in use", a, b)
	}
	if n := testutil.CollectAndCount(tr.gpuUtil); n != 2 {
		t.Errorf("%d GPU utilisation series, want 2 (a negative rank is dropped)", n)
	}
	// a step whose samples name rank 0 alone (a world of 1 after an
	// elastic restart): rank 1's series leave; a step without samples
	// changes nothing
	tr.Observe("job-g", Step{Step: 1, GPUs: []GPU{{Rank: 0, UtilPct: 70}, {Rank: 1, UtilPct: 71}}})
	tr.Observe("job-g", Step{Step: 2, GPUs: []GPU{{Rank: 0, UtilPct: 80}}})
	tr.Observe("job-g", Step{Step: 3})
	if n, v := testutil.CollectAndCount(tr.gpuMem), testutil.ToFloat64(tr.gpuUtil.WithLabelValues("job-g", "0")); n != 3 || v != 80 {
		t.Errorf("after job-g's rank 1 left: %d GPU memory series (want job-a's 2 and job-g's rank 0), rank 0 at %v%%", n, v)
	}
	tr.Forget("job-g")
	if v := testutil.ToFloat64(tr.share.WithLabelValues("job-a", "1", "0")); v != 0.7 {
		t.Errorf("share of layer 1 expert 0 = %v", v)
	}
	// max/mean: 0.7 / 0.25
	if v := testutil.ToFloat64(tr.imbalance.WithLabelValues("job-a", "1")); math.Abs(v-2.8) > 1e-12 {
		t.Errorf("imbalance of layer 1 = %v, want 2.8", v)
	}
	if v := testutil.ToFloat64(tr.imbalance.WithLabelValues("job-a", "0")); v != 1 {
		t.Errorf("imbalance of balanced layer 0 = %v, want 1", v)
	}
	if v := testutil.ToFloat64(tr.deviceMem.WithLabelValues("job-a")); v != 3<<30 {
		t.Errorf("device memory %v bytes", v)
	}
	if v := testutil.ToFloat64(tr.write.WithLabelValues("job-a")); v != 200e6 {
		t.Errorf("write rate %v B/s", v)
	}

	// the stall is cumulative per run: deltas are added, and a new attempt
	// that starts again from 0 adds its own
	step.Step, step.CheckpointStallS = 8, 0.75
	tr.Observe("job-a", step)
	step.Step, step.CheckpointStallS = 1, 0.1 // a restarted attempt
	tr.Observe("job-a", step)
	if v := testutil.ToFloat64(tr.stall.WithLabelValues("job-a")); math.Abs(v-0.85) > 1e-12 {
		t.Errorf("stall total %v, want 0.85", v)
	}
	if v := testutil.ToFloat64(tr.collective.WithLabelValues("job-a", "grad_sync")); math.Abs(v-0.15) > 1e-12 {
		t.Errorf("grad sync total %v, want 0.15", v)
	}

	tr.Observe("job-b", Step{Step: 1, Loss: 3, ExpertLoad: [][]float64{{0.5, 0.5}}})
	if n := testutil.CollectAndCount(tr.share); n != 8+2 {
		t.Errorf("%d share series, want 10", n)
	}
	// a shape past the bounds (a command job prints its own) adds no series
	tr.Observe("job-c", Step{Step: 1, ExpertLoad: make([][]float64, maxLayers+1)})
	tr.Observe("job-c", Step{Step: 2, ExpertLoad: [][]float64{make([]float64, maxExperts+1)}})
	if n := testutil.CollectAndCount(tr.share); n != 8+2 {
		t.Errorf("%d share series after oversized shapes, want 10", n)
	}
	// within each bound but too many cells together (a 512 KiB line of
	// zeros): no series either; nor a series per layer of a too long lbl
	wide := make([][]float64, maxLayers)
	for l := range wide {
		wide[l] = make([]float64, maxExperts)
	}
	lbls := testutil.CollectAndCount(tr.lbl)
	tr.Observe("job-c", Step{Step: 3, ExpertLoad: wide, LBL: make([]float64, maxLayers+1)})
	if n := testutil.CollectAndCount(tr.share); n != 8+2 {
		t.Errorf("%d share series after %d x %d expert load, want 10", n, maxLayers, maxExperts)
	}
	if n := testutil.CollectAndCount(tr.lbl); n != lbls {
		t.Errorf("%d lbl series after %d layers' lbl, want %d", n, maxLayers+1, lbls)
	}
	tr.Forget("job-c")
	tr.Forget("job-a")
	if n := testutil.CollectAndCount(tr.share); n != 2 {
		t.Errorf("%d share series after forgetting job-a, want job-b's 2", n)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "job_id" && l.GetValue() == "job-a" {
					t.Errorf("%s still has a series of job-a", mf.GetName())
				}
			}
		}
	}
	if v := testutil.ToFloat64(tr.loss.WithLabelValues("job-b")); v != 3 {
		t.Errorf("job-b's loss %v after forgetting job-a", v)
	}
	lint(t, reg)
}

func TestCoordinatorState(t *testing.T) {
	reg := prometheus.NewRegistry()
	st := CoordinatorState{Leader: true, Term: 3, LastIndex: 40, AppliedIndex: 39,
		JobsByState: map[string]int{"running": 2, "pending": 1}, Queued: 1, Workers: 4, HasBus: true, BusConnected: false, BusDropped: 5}
	c := NewCoordinator(reg, []string{"pending", "running", "succeeded"}, func() CoordinatorState { return st })
	c.ObserveApply("place_job", 3*time.Millisecond)
	c.Placed(false, 2*time.Second)
	c.Placed(true, 0) // a restart: no scheduling latency observed
	c.Restarted("WorkerLost")
	c.CheckpointCommitted()
	c.CheckpointRefused("attempt_over")
	c.EtcdReached(false)
	want := `
# HELP switchyard_jobs Jobs by state, as this replica knows them.
# TYPE switchyard_jobs gauge
switchyard_jobs{state="pending"} 1
switchyard_jobs{state="running"} 2
switchyard_jobs{state="succeeded"} 0
# HELP switchyard_nats_up 1 when the event bus is connected to NATS, else 0.
# TYPE switchyard_nats_up gauge
switchyard_nats_up 0
# HELP switchyard_raft_leader 1 when this replica is the raft leader, else 0.
# TYPE switchyard_raft_leader gauge
switchyard_raft_leader 1
# HELP switchyard_raft_term Current raft term as this replica sees it.
# TYPE switchyard_raft_term gauge
switchyard_raft_term 3
# HELP switchyard_placements_total Attempts placed on workers, by kind (full, or elastic: shrunk to fewer workers).
# TYPE switchyard_placements_total counter
switchyard_placements_total{kind="elastic"} 1
switchyard_placements_total{kind="full"} 1
# HELP switchyard_etcd_up 1 when the last membership read from etcd succeeded, else 0.
# TYPE switchyard_etcd_up gauge
switchyard_etcd_up 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "switchyard_jobs", "switchyard_nats_up", "switchyard_raft_leader",
		"switchyard_raft_term", "switchyard_placements_total", "switchyard_etcd_up"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(c.schedule); n != 1 {
		t.Errorf("%d scheduling histograms", n)
	}
	if v := testutil.ToFloat64(c.restarts.WithLabelValues("WorkerLost")); v != 1 {
		t.Errorf("restarts %v", v)
	}
	lint(t, reg)
}

func TestWorker(t *testing.T) {
	reg := prometheus.NewRegistry()
	ranks := 3
	w := NewWorker(reg, func() int { return ranks }, func() uint64 { return 11 })
	w.Synced(4*time.Millisecond, nil)
	w.Synced(0, errors.New("unreachable"))
	w.RankExited(0)
	w.RankExited(-1)
	w.RankExited(137)
	w.RankOutOfMemory()
	w.LeaseLost()
	w.RegisterFailed()
	want := `
# HELP switchyard_worker_rank_exits_total Rank processes that ended, by exit code ("signal" when killed by a signal).
# TYPE switchyard_worker_rank_exits_total counter
switchyard_worker_rank_exits_total{code="0"} 1
switchyard_worker_rank_exits_total{code="137"} 1
switchyard_worker_rank_exits_total{code="signal"} 1
# HELP switchyard_worker_ranks_running Rank processes running on this worker.
# TYPE switchyard_worker_ranks_running gauge
switchyard_worker_ranks_running 3
# HELP switchyard_worker_lease_renewals_total Keep-alive renewals of the worker's etcd lease.
# TYPE switchyard_worker_lease_renewals_total counter
switchyard_worker_lease_renewals_total 11
# HELP switchyard_worker_sync_failures_total SyncWorker calls that failed (coordinator unreachable or refusing).
# TYPE switchyard_worker_sync_failures_total counter
switchyard_worker_sync_failures_total 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "switchyard_worker_rank_exits_total", "switchyard_worker_ranks_running",
		"switchyard_worker_lease_renewals_total", "switchyard_worker_sync_failures_total"); err != nil {
		t.Error(err)
	}
	lint(t, reg)
}

// The record methods are safe on nil: a process without metrics passes nil.
func TestNilRecordNothing(t *testing.T) {
	var (
		c  *Coordinator
		w  *Worker
		tr *Training
	)
	c.ObserveApply("x", time.Second)
	c.Placed(true, time.Second)
	c.Restarted("r")
	c.CheckpointCommitted()
	c.CheckpointRefused("r")
	c.EtcdReached(true)
	w.Synced(time.Second, nil)
	w.RankExited(1)
	w.RankOutOfMemory()
	w.LeaseLost()
	w.RegisterFailed()
	tr.Observe("j", Step{ExpertLoad: [][]float64{{1}}})
	tr.Forget("j")
}

func TestServe(t *testing.T) {
	reg := NewRegistry()
	NewTraining(reg).Observe("job-z", Step{Step: 2, Loss: 1.5})
	s, err := Serve("127.0.0.1:0", reg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + s.Addr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`switchyard_train_loss{job_id="job-z"} 1.5`, "go_goroutines", "process_resident_memory_bytes"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if resp, err := http.Post("http://"+s.Addr()+"/metrics", "text/plain", nil); err == nil {
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("POST /metrics: %s", resp.Status)
		}
		resp.Body.Close()
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get("http://" + s.Addr() + "/metrics"); err == nil {
		t.Error("still serving after Close")
	}
	if _, err := Serve("127.0.0.1:bad", reg, nil, nil); err == nil || !strings.Contains(err.Error(), "metrics: listen on 127.0.0.1:bad") {
		t.Errorf("bad address: %v", err)
	}
}

// lint runs the Prometheus naming linter (what promtool check metrics
// runs) over everything reg gathers.
func lint(t *testing.T, reg *prometheus.Registry) {
	t.Helper()
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// benchStep is a step of the science preset: 4 MoE layers of 32 experts.
func benchStep() Step {
	s := Step{Step: 100, Loss: 2.1, TokensPerS: 8000, StepS: 0.3, LBLSyncS: 0.001, GradSyncS: 0.01, CheckpointStallS: 1}
	for range 4 {
		row := make([]float64, 32)
		for e := range row {
			row[e] = 1.0 / 32
		}
		s.ExpertLoad = append(s.ExpertLoad, row)
		s.LBL = append(s.LBL, 1.01)
	}
	return s
}

// BenchmarkTrainingObserve is what the worker spends per step of a job
// whose rank 0 it runs (scripts/bench-metrics-cost.sh sets it against
// the step time).
func BenchmarkTrainingObserve(b *testing.B) {
	tr := NewTraining(prometheus.NewRegistry())
	s := benchStep()
	b.ReportAllocs()
	for b.Loop() {
		tr.Observe("science-0123abcd", s)
	}
}

// BenchmarkWorkerScrape is one scrape of a worker running such a job.
func BenchmarkWorkerScrape(b *testing.B) {
	reg := NewRegistry()
	NewWorker(reg, func() int { return 1 }, func() uint64 { return 1 })
	NewTraining(reg).Observe("science-0123abcd", benchStep())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := reg.Gather(); err != nil {
			b.Fatal(err)
		}
	}
}
