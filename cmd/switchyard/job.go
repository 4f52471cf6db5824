package main

// switchyard job: submit, list, status, logs, watch, plot, cancel, resume.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-ml/switchyard/pkg/client"
	"github.com/switchyard-ml/switchyard/pkg/fsutil"
	"github.com/switchyard-ml/switchyard/pkg/jobspec"
	"github.com/switchyard-ml/switchyard/pkg/jobstate"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	coordinatorv1 "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

func (c *cli) cmdJob(ctx context.Context, args []string) error {
	return c.group(ctx, "job", args, []command{
		{"submit", "SPEC.yaml [--id ID] [--watch]", "validate the spec, submit it and print the job ID (--watch: then watch it)", c.jobSubmit},
		{"check", "SPEC.yaml", "validate the spec without a cluster and show its layout and what each rank needs (host memory, the GPU engine's device memory)", c.jobCheck},
		{"list", "[--state pending,running,...]", "list jobs", c.jobList},
		{"status", "ID", "show a job: state, conditions, progress, placement, events", c.jobStatus},
		{"logs", "[-f] ID", "print a job's log lines (-f: follow until the job ends)", c.jobLogs},
		{"watch", "ID", "follow a job's progress until it ends (exit 0: succeeded, 1: failed or cancelled)", c.jobWatch},
		{"plot", "ID --out DIR [--storage DIR]", "draw the job's pictures from rank 0's metrics so far (PNG and SVG): loss, LBL, tokens/s, expert load per layer; with --storage the domain x expert heat maps", c.jobPlot},
		{"cancel", "ID [--message TEXT]", "cancel a job", c.jobCancel},
		{"resume", "ID [--from STEP]", "restart a job from a committed checkpoint (default: the newest)", c.jobResume},
		{"delete", "ID [--checkpoints]", "remove a job that has ended, and its history, once it has no checkpoint (--checkpoints: delete them first); its ID is not used again", c.jobDelete},
	})
}

func (c *cli) jobSubmit(ctx context.Context, name string, args []string) error {
	fs, r := c.flags(name)
	id := fs.String("id", "", "job ID (idempotency key; default: the spec's name plus a random suffix, chosen here so that retries cannot submit twice)")
	watch := fs.Bool("watch", false, "watch the job after submitting it (the exit status is job watch's)")
	pos, err := c.parse(fs, r, args, 1, 1)
	if err != nil {
		return err
	}
	raw, sp, err := readSpec("job submit", pos[0])
	if err != nil {
		return err
	}
	if *id == "" {
		*id = jobspec.NewJobID(sp.Name)
	}
	cl, err := r.dial()
	if err != nil {
		return err
	}
	defer cl.Close() // kept open for --watch
	resp, err := unaryOn(ctx, r, cl, "job submit", func(ctx context.Context, cl *client.Client) (*apiv1.SubmitJobResponse, error) {
		return cl.SubmitJob(ctx, &apiv1.SubmitJobRequest{Spec: raw, JobId: *id})
	})
	if err != nil {
		return err
	}
	job := resp.GetJob()
	if r.json() {
		if err := printProto(c.out, job, *watch); err != nil {
			return err
		}
	} else {
		if !resp.GetCreated() {
			fmt.Fprintf(c.errOut, "job %s already exists with this spec (state %s)\n", job.GetId(), jobstate.Name(job.GetState()))
		}
		fmt.Fprintln(c.out, job.GetId())
	}
	if !*watch {
		return nil
	}
	return c.watch(ctx, r, cl, job.GetId())
}

// readSpec reads and validates the job spec at path; its errors are usage
// errors that name what (the command) and the file.
func readSpec(what, path string) ([]byte, *jobspec.Spec, error) {
	raw, err := fsutil.ReadFile(path, jobspec.MaxSize)
	if err != nil {
		return nil, nil, usageError{fmt.Errorf("%s: %w", what, err)}
	}
	sp, err := jobspec.Parse(raw)
	if err != nil {
		return nil, nil, usageError{fmt.Errorf("%s: %s is not a valid job spec:\n  %s", what, path, strings.ReplaceAll(err.Error(), "\n", "\n  "))}
	}
	return raw, sp, nil
}

func (c *cli) jobList(ctx context.Context, name string, args []string) error {
	fs, r := c.flags(name)
	stateFlag := fs.String("state", "", "only jobs in these comma-separated states (pending, placed, running, succeeded, failed, cancelled)")
	if _, err := c.parse(fs, r, args, 0, 0); err != nil {
		return err
	}
	states, err := parseStates(*stateFlag)
	if err != nil {
		return usageError{err}
	}
	resp := &apiv1.ListJobsResponse{}
	for token := ""; ; { // every page
		page, err := unary(ctx, r, "job list", func(ctx context.Context, cl *client.Client) (*apiv1.ListJobsResponse, error) {
			return cl.ListJobs(ctx, &apiv1.ListJobsRequest{States: states, PageToken: token})
		})
		if err != nil {
			return err
		}
		resp.Jobs = append(resp.Jobs, page.GetJobs()...)
		if token = page.GetNextPageToken(); token == "" {
			break
		}
	}
	if r.json() {
		return printProto(c.out, resp, false)
	}
	t := newTable(c.out, "", "ID", "NAME", "STATE", "STEP/TOTAL", "LOSS", "WORKERS", "RESTARTS", "AGE")
	for _, j := range resp.GetJobs() {
		p := j.GetProgress()
		t.row(j.GetId(), orDash(j.GetName()), jobstate.Name(j.GetState()), stepTotal(p.GetStep(), p.GetTotalSteps()),
			fmtLoss(p.GetStep(), p.GetLoss()), fmt.Sprintf("%d/%d", len(j.GetPlacement()), j.GetWorldSize()),
			j.GetRestarts(), c.age(j.GetSubmittedUnixNano()))
	}
	return t.flush()
}

func (c *cli) jobStatus(ctx context.Context, name string, args []string) error {
	fs, r := c.flags(name)
	pos, err := c.parse(fs, r, args, 1, 1)
	if err != nil {
		return err
	}
	id := pos[0]
	resp, err := unary(ctx, r, "job status "+id, getJob(id))
	if err != nil {
		return err
	}
	if r.json() {
		return printProto(c.out, resp, false)
	}
	c.printJob(resp.GetJob(), resp.GetPendingReason())
	return nil
}

// getJob is the GetJob call of `job status` and of the end of a watch.
func getJob(id string) func(context.Context, *client.Client) (*apiv1.GetJobResponse, error) {
	return func(ctx context.Context, cl *client.Client) (*apiv1.GetJobResponse, error) {
		return cl.GetJob(ctx, &apiv1.GetJobRequest{JobId: id})
	}
}

// printJob is the `job status` view of a job.
func (c *cli) printJob(j *coordinatorv1.Job, pendingReason string) {
	w := c.out
	fmt.Fprintf(w, "Job:         %s\n", j.GetId())
	fmt.Fprintf(w, "Name:        %s\n", orDash(j.GetName()))
	fmt.Fprintf(w, "State:       %s\n", stateLine(j))
	if pendingReason != "" {
		fmt.Fprintf(w, "Pending:     %s\n", pendingReason)
	}
	fmt.Fprintf(w, "Priority:    %d\n", j.GetPriority())
	fmt.Fprintf(w, "World size:  %d\n", j.GetWorldSize())
	fmt.Fprintf(w, "Submitted:   %s (%s ago)\n", fmtTime(j.GetSubmittedUnixNano()), c.age(j.GetSubmittedUnixNano()))
	if j.GetFinishedUnixNano() != 0 {
		fmt.Fprintf(w, "Finished:    %s (%s ago)\n", fmtTime(j.GetFinishedUnixNano()), c.age(j.GetFinishedUnixNano()))
	}
	fmt.Fprintf(w, "Restarts:    %d\n", j.GetRestarts())

	p := j.GetProgress()
	fmt.Fprintf(w, "Step:        %s", stepTotal(p.GetStep(), p.GetTotalSteps()))
	if t := p.GetTotalSteps(); t > 0 {
		fmt.Fprintf(w, " (%.1f%%)", 100*float64(min(p.GetStep(), t))/float64(t))
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "Loss:        %s\n", fmtLoss(p.GetStep(), p.GetLoss()))
	fmt.Fprintf(w, "Tokens/s:    %s\n", fmtRate(p.GetTokensPerSecond()))
	etaText := "-"
	if !jobstate.Final(j.GetState()) {
		if d, ok := eta(p.GetStep(), p.GetTotalSteps(), tokensPerStep(j), p.GetTokensPerSecond()); ok {
			etaText = fmtDuration(d) + " (remaining steps x tokens per step / tokens/s)"
		} else if d, ok := stepRateETA(j); ok {
			// a command job's tokens per step are its trainer's own
			etaText = fmtDuration(d) + " (remaining steps at the attempt's step rate)"
		}
	}
	fmt.Fprintf(w, "ETA:         %s\n", etaText)
	for i, g := range p.GetGpus() {
		label := "GPUs:"
		if i > 0 {
			label = ""
		}
		fmt.Fprintf(w, "%-12s rank %d: %s\n", label, g.GetRank(), fmtGPU(g))
	}
	if p.GetUpdatedUnixNano() != 0 {
		fmt.Fprintf(w, "Updated:     %s ago\n", c.age(p.GetUpdatedUnixNano()))
	}

	fmt.Fprintln(w, "\nConditions:")
	if len(j.GetConditions()) == 0 {
		fmt.Fprintln(w, "  (none)")
	} else {
		t := newTable(w, "  ", "TYPE", "STATUS", "REASON", "MESSAGE", "SINCE")
		for _, cd := range j.GetConditions() {
			t.row(cd.GetType(), cd.GetStatus(), orDash(cd.GetReason()), orDash(cd.GetMessage()), c.age(cd.GetLastTransitionUnixNano()))
		}
		t.flush()
	}

	fmt.Fprintln(w, "\nPlacement:")
	if len(j.GetPlacement()) == 0 {
		fmt.Fprintln(w, "  (none)")
	} else {
		t := newTable(w, "  ", "RANK", "WORKER")
		for _, a := range j.GetPlacement() {
			t.row(a.GetRank(), a.GetWorkerId())
		}
		t.flush()
	}

	fmt.Fprintln(w, "\nEvents:")
	if n := j.GetEventsDropped(); n > 0 {
		fmt.Fprintf(w, "  (%d earlier events dropped)\n", n)
	}
	if len(j.GetEvents()) == 0 {
		fmt.Fprintln(w, "  (none)")
		return
	}
	t := newTable(w, "  ", "TIME", "TYPE", "WORKER", "MESSAGE")
	for _, e := range j.GetEvents() {
		t.row(fmtTime(e.GetUnixNano()), e.GetType(), orDash(e.GetWorkerId()), e.GetMessage())
	}
	t.flush()
}

// stateLine is "FAILED (WorkerLost: worker w-3 lease expired)".
func stateLine(j *coordinatorv1.Job) string {
	return jobstate.Name(j.GetState()) + stateWhy(j)
}

// stateWhy is " (WorkerLost: worker w-3 lease expired)", the reason and
// message of the job's state; "" when it has neither.
func stateWhy(j *coordinatorv1.Job) string {
	switch {
	case j.GetReason() != "" && j.GetMessage() != "":
		return fmt.Sprintf(" (%s: %s)", j.GetReason(), j.GetMessage())
	case j.GetReason() != "" || j.GetMessage() != "":
		return fmt.Sprintf(" (%s%s)", j.GetReason(), j.GetMessage())
	}
	return ""
}

func fmtRate(tokPerSec float64) string {
	if tokPerSec <= 0 || math.IsNaN(tokPerSec) {
		return "-"
	}
	return fmt.Sprintf("%.0f", tokPerSec)
}

// tokensPerStep is the tokens one optimizer step of the job's current
// attempt trains on (jobspec's TokensPerStep, what pkg/train counts in
// tokens/s): an elastic job resized after a restart runs with its placed
// dp (or world_size / parallel.tp) and the accumulation that keeps its
// global batch. 0 when the spec does not parse.
func tokensPerStep(j *coordinatorv1.Job) float64 {
	s, err := jobspec.Parse(j.GetSpec())
	if err != nil {
		return 0
	}
	dp := int(j.GetPlacedDp())
	if w := int(j.GetWorldSize()); dp == 0 && w > 0 && w%s.Parallel.TP == 0 {
		dp = w / s.Parallel.TP
	}
	return s.TokensPerStep(s.AttemptLayout(dp, int(j.GetPlacedEp())))
}

// stepRateETA is the time the remaining steps take at the rate of the
// current attempt's steps: from its first reported step (the history's
// "Running: FirstStep: step N reported") to the newest progress.
func stepRateETA(j *coordinatorv1.Job) (time.Duration, bool) {
	p := j.GetProgress()
	evs := j.GetEvents()
	for i := len(evs) - 1; i >= 0; i-- {
		var first int64
		if evs[i].GetType() != "Running" {
			continue
		}
		if _, err := fmt.Sscanf(evs[i].GetMessage(), "FirstStep: step %d reported", &first); err != nil {
			continue
		}
		steps, secs := p.GetStep()-first, float64(p.GetUpdatedUnixNano()-evs[i].GetUnixNano())/1e9
		if p.GetTotalSteps() <= 0 || steps <= 0 || secs <= 0 {
			return 0, false
		}
		left := float64(max(p.GetTotalSteps()-p.GetStep(), 0)) * secs / float64(steps)
		return time.Duration(left * float64(time.Second)), true
	}
	return 0, false
}

// eta is the time the remaining steps take at the current rate:
// (total - step) * tokensPerStep / tokensPerSecond.
func eta(step, total int64, tokensPerStep, tokensPerSecond float64) (time.Duration, bool) {
	if total <= 0 || tokensPerStep <= 0 || !(tokensPerSecond > 0) || math.IsInf(tokensPerSecond, 0) {
		return 0, false
	}
	secs := float64(max(total-step, 0)) * tokensPerStep / tokensPerSecond
	if secs > float64(math.MaxInt64/int64(time.Second)) {
		return 0, false
	}
	return time.Duration(secs * float64(time.Second)), true
}

func (c *cli) jobLogs(ctx context.Context, name string, args []string) error {
	fs, r := c.flags(name)
	follow := fs.Bool("f", false, "follow: keep printing until the job ends")
	pos, err := c.parse(fs, r, args, 1, 1)
	if err != nil {
		return err
	}
	id := pos[0]
	cl, err := r.dial()
	if err != nil {
		return err
	}
	defer cl.Close()
	op := "job logs " + id
	req := &apiv1.JobLogsRequest{JobId: id, Follow: *follow}
	var stream apiv1.Coordinator_JobLogsClient
	if *follow {
		var cancel context.CancelFunc
		stream, cancel, err = openStream(ctx, r, func(sctx context.Context) (apiv1.Coordinator_JobLogsClient, error) {
			return cl.JobLogs(sctx, req)
		})
		defer cancel()
	} else {
		// Without -f the history is bounded: the whole call has the deadline.
		cctx, cancel := r.call(ctx)
		defer cancel()
		stream, err = cl.JobLogs(cctx, req)
	}
	if err != nil {
		return callError(op, r, err)
	}
	for {
		e, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return callError(op, r, err)
		}
		if r.json() {
			if err := printProto(c.out, e, true); err != nil {
				return err
			}
			continue
		}
		line := strings.TrimRight(e.GetLine(), "\n")
		if e.GetWorkerId() != "" {
			fmt.Fprintf(c.out, "[rank %d worker %s] %s\n", e.GetRank(), e.GetWorkerId(), line)
		} else {
			fmt.Fprintf(c.out, "[rank %d] %s\n", e.GetRank(), line)
		}
	}
}

func (c *cli) jobWatch(ctx context.Context, name string, args []string) error {
	fs, r := c.flags(name)
	pos, err := c.parse(fs, r, args, 1, 1)
	if err != nil {
		return err
	}
	cl, err := r.dial()
	if err != nil {
		return err
	}
	defer cl.Close()
	return c.watch(ctx, r, cl, pos[0])
}

// jobEndedError: the watched job failed or was cancelled (exit 1).
type jobEndedError struct{ job *coordinatorv1.Job }

func (e jobEndedError) Error() string {
	return fmt.Sprintf("job %s %s", e.job.GetId(), stateLine(e.job))
}

// maxWatchReopens bounds how often in a row watch reopens a stream that
// broke with UNAVAILABLE (the replica it was on went away) having sent at
// most one message (the current record, which every stream starts with).
const maxWatchReopens = 5

// watcher is the state of one `job watch`.
type watcher struct {
	c       *cli
	job     *coordinatorv1.Job
	tokStep float64 // tokens per step from the spec, 0: unknown
	last    *apiv1.StepMetrics
	load    *apiv1.StepMetrics // the last metrics that carried expert_load
	first   *apiv1.StepMetrics // first metrics seen, and when: the fallback rate
	firstAt time.Time
	drawn   bool // a progress line is on screen (tty)
	// seenSeq is the newest history event accounted for: the first
	// record's are the past (job status shows them), later ones are
	// printed as they arrive
	seenSeq uint64
}

// watch streams WatchJob until the job ends, then prints the final state
// and the expert load; a failed or cancelled job is a jobEndedError.
func (c *cli) watch(ctx context.Context, r *remoteFlags, cl *client.Client, id string) error {
	op := "job watch " + id
	w := &watcher{c: c}
	defer w.endLine()
	for broken := 0; ; {
		n, err := w.stream(ctx, r, cl, id)
		if err == nil {
			break
		}
		if n > 1 {
			broken = 0
		}
		if status.Code(err) != codes.Unavailable || broken >= maxWatchReopens || ctx.Err() != nil {
			return callError(op, r, err)
		}
		broken++
		w.endLine()
		fmt.Fprintf(c.errOut, "watch: stream broke (%s); reopening\n", status.Convert(err).Message())
		select {
		case <-ctx.Done():
			return callError(op, r, status.FromContextError(ctx.Err()).Err())
		case <-time.After(time.Duration(broken) * 100 * time.Millisecond):
		}
	}
	// The stream ends when the job does; if the last record seen is not
	// final, ask for the record once.
	if w.job == nil || !jobstate.Final(w.job.GetState()) {
		resp, err := unaryOn(ctx, r, cl, op, getJob(id))
		if err != nil {
			return err
		}
		if r.json() {
			if err := printProto(c.out, &apiv1.WatchJobResponse{Job: resp.GetJob()}, true); err != nil {
				return err
			}
		} else if w.job != nil {
			w.endLine()
			w.printEvents(resp.GetJob(), true)
		}
		w.job = resp.GetJob()
	}
	w.endLine()
	j := w.job
	if !r.json() {
		fmt.Fprintf(c.out, "job %s %s\n", j.GetId(), stateLine(j))
		if w.load != nil {
			fmt.Fprintf(c.out, "\nexpert load at step %d (share of routed tokens; 1/E is balanced):\n", w.load.GetStep())
			printExpertLoad(c.out, w.load.GetExpertLoad())
		}
	}
	switch j.GetState() {
	case coordinatorv1.JobState_JOB_STATE_SUCCEEDED:
		return nil
	case coordinatorv1.JobState_JOB_STATE_FAILED, coordinatorv1.JobState_JOB_STATE_CANCELLED:
		return jobEndedError{j}
	}
	return fmt.Errorf("%s: the watch ended while the job is %s", op, jobstate.Name(j.GetState()))
}

// stream runs one WatchJob stream to its end and returns how many
// messages arrived.
func (w *watcher) stream(ctx context.Context, r *remoteFlags, cl *client.Client, id string) (n int, err error) {
	s, cancel, err := openStream(ctx, r, func(sctx context.Context) (apiv1.Coordinator_WatchJobClient, error) {
		return cl.WatchJob(sctx, &apiv1.WatchJobRequest{JobId: id})
	})
	if err != nil {
		return 0, err
	}
	defer cancel()
	for ; ; n++ {
		msg, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		if r.json() {
			if err := printProto(w.c.out, msg, true); err != nil {
				return n, err
			}
		}
		if j := msg.GetJob(); j != nil {
			w.onJob(j, r.json())
		}
		if m := msg.GetMetrics(); m != nil {
			w.onMetrics(m, r.json())
		}
	}
}

func (w *watcher) onJob(j *coordinatorv1.Job, quiet bool) {
	prev := w.job
	w.job = j
	if w.tokStep == 0 {
		w.tokStep = tokensPerStep(j)
	}
	why := jobstate.PendingReason(j)
	changed := prev == nil || prev.GetState() != j.GetState() || prev.GetRestarts() != j.GetRestarts() || jobstate.PendingReason(prev) != why
	if quiet {
		return
	}
	var after []string // events newer than the state line's move
	if prev == nil {
		w.skipEvents(j) // the history so far: job status has it
	} else if w.hasNewEvents(j) {
		w.endLine()
		after = w.printEvents(j, changed)
	}
	if !changed {
		if w.c.tty && w.last != nil && !w.drawn {
			w.draw()
		}
		return
	}
	w.endLine()
	line := fmt.Sprintf("%s job %s %s", stateTime(j, w.c.now()).Format("15:04:05"), j.GetId(), stateLine(j))
	if j.GetRestarts() > 0 {
		line += ", " + plural(int(j.GetRestarts()), "restart")
	}
	if why != "" {
		line += "; waiting: " + why // the scheduler's reason, as it changes
	}
	fmt.Fprintln(w.c.out, line)
	for _, l := range after {
		fmt.Fprintln(w.c.out, l)
	}
	if w.c.tty && w.last != nil {
		w.draw() // put the progress line back under the state line
	}
}

// quietEvents are history events a watch does not print: a committed
// checkpoint (as often as every step) and each rank's memory peak (one
// per rank at every attempt's end); job status shows them.
var quietEvents = map[string]bool{"CheckpointCommitted": true, "MemoryPeak": true}

// skipEvents marks j's history as seen.
func (w *watcher) skipEvents(j *coordinatorv1.Job) {
	if evs := j.GetEvents(); len(evs) > 0 {
		w.seenSeq = max(w.seenSeq, evs[len(evs)-1].GetSeq())
	}
}

func (w *watcher) hasNewEvents(j *coordinatorv1.Job) bool {
	evs := j.GetEvents()
	return len(evs) > 0 && evs[len(evs)-1].GetSeq() > w.seenSeq
}

// printEvents prints, one line each, j's history events newer than the
// last update's: why the job restarted (RankFailed, WorkerLost,
// OutOfMemory), what the new attempt resumed from (Resumed,
// CheckpointUnusable), a state it passed through between two updates.
// The move into j's state is left to the state line when one follows
// (stateLine), and the events after that move are returned to print
// after it, in time order; quietEvents are left out.
func (w *watcher) printEvents(j *coordinatorv1.Job, stateLineFollows bool) (after []string) {
	evs := j.GetEvents()
	current := -1 // the event of j's move into its state
	if stateLineFollows {
		for i := len(evs) - 1; i >= 0 && evs[i].GetSeq() > w.seenSeq; i-- {
			if evs[i].GetType() == stateEventType(j.GetState()) {
				current = i
				break
			}
		}
	}
	for i, e := range evs {
		if e.GetSeq() <= w.seenSeq || i == current || quietEvents[e.GetType()] {
			continue
		}
		at := w.c.now()
		if e.GetUnixNano() > 0 {
			at = time.Unix(0, e.GetUnixNano())
		}
		line := fmt.Sprintf("%s job %s %s: %s", at.Format("15:04:05"), j.GetId(), e.GetType(), e.GetMessage())
		if wk := e.GetWorkerId(); wk != "" {
			line += " (worker " + wk + ")"
		}
		if current >= 0 && i > current {
			after = append(after, line) // after the state line, in time order
		} else {
			fmt.Fprintln(w.c.out, line)
		}
	}
	w.skipEvents(j)
	return after
}

// stateTime is when j moved into its state, from its history (a watch
// of a job that ended long ago prints when it ended); now when the
// history does not say.
func stateTime(j *coordinatorv1.Job, now time.Time) time.Time {
	evs, typ := j.GetEvents(), stateEventType(j.GetState())
	for i := len(evs) - 1; i >= 0; i-- {
		if evs[i].GetType() == typ && evs[i].GetUnixNano() > 0 {
			return time.Unix(0, evs[i].GetUnixNano())
		}
	}
	return now
}

// stateEventType is the type of the history event of a job's move into
// state st ("Pending", "Running", ...: the coordinator's state store).
func stateEventType(st coordinatorv1.JobState) string {
	name := jobstate.Lower(st)
	if name == "" {
		return ""
	}
	return strings.ToUpper(name[:1]) + name[1:]
}

func (w *watcher) onMetrics(m *apiv1.StepMetrics, quiet bool) {
	if w.first == nil || m.GetStep() < w.first.GetStep() {
		w.first, w.firstAt = m, w.c.now()
	}
	w.last = m
	if len(m.GetExpertLoad()) > 0 {
		w.load = m
	}
	if !quiet {
		w.draw()
	}
}

// draw shows the last metrics: a redrawn line on a terminal, a new line
// otherwise.
func (w *watcher) draw() {
	m := w.last
	total := w.job.GetProgress().GetTotalSteps()
	var b strings.Builder
	fmt.Fprintf(&b, "step %s", stepTotal(m.GetStep(), total))
	if w.c.tty {
		pct := 0.0
		if total > 0 {
			pct = 100 * float64(min(m.GetStep(), total)) / float64(total)
		}
		fmt.Fprintf(&b, " %s %3.0f%%", bar(m.GetStep(), total, 24), pct)
	}
	fmt.Fprintf(&b, "  loss %s", fmtLoss(m.GetStep(), m.GetLoss()))
	if !m.GetNoLbl() { // a command job's trainer may report none
		fmt.Fprintf(&b, "  lbl %.4g", m.GetLbl())
	}
	fmt.Fprintf(&b, "  tok/s %s  ETA %s", fmtRate(m.GetTokensPerSecond()), w.eta(total))
	if u := m.GetGpuUtilPct(); len(u) > 0 {
		var parts []string
		for _, v := range u {
			if v < 0 {
				parts = append(parts, "-")
			} else {
				parts = append(parts, fmt.Sprintf("%.0f%%", v))
			}
		}
		fmt.Fprintf(&b, "  gpu %s", strings.Join(parts, " "))
	}
	if w.c.tty {
		fmt.Fprintf(w.c.out, "\r\033[K%s", b.String())
		w.drawn = true
		return
	}
	fmt.Fprintln(w.c.out, b.String())
}

// eta: from tokens per step (spec) and tokens/s when both are known,
// else from the step rate seen since the watch started.
func (w *watcher) eta(total int64) string {
	m := w.last
	if d, ok := eta(m.GetStep(), total, w.tokStep, m.GetTokensPerSecond()); ok {
		return fmtDuration(d)
	}
	el := w.c.now().Sub(w.firstAt).Seconds()
	done := float64(m.GetStep() - w.first.GetStep())
	if total <= 0 || el <= 0 || done <= 0 {
		return "-"
	}
	return fmtDuration(time.Duration(float64(total-m.GetStep()) * el / done * float64(time.Second)))
}

// endLine ends a redrawn progress line.
func (w *watcher) endLine() {
	if w.drawn {
		fmt.Fprintln(w.c.out)
		w.drawn = false
	}
}

// printExpertLoad is one row per MoE layer, one column per expert, shares
// in percent, and the largest share over the mean (1.00 is balanced).
func printExpertLoad(out io.Writer, layers []*apiv1.ExpertLoad) {
	experts := 0
	for _, l := range layers {
		experts = max(experts, len(l.GetShare()))
	}
	header := []string{"LAYER"}
	for e := range experts {
		header = append(header, fmt.Sprintf("E%d", e))
	}
	header = append(header, "MAX/MEAN")
	t := newTable(out, "  ", header...)
	for i, l := range layers {
		row := []any{i}
		var sum float64
		for e := range experts {
			if e < len(l.GetShare()) {
				row = append(row, fmt.Sprintf("%.1f%%", 100*l.GetShare()[e]))
				sum += l.GetShare()[e]
			} else {
				row = append(row, "-")
			}
		}
		imb := "-"
		if n := len(l.GetShare()); n > 0 && sum > 0 {
			imb = fmt.Sprintf("%.2f", slices.Max(l.GetShare())/(sum/float64(n)))
		}
		t.row(append(row, imb)...)
	}
	t.flush()
}

func (c *cli) jobCancel(ctx context.Context, name string, args []string) error {
	fs, r := c.flags(name)
	msg := fs.String("message", "", "why (recorded with the job)")
	pos, err := c.parse(fs, r, args, 1, 1)
	if err != nil {
		return err
	}
	id := pos[0]
	resp, err := unary(ctx, r, "job cancel "+id, func(ctx context.Context, cl *client.Client) (*apiv1.CancelJobResponse, error) {
		return cl.CancelJob(ctx, &apiv1.CancelJobRequest{JobId: id, Message: *msg})
	})
	if err != nil {
		return err
	}
	if r.json() {
		return printProto(c.out, resp.GetJob(), false)
	}
	fmt.Fprintf(c.out, "job %s %s\n", id, stateLine(resp.GetJob()))
	return nil
}

func (c *cli) jobDelete(ctx context.Context, name string, args []string) error {
	fs, r := c.flags(name)
	withCheckpoints := fs.Bool("checkpoints", false, "delete the job's checkpoints first (without it the job is kept while it has any)")
	pos, err := c.parse(fs, r, args, 1, 1)
	if err != nil {
		return err
	}
	id := pos[0]
	resp, err := unary(ctx, r, "job delete "+id, func(ctx context.Context, cl *client.Client) (*apiv1.DeleteJobResponse, error) {
		return cl.DeleteJob(ctx, &apiv1.DeleteJobRequest{JobId: id, WithCheckpoints: *withCheckpoints})
	})
	if err != nil {
		return err
	}
	if r.json() {
		return printProto(c.out, resp.GetJob(), false)
	}
	fmt.Fprintf(c.out, "job %s deleted (it was %s)\n", id, stateLine(resp.GetJob()))
	return nil
}

func (c *cli) jobResume(ctx context.Context, name string, args []string) error {
	fs, r := c.flags(name)
	from := fs.Int64("from", 0, "committed checkpoint step to resume from (0: the newest)")
	pos, err := c.parse(fs, r, args, 1, 1)
	if err != nil {
		return err
	}
	if *from < 0 {
		return usageError{fmt.Errorf("--from %d: must be >= 0", *from)}
	}
	id := pos[0]
	resp, err := unary(ctx, r, "job resume "+id, func(ctx context.Context, cl *client.Client) (*apiv1.ResumeJobResponse, error) {
		return cl.ResumeJob(ctx, &apiv1.ResumeJobRequest{JobId: id, FromStep: *from})
	})
	if err != nil {
		return err
	}
	if r.json() {
		return printProto(c.out, resp.GetJob(), false)
	}
	// the coordinator's message says what it resumes from (no
	// checkpoint: step 0)
	fmt.Fprintf(c.out, "job %s: %s\n", id, stateLine(resp.GetJob()))
	return nil
}

// fmtGPU is "87% busy, 41.2 of 80.0 GiB in use (GPU-...)".
func fmtGPU(g *coordinatorv1.GPUStat) string {
	s := fmt.Sprintf("%.0f%% busy, %.1f of %.1f GiB in use", g.GetUtilPct(), float64(g.GetMemUsedBytes())/(1<<30), float64(g.GetMemTotalBytes())/(1<<30))
	if u := g.GetUuid(); u != "" {
		s += " (" + u + ")"
	}
	return s
}
