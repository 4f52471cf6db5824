package scheduler

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

var (
	// ErrInvalidJob: the job itself is malformed (degrees, resources, id).
	ErrInvalidJob = errors.New("scheduler: invalid job")
	// ErrTooLarge: the job could never fit this cluster, even with every
	// worker idle and healthy.
	ErrTooLarge = errors.New("scheduler: job can never fit the cluster")
	// ErrNoFit: the job does not fit the currently free workers.
	ErrNoFit = errors.New("scheduler: job does not fit the free workers")
	// ErrBlocked: the job would fit, but the workers it needs are claimed by
	// a waiting job of higher queue order.
	ErrBlocked = errors.New("scheduler: job waits for a higher-priority job")
	// ErrStale: Recheck found that a plan no longer matches the cluster.
	ErrStale = errors.New("scheduler: plan is stale")
)

// maxDegree bounds each parallel degree and the world size, so products
// never overflow and a malformed job is refused rather than attempted.
const maxDegree = 1 << 16

// Resources is an amount of CPU cores, memory and GPUs.
type Resources struct {
	CPUCores  int   `json:"cpu_cores"`
	MemoryMiB int64 `json:"memory_mib"`
	GPUs      int   `json:"gpus"`
}

// FitsIn reports whether r is no more than avail in every dimension.
func (r Resources) FitsIn(avail Resources) bool {
	return r.CPUCores <= avail.CPUCores && r.MemoryMiB <= avail.MemoryMiB && r.GPUs <= avail.GPUs
}

// String is e.g. "2 cores, 4096 MiB, 1 GPU"; zero amounts are left out and
// all-zero is "no resources".
func (r Resources) String() string {
	var parts []string
	if r.CPUCores != 0 {
		parts = append(parts, plural(r.CPUCores, "core"))
	}
	if r.MemoryMiB != 0 {
		parts = append(parts, fmt.Sprintf("%d MiB", r.MemoryMiB))
	}
	if r.GPUs != 0 {
		parts = append(parts, plural(r.GPUs, "GPU"))
	}
	if len(parts) == 0 {
		return "no resources"
	}
	return strings.Join(parts, ", ")
}

func plural(n int, unit string) string {
	if n == 1 {
		return "1 " + unit
	}
	return fmt.Sprintf("%d %ss", n, unit)
}

// Worker is one worker process as the coordinator last saw it.
type Worker struct {
	ID      string            `json:"id"`     // unique; workers with an empty or repeated id are ignored
	Host    string            `json:"host"`   // machine; "" : the worker is its own host, named by its id
	Labels  map[string]string `json:"labels"` // host labels (rack, zone, gpu model, ...)
	Total   Resources         `json:"total"`
	Free    Resources         `json:"free"`
	Healthy bool              `json:"healthy"`
	Job     string            `json:"job"` // job running on it; "" : idle
	// Roots are the directories jobs may read or write on the worker (its
	// storage_path and allowed_paths). Empty: the worker does not say, and
	// any job's paths may go there (the worker's own check, links
	// resolved, is the authority either way).
	Roots []string `json:"roots,omitempty"`
	// GPUMemoryMiB is the memory of its smallest GPU. 0: not known (GPUs
	// declared by count), and any job's GPU memory need is taken as met
	// (the rank's own check at start is the authority either way).
	GPUMemoryMiB int64 `json:"gpu_memory_mib,omitempty"`
}

// Snapshot is the cluster state a scheduling pass works on.
type Snapshot struct {
	Workers []Worker `json:"workers"`
	// TopologyKeys are the label keys that group hosts, narrowest first.
	// nil means DefaultTopologyKeys(); a non-nil empty slice means none.
	TopologyKeys []string `json:"topology_keys"`
	// Unit is what a Worker is called in reasons: "worker" (also when
	// empty), or "slot" where workers of several slots are one Worker a
	// slot ("needs 8 slots with 1 GPU, 4 free").
	Unit string `json:"unit,omitempty"`
}

// DefaultTopologyKeys returns the topology labels used when a snapshot
// names none: "rack", then "zone".
func DefaultTopologyKeys() []string { return []string{"rack", "zone"} }

// Layout is a job's parallel degrees: world = TP*DP, EP divides DP.
type Layout struct {
	TP int `json:"tp"`
	DP int `json:"dp"`
	EP int `json:"ep"`
}

// World is the number of ranks, TP*DP.
func (l Layout) World() int { return l.TP * l.DP }

// Job is one job to place.
type Job struct {
	ID       string            `json:"id"`
	Priority int               `json:"priority"` // higher first
	Seq      uint64            `json:"seq"`      // submit order (lower first); not a time
	Layout   Layout            `json:"layout"`
	PerRank  Resources         `json:"per_rank"`
	Labels   map[string]string `json:"labels"` // every worker must carry each key with this value
	// Paths are the absolute paths its ranks read or write outside the
	// workers' own storage (a corpus, a checkpoint directory): each must
	// lie under one of every worker's Roots.
	Paths []string `json:"paths,omitempty"`
	// GPUMemoryMiB is the memory each of a rank's GPUs must have (0: any);
	// it applies when PerRank asks for GPUs.
	GPUMemoryMiB int64 `json:"gpu_memory_mib,omitempty"`
	// MinDP > 0 makes the job elastic: when its layout does not fit (no
	// room, or more ranks than the cluster has), it is placed with the
	// largest data-parallel degree in [MinDP, DP) that EP divides and that
	// fits; the plan's Job carries that layout. 0: all of DP or nothing.
	MinDP int `json:"min_dp,omitempty"`
}

// Validate checks the job's id, degrees and resources; errors wrap
// ErrInvalidJob.
func (j Job) Validate() error {
	if why := j.problem(); why != "" {
		return fmt.Errorf("%w: job %q: %s", ErrInvalidJob, j.ID, why)
	}
	return nil
}

// problem is what is wrong with the job, or "".
func (j Job) problem() string {
	l := j.Layout
	switch {
	case j.ID == "":
		return "empty id"
	case l.TP < 1 || l.DP < 1 || l.EP < 1:
		return fmt.Sprintf("degrees must be >= 1 (tp %d, dp %d, ep %d)", l.TP, l.DP, l.EP)
	case l.TP > maxDegree || l.DP > maxDegree || l.TP*l.DP > maxDegree:
		return fmt.Sprintf("world tp*dp must be <= %d (tp %d, dp %d)", maxDegree, l.TP, l.DP)
	case l.DP%l.EP != 0:
		return fmt.Sprintf("ep %d must divide dp %d", l.EP, l.DP)
	case j.MinDP < 0 || j.MinDP > l.DP:
		return fmt.Sprintf("min_dp %d must be in [0, dp %d]", j.MinDP, l.DP)
	case j.PerRank.CPUCores < 0 || j.PerRank.MemoryMiB < 0 || j.PerRank.GPUs < 0:
		return fmt.Sprintf("per-rank resources must be >= 0 (%+v)", j.PerRank)
	case j.GPUMemoryMiB < 0:
		return fmt.Sprintf("GPU memory must be >= 0 (%d MiB)", j.GPUMemoryMiB)
	}
	for _, p := range j.Paths {
		if !filepath.IsAbs(p) {
			return fmt.Sprintf("path %q must be absolute", p)
		}
	}
	return ""
}

// Plan is a placement of every rank of a job. It carries the job so that
// Recheck can verify it alone.
type Plan struct {
	Job     Job      `json:"job"`
	Workers []string `json:"workers"` // rank -> worker id
	Hosts   []string `json:"hosts"`   // rank -> host (for pkg/parallel's WithHosts)
}

// Pending is a job Schedule did not place.
type Pending struct {
	JobID  string `json:"job_id"`
	Reason string `json:"reason"` // one sentence for `job status`
	// Err wraps ErrInvalidJob, ErrTooLarge, ErrNoFit or ErrBlocked.
	Err error `json:"-"`
}

// labelsString is "k=v,k2=v2" in key order.
func labelsString(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for i, k := range keys {
		keys[i] = k + "=" + m[k]
	}
	return strings.Join(keys, ",")
}

// takes says whether w could ever run a rank of j, load aside: its labels
// and the roots its paths need.
func (w *Worker) takes(j Job) bool {
	return labelsMatch(w.Labels, j.Labels) && pathsAllowed(w.Roots, j.Paths) && w.gpuMemoryFor(j)
}

// gpuMemoryFor says whether the worker's GPUs are large enough for a rank
// of j (a worker that does not say: yes).
func (w *Worker) gpuMemoryFor(j Job) bool {
	return j.PerRank.GPUs == 0 || w.GPUMemoryMiB == 0 || w.GPUMemoryMiB >= j.GPUMemoryMiB
}

// pathsAllowed says whether every path lies in (or is) one of roots, by
// their names; no roots: the worker does not say, so yes.
func pathsAllowed(roots, paths []string) bool {
	if len(roots) == 0 {
		return true
	}
	for _, p := range paths {
		p = filepath.Clean(p)
		if !slices.ContainsFunc(roots, func(r string) bool {
			r = filepath.Clean(r)
			return p == r || strings.HasPrefix(p, strings.TrimSuffix(r, "/")+"/")
		}) {
			return false
		}
	}
	return true
}

func labelsMatch(have, want map[string]string) bool {
	for k, v := range want {
		if got, ok := have[k]; !ok || got != v {
			return false
		}
	}
	return true
}
