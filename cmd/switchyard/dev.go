package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/switchyard-ml/switchyard/internal/freeport"
	"github.com/switchyard-ml/switchyard/pkg/agent"
	"github.com/switchyard-ml/switchyard/pkg/client"
	"github.com/switchyard-ml/switchyard/pkg/controller"
	"github.com/switchyard-ml/switchyard/pkg/coordinator"
	"github.com/switchyard-ml/switchyard/pkg/etcdconn"
	"github.com/switchyard-ml/switchyard/pkg/events"
	"github.com/switchyard-ml/switchyard/pkg/fsutil"
	"github.com/switchyard-ml/switchyard/pkg/jobspec"
	"github.com/switchyard-ml/switchyard/pkg/jobstate"
	"github.com/switchyard-ml/switchyard/pkg/train"
	"github.com/switchyard-ml/switchyard/pkg/workerconfig"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// demoSpec is the job `switchyard dev` submits: the tiny preset with
// global-batch LBL over DP=2 with the experts split EP=2, on the built-in
// corpus.
const demoSpec = `name: demo
model: {preset: tiny}
parallel: {dp: 2, ep: 2, balance: dp}
lbl: {mode: global, coef: 0.01}
data: {corpus: demo, eval_seqs: 32}
optim: {lr: 0.002, warmup_steps: 10}
micro_batch: 4
steps: %d
eval_every: 0
resources: {cpu_cores: 1, memory_mib: 1024}
checkpoint: {interval_steps: %d}
`

// cmdDev runs a whole cluster in this process: a dev coordinator
// (embedded etcd and NATS, one raft replica), N workers whose ranks run
// as child processes of this binary, the demo job (or --spec), live
// progress, and the final report.
func cmdDev(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	var (
		workers  = fs.Int("workers", 2, "local workers to start")
		steps    = fs.Int("steps", 150, "steps of the demo job")
		spec     = fs.String("spec", "", "submit this job spec instead of the demo job")
		dir      = fs.String("data-dir", "", "keep the cluster's data here (default: a temporary directory, removed at the end)")
		keep     = fs.Bool("keep", false, "keep the cluster running after the job (until Ctrl-C); print how to reach it")
		verbose  = fs.Bool("v", false, "log the coordinator and workers at info level")
		httpAddr = fs.String("http-addr", "127.0.0.1:0", "the web dashboard's listen address (loopback; empty: no dashboard)")
		prom     = fs.Bool("metrics", false, "serve Prometheus metrics from the coordinator and each worker on loopback ports, listed for Prometheus's file_sd in <data-dir>/metrics-targets.json")
		gpus     = fs.Int("gpus", 0, "GPUs each worker declares: it runs one rank per GPU, each seeing its own in CUDA_VISIBLE_DEVICES (the workers share this machine's GPUs 0..n-1)")
		noJob    = fs.Bool("no-job", false, "start the cluster and submit nothing (implies --keep): submit jobs and experiments to it yourself")
		allow    = fs.String("allow-path", "", "comma-separated directories outside <data-dir>/storage that jobs may read corpora from and write checkpoints to (the workers' allowed_paths)")
	)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return usageError{err}
	}
	if *workers < 1 || *steps < 1 {
		return usageError{fmt.Errorf("dev: --workers and --steps must be >= 1")}
	}
	if *gpus < 0 {
		return usageError{fmt.Errorf("dev: --gpus %d: must be >= 0 (0: CPU workers)", *gpus)}
	}
	var allowed []string
	for _, p := range strings.Split(*allow, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		abs, err := filepath.Abs(p)
		if err != nil {
			return usageError{fmt.Errorf("dev: --allow-path %s: %w", p, err)}
		}
		allowed = append(allowed, abs)
	}
	raw := []byte(fmt.Sprintf(demoSpec, *steps, max(*steps/3, 1)))
	if *spec != "" {
		b, err := fsutil.ReadFile(*spec, jobspec.MaxSize)
		if err != nil {
			return usageError{fmt.Errorf("dev: %w", err)}
		}
		raw = b
	}
	sp, err := jobspec.Parse(raw)
	if err != nil {
		return usageError{fmt.Errorf("dev: job spec: %w", err)}
	}
	if *spec != "" {
		// your own machine and spec: the workers may use the paths it
		// names (its corpus, its checkpoint.path), which a cluster's
		// workers would have to allow in their config
		for _, p := range sp.WorkerPaths() {
			if !slices.Contains(allowed, p) {
				allowed = append(allowed, p)
			}
		}
	}
	temporary := *dir == ""
	if temporary {
		d, err := os.MkdirTemp("", "switchyard-dev-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		*dir = d
	}
	if *dir, err = filepath.Abs(*dir); err != nil {
		return err
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	start := time.Now()
	rc := coordinator.DefaultConfig()
	rc.ID, rc.BindAddr, rc.DataDir, rc.Bootstrap = "dev-1", "127.0.0.1:0", filepath.Join(*dir, "coordinator"), true
	rc.RaftLogLevel = "error"
	metricsAddr := ""
	if *prom {
		if metricsAddr, err = freePortRun(1); err != nil {
			return err
		}
	}
	d, err := controller.Start(ctx, controller.DaemonConfig{
		Raft: rc, APIListen: "127.0.0.1:0", HTTPListen: *httpAddr, Dev: true, MetricsListen: metricsAddr,
		CheckpointRoot: filepath.Join(*dir, "storage", "checkpoints"), Logger: log,
	})
	if err != nil {
		return err
	}
	defer d.Close()
	// The workers below read the etcd user from the environment by
	// design, never from config files: give them the dev etcd's (their
	// ranks do not inherit it: they reach the catalogue through the
	// coordinator).
	for k, v := range map[string]string{etcdconn.UsernameEnv: d.Dev.EtcdUsername(), etcdconn.PasswordEnv: d.Dev.EtcdPassword()} {
		if err := os.Setenv(k, v); err != nil {
			return fmt.Errorf("dev: %w", err)
		}
	}
	fmt.Fprintf(os.Stderr, "dev cluster up in %s: coordinator %s, etcd %s, NATS %s\n", time.Since(start).Round(time.Millisecond), d.APIAddr, d.Etcd[0], events.Redact(d.NATSURL))
	if d.DashboardURL != "" {
		fmt.Fprintf(os.Stderr, "dashboard: %s\n", d.DashboardURL)
	}

	self, err := os.Executable()
	if err != nil {
		return err
	}
	actx, stopAgents := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { stopAgents(); wg.Wait() }()
	targets := metricsTargets{{Targets: []string{d.MetricsAddr}, Labels: map[string]string{"role": "coordinator"}}}
	for i := range *workers {
		cfg, err := devWorkerConfig(i, *workers, d, *dir, self, *gpus, allowed)
		if err != nil {
			return err
		}
		if *prom {
			if cfg.MetricsAddress, err = freePortRun(1); err != nil {
				return err
			}
			targets = append(targets, metricsTarget{Targets: []string{cfg.MetricsAddress}, Labels: map[string]string{"role": "worker", "worker": cfg.ID}})
		}
		opts, closeConn, err := agent.Connect(ctx, cfg, log.With("worker", cfg.ID))
		if err != nil {
			return fmt.Errorf("dev: worker %s: %w", cfg.ID, err)
		}
		a, err := agent.New(opts)
		if err != nil {
			closeConn()
			return fmt.Errorf("dev: worker %s: %w", cfg.ID, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer closeConn()
			if err := a.Run(actx); err != nil {
				log.Error("worker stopped", "worker", cfg.ID, "error", err)
			}
		}()
	}
	// engine ranks run as `switchyard train`, command ranks as `switchyard
	// exec` starting the spec's program
	fmt.Fprintf(os.Stderr, "%s started (ranks run as %s train ..., command jobs' as %s exec ...)\n", plural(*workers, "worker"), self, self)
	if *prom {
		path := filepath.Join(*dir, "metrics-targets.json")
		if err := targets.write(path); err != nil {
			return fmt.Errorf("dev: %w", err)
		}
		fmt.Fprintf(os.Stderr, "metrics: coordinator http://%s/metrics, workers listed in %s (Prometheus file_sd; see deploy/prometheus)\n", d.MetricsAddr, path)
	}

	if *noJob {
		fmt.Fprintf(os.Stderr, "\ncluster running, no job submitted; try:\n  switchyard cluster status --coordinator %s\n  switchyard job submit SPEC.yaml --coordinator %s\n  switchyard experiment submit EXP.yaml --coordinator %s\n(the workers' storage: %s; etcd wants user %s with the etcd_password kept in %s)\nCtrl-C stops it.\n",
			d.APIAddr, d.APIAddr, d.APIAddr, filepath.Join(*dir, "storage"), d.Dev.EtcdUsername(), d.Dev.PortsFile())
		<-ctx.Done()
		return nil
	}
	cl, err := client.Dial(client.Options{Endpoints: []string{d.APIAddr}})
	if err != nil {
		return err
	}
	defer cl.Close()
	id := jobspec.NewJobID(sp.Name)
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	resp, err := cl.SubmitJob(sctx, &apiv1.SubmitJobRequest{JobId: id, Spec: raw})
	cancel()
	if err != nil {
		return fmt.Errorf("dev: submit: %w", err)
	}
	what := sp.Model.Preset
	if sp.Runtime == jobspec.RuntimeCommand {
		what = "command " + sp.Command
	}
	fmt.Fprintf(os.Stderr, "submitted job %s (%s, %s, %d steps); watching it (switchyard job watch %s --coordinator %s)\n",
		id, what, plural(int(resp.Job.WorldSize), "rank"), sp.Steps, id, d.APIAddr)
	c := stdCLI()
	r := &remoteFlags{coordinator: d.APIAddr, timeout: 30 * time.Second, output: outTable}
	werr := c.watch(ctx, r, cl, id)

	gctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	g, gerr := cl.GetJob(gctx, &apiv1.GetJobRequest{JobId: id})
	cancel()
	if gerr == nil {
		printDevSummary(os.Stdout, g.Job, filepath.Join(*dir, "storage"), time.Since(start), !temporary || *keep)
	}
	if *keep && ctx.Err() == nil {
		fmt.Fprintf(os.Stderr, "\ncluster kept running; try:\n  switchyard cluster status --coordinator %s\n  switchyard job logs %s --coordinator %s\n(etcd wants user %s with the etcd_password kept in %s)\nCtrl-C stops it.\n",
			d.APIAddr, id, d.APIAddr, d.Dev.EtcdUsername(), d.Dev.PortsFile())
		<-ctx.Done()
	}
	return werr
}

// metricsTargets is a Prometheus file_sd target list.
type metricsTargets []metricsTarget

type metricsTarget struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels"`
}

// write replaces path atomically (Prometheus re-reads it when it changes).
func (m metricsTargets) write(path string) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(path, append(b, '\n'))
}

// devWorkerConfig is worker i of the dev cluster: loopback, its own port,
// one shared storage path (so that any worker can resume any checkpoint).
func devWorkerConfig(i, workers int, d *controller.Daemon, dir, trainer string, gpus int, allowed []string) (workerconfig.Config, error) {
	// one slot per declared GPU (one rank each), else one; a core a slot
	// and a share of the machine's memory; slot k listens on the
	// worker's port + k
	slots := max(gpus, 1)
	addr, err := freePortRun(slots)
	if err != nil {
		return workerconfig.Config{}, err
	}
	cfg := workerconfig.Defaults()
	cfg.ID = fmt.Sprintf("dev-w%d", i+1)
	cfg.Host = cfg.ID
	cfg.Coordinators = []string{d.APIAddr}
	cfg.EtcdEndpoints = d.Etcd
	cfg.NATSURL = d.NATSURL
	cfg.ListenAddress, cfg.AdvertiseAddress = addr, addr
	cfg.Resources.CPUCores, cfg.Resources.MemoryMiB, cfg.Resources.GPUs = slots, devWorkerMemoryMiB(slots, workers), max(gpus, 0)
	cfg.StoragePath = filepath.Join(dir, "storage")
	cfg.AllowedPaths = allowed
	cfg.LeaseTTLSeconds = 5
	cfg.DrainSeconds = 0 // Ctrl-C stops the dev cluster's ranks at once
	cfg.Trainer = trainer
	cfg.AllowCommands = true // your own machine: jobs may run your programs
	if err := cfg.Validate(); err != nil {
		return workerconfig.Config{}, fmt.Errorf("dev: worker config: %w", err)
	}
	return cfg, nil
}

// devWorkerMemoryMiB is what a dev worker of slots slots declares: an
// equal share of this machine's memory among the workers, and at least
// a job's default resources.memory_mib a slot. A GPU rank
// (CUDA's host side, PyTorch's) needs several GiB: with 1 GiB a slot the
// worker would kill it for its memory.
func devWorkerMemoryMiB(slots, workers int) int64 {
	least := jobspec.DefaultMemoryMiB * int64(slots)
	total, err := workerconfig.SystemDetector().MemoryMiB()
	if err != nil || workers < 1 {
		return least
	}
	return max(least, total/int64(workers))
}

// printDevSummary prints the job's outcome and rank 0's final report
// (per-domain loss, expert specialisation).
func printDevSummary(w io.Writer, j *pb.Job, storage string, took time.Duration, kept bool) {
	msg := j.Message
	if why := jobstate.PendingReason(j); why != "" {
		msg = "waiting: " + why
	}
	fmt.Fprintf(w, "\njob %s %s after %s: %s\n", j.Id, jobstate.Name(j.State), took.Round(time.Second), msg)
	if !jobstate.Final(j.State) && j.Progress.GetStep() == 0 {
		return // it never ran: no report to look for
	}
	var submitted, running int64
	for _, e := range j.Events {
		if e.Type == "Submitted" && submitted == 0 {
			submitted = e.UnixNano
		}
		if e.Type == "Running" && running == 0 {
			running = e.UnixNano
		}
	}
	if submitted > 0 && running > submitted {
		fmt.Fprintf(w, "submit to first step: %.2fs (placement, rank start-up, corpus and model set-up, first step)\n", float64(running-submitted)/1e9)
	}
	path := filepath.Join(storage, "jobs", j.Id, fmt.Sprintf("attempt-%d", j.Restarts), "rank-0", "report.json")
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		if sp, perr := jobspec.Parse(j.Spec); perr == nil && sp.Runtime == jobspec.RuntimeCommand {
			if kept {
				fmt.Fprintf(w, "rank 0's output: %s\n", filepath.Join(filepath.Dir(path), "stdout.log"))
			} else {
				fmt.Fprintln(w, "(the ranks' output was in a temporary directory, now removed; --data-dir DIR keeps it)")
			}
			return // the command's own
		}
	}
	if err != nil {
		fmt.Fprintf(w, "no final report (%v)\n", err)
		return
	}
	var rep train.Report
	if err := json.Unmarshal(raw, &rep); err != nil {
		fmt.Fprintf(w, "final report %s: %v\n", path, err)
		return
	}
	fmt.Fprintln(w)
	rep.Print(w)
	if kept {
		fmt.Fprintf(w, "\nreport: %s\n", path)
	} else {
		fmt.Fprintln(w, "\n(the cluster's data was in a temporary directory, now removed; --data-dir DIR keeps it)")
	}
}

// freePortRun is a loopback address whose port and the n-1 after it were
// free just now (below the ephemeral range, reserved for this process).
func freePortRun(n int) (string, error) {
	p, err := freeport.Run("127.0.0.1", n)
	if err != nil {
		return "", fmt.Errorf("dev: %w", err)
	}
	return fmt.Sprintf("127.0.0.1:%d", p), nil
}
