package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"gopkg.in/yaml.v3"

	"github.com/switchyard-ml/switchyard/pkg/data"
	"github.com/switchyard-ml/switchyard/pkg/events"
	"github.com/switchyard-ml/switchyard/pkg/fsutil"
	"github.com/switchyard-ml/switchyard/pkg/jobspec"
	"github.com/switchyard-ml/switchyard/pkg/membership"
	"github.com/switchyard-ml/switchyard/pkg/metrics"
	"github.com/switchyard-ml/switchyard/pkg/security"
	"github.com/switchyard-ml/switchyard/pkg/train"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// waitDelay bounds how long a rank's output is read after it exited (a
// grandchild may hold the pipes open).
const waitDelay = 2 * time.Second

// taskKey identifies a task: one rank of one attempt of one job.
type taskKey struct {
	jobID   string
	attempt int32
	rank    int32
}

func keyOf(t *apiv1.Task) taskKey {
	return taskKey{jobID: t.GetJobId(), attempt: t.GetAttempt(), rank: t.GetRank()}
}

// task is one rank the agent holds. def is immutable; the rest is guarded
// by mu.
type task struct {
	key  taskKey
	def  *apiv1.Task
	stop chan struct{} // closed to ask the rank to stop
	done chan struct{} // closed when the rank exited and its goroutines ended

	mu        sync.Mutex
	stopping  bool
	state     apiv1.TaskState
	message   string
	step      int64
	loss, tps float64
	gpus      []*pb.GPUStat // the ranks' GPUs at the latest step
	events    []*apiv1.TaskEvent
	// badMetrics counts the metrics lines skipped as malformed
	badMetrics int
	// toldBad is badMetrics when the history last heard of it
	toldBad int
	// peakMemory is the most memory the rank was seen to use (bytes);
	// overMemory why it was killed for using more than it asked for
	peakMemory int64
	overMemory string
	// refused: the worker would not start the rank as its task asks (a
	// refusal error); a restart would be refused too
	refused bool
}

// maxTaskEvents bounds the events a task keeps (and repeats in its status).
const maxTaskEvents = 32

// addEvent records one event line of the rank (JSON after the prefix);
// a line that does not parse is kept as the message of an "Event".
func (t *task) addEvent(raw string) {
	var ev train.Event
	if err := json.Unmarshal([]byte(raw), &ev); err != nil || ev.Type == "" {
		ev = train.Event{Type: "Event", Message: raw}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.appendEvent(ev)
}

// malformedMetrics counts n more metrics lines skipped as malformed
// (sample: why, for the first); the job's history hears of the first and
// of every tenfold count.
func (t *task) malformedMetrics(n int, sample ...string) {
	if n <= 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	before := t.badMetrics
	t.badMetrics += n
	for mark := 1; mark <= t.badMetrics; mark *= 10 {
		if before < mark {
			msg := fmt.Sprintf("%d malformed metrics line(s) skipped", t.badMetrics) // the history names the rank
			if len(sample) > 0 && sample[0] != "" {
				msg += " (" + sample[0] + ")"
			}
			t.appendEvent(train.Event{Type: "MetricsMalformed", Message: msg})
			t.toldBad = t.badMetrics
			break
		}
	}
}

// finalMalformed tells the history the whole count of malformed metrics
// lines once the rank ended, when the last tenfold mark did not.
func (t *task) finalMalformed() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.badMetrics > t.toldBad {
		t.appendEvent(train.Event{Type: "MetricsMalformed", Message: fmt.Sprintf("%d malformed metrics line(s) skipped in all", t.badMetrics)})
		t.toldBad = t.badMetrics
	}
}

// appendEvent adds ev; the caller holds t.mu.
func (t *task) appendEvent(ev train.Event) {
	seq := uint32(1)
	if n := len(t.events); n > 0 {
		seq = t.events[n-1].Seq + 1
	}
	t.events = append(t.events, &apiv1.TaskEvent{Seq: seq, Type: ev.Type, Message: ev.Message, UnixNano: time.Now().UnixNano()})
	if len(t.events) > maxTaskEvents {
		t.events = t.events[len(t.events)-maxTaskEvents:]
	}
}

func newTask(k taskKey, def *apiv1.Task) *task {
	return &task{key: k, def: def, stop: make(chan struct{}), done: make(chan struct{}), state: apiv1.TaskState_TASK_STATE_STARTING}
}

// requestStop asks the rank to stop; it reports whether this was the first
// request.
func (t *task) requestStop() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopping {
		return false
	}
	t.stopping = true
	close(t.stop)
	return true
}

func (t *task) stopRequested() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.stopping
}

func (t *task) exited() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.state == apiv1.TaskState_TASK_STATE_SUCCEEDED || t.state == apiv1.TaskState_TASK_STATE_FAILED
}

func (t *task) running() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.state == apiv1.TaskState_TASK_STATE_RUNNING
}

func (t *task) refuse() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.refused = true
}

func (t *task) setState(s apiv1.TaskState, msg string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.state, t.message = s, msg
}

// setMetrics records a step's metrics and reports whether the step is
// new: a repeated line of a step already seen (the trainer repeats its
// last step with the final evaluation) changes nothing.
func (t *task) setMetrics(step int64, loss, tps float64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if step <= t.step {
		return false
	}
	t.step, t.loss, t.tps = step, loss, tps
	return true
}

// setGPUs records the ranks' GPUs of the latest step.
func (t *task) setGPUs(gs []metrics.GPU) {
	out := make([]*pb.GPUStat, 0, len(gs))
	for _, g := range gs {
		out = append(out, &pb.GPUStat{Rank: int32(g.Rank), UtilPct: g.UtilPct, MemUsedBytes: g.MemUsedBytes, MemTotalBytes: g.MemTotalBytes, Uuid: g.UUID})
	}
	t.mu.Lock()
	t.gpus = out
	t.mu.Unlock()
}

func (t *task) status() *apiv1.TaskStatus {
	t.mu.Lock()
	defer t.mu.Unlock()
	return &apiv1.TaskStatus{
		JobId: t.key.jobID, Attempt: t.key.attempt, Rank: t.key.rank,
		State: t.state, Message: t.message, Refused: t.refused,
		Step: t.step, Loss: t.loss, TokensPerSecond: t.tps, Gpus: t.gpus,
		Events: slices.Clone(t.events),
	}
}

// refusal is an error of a task this worker will not run as given: its
// spec asks for what the worker does not allow (a path outside its
// storage, commands) or is not a valid rank of this worker. The same
// task would be refused again, so the job is not restarted for it.
type refusal struct{ err error }

func (r *refusal) Error() string { return r.err.Error() }
func (r *refusal) Unwrap() error { return r.err }

func refuse(err error) error { return &refusal{err} }

func refusef(format string, args ...any) error { return refuse(fmt.Errorf(format, args...)) }

// launch is how a task's rank is started.
type launch struct {
	runDir  string
	args    []string // after the trainer binary
	command bool     // a command job's rank (switchyard exec): its stdout carries the metrics
	env     []string // added to the rank's environment
	memory  int64    // bytes the rank may use (0: no limit): resources.memory_mib
	steps   int64    // a command job's steps: a metrics line past them is malformed (0: none declared)
}

// prepare checks the task, writes its run directory and run.yaml (the
// rank's whole configuration, jobspec's RankConfig) and builds the
// trainer's arguments: the config, the rank and, for several ranks, the
// peers.
func (a *Agent) prepare(t *apiv1.Task) (launch, error) {
	k := keyOf(t)
	if err := jobspec.ValidJobID(k.jobID); err != nil {
		return launch{}, refuse(err)
	}
	world := int(t.GetWorldSize())
	if world < 1 || k.rank < 0 || int(k.rank) >= world || k.attempt < 0 {
		return launch{}, refusef("rank %d of world %d, attempt %d: out of range", k.rank, world, k.attempt)
	}
	if world > 1 && len(t.GetPeers()) != world {
		return launch{}, refusef("%d peers for a world of %d", len(t.GetPeers()), world)
	}
	if s, n := int(t.GetSlot()), a.o.Config.SlotCount(); s < 0 || s >= n {
		return launch{}, fmt.Errorf("slot %d: this worker has %d slot(s) (was it restarted with fewer?)", s, n) // placed again, it fits
	}
	spec, err := jobspec.Parse(t.GetSpec())
	if err != nil {
		return launch{}, refusef("job spec: %w", err)
	}
	l := taskLayout(spec, t)
	if l.World() != world {
		return launch{}, refusef("layout tp %d x dp %d is not the world of %d ranks", l.TP, l.DP, world)
	}
	storage := a.o.Config.StoragePath
	host := jobspec.Host{
		RunDir:         filepath.Join(storage, "jobs", k.jobID, fmt.Sprintf("attempt-%d", k.attempt), fmt.Sprintf("rank-%d", k.rank)),
		CheckpointRoot: filepath.Join(storage, "checkpoints"),
		// the catalogue is read and written through the coordinator, which
		// refuses the commits of an attempt that is over (the token travels
		// in the environment); a rank gets no etcd endpoint
		CommitVia: a.o.Config.Coordinators,
		CommitTLS: a.o.Config.TLS,
	}
	if a.proxy != nil {
		// the rank user cannot read the worker's TLS key: through the
		// worker, with the rank's token
		host.CommitVia, host.CommitTLS = []string{a.proxy.endpoint()}, security.TLSFiles{}
	}
	if a.o.Config.DataPlaneTLS {
		host.DataPlaneTLS = a.o.Config.TLS
	}
	jt := jobspec.Task{JobID: k.jobID, Attempt: int(k.attempt), Layout: l, ResumeStep: t.GetResumeFromStep(),
		Node: jobspec.Node{Rank: int(t.GetNodeRank()), Nodes: int(t.GetNodes()), LocalRank: int(t.GetLocalRank()), LocalWorld: int(t.GetLocalWorldSize())}}
	if jt.Node.Nodes == 0 { // a coordinator that does not send them: one rank per worker
		jt.Node = jobspec.Node{Rank: int(k.rank), Nodes: world, LocalWorld: 1}
	}
	if spec.Runtime == jobspec.RuntimeCommand {
		ln, err := a.prepareCommand(t, spec, jt, host)
		ln.memory, ln.steps = a.memoryLimit(spec), int64(spec.Steps)
		return ln, err
	}
	cfg, err := spec.RankConfig(jt, host)
	if err != nil {
		return launch{}, refuse(err)
	}
	if err := a.confine(spec, cfg.Checkpoint.Dir, cfg.Data.Corpus); err != nil {
		return launch{}, err // a refusal, or an error reading the paths (not one)
	}
	if err := checkCorpus(cfg.Data.Corpus); err != nil {
		return launch{}, err
	}
	dirs := []string{host.RunDir}
	if spec.Checkpoint.Storage != jobspec.StorageS3 && a.ranks == nil {
		// s3://bucket/prefix: the rank reaches the S3 server with the
		// worker's SWITCHYARD_S3_* and AWS_* environment
		dirs = append(dirs, cfg.Checkpoint.Dir)
	}
	runYAML, err := writeRunDir(host.RunDir, dirs, cfg)
	if err != nil {
		return launch{}, err
	}
	if err := a.giveRank(host.RunDir); err != nil {
		return launch{}, err
	}
	if a.ranks != nil && spec.Checkpoint.Storage != jobspec.StorageS3 {
		// the job's own directory (checkpoint.StepPrefix) is the rank
		// user's, not the root other jobs share
		if err := a.checkpointDirs(cfg.Checkpoint.Dir, k.jobID); err != nil {
			return launch{}, err
		}
	}
	args := []string{"train", "--config", runYAML, "--rank", strconv.Itoa(int(k.rank)), "--json"}
	if world > 1 {
		// the slot's own port: a worker of several slots runs several ranks
		args = append(args, "--peers", strings.Join(t.GetPeers(), ","), "--listen", membership.SlotAddress(a.o.Config.ListenAddress, int(t.GetSlot())))
		if len(t.GetHosts()) == world {
			args = append(args, "--hosts", strings.Join(t.GetHosts(), ","))
		}
	}
	// No GOMEMLIMIT: at 90% of the demo's 1024 MiB it slowed the demo's
	// ranks (peak 518 MiB resident) from 7974 to 5622 tokens/s.
	ln := launch{runDir: host.RunDir, args: args, memory: a.memoryLimit(spec)}
	if spec.Resources.GPUs > 0 {
		// nvidia-smi's numbering, which the worker's indices are in
		ln.env = []string{"CUDA_VISIBLE_DEVICES=" + a.visibleGPUs(int(t.GetSlot()), spec.Resources.GPUs), "CUDA_DEVICE_ORDER=PCI_BUS_ID"}
	}
	return ln, nil
}

// laterRankZero says whether this worker runs rank 0 of a later attempt
// of k's job (not ended yet): the job's training series are that
// attempt's then (an old attempt's rank 0 can end after the new one's
// started here).
func (a *Agent) laterRankZero(k taskKey) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for o, t := range a.tasks {
		if o.jobID == k.jobID && o.rank == 0 && o.attempt > k.attempt && !t.exited() {
			return true
		}
	}
	return false
}

// memoryLimit is what a rank of spec may use, in bytes: its
// resources.memory_mib, unless this worker does not enforce memory.
func (a *Agent) memoryLimit(spec *jobspec.Spec) int64 {
	if !a.o.Config.EnforceMemory {
		return 0
	}
	return spec.Resources.MemoryMiB << 20
}

// confine refuses a job whose checkpoint directory or corpus lies outside
// this worker's storage_path and allowed_paths (links resolved): a job
// spec must not make the worker write, or read, wherever it names. An
// error resolving the paths (a storage hiccup) is returned as it is, not
// as a refusal: a restart may not meet it.
func (a *Agent) confine(spec *jobspec.Spec, ckptDir, corpus string) error {
	roots := append([]string{a.o.Config.StoragePath}, a.o.Config.AllowedPaths...)
	check := func(field, path string) error {
		ok, err := fsutil.Within(path, roots)
		if err != nil {
			return fmt.Errorf("%s %s: %w", field, path, err)
		}
		if !ok {
			return refusef("%s %s is outside this worker's storage_path %s and allowed_paths %v (add it to allowed_paths in the worker's config to allow it)",
				field, path, a.o.Config.StoragePath, a.o.Config.AllowedPaths)
		}
		return nil
	}
	if spec.Checkpoint.Storage != jobspec.StorageS3 {
		if err := check("checkpoint.path", ckptDir); err != nil {
			return err
		}
	}
	if corpus != "" && corpus != jobspec.DemoCorpus {
		return check("data.corpus", corpus)
	}
	return nil
}

// checkCorpus refuses a rank whose corpus ("": the demo one) it cannot
// open as the rank would (data.CheckFile: "data: open corpus: open
// /x.jsonl: no such file or directory", a directory, no permission): the
// rank would fail at its start, and every restart too. Another error (an
// I/O error of shared storage) is returned as it is: a restart may not
// meet it.
func checkCorpus(corpus string) error {
	if corpus == "" {
		return nil
	}
	err := data.CheckFile(corpus)
	if err == nil {
		return nil
	}
	for _, e := range []error{fs.ErrNotExist, fs.ErrPermission, data.ErrNotAFile, syscall.ENOTDIR, syscall.ELOOP} {
		if errors.Is(err, e) {
			return refuse(err)
		}
	}
	return err
}

// taskLayout is the attempt's layout as the coordinator sent it, the
// spec's where the task leaves a field out.
func taskLayout(spec *jobspec.Spec, t *apiv1.Task) jobspec.Layout {
	l := spec.AttemptLayout(int(t.GetDp()), int(t.GetEp()))
	if tp := int(t.GetTp()); tp > 0 {
		l.TP = tp
	}
	if acc := int(t.GetAccumulation()); acc > 0 {
		l.Accumulation = acc
	}
	if b := t.GetBalance(); b != "" {
		l.Balance = b
	}
	return l
}

// writeRunDir creates dirs (the run directory among them) and writes the
// rank's configuration as runDir/run.yaml, whose path it returns. A
// previous worker process may have left the metrics of an earlier run of
// the task: they are removed, the new run writes its own from the start.
func writeRunDir(runDir string, dirs []string, cfg any) (string, error) {
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return "", err
		}
	}
	raw, err := yaml.Marshal(cfg)
	if err != nil {
		return "", fmt.Errorf("run config: %w", err)
	}
	runYAML := filepath.Join(runDir, "run.yaml")
	if err := fsutil.WriteFileAtomic(runYAML, raw); err != nil {
		return "", err
	}
	if err := os.Remove(filepath.Join(runDir, "metrics.jsonl")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	return runYAML, nil
}

// runTask runs one task to its end: prepare, start the rank, follow its
// output (and rank 0's metrics), stop it when asked, report how it ended.
func (a *Agent) runTask(tk *task) {
	defer a.wg.Done()
	defer close(tk.done)
	defer a.kickSync()
	defer a.forgetStopped(tk)
	k := tk.key
	if k.rank == 0 {
		// however it ends (a refusal, a failed start, an exit): the job's
		// training series go, unless a later attempt's rank 0 runs here
		defer func() {
			if !a.laterRankZero(k) {
				a.tm.Forget(k.jobID)
			}
		}()
	}
	log := a.log.With("job-id", k.jobID, "attempt", k.attempt, "rank", k.rank)
	fail := func(msg string) {
		tk.setState(apiv1.TaskState_TASK_STATE_FAILED, msg)
		log.Error("task failed", "error", msg)
	}

	l, err := a.prepare(tk.def)
	if err != nil {
		var r *refusal
		if errors.As(err, &r) {
			tk.refuse()
		}
		fail(fmt.Sprintf("rank %d: %v", k.rank, err))
		return
	}
	if tk.stopRequested() {
		tk.setState(apiv1.TaskState_TASK_STATE_FAILED, fmt.Sprintf("rank %d stopped before it started", k.rank))
		return
	}

	out, err := a.openOutput(tk, l.runDir)
	if err != nil {
		fail(fmt.Sprintf("rank %d: %v", k.rank, err))
		return
	}
	defer out.close()

	instance := fmt.Sprintf("%s=%s#%s/%d/%d", InstanceEnv, a.owner, k.jobID, k.attempt, k.rank)
	cmd := exec.Command(a.trainer, l.args...)
	cmd.Dir = l.runDir
	cmd.Env = append(append(rankEnviron(os.Environ()), l.env...), train.EventsEnv+"=1", // event lines for the job's history
		OwnerEnv+"="+a.owner, // found by this worker's next run if the rank outlives it
		instance)
	if tok := security.RankToken(a.o.Token, security.RankScope{Job: k.jobID, Attempt: k.attempt, Rank: k.rank}); tok != "" {
		cmd.Env = append(cmd.Env, TokenEnv+"="+tok) // this rank's, not the worker's
	}
	cmd.Stdout, cmd.Stderr = out.stdout, out.stderr
	metricsPath := filepath.Join(l.runDir, "metrics.jsonl")
	var tap *metricsTap
	if l.command && k.rank == 0 {
		if tap, err = newMetricsTap(out.stdout, metricsPath); err != nil {
			fail(fmt.Sprintf("rank %d: %v", k.rank, err))
			return
		}
		cmd.Stdout = tap
	}
	cmd.SysProcAttr = sysProcAttr()
	if a.ranks != nil {
		cmd.SysProcAttr.Credential = a.ranks.credential()
		cmd.Env = append(cmd.Env, a.ranks.environ(l.runDir)...)
	}
	cmd.WaitDelay = waitDelay
	if err := cmd.Start(); err != nil {
		if tap != nil {
			tap.close()
		}
		fail(fmt.Sprintf("rank %d: start trainer: %v", k.rank, err))
		return
	}
	pid := cmd.Process.Pid
	tk.setState(apiv1.TaskState_TASK_STATE_RUNNING, "")
	log.Info("rank started", "pid", pid, "run-dir", l.runDir)
	a.kickSync()

	exited := make(chan struct{})
	var side sync.WaitGroup
	side.Go(func() { a.stopOnRequest(tk, pid, exited, log) })
	if k.rank == 0 {
		side.Go(func() { a.followMetrics(tk, metricsPath, l.steps, exited) })
	}
	if l.memory > 0 {
		g := memoryGuard{limit: l.memory, interval: memoryInterval, measure: groupMemory}
		side.Go(func() { g.watch(tk, pid, exited, log) })
	}
	werr := cmd.Wait()
	if errors.Is(werr, exec.ErrWaitDelay) {
		// it exited 0 (Wait says so only then), and a process it left
		// kept its output open: stopped below, not the rank's failure
		werr = nil
	}
	if n := endLeftovers(pid, instance, a.o.StopGrace, log); n > 0 {
		tk.mu.Lock()
		tk.appendEvent(train.Event{Type: "LeftoverProcesses", Message: fmt.Sprintf("rank %d ended and left %d process(es) running (started by it, in its process group or marked by its environment): stopped (SIGTERM, SIGKILL after %s)", k.rank, n, a.o.StopGrace)})
		tk.mu.Unlock()
	}
	a.wm.RankExited(cmd.ProcessState.ExitCode())
	if tap != nil {
		tap.close() // its last line, before the metrics are read a last time
		tk.malformedMetrics(tap.dropped, fmt.Sprintf("a metrics line on stdout longer than %d bytes", maxMetricsLine))
	}
	close(exited)
	side.Wait()
	if l.memory > 0 {
		tk.sawLastMemory(l.memory)
	}
	if over, _ := tk.memoryVerdict(); over != "" {
		a.wm.RankOutOfMemory()
	}
	out.stdout.flush()
	out.stderr.flush()
	if n := out.feed.flush(time.Second); n > 0 {
		log.Warn("rank log lines not published", "lines", n)
	}
	if over, _ := tk.memoryVerdict(); l.command && k.rank == 0 && werr == nil && over == "" && !tk.stopRequested() {
		a.noteUncommitted(tk, log)
	}
	ended(tk, werr, out.stderr, log)
}

// noteUncommitted gives the job's history a NoCheckpoint event when a
// command job's rank 0 finished and the job has no committed checkpoint:
// a trainer that never ran `switchyard checkpoints commit` would
// otherwise succeed without a word, its output left in staging. Asked
// before the rank's success is reported, so the event comes with it.
func (a *Agent) noteUncommitted(tk *task, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := a.o.Client.ListCheckpoints(ctx, &apiv1.ListCheckpointsRequest{JobId: tk.key.jobID})
	if err != nil {
		if status.Code(err) != codes.Unimplemented { // a coordinator without a catalogue
			log.Warn("could not ask whether the job committed a checkpoint", "error", err)
		}
		return
	}
	for _, c := range resp.GetCheckpoints() {
		if c.GetStatus() == "committed" { // not "deleting"
			return
		}
	}
	tk.mu.Lock()
	defer tk.mu.Unlock()
	tk.appendEvent(train.Event{Type: "NoCheckpoint", Message: "the trainer finished without committing a checkpoint (`switchyard checkpoints commit --step N DIR`): what it wrote is not in the catalogue, and a later resume or delete cannot see it"})
}

// ended records how the rank's process ended (werr from Wait).
func ended(tk *task, werr error, stderr *lineWriter, log *slog.Logger) {
	over, peak := tk.memoryVerdict()
	if peak > 0 {
		log = log.With("peak-memory", fsutil.Size(peak))
	}
	if over != "" {
		tk.setState(apiv1.TaskState_TASK_STATE_FAILED, over)
		log.Error("rank failed", "error", over)
		return
	}
	if werr == nil {
		tk.setState(apiv1.TaskState_TASK_STATE_SUCCEEDED, "")
		log.Info("rank succeeded")
		return
	}
	msg := exitMessage(tk.key.rank, werr, stderr.reason())
	tk.setState(apiv1.TaskState_TASK_STATE_FAILED, msg)
	if tk.stopRequested() {
		log.Info("rank stopped", "status", msg)
		return
	}
	log.Error("rank failed", "error", msg, "stderr", strings.Join(stderr.tailLines(), "\n"))
}

// rankOutput is a rank's stdout and stderr: kept as files in its run
// directory and forwarded line by line as log lines, except stderr's event
// lines, which go to the task's history.
type rankOutput struct {
	files          []*os.File
	stdout, stderr *lineWriter
	feed           *logFeed
}

func (a *Agent) openOutput(tk *task, runDir string) (*rankOutput, error) {
	o := &rankOutput{}
	for _, name := range []string{"stdout.log", "stderr.log"} {
		f, err := createFresh(filepath.Join(runDir, name))
		if err != nil {
			o.close()
			return nil, err
		}
		o.files = append(o.files, f)
	}
	k := tk.key
	o.feed = &logFeed{
		publish: func(stream, line string) error { return a.publishLog(k, stream, line) },
		whole:   fmt.Sprintf("%s (stdout.log, stderr.log) on worker %s", runDir, a.o.Config.ID),
	}
	o.stdout = newLineWriter(o.files[0], 0, func(line string) { o.feed.line("stdout", line) })
	o.stderr = newLineWriter(o.files[1], stderrTail, func(line string) {
		if ev, ok := strings.CutPrefix(line, train.EventPrefix); ok {
			tk.addEvent(ev)
			return
		}
		o.feed.line("stderr", line)
	})
	o.stderr.aside = train.EventPrefix // an event is not why a rank failed
	return o, nil
}

func (o *rankOutput) close() {
	for _, f := range o.files {
		f.Close()
	}
}

// exitMessage says how a rank ended: "rank 1 exited with exit status 1:
// <last stderr line>" or "rank 1 killed by signal 9 (SIGKILL)".
func exitMessage(rank int32, err error, lastLine string) string {
	var msg string
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			msg = fmt.Sprintf("rank %d killed by %s", rank, signalName(ws.Signal()))
		} else {
			msg = fmt.Sprintf("rank %d exited with %v", rank, ee)
		}
	default:
		msg = fmt.Sprintf("rank %d: %v", rank, err)
	}
	if lastLine != "" {
		msg += ": " + lastLine
	}
	return msg
}

// signalNames are the signals that end ranks, by the names kill(1) and
// the kernel's logs use (Go's own names read "killed", "terminated").
var signalNames = map[syscall.Signal]string{
	syscall.SIGHUP: "SIGHUP", syscall.SIGINT: "SIGINT", syscall.SIGQUIT: "SIGQUIT", syscall.SIGILL: "SIGILL",
	syscall.SIGTRAP: "SIGTRAP", syscall.SIGABRT: "SIGABRT", syscall.SIGBUS: "SIGBUS", syscall.SIGFPE: "SIGFPE",
	syscall.SIGKILL: "SIGKILL", syscall.SIGUSR1: "SIGUSR1", syscall.SIGSEGV: "SIGSEGV", syscall.SIGUSR2: "SIGUSR2",
	syscall.SIGPIPE: "SIGPIPE", syscall.SIGALRM: "SIGALRM", syscall.SIGTERM: "SIGTERM", syscall.SIGXCPU: "SIGXCPU",
	syscall.SIGXFSZ: "SIGXFSZ", syscall.SIGSYS: "SIGSYS",
}

// signalName is "signal 9 (SIGKILL)", or "signal 34" for one without a
// name here.
func signalName(sig syscall.Signal) string {
	if n, ok := signalNames[sig]; ok {
		return fmt.Sprintf("signal %d (%s)", int(sig), n)
	}
	return fmt.Sprintf("signal %d", int(sig))
}

// stopOnRequest sends SIGTERM to the rank's process group when the task is
// asked to stop, and SIGKILL after StopGrace, unless it exited first.
func (a *Agent) stopOnRequest(tk *task, pid int, exited <-chan struct{}, log *slog.Logger) {
	select {
	case <-exited:
		return
	case <-tk.stop:
	}
	log.Info("stopping rank", "pid", pid, "grace", a.o.StopGrace)
	if err := syscall.Kill(-pid, syscall.SIGTERM); err != nil {
		log.Debug("sigterm", "error", err)
	}
	t := time.NewTimer(a.o.StopGrace)
	defer t.Stop()
	select {
	case <-exited:
	case <-t.C:
		log.Warn("rank did not stop within the grace period; killing it", "pid", pid)
		if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil {
			log.Debug("sigkill", "error", err)
		}
	}
}

// endLeftovers stops what a rank that ended left running (leftovers: its
// process group pgid, and the processes marked with instance, which a
// setsid or a daemon's double fork takes out of the group): SIGTERM, then
// SIGKILL to what is left after grace. A trainer's helpers would
// otherwise outlive a cancelled, failed or finished rank and hold its
// ports, GPUs and files when the next attempt starts. It returns how many
// processes it found.
func endLeftovers(pgid int, instance string, grace time.Duration, log *slog.Logger) int {
	left := leftovers(pgid, instance)
	if len(left) == 0 {
		return 0
	}
	signal := func(sig syscall.Signal, pids []int) {
		syscall.Kill(-pgid, sig) //nolint:errcheck // an empty group is fine
		for _, p := range pids {
			syscall.Kill(p, sig) //nolint:errcheck // gone already is fine
		}
	}
	log.Warn("the rank ended and left processes running: stopping them", "pids", left, "grace", grace)
	signal(syscall.SIGTERM, left)
	for deadline := time.Now().Add(grace); time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		if len(leftovers(pgid, instance)) == 0 {
			return len(left)
		}
	}
	rest := leftovers(pgid, instance)
	log.Warn("processes the rank left did not stop within the grace period; killing them", "pids", rest)
	signal(syscall.SIGKILL, rest)
	return len(left)
}

// publishLog publishes one log line of a rank; the error is the bus's
// (events.ErrDropped when its buffer is full).
func (a *Agent) publishLog(k taskKey, stream, line string) error {
	if a.o.Bus == nil {
		return nil
	}
	return a.o.Bus.Publish(events.Message{Kind: events.KindLog, JobID: k.jobID, Log: &events.LogLine{
		Rank: int(k.rank), WorkerID: a.o.Config.ID, Stream: stream, Line: line,
	}})
}
