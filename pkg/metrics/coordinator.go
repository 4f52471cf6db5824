package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// CoordinatorState is what a coordinator replica reads from its own state
// at scrape time.
type CoordinatorState struct {
	Leader       bool
	Term         uint64
	LastIndex    uint64 // last raft log index
	AppliedIndex uint64 // last index applied to the job state
	// JobsByState counts the jobs this replica knows, by state name; every
	// state in JobStates is exported, those missing here as 0.
	JobsByState map[string]int
	// Queued: jobs waiting for a placement (pending, not in backoff).
	Queued  int
	Workers int // registered workers this replica sees
	// BusConnected: the event bus reaches NATS; BusDropped: messages the
	// bus dropped since it started. HasBus false: no bus configured.
	HasBus       bool
	BusConnected bool
	BusDropped   uint64
}

// Coordinator holds a replica's metrics. A nil *Coordinator records
// nothing.
type Coordinator struct {
	apply       *prometheus.HistogramVec
	schedule    prometheus.Histogram
	placements  *prometheus.CounterVec
	restarts    *prometheus.CounterVec
	commits     prometheus.Counter
	refusals    *prometheus.CounterVec
	etcdUp      prometheus.Gauge
	etcdFailure prometheus.Counter
}

// NewCoordinator registers a replica's metrics in reg. state is called at
// each scrape (it must be cheap and safe to call from any goroutine);
// jobStates lists every job state name, so that each is exported even
// when no job is in it.
func NewCoordinator(reg prometheus.Registerer, jobStates []string, state func() CoordinatorState) *Coordinator {
	c := &Coordinator{
		apply: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "switchyard_raft_apply_duration_seconds",
			Help:    "Time from proposing a command to raft until this replica applied it, by command.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14), // 0.5ms .. 4s
		}, []string{"op"}),
		schedule: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "switchyard_scheduling_latency_seconds",
			Help:    "Time from a job's submission to its first placement.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 14), // 10ms .. 82s
		}),
		placements: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_placements_total",
			Help: "Attempts placed on workers, by kind (full, or elastic: shrunk to fewer workers).",
		}, []string{"kind"}),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_job_restarts_total",
			Help: "Attempts that failed and were requeued, by reason.",
		}, []string{"reason"}),
		commits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_checkpoint_commits_total",
			Help: "Checkpoint manifests committed in etcd through this replica.",
		}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_checkpoint_commit_refusals_total",
			Help: "Checkpoint commits refused, by reason.",
		}, []string{"reason"}),
		etcdUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "switchyard_etcd_up",
			Help: "1 when the last membership read from etcd succeeded, else 0.",
		}),
		etcdFailure: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_etcd_failures_total",
			Help: "Membership reads from etcd that failed.",
		}),
	}
	reg.MustRegister(c.apply, c.schedule, c.placements, c.restarts, c.commits, c.refusals, c.etcdUp, c.etcdFailure,
		&stateCollector{states: jobStates, read: state})
	for _, k := range []string{"full", "elastic"} {
		c.placements.WithLabelValues(k)
	}
	return c
}

// ObserveApply records one raft command's apply latency.
func (c *Coordinator) ObserveApply(op string, d time.Duration) {
	if c == nil {
		return
	}
	c.apply.WithLabelValues(op).Observe(d.Seconds())
}

// Placed records a placement; firstWait is the time since submission for
// a job's first placement (0: a restart's placement, not observed).
func (c *Coordinator) Placed(elastic bool, firstWait time.Duration) {
	if c == nil {
		return
	}
	kind := "full"
	if elastic {
		kind = "elastic"
	}
	c.placements.WithLabelValues(kind).Inc()
	if firstWait > 0 {
		c.schedule.Observe(firstWait.Seconds())
	}
}

// Restarted records a requeued attempt.
func (c *Coordinator) Restarted(reason string) {
	if c == nil {
		return
	}
	c.restarts.WithLabelValues(reason).Inc()
}

// CheckpointCommitted records a committed manifest.
func (c *Coordinator) CheckpointCommitted() {
	if c == nil {
		return
	}
	c.commits.Inc()
}

// CheckpointRefused records a refused commit.
func (c *Coordinator) CheckpointRefused(reason string) {
	if c == nil {
		return
	}
	c.refusals.WithLabelValues(reason).Inc()
}

// EtcdReached records the outcome of a read from etcd.
func (c *Coordinator) EtcdReached(ok bool) {
	if c == nil {
		return
	}
	if ok {
		c.etcdUp.Set(1)
		return
	}
	c.etcdUp.Set(0)
	c.etcdFailure.Inc()
}

// stateCollector exports what CoordinatorState reads, at scrape time.
type stateCollector struct {
	states []string
	read   func() CoordinatorState
}

var (
	descLeader    = prometheus.NewDesc("switchyard_raft_leader", "1 when this replica is the raft leader, else 0.", nil, nil)
	descTerm      = prometheus.NewDesc("switchyard_raft_term", "Current raft term as this replica sees it.", nil, nil)
	descLastIndex = prometheus.NewDesc("switchyard_raft_last_log_index", "Last index in this replica's raft log.", nil, nil)
	descApplied   = prometheus.NewDesc("switchyard_raft_applied_index", "Last raft index applied to this replica's job state.", nil, nil)
	descJobs      = prometheus.NewDesc("switchyard_jobs", "Jobs by state, as this replica knows them.", []string{"state"}, nil)
	descQueued    = prometheus.NewDesc("switchyard_jobs_queued", "Jobs waiting for a placement.", nil, nil)
	descWorkers   = prometheus.NewDesc("switchyard_workers", "Registered workers this replica sees.", nil, nil)
	descNATSUp    = prometheus.NewDesc("switchyard_nats_up", "1 when the event bus is connected to NATS, else 0.", nil, nil)
	descDropped   = prometheus.NewDesc("switchyard_bus_dropped_messages_total", "Events, logs and metrics the bus dropped because NATS was unreachable and its buffer full.", nil, nil)
)

func (s *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descLeader, descTerm, descLastIndex, descApplied, descJobs, descQueued, descWorkers, descNATSUp, descDropped} {
		ch <- d
	}
}

func (s *stateCollector) Collect(ch chan<- prometheus.Metric) {
	st := s.read()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(descLeader, boolf(st.Leader))
	gauge(descTerm, float64(st.Term))
	gauge(descLastIndex, float64(st.LastIndex))
	gauge(descApplied, float64(st.AppliedIndex))
	for _, name := range s.states {
		gauge(descJobs, float64(st.JobsByState[name]), name)
	}
	gauge(descQueued, float64(st.Queued))
	gauge(descWorkers, float64(st.Workers))
	if st.HasBus {
		gauge(descNATSUp, boolf(st.BusConnected))
		ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(st.BusDropped))
	}
}

func boolf(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
