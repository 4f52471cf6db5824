package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// TestCluster runs the control plane's must-shows on one real cluster:
// three coordinator processes, a real etcd and a real nats-server, four
// workers joined by config files. The phases run in order and share it.
func TestCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end cluster test: not in -short")
	}
	c := startCluster(t, 3, "w1", "w2", "w3", "w4")

	t.Run("Joined", func(t *testing.T) {
		c.t = t
		eventually(t, 30*time.Second, "3 replicas and 4 healthy workers", func() error {
			s := c.status()
			healthy := 0
			for _, w := range s.Workers {
				if w.Healthy {
					healthy++
				}
			}
			if len(s.Replicas) != 3 || s.LeaderId == "" || healthy != 4 {
				return fmt.Errorf("%d replicas, leader %q, %d healthy workers", len(s.Replicas), s.LeaderId, healthy)
			}
			return nil
		})
	})

	t.Run("LeaderKill", func(t *testing.T) {
		c.t = t
		const steps = 1000
		id := c.submit("e2e-a", jobSpec("e2e-a", steps, 0, 0))
		j := c.waitJob(id, 60*time.Second, "running", startedRunning)
		if ws := placedOn(j); len(ws) != 2 || ws[0] == ws[1] {
			t.Fatalf("placement %v: want two distinct workers", ws)
		}
		if st := eventTime(j, "Running", 0) - eventTime(j, "Submitted", 0); st > 0 {
			t.Logf("FIGURE submit-to-first-step %.2fs (3 coordinators, real etcd/NATS)", float64(st)/1e9)
		}
		old := c.leader()
		c.mustBeRunning(c.waitJob(id, time.Second, "read", func(*pb.Job) bool { return true }), "the leader's kill")
		killed := time.Now()
		c.coords[old].kill9()
		newLeader := ""
		eventually(t, 30*time.Second, "a new leader", func() error {
			s := c.status()
			if s.LeaderId == "" || s.LeaderId == c.coordIDs[old] {
				return fmt.Errorf("leader %q", s.LeaderId)
			}
			newLeader = s.LeaderId
			return nil
		})
		t.Logf("FIGURE leader fail-over: %s -> %s seen by the CLI %.2fs after kill -9", c.coordIDs[old], newLeader, time.Since(killed).Seconds())
		j = c.waitJob(id, 120*time.Second, "succeeded", stateIs(pb.JobState_JOB_STATE_SUCCEEDED))
		if j.Restarts != 0 {
			t.Errorf("the job restarted %d times across the fail-over; want 0 (healthy ranks keep running)", j.Restarts)
		}
		if j.Progress.GetStep() != steps {
			t.Errorf("final step %d, want %d", j.Progress.GetStep(), steps)
		}
		var list apiv1.ListJobsResponse
		decode(t, c.mustCLI("job", "list", "-o", "json"), &list)
		n := 0
		for _, lj := range list.Jobs {
			if lj.Name == "e2e-a" {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%d jobs named e2e-a after the fail-over, want exactly 1", n)
		}
		logs := c.mustCLI("job", "logs", id)
		if want := fmt.Sprintf("step %d/%d", steps, steps); !strings.Contains(logs.stdout, want) {
			t.Errorf("job logs lack the last step:\n%s", tail(logs.stdout, 2000))
		}
		if st := c.mustCLI("job", "status", id); !strings.Contains(st.stdout, "SUCCEEDED") {
			t.Errorf("job status:\n%s", st.stdout)
		}
		// the killed replica comes back with its data and rejoins
		c.startCoordinator(old, "")
		eventually(t, 30*time.Second, "the restarted replica alive", func() error {
			for _, r := range c.status().Replicas {
				if r.Id == c.coordIDs[old] && r.Alive {
					return nil
				}
			}
			return fmt.Errorf("%s not alive", c.coordIDs[old])
		})
	})

	t.Run("LogsFollowAcrossNATSRestart", func(t *testing.T) {
		c.t = t
		const steps = 1000
		id := c.submit("e2e-b", jobSpec("e2e-b", steps, 0, 0))
		// opened at once, possibly on a replica that restarted in the
		// previous test and is still catching up with the leader
		follow := start(t, "logs-f", c.env(), bins.switchyard, "job", "logs", "-f", id)
		j := c.waitJob(id, 60*time.Second, "running", startedRunning)
		time.Sleep(time.Second)
		if follow.exited() {
			t.Fatalf("job logs -f ended before NATS went down (%v):\n%s", follow.err, tail(follow.out.String(), 2000))
		}
		c.mustBeRunning(j, "the NATS restart")
		c.nats.kill9()
		down := time.Now()
		time.Sleep(2 * time.Second)
		c.startNATS()
		t.Logf("FIGURE NATS down for %.1fs mid-job", time.Since(down).Seconds())
		c.waitJob(id, 120*time.Second, "succeeded", stateIs(pb.JobState_JOB_STATE_SUCCEEDED))
		select {
		case <-follow.done:
		case <-time.After(60 * time.Second):
			t.Fatal("job logs -f did not end after the job ended")
		}
		if follow.err != nil {
			t.Errorf("job logs -f: %v", follow.err)
		}
		got := follow.out.String()
		hist := c.mustCLI("job", "logs", id).stdout
		t.Logf("FIGURE logs -f across a NATS restart: %d lines delivered; history holds %d", strings.Count(got, "\n"), strings.Count(hist, "\n"))
		if want := fmt.Sprintf("step %d/%d", steps, steps); !strings.Contains(got, want) {
			t.Errorf("logs -f missed the lines after NATS came back:\n%s", tail(got, 2000))
		}
	})

	t.Run("WorkerKillFailsJob", func(t *testing.T) {
		c.t = t
		id := c.submit("e2e-c", jobSpec("e2e-c", 3000, 0, 0))
		j := c.waitJob(id, 60*time.Second, "running", startedRunning)
		victim := j.Placement[1].WorkerId
		killed := time.Now()
		c.workers[victim].kill9()
		j = c.waitJob(id, 60*time.Second, "failed", stateIs(pb.JobState_JOB_STATE_FAILED))
		t.Logf("FIGURE worker %s kill -9 -> job FAILED in %.2fs (lease TTL 2s): %s: %s", victim, time.Since(killed).Seconds(), j.Reason, j.Message)
		if j.Reason != "WorkerLost" || !strings.Contains(j.Message, victim) {
			t.Errorf("failure %s: %q does not blame the worker %s", j.Reason, j.Message, victim)
		}
		// the queue moves on with the workers left
		next := c.submit("e2e-d", jobSpec("e2e-d", 20, 0, 0))
		c.waitJob(next, 90*time.Second, "succeeded", stateIs(pb.JobState_JOB_STATE_SUCCEEDED))
		// the worker comes back and registers again
		c.startWorker(victim)
		eventually(t, 30*time.Second, victim+" registered again", func() error {
			for _, w := range c.status().Workers {
				if w.Id == victim && w.Healthy {
					return nil
				}
			}
			return fmt.Errorf("%s not healthy", victim)
		})
	})

	t.Run("RecoveryFromCheckpoint", func(t *testing.T) {
		c.t = t
		const every = 20
		const steps = 1000
		id := c.submit("e2e-e", jobSpec("e2e-e", steps, 2, every))
		j := c.waitJob(id, 60*time.Second, "past step 80", pastStep(80))
		c.mustBeRunning(j, "the kill")
		victim := j.Placement[0].WorkerId
		killed := time.Now()
		atKill := j.Progress.GetStep()
		c.workers[victim].kill9()
		j = c.waitJob(id, 90*time.Second, "running again", func(j *pb.Job) bool {
			return j.Restarts == 1 && ranAttempts(j) >= 2
		})
		resumedAt := eventTime(j, "Running", killed.UnixNano())
		var lost int64
		how := ""
		for _, e := range j.Events {
			if e.Type == "WorkerLost" && e.UnixNano > killed.UnixNano() {
				lost, how = e.UnixNano, e.Message
				if i := strings.Index(how, " and its peers"); i > 0 {
					how = how[:i]
				}
			}
		}
		if resumedAt > 0 && lost > 0 {
			t.Logf("FIGURE recovery: kill -9 %s at step %d; loss detected %.2fs after the kill (%s); first resumed step %.2fs after that (%.2fs after the kill)",
				victim, atKill, float64(lost-killed.UnixNano())/1e9, how, float64(resumedAt-lost)/1e9, float64(resumedAt-killed.UnixNano())/1e9)
		}
		if ws := placedOn(j); strings.Contains(strings.Join(ws, ","), victim) {
			t.Errorf("resumed on the dead worker: %v", ws)
		}
		j = c.waitJob(id, 180*time.Second, "succeeded", stateIs(pb.JobState_JOB_STATE_SUCCEEDED))
		logs := c.mustCLI("job", "logs", id).stdout
		m := regexp.MustCompile(`resumed from the checkpoint of step (\d+)`).FindStringSubmatch(logs)
		if m == nil {
			t.Fatalf("the second attempt did not resume from a checkpoint:\n%s", tail(logs, 3000))
		}
		from, _ := strconv.ParseInt(m[1], 10, 64)
		// the first attempt's rank 0 wrote one metrics line per finished step
		last := lastMetricsStep(t, filepath.Join(c.storage, "jobs", id, "attempt-0", "rank-0", "metrics.jsonl"))
		t.Logf("FIGURE recovery: last step finished before the kill %d, resumed from the checkpoint of step %d: %d steps lost (checkpoint every %d)", last, from, last-from, every)
		// A save is written in the background and committed after the
		// next step, its commit overlapping training until the next save:
		// the resume point is the newest checkpoint the first attempt had
		// committed when the worker was declared lost, at most two
		// intervals (and the step the commit waits for) behind its last step.
		if committed := committedBefore(j, "WorkerLost"); from != committed {
			t.Errorf("resumed from the checkpoint of step %d; the newest committed before the worker was lost is %d", from, committed)
		}
		if last-from < 0 || last-from > 2*every+1 {
			t.Errorf("lost %d steps with a checkpoint every %d", last-from, every)
		}
		// the loss curve continues: the resumed attempt's first step is the
		// step the first attempt took after the checkpoint, bitwise
		before := metricsLosses(t, filepath.Join(c.storage, "jobs", id, "attempt-0", "rank-0", "metrics.jsonl"))
		after := metricsLosses(t, filepath.Join(c.storage, "jobs", id, "attempt-1", "rank-0", "metrics.jsonl"))
		if l0, ok := before[from+1]; ok {
			if l1 := after[from+1]; l1 != l0 {
				t.Errorf("loss at step %d: %v before the kill, %v after the resume; want identical", from+1, l0, l1)
			} else {
				t.Logf("FIGURE recovery: loss at step %d identical before the kill and after the resume (%v)", from+1, l1)
			}
		}
		types := map[string]int{}
		for _, e := range j.Events {
			types[e.Type]++
		}
		if types["Resumed"] != 1 || types["CheckpointCommitted"] == 0 || types["WorkerLost"] != 1 {
			t.Errorf("job history lacks the recovery: %v", types)
		}
		var cps apiv1.ListCheckpointsResponse
		decode(t, c.mustCLI("checkpoints", "list", id, "-o", "json"), &cps)
		if len(cps.Checkpoints) == 0 || cps.Checkpoints[0].Step != steps {
			t.Errorf("checkpoints after the run: %v", cps.Checkpoints)
		}
		// every committed checkpoint is whole on disk
		for _, cp := range cps.Checkpoints {
			var show apiv1.Checkpoint
			decode(t, c.mustCLI("checkpoints", "show", id, strconv.FormatInt(cp.Step, 10), "-o", "json"), &show)
			if len(show.Shards) == 0 {
				t.Errorf("step %d: no shards listed", cp.Step)
			}
			for _, sh := range show.Shards {
				raw, err := os.ReadFile(filepath.Join(c.storage, "checkpoints", id, fmt.Sprintf("step-%012d", cp.Step), sh.Name))
				if err != nil {
					t.Errorf("step %d shard %s: %v", cp.Step, sh.Name, err)
					continue
				}
				if sum := sha256.Sum256(raw); hex.EncodeToString(sum[:]) != sh.Sha256 || int64(len(raw)) != sh.Size {
					t.Errorf("step %d shard %s does not match its manifest", cp.Step, sh.Name)
				}
			}
		}
		// the coordinator verifies a checkpoint's shards on request, and
		// names a corrupted one
		newest := strconv.FormatInt(cps.Checkpoints[0].Step, 10)
		if r := c.mustCLI("checkpoints", "show", id, newest, "--verify"); !strings.Contains(r.stdout, "VERIFIED") || strings.Count(r.stdout, " ok") < 2 {
			t.Errorf("verify of a whole checkpoint:\n%s", r.stdout)
		}
		shard := filepath.Join(c.storage, "checkpoints", id, fmt.Sprintf("step-%012d", cps.Checkpoints[0].Step), "rank-0001", "meta.json")
		if err := os.WriteFile(shard, []byte("{}"), 0o644); err != nil {
			t.Fatal(err)
		}
		if r := c.cli("checkpoints", "show", id, newest, "--verify"); r.code != 1 || !strings.Contains(r.stdout, "rank-0001/meta.json") || !strings.Contains(r.stderr, "does not verify") {
			t.Errorf("verify of a corrupted checkpoint: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		c.startWorker(victim)
	})

	t.Run("ElasticShrink", func(t *testing.T) {
		c.t = t
		c.waitIdleWorkers(4)
		// a long job holds two workers, so a lost worker cannot be replaced
		block := c.submit("e2e-block", jobSpec("e2e-block", 1000000, 0, 0))
		c.waitJob(block, 60*time.Second, "running", startedRunning)
		spec := strings.Replace(jobSpec("e2e-el", 800, 2, 20), "parallel: {dp: 2, ep: 2}", "parallel: {dp: 2, ep: 1}\nelastic: {min_dp: 1}", 1)
		id := c.submit("e2e-el", spec)
		j := c.waitJob(id, 60*time.Second, "past step 60", pastStep(60))
		c.mustBeRunning(j, "the kill")
		victim := j.Placement[1].WorkerId
		c.workers[victim].kill9()
		j = c.waitJob(id, 120*time.Second, "succeeded", stateIs(pb.JobState_JOB_STATE_SUCCEEDED))
		if j.Restarts != 1 || j.PlacedDp != 1 || len(j.Placement) != 1 {
			t.Errorf("restarts %d, placed dp %d on %v: want one restart on one worker", j.Restarts, j.PlacedDp, placedOn(j))
		}
		shrunk := ""
		for _, e := range j.Events {
			if e.Type == "Shrunk" {
				shrunk = e.Message
			}
		}
		t.Logf("FIGURE elastic: %s", shrunk)
		if shrunk == "" {
			t.Errorf("no Shrunk event: %v", j.Events)
		}
		if logs := c.mustCLI("job", "logs", id).stdout; !strings.Contains(logs, "resumed from the checkpoint of step") {
			t.Errorf("the shrunk attempt did not resume from a checkpoint")
		}
		c.mustCLI("job", "cancel", block)
		c.waitJob(block, 30*time.Second, "cancelled", stateIs(pb.JobState_JOB_STATE_CANCELLED))
		c.startWorker(victim)
	})

	t.Run("PausedWorkersCannotCommit", func(t *testing.T) {
		c.t = t
		c.waitIdleWorkers(4)
		const steps = 800
		id := c.submit("e2e-p", jobSpec("e2e-p", steps, 2, 20))
		j := c.waitJob(id, 60*time.Second, "past step 40", pastStep(40))
		c.mustBeRunning(j, "pausing its workers")
		// Pause both workers (not their ranks): their leases expire and the
		// job moves on, while the old attempt's ranks go on training
		// together, cut off from their workers — a partition.
		old := placedOn(j)
		for _, w := range old {
			c.workers[w].signal(syscall.SIGSTOP)
		}
		j = c.waitJob(id, 60*time.Second, "running again elsewhere", func(j *pb.Job) bool {
			return j.Restarts >= 1 && ranAttempts(j) >= 2
		})
		if j.Restarts != 1 {
			t.Errorf("%d restarts: the job went to a paused worker before it moved on (%v)", j.Restarts, j.Events)
		}
		if now := placedOn(j); strings.Contains(strings.Join(now, ","), old[0]) || strings.Contains(strings.Join(now, ","), old[1]) {
			t.Errorf("attempt 1 placed on a paused worker: %v", now)
		}
		// the old attempt reaches its next checkpoint and is refused: its
		// commit, or, when the attempt ended between a commit and the
		// retention step after it, that step (the rank then stops)
		j = c.waitJob(id, 60*time.Second, "refusing the old attempt's commit or retention", func(j *pb.Job) bool {
			for _, e := range j.Events {
				if (e.Type == "CommitRefused" || e.Type == "RetireRefused") && strings.Contains(e.Message, "attempt 0 is over") {
					return true
				}
			}
			return false
		})
		for _, w := range old {
			c.workers[w].signal(syscall.SIGCONT)
		}
		j = c.waitJob(id, 120*time.Second, "succeeded", stateIs(pb.JobState_JOB_STATE_SUCCEEDED))
		// the catalogue only moved forward: each committed step is newer
		// than the one before, and the last is the final step
		var cps apiv1.ListCheckpointsResponse
		decode(t, c.mustCLI("checkpoints", "list", id, "-o", "json"), &cps)
		for i := 1; i < len(cps.Checkpoints); i++ {
			if cps.Checkpoints[i].Step >= cps.Checkpoints[i-1].Step {
				t.Errorf("catalogue order %d then %d", cps.Checkpoints[i-1].Step, cps.Checkpoints[i].Step)
			}
		}
		if len(cps.Checkpoints) == 0 || cps.Checkpoints[0].Step != steps {
			t.Errorf("checkpoints %v", cps.Checkpoints)
		}
		// the paused workers come back and register again
		eventually(t, 30*time.Second, "the paused workers healthy again", func() error {
			n := 0
			for _, w := range c.status().Workers {
				if (w.Id == old[0] || w.Id == old[1]) && w.Healthy {
					n++
				}
			}
			if n != 2 {
				return fmt.Errorf("%d of 2 back", n)
			}
			return nil
		})
	})

	t.Run("AddRemoveReplica", func(t *testing.T) {
		c.t = t
		i := c.addCoordinator("coord-4")
		c.mustCLI("cluster", "add-replica", "coord-4", c.raftAddrs[i])
		replicas := func(want int, with bool) func() error {
			return func() error {
				s := c.status()
				found := false
				for _, r := range s.Replicas {
					found = found || (r.Id == "coord-4" && r.Voter && r.Alive)
				}
				if len(s.Replicas) != want || found != with {
					return fmt.Errorf("%d replicas, coord-4 a live voter: %v", len(s.Replicas), found)
				}
				return nil
			}
		}
		eventually(t, 30*time.Second, "coord-4 a live voter", replicas(4, true))
		// the new replica has the whole history and answers reads
		var all apiv1.ListJobsResponse
		decode(t, c.mustCLI("job", "list", "-o", "json"), &all)
		eventually(t, 30*time.Second, "coord-4 caught up", func() error {
			var list apiv1.ListJobsResponse
			decode(t, runCLIAt(t, c, c.apiAddrs[i], "job", "list", "-o", "json"), &list)
			if len(list.Jobs) != len(all.Jobs) {
				return fmt.Errorf("coord-4 lists %d jobs, the cluster %d", len(list.Jobs), len(all.Jobs))
			}
			return nil
		})
		c.mustCLI("cluster", "remove-replica", "coord-4")
		eventually(t, 30*time.Second, "coord-4 removed", replicas(3, false))
	})
}

// lastMetricsStep is the step of the last complete line of a metrics.jsonl.
func lastMetricsStep(t *testing.T, path string) int64 {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var last int64 = -1
	for _, line := range strings.Split(string(raw), "\n") {
		var m struct {
			Step int64 `json:"step"`
		}
		if json.Unmarshal([]byte(line), &m) == nil && m.Step > 0 {
			last = m.Step
		}
	}
	if last < 0 {
		t.Fatalf("%s has no step", path)
	}
	return last
}

// runCLIAt runs the CLI against one replica only.
func runCLIAt(t *testing.T, c *cluster, addr string, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := runCLI(ctx, []string{"SWITCHYARD_TOKEN=" + c.token}, append(args, "--coordinator", addr)...)
	if r.code != 0 {
		t.Fatalf("switchyard %v at %s: exit %d: %s", args, addr, r.code, r.stderr)
	}
	return r
}

// metricsLosses maps step to loss from a metrics.jsonl.
func metricsLosses(t *testing.T, path string) map[int64]float64 {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		t.Fatal(err)
	}
	return readLosses(path)
}
