package dashboard

import (
	"math"
	"sort"

	"github.com/switchyard-ml/switchyard/pkg/events"
	"github.com/switchyard-ml/switchyard/pkg/jobspec"
	"github.com/switchyard-ml/switchyard/pkg/jobstate"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// The JSON the page reads. Times are Unix milliseconds (0: none), what
// JavaScript's Date takes.

type clusterStatus struct {
	AnsweredBy string        `json:"answered_by"`
	Leader     string        `json:"leader"`
	Replicas   []replicaView `json:"replicas"`
	Workers    []workerView  `json:"workers"`
}

type replicaView struct {
	ID      string `json:"id"`
	Raft    string `json:"raft_address"`
	API     string `json:"api_address"`
	Leader  bool   `json:"leader"`
	Voter   bool   `json:"voter"`
	Alive   bool   `json:"alive"`
	State   string `json:"state"`
	Current bool   `json:"answered"` // the replica serving this dashboard
}

type workerView struct {
	ID        string   `json:"id"`
	Host      string   `json:"host"`
	Address   string   `json:"address"`
	Healthy   bool     `json:"healthy"`
	Health    string   `json:"health"` // healthy, silent 4.2s, draining, unknown
	CPUCores  int32    `json:"cpu_cores"`
	MemoryMiB int64    `json:"memory_mib"`
	GPUs      int32    `json:"gpus"`
	GPUNames  []string `json:"gpu_names"`
	Slots     int32    `json:"slots"`
	BusySlots int32    `json:"busy_slots"`
	JobID     string   `json:"job_id"`
	Version   string   `json:"version"`
}

func clusterView(cs *apiv1.ClusterStatusResponse) clusterStatus {
	out := clusterStatus{AnsweredBy: cs.GetAnsweredBy(), Leader: cs.GetLeaderId(), Replicas: []replicaView{}, Workers: []workerView{}}
	for _, r := range cs.GetReplicas() {
		out.Replicas = append(out.Replicas, replicaView{ID: r.GetId(), Raft: r.GetRaftAddress(), API: r.GetApiAddress(),
			Leader: r.GetLeader(), Voter: r.GetVoter(), Alive: r.GetAlive(), State: r.GetState(), Current: r.GetId() == cs.GetAnsweredBy()})
	}
	for _, w := range cs.GetWorkers() {
		v := workerView{ID: w.GetId(), Host: w.GetHost(), Address: w.GetAddress(), Healthy: w.GetHealthy(), Health: jobstate.WorkerHealth(w),
			CPUCores: w.GetResources().GetCpuCores(), MemoryMiB: w.GetResources().GetMemoryMib(), GPUs: w.GetResources().GetGpus(),
			GPUNames: []string{}, Slots: w.GetSlots(), BusySlots: w.GetBusySlots(), JobID: w.GetJobId(), Version: w.GetVersion()}
		for _, g := range w.GetGpuDevices() {
			v.GPUNames = append(v.GPUNames, g.GetName())
		}
		out.Workers = append(out.Workers, v)
	}
	return out
}

type jobList struct {
	Total int       `json:"total"`
	Jobs  []jobView `json:"jobs"` // newest first
}

// jobView is a job as the list shows it.
type jobView struct {
	ID         string  `json:"id"`
	Name       string  `json:"name"`
	State      string  `json:"state"`
	Final      bool    `json:"final"`
	Reason     string  `json:"reason"`
	Message    string  `json:"message"`
	WorldSize  int32   `json:"world_size"`
	Restarts   int32   `json:"restarts"`
	Step       int64   `json:"step"`
	TotalSteps int64   `json:"total_steps"`
	Progress   float64 `json:"progress"` // 0..1; 0 when the total is unknown
	Loss       float64 `json:"loss"`
	TokensPerS float64 `json:"tokens_per_second"`
	// ETASeconds is the remaining steps x tokens per step / tokens/s
	// (as `job status` computes it); -1 when unknown.
	ETASeconds float64 `json:"eta_seconds"`
	Submitted  int64   `json:"submitted"`
	Updated    int64   `json:"updated"`
	Finished   int64   `json:"finished"`
}

// jobDetail is a job as its page shows it.
type jobDetail struct {
	jobView
	Priority      int32        `json:"priority"`
	Placement     []placement  `json:"placement"`
	Events        []eventView  `json:"events"`
	EventsDropped uint64       `json:"events_dropped"`
	Conditions    []condition  `json:"conditions"`
	Spec          string       `json:"spec"`
	LBLMode       string       `json:"lbl_mode"`
	Preset        string       `json:"preset"`
	Runtime       string       `json:"runtime"`
	Parallel      parallelView `json:"parallel"`
}

type parallelView struct {
	TP int `json:"tp"`
	DP int `json:"dp"`
	EP int `json:"ep"`
}

type placement struct {
	Rank   int32  `json:"rank"`
	Worker string `json:"worker"`
	Slot   int32  `json:"slot"`
}

type eventView struct {
	Seq     uint64 `json:"seq"`
	Time    int64  `json:"time"`
	Type    string `json:"type"`
	Message string `json:"message"`
	Worker  string `json:"worker"`
}

type condition struct {
	Type    string `json:"type"`
	Status  bool   `json:"status"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

type checkpointView struct {
	Step      int64   `json:"step"`
	Status    string  `json:"status"`
	Committed int64   `json:"committed"`
	Bytes     int64   `json:"bytes"`
	TP        int32   `json:"tp"`
	DP        int32   `json:"dp"`
	EP        int32   `json:"ep"`
	ValLoss   float64 `json:"val_loss"`
	Shards    int     `json:"shards"`
}

// point is rank 0's metrics of one step.
type point struct {
	Step       int64       `json:"step"`
	Time       int64       `json:"time"`
	Loss       float64     `json:"loss"`
	LBL        float64     `json:"lbl"`
	TokensPerS float64     `json:"tokens_per_second"`
	ExpertLoad [][]float64 `json:"expert_load,omitempty"` // [layer][expert]
}

func unixMillis(ns int64) int64 {
	if ns <= 0 {
		return 0
	}
	return ns / 1e6
}

// finite replaces NaN and infinities, which JSON cannot hold, by 0.
func finite(x float64) float64 {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return 0
	}
	return x
}

func summary(j *pb.Job) jobView {
	p := j.GetProgress()
	v := jobView{
		ID: j.GetId(), Name: j.GetName(), State: jobstate.Name(j.GetState()), Final: jobstate.Final(j.GetState()),
		Reason: j.GetReason(), Message: j.GetMessage(), WorldSize: j.GetWorldSize(), Restarts: j.GetRestarts(),
		Step: p.GetStep(), TotalSteps: p.GetTotalSteps(), Loss: finite(p.GetLoss()), TokensPerS: finite(p.GetTokensPerSecond()),
		ETASeconds: -1,
		Submitted:  unixMillis(j.GetSubmittedUnixNano()), Updated: unixMillis(j.GetUpdatedUnixNano()), Finished: unixMillis(j.GetFinishedUnixNano()),
	}
	if v.TotalSteps > 0 {
		v.Progress = min(float64(v.Step)/float64(v.TotalSteps), 1)
	}
	if j.GetState() == pb.JobState_JOB_STATE_SUCCEEDED {
		v.Progress = 1
	}
	if !v.Final {
		if s, ok := eta(j); ok {
			v.ETASeconds = s
		}
	}
	return v
}

// eta is the seconds the remaining steps take at the last rate:
// (total - step) x tokens per step / tokens per second.
func eta(j *pb.Job) (float64, bool) {
	p := j.GetProgress()
	if p.GetTotalSteps() <= 0 || !(p.GetTokensPerSecond() > 0) || math.IsInf(p.GetTokensPerSecond(), 0) {
		return 0, false
	}
	sp, err := jobspec.Parse(j.GetSpec())
	if err != nil {
		return 0, false
	}
	dp := int(j.GetPlacedDp())
	if w := int(j.GetWorldSize()); dp == 0 && sp.Parallel.TP > 0 && w%sp.Parallel.TP == 0 {
		dp = w / sp.Parallel.TP
	}
	perStep := sp.TokensPerStep(sp.AttemptLayout(dp, int(j.GetPlacedEp())))
	if !(perStep > 0) {
		return 0, false
	}
	return float64(max(p.GetTotalSteps()-p.GetStep(), 0)) * perStep / p.GetTokensPerSecond(), true
}

func detail(j *pb.Job) jobDetail {
	d := jobDetail{jobView: summary(j), Priority: j.GetPriority(), Placement: []placement{}, Events: []eventView{},
		EventsDropped: j.GetEventsDropped(), Conditions: []condition{}, Spec: string(j.GetSpec())}
	for _, a := range j.GetPlacement() {
		d.Placement = append(d.Placement, placement{Rank: a.GetRank(), Worker: a.GetWorkerId(), Slot: a.GetSlot()})
	}
	for _, e := range j.GetEvents() {
		d.Events = append(d.Events, eventView{Seq: e.GetSeq(), Time: unixMillis(e.GetUnixNano()), Type: e.GetType(), Message: e.GetMessage(), Worker: e.GetWorkerId()})
	}
	for _, c := range j.GetConditions() {
		d.Conditions = append(d.Conditions, condition{Type: c.GetType(), Status: c.GetStatus(), Reason: c.GetReason(), Message: c.GetMessage()})
	}
	if sp, err := jobspec.Parse(j.GetSpec()); err == nil {
		d.Runtime, d.Preset, d.LBLMode = string(sp.Runtime), sp.Model.Preset, string(sp.LBL.Mode)
		d.Parallel = parallelView{TP: sp.Parallel.TP, DP: sp.Parallel.DP, EP: sp.Parallel.EP}
	}
	return d
}

// pointOf is rank 0's metrics in m (ok false for anything else).
func pointOf(m events.Message) (point, bool) {
	s := m.Metrics
	if m.Kind != events.KindMetrics || s == nil || s.Rank != 0 {
		return point{}, false
	}
	p := point{Step: s.Step, Time: m.Time.UnixMilli(), Loss: finite(s.Loss), LBL: finite(s.LBL), TokensPerS: finite(s.TokensPerSecond)}
	for _, row := range s.ExpertLoadLE {
		r := make([]float64, len(row))
		for e, x := range row {
			r[e] = finite(x)
		}
		p.ExpertLoad = append(p.ExpertLoad, r)
	}
	return p, true
}

// thin keeps at most n points, evenly spaced, the last always. A resumed
// attempt repeats steps: the later point of a step wins.
func thin(pts []point, n int) []point {
	last := map[int64]int{}
	for i, p := range pts {
		last[p.Step] = i
	}
	var kept []point
	for i, p := range pts {
		if last[p.Step] == i {
			kept = append(kept, p)
		}
	}
	sort.SliceStable(kept, func(a, b int) bool { return kept[a].Step < kept[b].Step })
	if len(kept) <= n || n < 2 {
		if kept == nil {
			return []point{}
		}
		return kept
	}
	out := make([]point, 0, n)
	for k := range n - 1 {
		out = append(out, kept[k*(len(kept)-1)/(n-1)])
	}
	return append(out, kept[len(kept)-1])
}
