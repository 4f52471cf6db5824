package e2e

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// TestSeveralRanksPerWorker: workers that declare 2 GPUs run 2 ranks
// each (one per GPU, its own port; the compute is the CPU engine's); a
// tp 2 x dp 2 (ep 2) job takes two of them whole, a tensor-parallel group
// on each, survives a kill -9 of one, resumes from its checkpoint on the
// other two slots it finds and succeeds.
func TestSeveralRanksPerWorker(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end cluster test: not in -short")
	}
	c := startClusterSlots(t, 1, 2, "g1", "g2", "g3")
	c.waitIdleWorkers(3)
	const steps, every = 400, 10
	spec := fmt.Sprintf(`name: slots
model: {preset: tiny, dim: 64, layers: 2, heads: 2, experts: 4, top_k: 2, hidden: 64, seq_len: 64}
parallel: {tp: 2, dp: 2, ep: 2}
data: {corpus: demo, demo_bytes: 131072, eval_seqs: 4}
micro_batch: 4
steps: %d
resources: {cpu_cores: 1, memory_mib: 512, gpus: 1}
checkpoint: {interval_steps: %d}
restart: {max_restarts: 2, backoff_seconds: 0}
`, steps, every)
	id := c.submit("slots", spec)
	j := c.waitJob(id, 90*time.Second, "past step 30", pastStep(30))
	c.mustBeRunning(j, "the kill")
	perWorker := map[string][]int32{}
	for _, a := range j.Placement {
		perWorker[a.WorkerId] = append(perWorker[a.WorkerId], a.Slot)
	}
	if len(perWorker) != 2 {
		t.Fatalf("placement %v: want 4 ranks on 2 workers", j.Placement)
	}
	for w, slots := range perWorker {
		if len(slots) != 2 || slots[0] == slots[1] {
			t.Fatalf("worker %s holds slots %v: want two ranks in two slots", w, slots)
		}
	}
	byRank := map[int32]string{}
	for _, a := range j.Placement {
		byRank[a.Rank] = a.WorkerId
	}
	if byRank[0] != byRank[1] || byRank[2] != byRank[3] {
		t.Fatalf("placement %v: each tensor-parallel group (ranks 0-1, 2-3) must be on one worker", j.Placement)
	}
	var st apiv1.ClusterStatusResponse
	decode(t, c.mustCLI("cluster", "status", "-o", "json"), &st)
	for _, w := range st.Workers {
		want := int32(len(perWorker[w.Id]))
		if w.Slots != 2 || w.BusySlots != want {
			t.Errorf("cluster status %s: %d of %d slots busy, want %d of 2", w.Id, w.BusySlots, w.Slots, want)
		}
	}
	victim := j.Placement[0].WorkerId
	c.workers[victim].kill9()
	j, from := c.resumedOnce(id, 240*time.Second)
	for _, a := range j.Placement {
		if a.WorkerId == victim {
			t.Errorf("resumed on the dead worker: %v", j.Placement)
		}
	}
	before := metricsLosses(t, filepath.Join(c.storage, "jobs", id, "attempt-0", "rank-0", "metrics.jsonl"))
	after := metricsLosses(t, filepath.Join(c.storage, "jobs", id, "attempt-1", "rank-0", "metrics.jsonl"))
	if l0, ok := before[from+1]; ok && after[from+1] != l0 {
		t.Errorf("loss at step %d: %v before the kill, %v after the resume; want identical", from+1, l0, after[from+1])
	}
	t.Logf("FIGURE 2 ranks per worker: tp 2 x dp 2 on %v; kill -9 %s; resumed from step %d on %v; SUCCEEDED at step %d",
		placedSlots(perWorker), victim, from, j.Placement, j.Progress.GetStep())
	c.startWorker(victim)
	c.waitIdleWorkers(3)

	// A command job of 4 ranks on the 6 slots: some worker holds two, and
	// the PyTorch example checks its torchrun variables (LOCAL_RANK <
	// LOCAL_WORLD_SIZE, MASTER_PORT: rank 0's slot port) and trains.
	if _, err := exec.LookPath(python); err != nil {
		t.Fatalf("%s: %v (Debian's python3-torch)", python, err)
	}
	example, _ := filepath.Abs("../examples/torch-moe")
	corpus := writeCorpus(t, filepath.Join(c.dir, "corpus.jsonl"))
	cmdSpec := fmt.Sprintf(`name: slots-torch
runtime: command
command: %s
args: [train.py, --expect-env, --corpus, %s, --steps, "4", --dim, "32", --layers, "1", --heads, "2", --experts, "4", --top-k, "2", --hidden, "32", --seq-len, "32", --micro-batch, "2"]
working_dir: %s
env: {OMP_NUM_THREADS: "1"}
ranks: 4
resources: {cpu_cores: 1, memory_mib: 512, gpus: 1}
restart: {max_restarts: 0}
`, python, corpus, example)
	id = c.submit("slots-torch", cmdSpec)
	j = c.waitJob(id, 180*time.Second, "succeeded", func(j *pb.Job) bool {
		return j.State == pb.JobState_JOB_STATE_SUCCEEDED || j.State == pb.JobState_JOB_STATE_FAILED
	})
	if j.State != pb.JobState_JOB_STATE_SUCCEEDED {
		t.Fatalf("command job on slots: %s: %s\n%s", j.State, j.Message, tail(c.mustCLI("job", "logs", id).stdout, 3000))
	}
	shared := map[string]int{}
	for _, a := range j.Placement {
		shared[a.WorkerId]++
	}
	t.Logf("FIGURE command job of 4 ranks on slots %v: SUCCEEDED at step %d", shared, j.Progress.GetStep())
}

func placedSlots(m map[string][]int32) string {
	var parts []string
	for w, s := range m {
		parts = append(parts, fmt.Sprintf("%s%v", w, s))
	}
	return strings.Join(parts, " ")
}

// resumedOnce waits for job id to succeed after exactly one restart whose
// attempt resumed from a checkpoint; it returns the job and that step.
func (c *cluster) resumedOnce(id string, timeout time.Duration) (*pb.Job, int64) {
	c.t.Helper()
	j := c.waitJob(id, timeout, "succeeded", stateIs(pb.JobState_JOB_STATE_SUCCEEDED))
	if j.Restarts != 1 {
		c.t.Errorf("%d restarts, want 1", j.Restarts)
	}
	hist := c.mustCLI("job", "status", id).stdout
	m := regexp.MustCompile(`resumed from the checkpoint of step (\d+)`).FindStringSubmatch(hist)
	if m == nil {
		c.t.Fatalf("the second attempt did not resume:\n%s", hist)
	}
	from, _ := strconv.ParseInt(m[1], 10, 64)
	return j, from
}
