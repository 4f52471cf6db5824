package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/jobstate"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// python is Debian's interpreter with python3-torch (.ci/run installs it).
const python = "/usr/bin/python3"

// TestCommandJob runs people's own trainers: the PyTorch MoE example
// (examples/torch-moe, gloo on CPU) as a 2-rank command job through a real
// cluster, killed mid-job and resumed from its committed checkpoint; and
// the command runtime's failures, each named in the job's status.
func TestCommandJob(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end cluster test: not in -short")
	}
	if out, err := exec.Command(python, "-c", "import torch, torch.distributed as d; assert d.is_gloo_available()").CombinedOutput(); err != nil {
		t.Fatalf("the command-runtime e2e needs PyTorch with gloo at %s (Debian: apt-get install python3-torch; .ci/run does): %v\n%s", python, err, out)
	}
	example, err := filepath.Abs("../examples/torch-moe")
	if err != nil {
		t.Fatal(err)
	}
	c := startCluster(t, 1, "w1", "w2", "w3")
	corpus := writeCorpus(t, filepath.Join(c.dir, "corpus.jsonl"))
	torchSpec := func(name string, steps, every, restarts int, extra ...string) string {
		args := append([]string{"train.py", "--expect-env", "--corpus", corpus, "--steps", strconv.Itoa(steps), "--ckpt-every", strconv.Itoa(every),
			"--dim", "64", "--layers", "2", "--heads", "2", "--experts", "4", "--top-k", "2", "--hidden", "64", "--seq-len", "64", "--micro-batch", "4", "--accumulation", "2"}, extra...)
		quoted, _ := json.Marshal(args)
		return fmt.Sprintf(`name: %s
runtime: command
command: %s
args: %s
working_dir: %s
env: {OMP_NUM_THREADS: "1"}
ranks: 2
steps: %d
resources: {cpu_cores: 1, memory_mib: 512}
checkpoint: {keep_last: 3}
restart: {max_restarts: %d, backoff_seconds: 12}
`, name, python, quoted, example, steps, restarts)
	}
	c.waitIdleWorkers(3)

	t.Run("TorchKillResume", func(t *testing.T) {
		c.t = t
		const steps, every = 60, 5
		id := c.submit("torch-a", torchSpec("torch-a", steps, every, 2, "--sleep-per-step", "0.15"))
		watch := start(t, "watch", c.env(), bins.switchyard, "job", "watch", id)
		j := c.waitJob(id, 120*time.Second, "past step 22", pastStep(22))
		c.mustBeRunning(j, "the kill")
		victim := j.Placement[1].WorkerId
		killed := time.Now()
		c.workers[victim].kill9()
		// Once the worker is declared lost the attempt is over (no later
		// commit lands); the restart waits out the 12s backoff. Meanwhile
		// the newest committed checkpoint is damaged: the resume must
		// verify, find it changed and fall back to the one before.
		c.waitJob(id, 60*time.Second, "worker lost", func(j *pb.Job) bool { return eventTime(j, "WorkerLost", killed.UnixNano()) > 0 })
		var cps apiv1.ListCheckpointsResponse
		decode(t, c.mustCLI("checkpoints", "list", id, "-o", "json"), &cps)
		if len(cps.Checkpoints) < 2 {
			t.Fatalf("%d checkpoints committed: want >= 2", len(cps.Checkpoints))
		}
		damaged := cps.Checkpoints[0].Step
		var show apiv1.Checkpoint
		decode(t, c.mustCLI("checkpoints", "show", id, strconv.FormatInt(damaged, 10), "-o", "json"), &show)
		f := filepath.Join(c.storage, "checkpoints", id, fmt.Sprintf("step-%012d", damaged), show.Shards[0].Name)
		if err := os.WriteFile(f, []byte("changed after the commit"), 0o644); err != nil {
			t.Fatal(err)
		}
		if j := c.job(id).Job; ranAttempts(j) != 1 {
			t.Fatalf("the job was running again before the checkpoint was damaged (%d attempts ran): raise the backoff", ranAttempts(j))
		}
		j = c.waitJob(id, 180*time.Second, "succeeded", stateIs(pb.JobState_JOB_STATE_SUCCEEDED))
		if j.Restarts != 1 {
			t.Errorf("%d restarts, want 1", j.Restarts)
		}
		logs := c.mustCLI("job", "logs", id).stdout
		hist := c.mustCLI("job", "status", id).stdout
		m := regexp.MustCompile(`resumed from the checkpoint of step (\d+)`).FindStringSubmatch(hist + logs)
		if m == nil {
			t.Fatalf("the second attempt did not resume from a checkpoint:\n%s\n%s", hist, tail(logs, 3000))
		}
		from, _ := strconv.ParseInt(m[1], 10, 64)
		if from >= damaged || from < every {
			t.Errorf("resumed from step %d; the newest checkpoint (%d) was damaged, want the one before", from, damaged)
		}
		if !strings.Contains(hist, fmt.Sprintf("checkpoint of step %d unusable", damaged)) {
			t.Errorf("the damaged checkpoint of step %d is not reported in the job's history:\n%s", damaged, hist)
		}
		before := metricsLosses(t, filepath.Join(c.storage, "jobs", id, "attempt-0", "rank-0", "metrics.jsonl"))
		after := metricsLosses(t, filepath.Join(c.storage, "jobs", id, "attempt-1", "rank-0", "metrics.jsonl"))
		same := 0
		for s := from + 1; s <= steps; s++ {
			l0, ok := before[s]
			if !ok {
				break
			}
			if l1, ok := after[s]; !ok || l1 != l0 {
				t.Errorf("loss at step %d: %v before the kill, %v after the resume; want identical", s, l0, after[s])
			}
			same++
		}
		if same == 0 || len(after) != int(steps-from) {
			t.Errorf("compared %d steps after the resume point %d; the resumed attempt reported %d steps", same, from, len(after))
		}
		t.Logf("FIGURE command job: kill -9 %s at step %d, %.1fs to SUCCEEDED; resumed from step %d (step %d damaged, skipped); %d steps identical to the first attempt's, bitwise",
			victim, j.Progress.GetStep(), time.Since(killed).Seconds(), from, damaged, same)
		// job watch showed the trainer's step metrics
		select {
		case <-watch.done:
		case <-time.After(30 * time.Second):
			t.Fatal("job watch did not end with the job")
		}
		if out := watch.out.String(); !strings.Contains(out, "loss") || !strings.Contains(out, fmt.Sprintf("step %d/%d", steps, steps)) {
			t.Errorf("job watch lacks the step metrics:\n%s", tail(out, 2000))
		}
		decode(t, c.mustCLI("checkpoints", "list", id, "-o", "json"), &cps)
		if len(cps.Checkpoints) != 3 || cps.Checkpoints[0].Step != steps {
			t.Errorf("checkpoints after the run (keep_last 3): %v", cps.Checkpoints)
		}
		if r := c.mustCLI("checkpoints", "show", id, strconv.FormatInt(steps, 10), "--verify"); !strings.Contains(r.stdout, "VERIFIED") {
			t.Errorf("verify of the last checkpoint:\n%s", r.stdout)
		}
		// a commit from the attempt that is over is refused, and commits
		// nothing
		stale := filepath.Join(c.storage, "jobs", id, "attempt-0", "rank-0", "run.yaml")
		dir := filepath.Join(c.dir, "stale-ckpt")
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "model.pt"), []byte("stale"), 0o644)
		r := runCLI(ctxS(60), append(c.env(), "SWITCHYARD_RUN_CONFIG="+stale), "checkpoints", "commit", "--step", strconv.Itoa(steps+1), dir)
		if r.code == 0 || !strings.Contains(r.stderr, "attempt 0 is over") {
			t.Errorf("commit from attempt 0 after the job ended: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		// the job is deleted only with its checkpoints, whose files go too
		if r := c.cli("job", "delete", id); r.code == 0 || !strings.Contains(r.stderr, "delete them first") {
			t.Errorf("job delete of a job with checkpoints: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		c.mustCLI("job", "delete", id, "--checkpoints")
		if r := c.cli("checkpoints", "list", id); r.code != 3 {
			t.Errorf("checkpoints list of the deleted job: exit %d, want 3 (not found)\n%s", r.code, r.stderr)
		}
		if left, _ := filepath.Glob(filepath.Join(c.storage, "checkpoints", id, "step-*")); len(left) != 0 {
			t.Errorf("checkpoint files left after job delete --checkpoints: %v", left)
		}
		c.startWorker(victim)
	})

	t.Run("BadInput", func(t *testing.T) {
		c.t = t
		c.waitIdleWorkers(3)
		notExec := filepath.Join(c.dir, "not-executable.sh")
		os.WriteFile(notExec, []byte("#!/bin/sh\necho hi\n"), 0o644)
		for _, tc := range []struct {
			name, spec, want string
		}{
			{"cmd-missing", "name: cmd-missing\nruntime: command\ncommand: no-such-trainer\nranks: 2\nrestart: {max_restarts: 0}\n", `command \"no-such-trainer\" not found in the rank's PATH`},
			{"cmd-noexec", fmt.Sprintf("name: cmd-noexec\nruntime: command\ncommand: %s\nrestart: {max_restarts: 0}\n", notExec), "is not executable"},
			{"cmd-fails", strings.Replace(torchSpec("cmd-fails", 10, 0, 0, "--fail-at-start"), "name: cmd-fails", "name: cmd-fails", 1), "exited with exit status 3"},
		} {
			id := c.submit(tc.name, tc.spec)
			j := c.waitJob(id, 90*time.Second, "failed", stateIs(pb.JobState_JOB_STATE_FAILED))
			st := c.mustCLI("job", "status", id).stdout
			if !regexp.MustCompile(regexp.QuoteMeta(strings.ReplaceAll(tc.want, `\"`, `"`))).MatchString(st) {
				t.Errorf("%s: job status does not say %q:\n%s", tc.name, tc.want, st)
			}
			t.Logf("FIGURE bad input %s: %s: %s", tc.name, j.Reason, j.Message)
		}
		// a path no worker allows: the job is not placed, and waits
		// naming the path (a worker that allows it may join); nothing
		// is made there
		const refusedWhy = "allowing /etc/switchyard-refused (storage_path or allowed_paths); the cluster has no such workers"
		id := c.submit("cmd-refused", "name: cmd-refused\nruntime: command\ncommand: /bin/true\nranks: 2\ncheckpoint: {path: /etc/switchyard-refused}\nrestart: {max_restarts: 2, backoff_seconds: 0}\n")
		j := c.waitJob(id, 60*time.Second, "pending naming the path", func(j *pb.Job) bool { return strings.Contains(jobstate.PendingReason(j), refusedWhy) })
		if st := c.mustCLI("job", "status", id).stdout; j.State != pb.JobState_JOB_STATE_PENDING || len(j.Placement) != 0 || !strings.Contains(st, refusedWhy) {
			t.Errorf("a job whose path no worker allows: %v, placed on %v; job status:\n%s", j.State, j.Placement, st)
		}
		t.Logf("FIGURE bad input cmd-refused: %s", jobstate.PendingReason(j))
		c.mustCLI("job", "cancel", id)
		if _, err := os.Stat("/etc/switchyard-refused"); err == nil {
			t.Error("/etc/switchyard-refused was made")
		}
		// the cancelled job, which never committed a checkpoint, is
		// deleted; its ID is not given to another job
		c.mustCLI("job", "delete", id)
		if r := c.cli("job", "status", id); r.code != 3 {
			t.Errorf("job status of a deleted job: exit %d, want 3 (not found)\n%s", r.code, r.stderr)
		}
		again := filepath.Join(t.TempDir(), "again.yaml")
		if err := os.WriteFile(again, []byte("name: cmd-refused\nruntime: command\ncommand: /bin/true\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if r := c.cli("job", "submit", "--id", id, again); r.code == 0 || !strings.Contains(r.stderr, "the ID of a deleted job") {
			t.Errorf("a job submitted under a deleted ID: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		// a trainer that never commits: the restarted attempt says it
		// starts from the beginning
		id = c.submit("cmd-nocommit", torchSpec("cmd-nocommit", 400, 5, 1, "--never-commit", "--sleep-per-step", "0.05"))
		j = c.waitJob(id, 120*time.Second, "past step 5", pastStep(5))
		c.mustBeRunning(j, "the kill")
		killed := j.Placement[0].WorkerId
		c.workers[killed].kill9()
		c.waitJob(id, 120*time.Second, "running again", func(j *pb.Job) bool { return j.Restarts == 1 && ranAttempts(j) >= 2 })
		eventually(t, 60*time.Second, "the NoCheckpoint event", func() error {
			if st := c.mustCLI("job", "status", id).stdout; !strings.Contains(st, "no checkpoint committed") {
				return fmt.Errorf("not yet:\n%s", st)
			}
			return nil
		})
		c.mustCLI("job", "cancel", id)
		c.startWorker(killed)
	})

	t.Run("RankTokens", func(t *testing.T) {
		c.t = t
		c.waitIdleWorkers(3)
		script := filepath.Join(c.dir, "rank-token.sh")
		if err := os.WriteFile(script, []byte(rankTokenScript), 0o755); err != nil {
			t.Fatal(err)
		}
		id := c.submit("cmd-tokens", fmt.Sprintf("name: cmd-tokens\nruntime: command\ncommand: %s\nranks: 2\nrestart: {max_restarts: 0}\n", script))
		j := c.waitJob(id, 90*time.Second, "ended", func(j *pb.Job) bool { return jobstate.Final(j.State) })
		logs := c.mustCLI("job", "logs", id).stdout
		if j.State != pb.JobState_JOB_STATE_SUCCEEDED {
			t.Fatalf("the ranks' token checks: %s (%s)\n%s", j.State, j.Message, tail(logs, 3000))
		}
		var cps apiv1.ListCheckpointsResponse
		decode(t, c.mustCLI("checkpoints", "list", id, "-o", "json"), &cps)
		if len(cps.Checkpoints) != 1 || cps.Checkpoints[0].Step != 1 {
			t.Errorf("checkpoints %v: want rank 0's step 1 only", cps.Checkpoints)
		}
		for _, want := range []string{"rank 1: commit refused: ", "rank 0: job list refused: ", "rank 0: committed step 1"} {
			if !strings.Contains(logs, want) {
				t.Errorf("the logs do not say %q:\n%s", want, tail(logs, 3000))
			}
		}
		t.Logf("FIGURE rank tokens: %s", regexp.MustCompile(`rank 1: commit refused: [^\n]*`).FindString(logs))
		c.mustCLI("job", "delete", id, "--checkpoints")
	})

	t.Run("RankUser", func(t *testing.T) {
		c.t = t
		if os.Geteuid() != 0 {
			t.Fatalf("a worker with rank_user runs as root; this test runs as uid %d", os.Geteuid())
		}
		// the test's directories are its user's alone (0700): the rank
		// user must reach the storage, the binaries and the script
		for _, d := range []string{c.storage, bins.dir} {
			for p := d; p != os.TempDir() && p != "/"; p = filepath.Dir(p) {
				if err := os.Chmod(p, 0o755); err != nil {
					t.Fatal(err)
				}
			}
		}
		script := filepath.Join(c.dir, "rank-user.sh")
		if err := os.WriteFile(script, []byte(rankUserScript), 0o755); err != nil {
			t.Fatal(err)
		}
		c.workerConfig = map[string]string{"w4": "rank_user: \"65534:65534\"\n"}
		c.workerPorts["w4"] = freePortRun(t, 1)
		c.startWorker("w4")
		defer c.workers["w4"].stop()
		id := c.submit("cmd-user", fmt.Sprintf("name: cmd-user\nruntime: command\ncommand: %s\nplacement: {host_labels: {rank_user: \"true\"}}\nrestart: {max_restarts: 0}\n", script))
		j := c.waitJob(id, 90*time.Second, "ended", func(j *pb.Job) bool { return jobstate.Final(j.State) })
		logs := c.mustCLI("job", "logs", id).stdout
		if j.State != pb.JobState_JOB_STATE_SUCCEEDED || j.Placement[0].WorkerId != "w4" {
			t.Fatalf("the rank user's checks on %s: %s (%s)\n%s", j.Placement[0].WorkerId, j.State, j.Message, tail(logs, 3000))
		}
		var cps apiv1.ListCheckpointsResponse
		decode(t, c.mustCLI("checkpoints", "list", id, "-o", "json"), &cps)
		if len(cps.Checkpoints) != 1 {
			t.Fatalf("checkpoints %v: want the rank's step 1", cps.Checkpoints)
		}
		files, _ := filepath.Glob(filepath.Join(c.storage, "checkpoints", id, "step-*", "*"))
		for _, f := range files {
			if st, err := os.Stat(f); err != nil || st.Sys().(*syscall.Stat_t).Uid != 65534 {
				t.Errorf("checkpoint file %s: %v, want the rank user's", f, err)
			}
		}
		if len(files) == 0 {
			t.Errorf("no checkpoint files under %s", filepath.Join(c.storage, "checkpoints", id))
		}
		t.Logf("FIGURE rank user: %s", regexp.MustCompile(`rank user: [^\n]*`).FindString(logs))
		c.mustCLI("job", "delete", id, "--checkpoints")

		// an engine job too: its rank writes and commits its checkpoints
		// as the rank user
		spec := strings.Replace(jobSpec("engine-user", 6, 0, 3), "parallel: {dp: 2, ep: 2}", "parallel: {dp: 1, ep: 1}\nplacement: {host_labels: {rank_user: \"true\"}}", 1)
		id = c.submit("engine-user", spec)
		j = c.waitJob(id, 120*time.Second, "ended", func(j *pb.Job) bool { return jobstate.Final(j.State) })
		if j.State != pb.JobState_JOB_STATE_SUCCEEDED {
			t.Fatalf("an engine job as the rank user: %s (%s)\n%s", j.State, j.Message, tail(c.mustCLI("job", "logs", id).stdout, 3000))
		}
		files, _ = filepath.Glob(filepath.Join(c.storage, "checkpoints", id, "step-*", "*"))
		if len(files) == 0 {
			t.Errorf("the engine job left no checkpoint files")
		}
		for _, f := range files {
			if st, err := os.Stat(f); err != nil || st.Sys().(*syscall.Stat_t).Uid != 65534 {
				t.Errorf("checkpoint file %s: %v, want the rank user's", f, err)
			}
		}
		c.mustCLI("job", "delete", id, "--checkpoints")
	})
}

// rankUserScript is a command job's rank on a worker with rank_user: it
// runs as that user, cannot read its worker's environment (where the
// worker's token is), reaches the coordinator through its worker (which
// relays nothing but the catalogue's calls), and commits a checkpoint it
// wrote.
const rankUserScript = `#!/bin/sh
set -u
fail() { echo "rank user: $*" >&2; exit 1; }
[ "$(id -u)" = 65534 ] || fail "runs as uid $(id -u)"
[ "$(cat /proc/$PPID/comm)" = worker ] || fail "the parent is $(cat /proc/$PPID/comm), not the worker"
if cat /proc/$PPID/environ > /dev/null 2>&1; then fail "read the worker's environment"; fi
case "$SWITCHYARD_COORDINATOR" in unix://*) ;; *) fail "reaches the coordinator at $SWITCHYARD_COORDINATOR, not through the worker" ;; esac
if switchyard job list > /dev/null 2>&1; then fail "listed the cluster's jobs through the worker"; fi
if switchyard checkpoints commit --step 1 "$SWITCHYARD_CHECKPOINT_DIR" > /dev/null 2>&1; then fail "committed the staging directory itself"; fi
mkdir "$SWITCHYARD_CHECKPOINT_DIR/step-1" && echo "weights" > "$SWITCHYARD_CHECKPOINT_DIR/step-1/model.bin" || fail "cannot write in $SWITCHYARD_CHECKPOINT_DIR"
switchyard checkpoints commit --step 1 "$SWITCHYARD_CHECKPOINT_DIR/step-1" || fail "commit failed"
echo "rank user: uid $(id -u) in $HOME, the worker's environment unreadable, committed step 1"
`

// rankTokenScript is a command job's rank that checks what its token
// lets it do: it is a rank token, not the worker's; it cannot list the
// cluster's jobs; rank 1 cannot commit even with a run.yaml that says
// rank 0 (the CLI's own check bypassed: the coordinator refuses by the
// token); rank 0 commits.
const rankTokenScript = `#!/bin/sh
set -u
fail() { echo "rank $RANK: $*" >&2; exit 1; }
case "$SWITCHYARD_TOKEN" in sy-rank.*) ;; *) fail "SWITCHYARD_TOKEN is not a rank token" ;; esac
out=$(mktemp)
if switchyard job list > "$out" 2>&1; then fail "listed the cluster's jobs: $(cat "$out")"; fi
grep -q "may only read, commit and retire its job's checkpoints" "$out" || fail "job list: $(cat "$out")"
echo "rank $RANK: job list refused: $(tail -n 1 "$out")"
dir=$(mktemp -d)
echo "weights of rank $RANK" > "$dir/model.bin"
if [ "$RANK" = 1 ]; then
	sed 's/^rank: 1$/rank: 0/' "$SWITCHYARD_RUN_CONFIG" > "$dir.yaml"
	grep -q '^rank: 0$' "$dir.yaml" || fail "no rank line in $SWITCHYARD_RUN_CONFIG"
	if switchyard checkpoints commit --config "$dir.yaml" --retry-for 0 --step 100 "$dir" > "$out" 2>&1; then fail "committed as rank 0: $(cat "$out")"; fi
	grep -q "cannot act for rank 0" "$out" || fail "commit: $(cat "$out")"
	echo "rank 1: commit refused: $(tail -n 1 "$out")"
	exit 0
fi
switchyard checkpoints commit --step 1 "$dir" || fail "commit failed"
echo "rank 0: committed step 1"
`

// writeCorpus writes a small multi-domain corpus (Go source of this
// repository, its Markdown, and generated arithmetic) as the trainer's
// JSONL.
func writeCorpus(t *testing.T, path string) string {
	t.Helper()
	var b strings.Builder
	add := func(domain, source, text string) {
		line, _ := json.Marshal(map[string]string{"domain": domain, "source": source, "text": text})
		b.Write(line)
		b.WriteByte('\n')
	}
	for _, glob := range []struct{ domain, pattern string }{{"code_go", "../pkg/*/*.go"}, {"english", "../*.md"}} {
		files, _ := filepath.Glob(glob.pattern)
		for _, f := range files {
			raw, err := os.ReadFile(f)
			if err == nil {
				add(glob.domain, f, string(raw))
			}
		}
	}
	var m strings.Builder
	for i := 1; i < 4000; i++ {
		fmt.Fprintf(&m, "%d + %d = %d. %d * %d = %d.\n", i, 2*i+1, 3*i+1, i, i%17, i*(i%17))
	}
	add("math", "generated", m.String())
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestTorchExample runs the PyTorch example's own tests: its LBL against
// the golden vectors, a 2-process gloo run resumed bitwise from a
// checkpoint, its environment checks.
func TestTorchExample(t *testing.T) {
	if testing.Short() {
		t.Skip("runs PyTorch processes: not in -short")
	}
	cmd := exec.Command(python, "-m", "unittest", "-v")
	cmd.Dir = "../examples/torch-moe"
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("examples/torch-moe tests (%s -m unittest; Debian's python3-torch): %v\n%s", python, err, out)
	}
	t.Logf("examples/torch-moe: %s", tail(string(out), 400))
}
