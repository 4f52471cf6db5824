package main

// switchyard exec: one rank of a command job (runtime: command). The worker
// starts it with the rank's run.yaml; it finds the checkpoint to resume
// from, sets the rank's torchrun-compatible environment and replaces
// itself with the job's program (same process, so the worker's signals and
// exit status are the program's).

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/agent"
	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
	"github.com/switchyard-ml/switchyard/pkg/fsutil"
	"github.com/switchyard-ml/switchyard/pkg/jobspec"
	"github.com/switchyard-ml/switchyard/pkg/train"
)

// Environment variables of a command rank besides torchrun's.
const (
	envJobID         = "SWITCHYARD_JOB_ID"
	envAttempt       = "SWITCHYARD_ATTEMPT"
	envCheckpointDir = "SWITCHYARD_CHECKPOINT_DIR"
	envResumeDir     = "SWITCHYARD_RESUME_DIR"
	envResumeStep    = "SWITCHYARD_RESUME_STEP"
	envRunConfig     = "SWITCHYARD_RUN_CONFIG"
	envMetricsFile   = "SWITCHYARD_METRICS_FILE"
	envBin           = "SWITCHYARD_BIN"
)

// Exit statuses of a program that could not be started (as a shell's).
const (
	exitNotExecutable   = 126
	exitCommandNotFound = 127
)

func cmdExec(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("exec", flag.ContinueOnError)
	path := fs.String("config", "", "the rank's run.yaml (written by its worker)")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	// what it logs before it becomes the program is marked: the worker
	// does not take it for the program's last words when the rank fails
	slog.SetDefault(slog.New(slog.NewTextHandler(prefixedLog{agent.ExecLogPrefix, os.Stderr}, nil)))
	cfg, err := loadCommandConfig(*path)
	if err != nil {
		return usageError{err}
	}
	resume, err := resumePoint(ctx, cfg, os.Stderr)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	env := rankEnv(cfg, *path, self, resume, os.Environ())
	prog, err := fsutil.LookProgram(cfg.Command, cfg.WorkingDir, envValue(env, "PATH"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "switchyard exec: %v\n", err)
		os.Exit(lookExitCode(err))
	}
	if err := os.Chdir(cfg.WorkingDir); err != nil {
		return fmt.Errorf("working_dir: %w", err)
	}
	err = syscall.Exec(prog, append([]string{cfg.Command}, cfg.Args...), env)
	code := exitNotExecutable
	if errors.Is(err, os.ErrNotExist) {
		code = exitCommandNotFound
	}
	fmt.Fprintf(os.Stderr, "switchyard exec: start %s: %v%s\n", prog, err, missingInterpreter(prog, err))
	os.Exit(code)
	return nil
}

// prefixedLog writes each write (a log record, one line) after prefix.
type prefixedLog struct {
	prefix string
	w      io.Writer
}

func (p prefixedLog) Write(b []byte) (int, error) {
	if _, err := p.w.Write(append([]byte(p.prefix), b...)); err != nil {
		return 0, err
	}
	return len(b), nil
}

// missingInterpreter explains an ENOENT from execve of a program that is
// there: the interpreter its #! line names is not (", its interpreter
// ... does not exist on this worker"); else "".
func missingInterpreter(prog string, err error) string {
	if !errors.Is(err, os.ErrNotExist) {
		return ""
	}
	f, oerr := os.Open(prog)
	if oerr != nil {
		return ""
	}
	defer f.Close()
	head := make([]byte, 256)
	n, _ := io.ReadFull(f, head)
	line, _, _ := strings.Cut(string(head[:n]), "\n")
	interp, ok := strings.CutPrefix(line, "#!")
	if !ok {
		return ""
	}
	fields := strings.Fields(interp)
	if len(fields) == 0 {
		return " (its #! line names no interpreter)"
	}
	if _, serr := os.Stat(fields[0]); serr == nil {
		return ""
	}
	return fmt.Sprintf(" (the program is there; its interpreter %s, named by its #! line, does not exist on this worker)", fields[0])
}

// loadCommandConfig reads a command rank's run.yaml strictly.
func loadCommandConfig(path string) (*jobspec.CommandConfig, error) {
	if path == "" {
		return nil, errors.New("--config is required")
	}
	raw, err := fsutil.ReadFile(path, jobspec.MaxCommandConfig)
	if err != nil {
		return nil, err
	}
	c, err := jobspec.ParseCommandConfig(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// resumeAt is the committed checkpoint a rank starts from (step 0: none).
type resumeAt struct {
	step int64
	dir  string
}

// resumePoint is the checkpoint the rank starts from. Rank 0 decides
// (decideResume) and writes its decision into the attempt's staging
// directory; the other ranks read it there, so that every rank starts from
// the same step and the checkpoint is read once.
func resumePoint(ctx context.Context, cfg *jobspec.CommandConfig, events io.Writer) (resumeAt, error) {
	path := filepath.Join(cfg.StagingDir(), resumeDecision)
	if cfg.Rank != 0 {
		return awaitResume(ctx, cfg, path)
	}
	r, err := decideResume(ctx, cfg, events)
	if err != nil {
		return resumeAt{}, err
	}
	raw, _ := json.Marshal(r.decision())
	if err := fsutil.WriteFileAtomic(path, raw); err != nil {
		return resumeAt{}, fmt.Errorf("resume decision for the other ranks: %w", err)
	}
	return r, nil
}

// resumeDecision is the file of rank 0's decision in the staging directory.
const resumeDecision = "resume.json"

type resumeFile struct {
	Step int64  `json:"step"` // 0: from the beginning
	Dir  string `json:"dir,omitempty"`
}

func (r resumeAt) decision() resumeFile { return resumeFile{Step: r.step, Dir: r.dir} }

// awaitResume waits for rank 0's decision (it lands on the shared
// checkpoint storage), up to resumeWait.
func awaitResume(ctx context.Context, cfg *jobspec.CommandConfig, path string) (resumeAt, error) {
	ctx, cancel := context.WithTimeout(ctx, resumeWait)
	defer cancel()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		raw, err := os.ReadFile(path)
		if err == nil {
			var d resumeFile
			if err := json.Unmarshal(raw, &d); err != nil || d.Step < 0 {
				return resumeAt{}, fmt.Errorf("rank 0's resume decision %s: malformed (%v)", path, err)
			}
			return resumeAt{step: d.Step, dir: d.Dir}, nil
		}
		select {
		case <-ctx.Done():
			return resumeAt{}, fmt.Errorf("rank 0's resume decision did not appear in %s within %v: the job's workers must share its checkpoint storage (checkpoint.path or their storage_path)", path, resumeWait)
		case <-t.C:
		}
	}
}

// resumeWait bounds how long a rank waits for rank 0's resume decision
// (rank 0 verifies the checkpoint first: every byte is read).
var resumeWait = 10 * time.Minute

// decideResume (rank 0) opens the job's checkpoints and picks the one to
// resume from: the coordinator's resume step, else the newest committed
// one that verifies (older ones are tried when one does not: each is
// announced, and dropped). It first tidies: it finishes interrupted
// deletions, removes files of checkpoints never committed and the staging
// directories of earlier attempts, and (resuming from a named step)
// deletes the newer ones.
func decideResume(ctx context.Context, cfg *jobspec.CommandConfig, events io.Writer) (resumeAt, error) {
	st, err := checkpoint.NewDirStorage(cfg.Checkpoint.Dir)
	if err != nil {
		return resumeAt{}, err
	}
	cat, closeCat, err := openCatalogue(cfg.Checkpoint)
	if err != nil {
		return resumeAt{}, err
	}
	defer closeCat()
	if cat == nil {
		cat = checkpoint.NewStorageCatalogue(st)
	}
	mgr := checkpoint.NewManager(st, cat, slog.Default())
	job := cfg.Job
	tidyCommandJob(ctx, mgr, cfg)
	var m checkpoint.Manifest
	if s := cfg.Checkpoint.ResumeStep; s > 0 {
		if m, err = cat.Get(ctx, job, s); err == nil {
			err = checkpoint.Verify(ctx, st, checkpoint.StepPrefix(job, s), m)
		}
		if err != nil {
			return resumeAt{}, fmt.Errorf("resume from step %d of job %s: %w", s, job, err)
		}
		if err := deleteNewer(ctx, mgr, job, s); err != nil {
			return resumeAt{}, err
		}
	} else {
		m, err = mgr.LoadLatestVerified(ctx, job, func(step int64, err error) {
			slog.Warn("checkpoint unusable, falling back", "job-id", job, "step", step, "error", err)
			train.Announce(events, "CheckpointUnusable", fmt.Sprintf("checkpoint of step %d unusable, falling back to an older one: %v", step, err))
		})
		switch {
		case errors.Is(err, checkpoint.ErrNoCheckpoint):
			if cfg.Attempt > 0 {
				train.Announce(events, "NoCheckpoint", fmt.Sprintf("no checkpoint committed by the earlier attempts: attempt %d starts from the beginning (the trainer commits with `switchyard checkpoints commit`)", cfg.Attempt))
			}
			return resumeAt{}, nil
		case errors.Is(err, checkpoint.ErrNoUsableCheckpoint):
			train.Announce(events, "CheckpointUnusable", "no committed checkpoint is usable: training starts from the beginning")
			m = checkpoint.Manifest{}
		case err != nil:
			return resumeAt{}, err
		}
		// the unusable newer ones go, or the steps the trainer takes again
		// could not be committed (a commit must be newer)
		if err := deleteNewer(ctx, mgr, job, m.Step); err != nil {
			return resumeAt{}, err
		}
		if m.Step == 0 {
			return resumeAt{}, nil
		}
	}
	train.Announce(events, "Resumed", fmt.Sprintf("resumed from the checkpoint of step %d", m.Step))
	return resumeAt{step: m.Step, dir: filepath.Join(st.Root(), filepath.FromSlash(checkpoint.StepPrefix(job, m.Step)))}, nil
}

// tidyCommandJob is rank 0's cleaning before the program starts; failures
// only cost disk space.
func tidyCommandJob(ctx context.Context, mgr *checkpoint.Manager, cfg *jobspec.CommandConfig) {
	log := slog.With("job-id", cfg.Job)
	if _, err := mgr.ResumeDeletions(ctx, cfg.Job); err != nil {
		log.Warn("finishing interrupted checkpoint deletions failed", "error", err)
	}
	if removed, err := mgr.CollectGarbage(ctx, cfg.Job); err != nil {
		log.Warn("collecting uncommitted checkpoint files failed", "error", err)
	} else if len(removed) > 0 {
		log.Info("removed files of uncommitted checkpoints", "files", len(removed))
	}
	staging := filepath.Dir(cfg.StagingDir())
	entries, _ := os.ReadDir(staging)
	for _, e := range entries {
		n, ok := strings.CutPrefix(e.Name(), "attempt-")
		if a, err := strconv.Atoi(n); ok && err == nil && a < cfg.Attempt {
			if err := os.RemoveAll(filepath.Join(staging, e.Name())); err != nil {
				log.Warn("removing an earlier attempt's staged checkpoints failed", "error", err)
			}
		}
	}
}

// deleteNewer deletes the committed checkpoints after step: the job
// branches from step.
func deleteNewer(ctx context.Context, mgr *checkpoint.Manager, job string, step int64) error {
	ms, err := mgr.Catalogue().List(ctx, job)
	if err != nil {
		return err
	}
	for _, m := range ms {
		if m.Step > step {
			if err := mgr.Delete(ctx, job, m.Step); err != nil {
				return fmt.Errorf("delete checkpoint %d (newer than the resume step %d): %w", m.Step, step, err)
			}
		}
	}
	return nil
}

// rankEnv is the program's environment: the worker's (base), then the
// spec's env, then the rank's variables (which the spec may not set).
func rankEnv(cfg *jobspec.CommandConfig, runConfig, self string, resume resumeAt, base []string) []string {
	vars := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, ok := vars[k]; !ok {
			order = append(order, k)
		}
		vars[k] = v
	}
	for _, kv := range base {
		if k, v, ok := strings.Cut(kv, "="); ok {
			set(k, v)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(cfg.Env)) {
		set(k, cfg.Env[k])
	}
	itoa := strconv.Itoa
	rank := itoa(cfg.Rank)
	for _, kv := range [][2]string{
		{"RANK", rank}, {"WORLD_SIZE", itoa(cfg.World)},
		// each worker is a node; its slots hold the local ranks
		{"LOCAL_RANK", itoa(cfg.Node.LocalRank)}, {"LOCAL_WORLD_SIZE", itoa(max(cfg.Node.LocalWorld, 1))},
		{"GROUP_RANK", itoa(cfg.Node.Rank)}, {"NODE_RANK", itoa(cfg.Node.Rank)}, {"GROUP_WORLD_SIZE", itoa(max(cfg.Node.Nodes, 1))},
		{"ROLE_RANK", rank}, {"ROLE_WORLD_SIZE", itoa(cfg.World)},
		{"MASTER_ADDR", cfg.MasterAddr}, {"MASTER_PORT", itoa(cfg.MasterPort)},
		{"TORCHELASTIC_RESTART_COUNT", itoa(cfg.Attempt)}, {"TORCHELASTIC_MAX_RESTARTS", itoa(max(cfg.MaxRestarts, cfg.Attempt))}, // attempts a user resumed count too
		{"TORCHELASTIC_RUN_ID", cfg.Job},
		{"CUDA_VISIBLE_DEVICES", cfg.CUDAVisibleDevices},
		{"CUDA_DEVICE_ORDER", "PCI_BUS_ID"}, // nvidia-smi's numbering, which the worker's indices are in
		{envJobID, cfg.Job}, {envAttempt, itoa(cfg.Attempt)},
		{envCheckpointDir, cfg.StagingDir()},
		{envRunConfig, runConfig},
		{envMetricsFile, filepath.Join(cfg.RunDir, "metrics.jsonl")},
		{envBin, self},
		// last, so that the spec's or the worker's PATH wins (a venv)
		{"PATH", cfg.SearchPath(envValue(base, "PATH"), self)},
		{"SWITCHYARD_COORDINATOR", strings.Join(cfg.Coordinators, ",")},
		{"SWITCHYARD_TLS_CA", cfg.CoordinatorTLS.CA}, {"SWITCHYARD_TLS_CERT", cfg.CoordinatorTLS.Cert}, {"SWITCHYARD_TLS_KEY", cfg.CoordinatorTLS.Key},
	} {
		set(kv[0], kv[1])
	}
	delete(vars, envResumeDir)
	delete(vars, envResumeStep)
	if resume.step > 0 {
		set(envResumeDir, resume.dir)
		set(envResumeStep, strconv.FormatInt(resume.step, 10))
	}
	env := make([]string, 0, len(order))
	for _, k := range order {
		if v, ok := vars[k]; ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// envValue is the value of key in env (the last one set).
func envValue(env []string, key string) string {
	v := ""
	for _, kv := range env {
		if s, ok := strings.CutPrefix(kv, key+"="); ok {
			v = s
		}
	}
	return v
}

// lookExitCode is a shell's exit status for a command it could not find
// (127) or run (126); the worker refuses such a rank before it starts
// (fsutil.LookProgram there too), so these are seen when the program
// changed in between.
func lookExitCode(err error) int {
	if errors.Is(err, fsutil.ErrProgramNotExecutable) {
		return exitNotExecutable
	}
	return exitCommandNotFound
}
