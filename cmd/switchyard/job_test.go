package main

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/jobstate"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	coordinatorv1 "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

const validSpecPath = "../../pkg/jobspec/testdata/full.yaml"

func TestJobSubmitValidSpec(t *testing.T) {
	f := newFakeCoordinator()
	addr := startFake(t, f)
	raw, err := os.ReadFile(validSpecPath)
	if err != nil {
		t.Fatal(err)
	}
	r := runAt(t, addr, "job", "submit", validSpecPath, "--id", "my-run")
	wantCode(t, r, exitOK)
	if strings.TrimSpace(r.stdout) != "my-run" {
		t.Fatalf("stdout %q, want the job id", r.stdout)
	}
	sub := locked(f, func() []*apiv1.SubmitJobRequest { return f.submitted })
	if len(sub) != 1 || string(sub[0].GetSpec()) != string(raw) || sub[0].GetJobId() != "my-run" {
		t.Fatalf("the coordinator got %v", sub)
	}

	r = runAt(t, addr, "job", "submit", "-o", "json", validSpecPath)
	wantCode(t, r, exitOK)
	m := decodeJSON(t, r.stdout)
	// without --id the CLI picks "<name>-<8 hex>" itself (a retried submit
	// must not create a second job)
	if id, _ := m["id"].(string); !regexp.MustCompile(`^moe-global-lbl-[0-9a-f]{8}$`).MatchString(id) || m["state"] != "JOB_STATE_PENDING" {
		t.Fatalf("json: %v", m)
	}
}

// An invalid spec never reaches the coordinator: exit 2, every broken
// rule named with its field path.
func TestJobSubmitInvalidSpec(t *testing.T) {
	f := newFakeCoordinator()
	addr := startFake(t, f)
	spec := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(spec, []byte("name: job\nparallel: {dp: 4, ep: 3}\nsteps: -5\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := runAt(t, addr, "job", "submit", spec)
	wantCode(t, r, exitUsage)
	wantContains(t, r.stderr, "parallel.ep = 3: must divide parallel.dp = 4", "steps = -5: must be >= 1")
	if sub := locked(f, func() []*apiv1.SubmitJobRequest { return f.submitted }); len(sub) != 0 {
		t.Fatalf("an invalid spec was submitted: %v", sub)
	}
	r = runAt(t, addr, "job", "submit", filepath.Join(t.TempDir(), "missing.yaml"))
	wantCode(t, r, exitUsage)
	// a spec that never ends is refused after 1 MiB, not read whole
	r = runAt(t, addr, "job", "submit", "/dev/zero")
	wantCode(t, r, exitUsage)
	wantContains(t, r.stderr, "/dev/zero: file too large: over the limit of 1 MiB")
}

func TestJobList(t *testing.T) {
	addr := startFake(t, newFakeCoordinator())
	r := runAt(t, addr, "job", "list")
	wantCode(t, r, exitOK)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 3 {
		t.Fatalf("want header and 2 jobs:\n%s", r.stdout)
	}
	if f := strings.Fields(lines[0]); strings.Join(f, " ") != "ID NAME STATE STEP/TOTAL LOSS WORKERS RESTARTS AGE" {
		t.Fatalf("header %q", lines[0])
	}
	if f := strings.Fields(lines[1]); strings.Join(f, " ") != "moe-1 moe-global-lbl RUNNING 120/1000 2.3456 2/2 1 2h00m" {
		t.Fatalf("row %q", lines[1])
	}
	if f := strings.Fields(lines[2]); strings.Join(f, " ") != "queued big PENDING 0/500 - 0/64 0 3m00s" {
		t.Fatalf("row %q", lines[2])
	}

	r = runAt(t, addr, "job", "list", "--state", "pending,failed")
	wantCode(t, r, exitOK)
	if strings.Contains(r.stdout, "moe-1") || !strings.Contains(r.stdout, "queued") {
		t.Fatalf("state filter:\n%s", r.stdout)
	}

	r = runAt(t, addr, "job", "list", "-o", "json")
	wantCode(t, r, exitOK)
	jobs := decodeJSON(t, r.stdout)["jobs"].([]any)
	j := jobs[0].(map[string]any)
	if j["id"] != "moe-1" || j["world_size"] == nil || j["progress"].(map[string]any)["total_steps"] != "1000" {
		t.Fatalf("json job: %v", j)
	}
}

func TestJobStatus(t *testing.T) {
	addr := startFake(t, newFakeCoordinator())
	r := runAt(t, addr, "job", "status", "moe-1")
	wantCode(t, r, exitOK)
	wantContains(t, r.stdout,
		"RUNNING (Started: all ranks running)",
		"120/1000 (12.0%)",
		"2.3456",
		"16384",
		"Restarts:    1",
		"WorkersHealthy", "WorkerLost", "w-c lease expired",
		"RANK", "w-b",
		"Submitted", "lease expired",
	)
	// ETA: tiny preset, micro_batch 8 x accumulation 1 x dp 2 (world 2,
	// tp 1) x seq_len 256 = 4096 tokens per step; 880 steps left at 16384
	// tokens/s = 220 s.
	wantContains(t, r.stdout, "ETA:         3m40s")
	wantContains(t, r.stdout, "GPUs:        rank 0: 87% busy, 41.0 of 80.0 GiB in use (GPU-a)\n             rank 1: 12% busy, 1.5 of 80.0 GiB in use\n")

	r = runAt(t, addr, "job", "status", "queued")
	wantCode(t, r, exitOK)
	wantContains(t, r.stdout, "PENDING", "Pending:     needs 64 workers with gpu=h100, 3 free")

	r = runAt(t, addr, "job", "status", "queued", "-o", "json")
	wantCode(t, r, exitOK)
	m := decodeJSON(t, r.stdout)
	if m["pending_reason"] != "needs 64 workers with gpu=h100, 3 free" || m["job"].(map[string]any)["state"] != "JOB_STATE_PENDING" {
		t.Fatalf("json: %v", m)
	}
}

func TestJobStatusUnknownIsNotFound(t *testing.T) {
	addr := startFake(t, newFakeCoordinator())
	r := runAt(t, addr, "job", "status", "nope")
	wantCode(t, r, exitNotFound)
	wantContains(t, r.stderr, `job "nope" not found`)
	if strings.Contains(r.stderr, "rpc error") {
		t.Fatalf("Go error dump: %s", r.stderr)
	}
}

func TestJobLogs(t *testing.T) {
	f := newFakeCoordinator()
	addr := startFake(t, f)
	r := runAt(t, addr, "job", "logs", "moe-1")
	wantCode(t, r, exitOK)
	if r.stdout != "[rank 0 worker w-a] step 1 loss 5.5\n[rank 1] rank 1 ready\n" {
		t.Fatalf("stdout %q", r.stdout)
	}
	r = runAt(t, addr, "job", "logs", "moe-1", "-f", "-o", "json")
	wantCode(t, r, exitOK)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 2 {
		t.Fatalf("want one JSON object per line:\n%s", r.stdout)
	}
	if m := decodeJSON(t, lines[0]); m["worker_id"] != "w-a" || m["line"] != "step 1 loss 5.5" {
		t.Fatalf("json: %v", m)
	}
	follow := locked(f, func() []bool { return f.logFollow })
	if len(follow) != 2 || follow[0] || !follow[1] {
		t.Fatalf("follow flags sent: %v", follow)
	}
	r = runAt(t, addr, "job", "logs", "-f", "nope")
	wantCode(t, r, exitNotFound)
}

// watchScript is a job's run as WatchJob streams it, ending in state end.
func watchScript(end coordinatorv1.JobState, reason, msg string) []*apiv1.WatchJobResponse {
	job := func(s coordinatorv1.JobState, step int64) *coordinatorv1.Job {
		return &coordinatorv1.Job{Id: "moe-1", State: s, WorldSize: 2, Spec: []byte("name: moe-global-lbl\nsteps: 1000\n"),
			Progress: &coordinatorv1.Progress{Step: step, TotalSteps: 1000}}
	}
	final := job(end, 500)
	final.Reason, final.Message = reason, msg
	return []*apiv1.WatchJobResponse{
		{Job: job(coordinatorv1.JobState_JOB_STATE_RUNNING, 0)},
		{Metrics: &apiv1.StepMetrics{Step: 10, Loss: 4.5, Lbl: 0.02, TokensPerSecond: 4096,
			ExpertLoad: []*apiv1.ExpertLoad{{Share: []float64{0.5, 0.25, 0.125, 0.125}}, {Share: []float64{0.25, 0.25, 0.25, 0.25}}}}},
		{Metrics: &apiv1.StepMetrics{Step: 20, Loss: 4.25, Lbl: 0.01, TokensPerSecond: 8192, GpuUtilPct: []float64{87.4, -1}}},
		{Job: final},
	}
}

func TestJobWatchSucceeded(t *testing.T) {
	f := newFakeCoordinator()
	f.watch["moe-1"] = watchScript(coordinatorv1.JobState_JOB_STATE_SUCCEEDED, "Completed", "1000 steps")
	addr := startFake(t, f)
	r := runAt(t, addr, "job", "watch", "moe-1")
	wantCode(t, r, exitOK)
	wantContains(t, r.stdout,
		"job moe-1 RUNNING",
		"step 10/1000  loss 4.5000  lbl 0.02  tok/s 4096",
		// 980 steps x 4096 tokens / 8192 tok/s = 490 s.
		"step 20/1000  loss 4.2500  lbl 0.01  tok/s 8192  ETA 8m10s  gpu 87% -\n",
		"job moe-1 SUCCEEDED (Completed: 1000 steps)",
		"expert load at step 10",
		"50.0%", "12.5%", "2.00", "1.00",
	)
	if strings.Count(r.stdout, "step 20/1000") != 1 {
		t.Fatalf("progress lines repeated:\n%s", r.stdout)
	}
	if strings.Contains(r.stdout, "\r") {
		t.Fatalf("redraws without a terminal: %q", r.stdout)
	}

	// On a terminal the progress is one redrawn line.
	r = runCmd(t, true, "job", "watch", "moe-1", "--coordinator", addr)
	wantCode(t, r, exitOK)
	wantContains(t, r.stdout, "\r\033[Kstep 20/1000 [", "job moe-1 SUCCEEDED")

	r = runAt(t, addr, "job", "watch", "moe-1", "-o", "json")
	wantCode(t, r, exitOK)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 4 {
		t.Fatalf("want 4 JSON lines:\n%s", r.stdout)
	}
	for _, l := range lines {
		decodeJSON(t, l)
	}
	if m := decodeJSON(t, lines[1]); m["metrics"].(map[string]any)["expert_load"] == nil {
		t.Fatalf("json metrics: %v", m)
	}
}

// A command job whose trainer reports no LBL shows none (not "lbl 0").
func TestJobWatchNoLBL(t *testing.T) {
	f := newFakeCoordinator()
	script := watchScript(coordinatorv1.JobState_JOB_STATE_SUCCEEDED, "Completed", "1000 steps")
	script[2] = &apiv1.WatchJobResponse{Metrics: &apiv1.StepMetrics{Step: 20, Loss: 4.25, NoLbl: true, TokensPerSecond: 8192}}
	f.watch["moe-1"] = script
	addr := startFake(t, f)
	r := runAt(t, addr, "job", "watch", "moe-1")
	wantCode(t, r, exitOK)
	wantContains(t, r.stdout, "step 10/1000  loss 4.5000  lbl 0.02  tok/s 4096", "step 20/1000  loss 4.2500  tok/s 8192  ETA")
}

// TestJobWatchSaysWhyPending: a pending job's watch prints the
// scheduler's reason, and again each time it changes.
func TestJobWatchSaysWhyPending(t *testing.T) {
	pending := func(why string) *apiv1.WatchJobResponse {
		return &apiv1.WatchJobResponse{Job: &coordinatorv1.Job{Id: "moe-1", State: coordinatorv1.JobState_JOB_STATE_PENDING, Reason: "Submitted",
			Conditions: []*coordinatorv1.Condition{{Type: jobstate.CondScheduled, Status: false, Reason: "Unschedulable", Message: why}}}}
	}
	f := newFakeCoordinator()
	f.watch["moe-1"] = append([]*apiv1.WatchJobResponse{
		pending("needs 4 workers with 2 cores, 2048 MiB; the cluster has 2"),
		pending("needs 4 workers with 2 cores, 2048 MiB; the cluster has 2"),
		pending("needs 4 workers with 2 cores, 2048 MiB; the cluster has 3"),
	}, watchScript(coordinatorv1.JobState_JOB_STATE_SUCCEEDED, "Completed", "1000 steps")...)
	addr := startFake(t, f)
	r := runAt(t, addr, "job", "watch", "moe-1")
	wantCode(t, r, exitOK)
	wantContains(t, r.stdout, "PENDING (Submitted); waiting: needs 4 workers with 2 cores, 2048 MiB; the cluster has 2",
		"waiting: needs 4 workers with 2 cores, 2048 MiB; the cluster has 3", "job moe-1 RUNNING")
	if n := strings.Count(r.stdout, "the cluster has 2"); n != 1 {
		t.Errorf("an unchanged reason printed %d times:\n%s", n, r.stdout)
	}
}

// TestJobWatchPrintsEvents: a watch prints the history events that are
// new since the last update, one line each (why the job restarted, what
// it resumed from, a state it passed through unseen), not the history
// before it started, not the move into the state its state line shows,
// not the per-checkpoint and per-rank noise; a reopened stream repeats
// none.
func TestJobWatchPrintsEvents(t *testing.T) {
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.Local)
	var evs []*coordinatorv1.JobEvent
	ev := func(typ, msg, worker string) {
		evs = append(evs, &coordinatorv1.JobEvent{Seq: uint64(len(evs) + 1), UnixNano: at.Add(time.Duration(len(evs)) * time.Second).UnixNano(), Type: typ, Message: msg, WorkerId: worker})
	}
	job := func(s coordinatorv1.JobState, restarts int32, reason, msg string) *apiv1.WatchJobResponse {
		return &apiv1.WatchJobResponse{Job: &coordinatorv1.Job{Id: "moe-1", State: s, Restarts: restarts, Reason: reason, Message: msg, WorldSize: 2,
			Spec: []byte("name: moe-global-lbl\nsteps: 1000\n"), Progress: &coordinatorv1.Progress{TotalSteps: 1000}, Events: slices.Clone(evs)}}
	}
	ev("Submitted", "job submitted (world size 2)", "")
	ev("Placed", "Placed: 2 ranks placed", "")
	ev("RankFailed", "an attempt before the watch", "w1")
	ev("Running", "", "")
	script := []*apiv1.WatchJobResponse{job(coordinatorv1.JobState_JOB_STATE_RUNNING, 0, "", "")}
	ev("CheckpointCommitted", "checkpoint of step 10 committed", "")
	ev("RankFailed", "rank 1 killed by SIGKILL", "w2")
	ev("Pending", "RankFailed: rank 1 killed by SIGKILL; restart 1 of 2 in 0s", "")
	ev("Placed", "Placed: 2 ranks placed", "")
	script = append(script, job(coordinatorv1.JobState_JOB_STATE_PLACED, 1, "Placed", "2 ranks placed"))
	ev("Running", "", "")
	ev("Resumed", "rank 0: resumed from the checkpoint of step 10", "w1")
	ev("MemoryPeak", "rank 0: used at most 518 MiB", "w1")
	script = append(script, job(coordinatorv1.JobState_JOB_STATE_RUNNING, 1, "", ""))
	ev("Succeeded", "Completed: all 2 ranks finished", "")
	script = append(script, job(coordinatorv1.JobState_JOB_STATE_SUCCEEDED, 1, "Completed", "all 2 ranks finished"))

	f := newFakeCoordinator()
	f.watch["moe-1"] = script
	f.watchBreaks = 1 // the first message twice
	addr := startFake(t, f)
	r := runAt(t, addr, "job", "watch", "moe-1")
	wantCode(t, r, exitOK)
	// a state line has the time of the move into its state (from the
	// history), not the watch's clock
	want := []string{
		"12:00:03 job moe-1 RUNNING",
		"12:00:05 job moe-1 RankFailed: rank 1 killed by SIGKILL (worker w2)",
		"12:00:06 job moe-1 Pending: RankFailed: rank 1 killed by SIGKILL; restart 1 of 2 in 0s",
		"12:00:07 job moe-1 PLACED (Placed: 2 ranks placed), 1 restart",
		"12:00:08 job moe-1 RUNNING, 1 restart",
		"12:00:09 job moe-1 Resumed: rank 0: resumed from the checkpoint of step 10 (worker w1)",
		"12:00:11 job moe-1 SUCCEEDED (Completed: all 2 ranks finished), 1 restart",
	}
	rest := r.stdout
	for _, w := range want {
		i := strings.Index(rest, w+"\n")
		if i < 0 {
			t.Fatalf("want these lines in this order, %q missing:\n%s\ngot:\n%s", w, strings.Join(want, "\n"), r.stdout)
		}
		rest = rest[i+len(w):]
	}
	for _, quiet := range []string{"Submitted", "before the watch", "CheckpointCommitted", "MemoryPeak", "Running:", "Placed: Placed", "Succeeded:"} {
		if strings.Contains(r.stdout, quiet) {
			t.Errorf("printed %q:\n%s", quiet, r.stdout)
		}
	}
}

func TestJobWatchFailedOrCancelled(t *testing.T) {
	for _, tt := range []struct {
		state          coordinatorv1.JobState
		reason, msg    string
		wantOut, wantE string
	}{
		{coordinatorv1.JobState_JOB_STATE_FAILED, "WorkerLost", "worker w-3 lease expired", "job moe-1 FAILED (WorkerLost: worker w-3 lease expired)", "FAILED"},
		{coordinatorv1.JobState_JOB_STATE_CANCELLED, "Cancelled", "by alice", "job moe-1 CANCELLED (Cancelled: by alice)", "CANCELLED"},
	} {
		f := newFakeCoordinator()
		f.watch["moe-1"] = watchScript(tt.state, tt.reason, tt.msg)
		addr := startFake(t, f)
		r := runAt(t, addr, "job", "watch", "moe-1")
		wantCode(t, r, exitFailure)
		wantContains(t, r.stdout, tt.wantOut)
		wantContains(t, r.stderr, tt.wantE, tt.reason)
	}
}

// A stream that ends before the final record: watch asks for the record.
func TestJobWatchEndsWithoutFinalRecord(t *testing.T) {
	f := newFakeCoordinator()
	f.watch["moe-1"] = watchScript(coordinatorv1.JobState_JOB_STATE_SUCCEEDED, "", "")[:3]
	f.jobs["moe-1"].State = coordinatorv1.JobState_JOB_STATE_FAILED
	f.jobs["moe-1"].Reason = "RankFailed"
	addr := startFake(t, f)
	r := runAt(t, addr, "job", "watch", "moe-1")
	wantCode(t, r, exitFailure)
	wantContains(t, r.stdout, "job moe-1 FAILED (RankFailed")
}

// A stream that breaks with UNAVAILABLE after some messages is reopened.
func TestJobWatchReopensBrokenStream(t *testing.T) {
	f := newFakeCoordinator()
	f.watch["moe-1"] = watchScript(coordinatorv1.JobState_JOB_STATE_SUCCEEDED, "Completed", "")
	f.watchBreaks = 2
	addr := startFake(t, f)
	r := runAt(t, addr, "job", "watch", "moe-1")
	wantCode(t, r, exitOK)
	wantContains(t, r.stderr, "reopening")
	if n := locked(f, func() int { return f.watchCalls }); n != 3 {
		t.Fatalf("%d WatchJob calls, want 3", n)
	}

	// A coordinator that keeps breaking the stream is given up on.
	locked(f, func() int { f.watchCalls, f.watchBreaks = 0, 100; return 0 })
	r = runAt(t, addr, "job", "watch", "moe-1")
	wantCode(t, r, exitUnavailable)
}

func TestJobWatchUnknownIsNotFound(t *testing.T) {
	addr := startFake(t, newFakeCoordinator())
	r := runAt(t, addr, "job", "watch", "nope")
	wantCode(t, r, exitNotFound)
}

func TestJobSubmitWatch(t *testing.T) {
	f := newFakeCoordinator()
	script := watchScript(coordinatorv1.JobState_JOB_STATE_SUCCEEDED, "Completed", "")
	f.watch["my-run"] = script
	addr := startFake(t, f)
	r := runAt(t, addr, "job", "submit", validSpecPath, "--id", "my-run", "--watch")
	wantCode(t, r, exitOK)
	wantContains(t, r.stdout, "my-run\n", "SUCCEEDED")
}

func TestJobCancel(t *testing.T) {
	f := newFakeCoordinator()
	addr := startFake(t, f)
	r := runAt(t, addr, "job", "cancel", "moe-1", "--message", "wrong lr")
	wantCode(t, r, exitOK)
	wantContains(t, r.stdout, "CANCELLED (Cancelled: wrong lr)")
	cancelled := locked(f, func() []string { return f.cancelled })
	if len(cancelled) != 1 || cancelled[0] != "moe-1" {
		t.Fatalf("cancelled %v", cancelled)
	}
	r = runAt(t, addr, "job", "cancel", "nope")
	wantCode(t, r, exitNotFound)
}

// TestJobDelete: a job that has ended is deleted, and then not found; a
// refusal exits 1 with the coordinator's reason.
func TestJobDelete(t *testing.T) {
	f := newFakeCoordinator()
	addr := startFake(t, f)
	r := runAt(t, addr, "job", "delete", "moe-1")
	wantCode(t, r, exitFailure)
	wantContains(t, r.stderr, "job moe-1 is running: only a job that has ended is deleted")
	wantCode(t, runAt(t, addr, "job", "cancel", "moe-1"), exitOK)
	r = runAt(t, addr, "job", "delete", "moe-1")
	wantCode(t, r, exitOK)
	wantContains(t, r.stdout, "job moe-1 deleted (it was CANCELLED (Cancelled))")
	wantCode(t, runAt(t, addr, "job", "status", "moe-1"), exitNotFound)
	wantCode(t, runAt(t, addr, "job", "delete", "moe-1"), exitNotFound)
}

func TestJobETA(t *testing.T) {
	d, ok := eta(100, 1100, 4096, 8192)
	if !ok || d != 500*time.Second {
		t.Fatalf("eta = %v %v, want 500s", d, ok)
	}
	for _, c := range [][4]float64{{0, 0, 4096, 1}, {0, 10, 0, 1}, {0, 10, 4096, 0}} {
		if _, ok := eta(int64(c[0]), int64(c[1]), c[2], c[3]); ok {
			t.Errorf("eta%v: want unknown", c)
		}
	}
	// dp follows the world size: an elastic job resized to dp 4.
	j := &coordinatorv1.Job{Spec: []byte("name: x\nparallel: {tp: 2, dp: 2}\n"), WorldSize: 8}
	if got := tokensPerStep(j); got != 8*1*4*256 {
		t.Fatalf("tokensPerStep = %v", got)
	}
	// shrunk from dp 4 to dp 2: the accumulation doubles, the global
	// batch and the tokens per step stay
	j = &coordinatorv1.Job{Spec: []byte("name: x\nparallel: {dp: 4, ep: 2}\naccumulation: 1\nelastic: {min_dp: 2}\n"), WorldSize: 2, PlacedDp: 2, PlacedEp: 2}
	if got := tokensPerStep(j); got != 8*2*2*256 {
		t.Fatalf("tokensPerStep after shrinking = %v, want %v", got, 8*2*2*256)
	}
}

// TestStepRateETA: a job whose tokens per step are not known (a command
// job's trainer) gets its ETA from the current attempt's step rate: from
// its first reported step to the newest progress.
func TestStepRateETA(t *testing.T) {
	const s = int64(time.Second)
	ev := func(at int64, typ, msg string) *coordinatorv1.JobEvent {
		return &coordinatorv1.JobEvent{UnixNano: at * s, Type: typ, Message: msg}
	}
	j := &coordinatorv1.Job{
		Events: []*coordinatorv1.JobEvent{
			ev(0, "Running", "FirstStep: step 1 reported"),
			ev(50, "Requeued", "RankFailed: ..."),
			ev(60, "Running", "FirstStep: step 10 reported"), // the attempt after the restart
			ev(61, "CheckpointCommitted", "checkpoint of step 20 committed"),
		},
		Progress: &coordinatorv1.Progress{Step: 110, TotalSteps: 1000, UpdatedUnixNano: 160 * s},
	}
	// 100 steps in 100 s since step 10; 890 steps left
	if d, ok := stepRateETA(j); !ok || d != 890*time.Second {
		t.Errorf("ETA %v %v, want 14m50s", d, ok)
	}
	j.Progress.Step = 10 // no step since the first: no rate
	if d, ok := stepRateETA(j); ok {
		t.Errorf("ETA %v with no step since the attempt's first", d)
	}
	j.Events = j.Events[1:2]
	if d, ok := stepRateETA(j); ok {
		t.Errorf("ETA %v without a first step in the history", d)
	}
}
