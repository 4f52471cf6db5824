package metrics

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Worker holds a worker's metrics. A nil *Worker records nothing.
type Worker struct {
	leaseLost    prometheus.Counter
	registerFail prometheus.Counter
	sync         prometheus.Histogram
	syncFail     prometheus.Counter
	exits        *prometheus.CounterVec
	oom          prometheus.Counter
}

// NewWorker registers a worker's metrics in reg. At scrape time, ranks
// gives the number of ranks running and renewals (nil: not known) the
// keep-alive renewals of the worker's etcd lease so far.
func NewWorker(reg prometheus.Registerer, ranks func() int, renewals func() uint64) *Worker {
	w := &Worker{
		leaseLost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_worker_lease_lost_total",
			Help: "Times the worker's etcd lease was lost (expired or revoked) and it registered again.",
		}),
		registerFail: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_worker_registration_failures_total",
			Help: "Failed attempts to register the worker in etcd.",
		}),
		sync: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "switchyard_worker_sync_duration_seconds",
			Help:    "Round-trip time of the worker's SyncWorker calls to the coordinator that succeeded.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14), // 0.5ms .. 4s
		}),
		syncFail: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_worker_sync_failures_total",
			Help: "SyncWorker calls that failed (coordinator unreachable or refusing).",
		}),
		exits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_worker_rank_exits_total",
			Help: "Rank processes that ended, by exit code (\"signal\" when killed by a signal).",
		}, []string{"code"}),
		oom: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_worker_rank_memory_kills_total",
			Help: "Ranks the worker killed for using more memory than their job's resources.memory_mib.",
		}),
	}
	running := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "switchyard_worker_ranks_running",
		Help: "Rank processes running on this worker.",
	}, func() float64 { return float64(ranks()) })
	if renewals != nil {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "switchyard_worker_lease_renewals_total",
			Help: "Keep-alive renewals of the worker's etcd lease.",
		}, func() float64 { return float64(renewals()) }))
	}
	reg.MustRegister(w.leaseLost, w.registerFail, w.sync, w.syncFail, w.exits, w.oom, running)
	w.exits.WithLabelValues("0")
	return w
}

// LeaseLost records a lost lease.
func (w *Worker) LeaseLost() {
	if w != nil {
		w.leaseLost.Inc()
	}
}

// RegisterFailed records a failed registration attempt.
func (w *Worker) RegisterFailed() {
	if w != nil {
		w.registerFail.Inc()
	}
}

// Synced records one SyncWorker call: its duration, or its failure.
func (w *Worker) Synced(d time.Duration, err error) {
	if w == nil {
		return
	}
	if err != nil {
		w.syncFail.Inc()
		return
	}
	w.sync.Observe(d.Seconds())
}

// RankExited records a rank's end: its exit code, or code < 0 when a
// signal ended it.
func (w *Worker) RankExited(code int) {
	if w == nil {
		return
	}
	label := "signal"
	if code >= 0 {
		label = strconv.Itoa(code)
	}
	w.exits.WithLabelValues(label).Inc()
}

// RankOutOfMemory records a rank killed for its memory.
func (w *Worker) RankOutOfMemory() {
	if w != nil {
		w.oom.Inc()
	}
}
