package scheduler

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestPlaceReasons(t *testing.T) {
	tests := []struct {
		name string
		snap Snapshot
		job  Job
		err  error
		msg  string
	}{
		{
			name: "not enough free gpu workers",
			snap: newFx().host("a", 4, gpu1).host("b", 4, gpu1).
				set("a-w0", func(w *Worker) { w.Job = "other" }).
				set("a-w1", func(w *Worker) { w.Job = "other" }).
				set("b-w0", func(w *Worker) { w.Healthy = false }).snap,
			job: job("j", 0, 1, 1, 8, 1, Resources{GPUs: 1}),
			err: ErrNoFit,
			msg: "needs 8 workers with 1 GPU, 5 free (2 busy, 1 unhealthy)",
		},
		{
			name: "no host big enough for a TP group now",
			snap: newFx().host("a", 4, cpu1).host("b", 4, cpu1).
				set("a-w0", func(w *Worker) { w.Job = "x" }).set("a-w1", func(w *Worker) { w.Job = "x" }).
				set("b-w0", func(w *Worker) { w.Job = "x" }).set("b-w1", func(w *Worker) { w.Job = "x" }).snap,
			job: job("j", 0, 1, 4, 1, 1, cpu1),
			err: ErrNoFit,
			msg: "no host can hold a TP group of 4 (largest host has 2 free workers)",
		},
		{
			name: "free workers spread too thin for TP groups",
			snap: newFx().host("a", 3, cpu1).host("b", 3, cpu1).host("c", 4, cpu1).
				set("c-w0", func(w *Worker) { w.Job = "x" }).snap,
			job: job("j", 0, 1, 2, 4, 1, cpu1),
			err: ErrNoFit,
			msg: "needs 4 TP groups of 2 workers, each on one host; the free workers form only 3 (9 free workers on 3 hosts)",
		},
		{
			name: "no worker allows the corpus",
			snap: newFx().host("a", 2, cpu1).host("b", 2, cpu1).
				set("a-w0", func(w *Worker) { w.Roots = []string{"/srv/sy"} }).set("a-w1", func(w *Worker) { w.Roots = []string{"/srv/sy", "/data/a"} }).
				set("b-w0", func(w *Worker) { w.Roots = []string{"/srv/sy", "/data/ab"} }).set("b-w1", func(w *Worker) { w.Roots = []string{"/srv/sy"} }).snap,
			job: func() Job { j := job("j", 0, 1, 1, 2, 1, cpu1); j.Paths = []string{"/data/abc/c.jsonl"}; return j }(),
			err: ErrTooLarge,
			msg: "needs 2 workers with 1 core, 1024 MiB allowing /data/abc/c.jsonl (storage_path or allowed_paths); the cluster has no such workers (4 not allowing its paths)",
		},
		{
			name: "no host in the cluster is big enough",
			snap: newFx().host("a", 2, cpu1).host("b", 2, cpu1).snap,
			job:  job("j", 0, 1, 4, 1, 1, cpu1),
			err:  ErrTooLarge,
			msg:  "no host in the cluster can hold a TP group of 4 (largest host has 2 suitable workers)",
		},
		{
			name: "GPU slots: no worker holds a TP group of 8",
			snap: func() Snapshot {
				s := newFx().host("g1", 4, gpu1).host("g2", 4, gpu1).set("g2-w0", func(w *Worker) { w.Job = "x" }).snap
				s.Unit = "slot"
				return s
			}(),
			job: job("j", 0, 1, 8, 1, 1, Resources{GPUs: 1}),
			err: ErrTooLarge,
			msg: "no host in the cluster can hold a TP group of 8 (largest host has 4 suitable slots)",
		},
		{
			name: "every requirement missed by some",
			snap: newFx().host("a", 1, Resources{CPUCores: 1, MemoryMiB: 512}).host("b", 1, Resources{CPUCores: 1, MemoryMiB: 4096}, "zone=a").
				host("c", 2, Resources{CPUCores: 8, MemoryMiB: 4096, GPUs: 1}, "zone=b").host("d", 1, Resources{MemoryMiB: 4096, GPUs: 1}, "zone=b").
				set("c-w1", func(w *Worker) { w.Roots = []string{"/srv"} }).snap,
			job: func() Job {
				j := job("j", 0, 1, 1, 2, 1, Resources{CPUCores: 1, MemoryMiB: 1024, GPUs: 1}, "zone=b")
				j.Paths = []string{"/data/c.jsonl"}
				return j
			}(),
			err: ErrTooLarge,
			msg: "the cluster has only 1 such worker (1 with too few cores, 1 with too little memory, 1 with too few GPUs, 1 not allowing its paths)",
		},
		{
			name: "labels nobody has",
			snap: newFx().host("a", 2, cpu1, "zone=a").snap,
			job:  job("j", 0, 1, 1, 2, 1, cpu1, "zone=b"),
			err:  ErrTooLarge,
			msg:  "needs 2 workers with 1 core, 1024 MiB labelled zone=b; the cluster has no such workers (2 without its labels)",
		},
		{
			name: "too few workers of the kind",
			snap: newFx().host("a", 3, gpu1).host("b", 3, cpu1).snap,
			job:  job("j", 0, 1, 1, 4, 1, Resources{GPUs: 1}),
			err:  ErrTooLarge,
			msg:  "needs 4 workers with 1 GPU; the cluster has only 3 such workers (3 with too few GPUs)",
		},
		{
			name: "free resources short",
			snap: newFx().host("a", 2, cpu1).set("a-w1", func(w *Worker) { w.Free.MemoryMiB = 10 }).snap,
			job:  job("j", 0, 1, 1, 2, 1, cpu1),
			err:  ErrNoFit,
			msg:  "needs 2 workers with 1 core, 1024 MiB, 1 free (1 short of free resources)",
		},
		{
			name: "invalid",
			job:  job("j", 0, 1, 1, 4, 3, cpu1),
			err:  ErrInvalidJob,
			msg:  `scheduler: invalid job: job "j": ep 3 must divide dp 4`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Place(tt.snap, tt.job)
			if !errors.Is(err, tt.err) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if !strings.HasSuffix(err.Error(), tt.msg) {
				t.Fatalf("err = %q\nwant suffix %q", err, tt.msg)
			}
		})
	}
}

func TestTPGroupsStayOnOneHost(t *testing.T) {
	snap := newFx().host("a", 4, cpu1).host("b", 4, cpu1).snap
	plan, err := Place(snap, job("j", 0, 1, 4, 2, 1, cpu1))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"a", "a", "a", "a", "b", "b", "b", "b"}
	if !reflect.DeepEqual(plan.Hosts, want) {
		t.Fatalf("hosts %v, want %v", plan.Hosts, want)
	}
	if plan.Workers[0] != "a-w0" || plan.Workers[7] != "b-w3" {
		t.Fatalf("workers %v", plan.Workers)
	}
}

func TestBestFitHost(t *testing.T) {
	snap := newFx().host("big", 4, cpu1).host("small", 2, cpu1).snap
	plan, err := Place(snap, job("j", 0, 1, 2, 1, 1, cpu1))
	if err != nil {
		t.Fatal(err)
	}
	if plan.Hosts[0] != "small" {
		t.Fatalf("placed on %v, want the best-fitting host", plan.Hosts)
	}
}

func TestEPGroupPackedByRack(t *testing.T) {
	// No host holds the 4-rank EP group; rack r1 holds 3, rack r2 holds 4.
	snap := newFx().
		host("h1", 2, cpu1, "rack=r1", "zone=z").host("h2", 1, cpu1, "rack=r1", "zone=z").
		host("h3", 2, cpu1, "rack=r2", "zone=z").host("h4", 2, cpu1, "rack=r2", "zone=z").snap
	plan, err := Place(snap, job("j", 0, 1, 1, 4, 4, cpu1))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"h3", "h3", "h4", "h4"}; !reflect.DeepEqual(plan.Hosts, want) {
		t.Fatalf("hosts %v, want %v", plan.Hosts, want)
	}

	// Two replicas of EP 2: each replica on one host when it can be.
	snap = newFx().host("h1", 2, cpu1, "rack=r1").host("h2", 3, cpu1, "rack=r2").host("h3", 1, cpu1, "rack=r1").snap
	plan, err = Place(snap, job("j", 0, 1, 1, 4, 2, cpu1))
	if err != nil {
		t.Fatal(err)
	}
	// Replica 0 best-fits h1 (2 slots); replica 1 takes h2 (3 slots).
	if want := []string{"h1", "h1", "h2", "h2"}; !reflect.DeepEqual(plan.Hosts, want) {
		t.Fatalf("hosts %v, want %v", plan.Hosts, want)
	}

	// Without rack labels (topology keys off) the group spreads over the
	// hosts with the most room first.
	snap.TopologyKeys = []string{}
	plan, err = Place(snap, job("j", 0, 1, 1, 6, 6, cpu1))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"h2", "h2", "h2", "h1", "h1", "h3"}; !reflect.DeepEqual(plan.Hosts, want) {
		t.Fatalf("hosts %v, want %v", plan.Hosts, want)
	}
}

func TestScheduleOrderAndBackfill(t *testing.T) {
	// 2 idle and 2 busy GPU workers, 4 idle CPU workers.
	snap := newFx().host("g", 4, gpu1, "kind=gpu").host("c", 4, cpu1, "kind=cpu").
		set("g-w0", func(w *Worker) { w.Job = "old" }).set("g-w1", func(w *Worker) { w.Job = "old" }).snap
	queue := []Job{
		job("cpu-late", 0, 9, 1, 2, 1, cpu1),
		job("gpu-small", 0, 3, 1, 1, 1, Resources{GPUs: 1}),
		job("gpu-big", 5, 7, 1, 4, 1, Resources{GPUs: 1}),
		job("impossible", 9, 1, 1, 64, 1, cpu1),
		job("cpu-early", 0, 2, 1, 2, 1, cpu1),
	}
	placed, pending := Schedule(snap, queue)
	var ids []string
	for _, p := range placed {
		ids = append(ids, p.Job.ID)
	}
	// The impossible job claims nothing; gpu-big waits and claims both GPU
	// workers, so gpu-small waits behind it; the CPU jobs backfill.
	if want := []string{"cpu-early", "cpu-late"}; !reflect.DeepEqual(ids, want) {
		t.Fatalf("placed %v, want %v", ids, want)
	}
	got := map[string]Pending{}
	for _, p := range pending {
		got[p.JobID] = p
	}
	if p := got["impossible"]; !errors.Is(p.Err, ErrTooLarge) {
		t.Fatalf("impossible: %+v", p)
	}
	if p := got["gpu-big"]; !errors.Is(p.Err, ErrNoFit) || p.Reason != "needs 4 workers with 1 GPU, 2 free (2 busy); the others cannot take it (4 with too few GPUs)" {
		t.Fatalf("gpu-big: %+v", p)
	}
	if p := got["gpu-small"]; !errors.Is(p.Err, ErrBlocked) ||
		p.Reason != `waiting for higher-priority job "gpu-big" (priority 5), which has first claim on 1 of the free workers this job would use` {
		t.Fatalf("gpu-small: %+v", p)
	}
	if pending[0].JobID != "impossible" || pending[1].JobID != "gpu-big" || pending[2].JobID != "gpu-small" {
		t.Fatalf("pending not in queue order: %+v", pending)
	}
}

func TestScheduleSamePrioritySeqOrder(t *testing.T) {
	snap := newFx().host("a", 2, cpu1).snap
	placed, pending := Schedule(snap, []Job{job("b", 1, 2, 1, 2, 1, cpu1), job("a", 1, 5, 1, 2, 1, cpu1)})
	if len(placed) != 1 || placed[0].Job.ID != "b" || len(pending) != 1 || pending[0].JobID != "a" {
		t.Fatalf("placed %+v pending %+v", placed, pending)
	}
}

func TestScheduleDuplicateAndInvalid(t *testing.T) {
	snap := newFx().host("a", 4, cpu1).snap
	_, pending := Schedule(snap, []Job{
		job("x", 0, 1, 1, 1, 1, cpu1), job("x", 0, 2, 1, 1, 1, cpu1), job("", 0, 3, 1, 1, 1, cpu1),
	})
	if len(pending) != 2 || !errors.Is(pending[0].Err, ErrInvalidJob) || !errors.Is(pending[1].Err, ErrInvalidJob) {
		t.Fatalf("%+v", pending)
	}
	if pending[0].Reason != "job id appears more than once in the queue" || pending[1].Reason != "empty id" {
		t.Fatalf("%+v", pending)
	}
}

func TestDuplicateWorkerIDsIgnored(t *testing.T) {
	snap := newFx().worker("w", "a", cpu1).worker("w", "b", cpu1).worker("v", "a", cpu1).snap
	plan, err := Place(snap, job("j", 0, 1, 1, 1, 1, cpu1))
	if err != nil || plan.Workers[0] != "v" {
		t.Fatalf("%+v %v", plan, err)
	}
}

func TestRecheck(t *testing.T) {
	base := func() *fx { return newFx().host("a", 2, cpu1, "zone=z").host("b", 2, cpu1, "zone=z") }
	j := job("j", 0, 1, 2, 2, 1, cpu1, "zone=z")
	plan, err := Place(base().snap, j)
	if err != nil {
		t.Fatal(err)
	}
	if err := Recheck(base().snap, plan); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		snap Snapshot
		plan func(Plan) Plan
		msg  string
	}{
		{"gone", newFx().host("a", 2, cpu1, "zone=z").host("b", 1, cpu1, "zone=z").snap, nil, `rank 3: worker "b-w1" is gone`},
		{"busy", base().set("a-w1", func(w *Worker) { w.Job = "k" }).snap, nil, `rank 1: worker "a-w1" is busy with job "k"`},
		{"unhealthy", base().set("b-w0", func(w *Worker) { w.Healthy = false }).snap, nil, `rank 2: worker "b-w0" is unhealthy`},
		{"labels", base().set("b-w0", func(w *Worker) { w.Labels = nil }).snap, nil, `rank 2: worker "b-w0" lacks labels zone=z`},
		{"free", base().set("a-w0", func(w *Worker) { w.Free.CPUCores = 0 }).snap, nil, `rank 0: worker "a-w0" has 1024 MiB free, a rank needs 1 core, 1024 MiB`},
		{"moved", base().set("a-w1", func(w *Worker) { w.Host = "c" }).snap, nil, `rank 1: worker "a-w1" is on host "c", the plan says "a"`},
		{"split", base().snap, func(p Plan) Plan {
			p.Workers = []string{"a-w0", "b-w0", "a-w1", "b-w1"}
			p.Hosts = []string{"a", "b", "a", "b"}
			return p
		}, `rank 1: tensor-parallel group split across hosts "a" and "b"`},
		{"double", base().snap, func(p Plan) Plan {
			p.Workers = []string{"a-w0", "a-w1", "a-w0", "b-w1"}
			return p
		}, `rank 2: worker "a-w0" also holds rank 0`},
		{"short", base().snap, func(p Plan) Plan { p.Workers = p.Workers[:3]; return p }, `plan has 3 workers and 4 hosts for world 4`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := plan
			p.Workers = append([]string(nil), plan.Workers...)
			p.Hosts = append([]string(nil), plan.Hosts...)
			if tt.plan != nil {
				p = tt.plan(p)
			}
			err := Recheck(tt.snap, p)
			if !errors.Is(err, ErrStale) || !strings.HasSuffix(err.Error(), tt.msg) {
				t.Fatalf("err = %v\nwant ErrStale ending %q", err, tt.msg)
			}
		})
	}
}

// A job's paths go only to workers whose roots hold them (or that name
// none), and a plan whose worker stopped allowing them is stale.
func TestPlacePathsWhereAllowed(t *testing.T) {
	snap := newFx().host("a", 2, cpu1).host("b", 2, cpu1).
		set("a-w0", func(w *Worker) { w.Roots = []string{"/srv/sy"} }).
		set("a-w1", func(w *Worker) { w.Roots = []string{"/srv/sy", "/data"} }).
		set("b-w0", func(w *Worker) { w.Roots = []string{"/srv/sy", "/data/ab"} }).snap // b-w1 says nothing
	j := job("j", 0, 1, 1, 2, 1, cpu1)
	j.Paths = []string{"/data/abc/c.jsonl", "/data/abc/ckpt"}
	plan, err := Place(snap, j)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(plan.Workers, ","); got != "a-w1,b-w1" && got != "b-w1,a-w1" {
		t.Fatalf("placed on %s, want a-w1 and b-w1", got)
	}
	for i := range snap.Workers {
		if snap.Workers[i].ID == "b-w1" {
			snap.Workers[i].Roots = []string{"/srv/sy"}
		}
	}
	if err := Recheck(snap, plan); !errors.Is(err, ErrStale) || !strings.Contains(err.Error(), `worker "b-w1" does not allow /data/abc/c.jsonl`) {
		t.Fatalf("recheck after b-w1's roots changed: %v", err)
	}
	j.Paths = []string{"data/c.jsonl"}
	if _, err := Place(snap, j); !errors.Is(err, ErrInvalidJob) || !strings.Contains(err.Error(), "must be absolute") {
		t.Fatalf("a relative path: %v", err)
	}
}

// TestPlaceGPUMemory: a GPU job goes only where each GPU holds its need
// (a worker whose GPUs were declared by count is taken at its word), the
// reason names GPU memory when too few such workers exist, and Recheck
// refuses a plan whose worker's GPUs shrank.
func TestPlaceGPUMemory(t *testing.T) {
	snap := newFx().host("a", 2, gpu1).host("b", 1, gpu1).
		set("a-w0", func(w *Worker) { w.GPUMemoryMiB = 24576 }).
		set("a-w1", func(w *Worker) { w.GPUMemoryMiB = 81920 }).snap // b-w0: declared by count
	j := job("j", 0, 1, 1, 2, 1, gpu1)
	j.GPUMemoryMiB = 43008
	plan, err := Place(snap, j)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(plan.Workers, ","); got != "a-w1,b-w0" && got != "b-w0,a-w1" {
		t.Fatalf("placed on %s, want a-w1 and b-w0", got)
	}
	for i := range snap.Workers {
		if snap.Workers[i].ID == "a-w1" {
			snap.Workers[i].GPUMemoryMiB = 40960
		}
	}
	if err := Recheck(snap, plan); !errors.Is(err, ErrStale) || !strings.Contains(err.Error(), `worker "a-w1" has GPUs of 40960 MiB, a rank needs 43008 MiB`) {
		t.Fatalf("recheck after a-w1's GPUs changed: %v", err)
	}
	_, err = Place(snap, j)
	want := "needs 2 workers with 4 cores, 16384 MiB, 1 GPU of 43008 MiB or more; the cluster has only 1 such worker (2 with too little GPU memory)"
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), want) {
		t.Fatalf("too little GPU memory: %v\nwant %q", err, want)
	}
	cpu := job("c", 0, 1, 1, 3, 1, cpu1) // no GPUs: GPU memory does not matter
	cpu.GPUMemoryMiB = 1 << 20
	if _, err := Place(snap, cpu); err != nil {
		t.Fatalf("a CPU job: %v", err)
	}
	j.GPUMemoryMiB = -1
	if _, err := Place(snap, j); !errors.Is(err, ErrInvalidJob) {
		t.Fatalf("negative GPU memory: %v", err)
	}
}
