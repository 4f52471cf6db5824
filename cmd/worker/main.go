// Command worker is the Switchyard worker daemon: it joins the cluster by
// its config file, registers in etcd with a lease and runs the ranks the
// coordinator assigns it (see pkg/agent and pkg/workerconfig).
//
//	worker --config worker.yaml [--<setting> value ...]
//	worker --check-config --config worker.yaml [...]   check, print, exit
//
// Exit codes: 0 after a clean shutdown (SIGINT or SIGTERM), 1 when the
// worker fails, 2 for a bad command line or config.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"text/tabwriter"

	"github.com/switchyard-ml/switchyard/pkg/agent"
	"github.com/switchyard-ml/switchyard/pkg/workerconfig"
)

const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv, workerconfig.SystemDetector())
	stop()
	os.Exit(code)
}

// run is the whole command, for tests: args without the program name.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string, det workerconfig.Detector) int {
	p, code := parse(args, stdout, stderr, getenv, det)
	if p == nil {
		return code
	}
	cfg, log := p.cfg, p.log
	if p.check {
		fmt.Fprintln(stdout, summary(cfg))
		return exitOK
	}
	if _, err := cfg.TrainerPath(); err != nil {
		fmt.Fprintf(stderr, "worker: %v\n", err)
		return exitUsage
	}

	opts, closeConns, err := agent.Connect(ctx, cfg, log)
	if err != nil {
		log.Error("connect", "error", err)
		return exitFailure
	}
	defer func() {
		if err := closeConns(); err != nil {
			log.Debug("close connections", "error", err)
		}
	}()
	opts.Version = version()
	a, err := agent.New(opts)
	if err != nil {
		log.Error("start", "error", err)
		return exitFailure
	}
	log.Info("worker starting", "worker-id", cfg.ID, "host", cfg.Host, "advertise", cfg.AdvertiseAddress,
		"cpu-cores", cfg.Resources.CPUCores, "memory-mib", cfg.Resources.MemoryMiB, "gpus", cfg.Resources.GPUs, "storage", cfg.StoragePath)
	if err := a.Run(ctx); err != nil {
		log.Error("worker failed", "error", err)
		return exitFailure
	}
	return exitOK
}

// parsed is a command line read into a validated config.
type parsed struct {
	cfg   workerconfig.Config
	log   *slog.Logger
	check bool // --check-config: print a summary and exit
}

// parse reads the command line, the config file and the environment as
// every start does (for run and --check-config alike). It returns nil and
// the exit code when there is nothing to run: --help, or an error it has
// printed. With --check-config the TLS files need only be named
// (workerconfig.LoadForCheck).
func parse(args []string, stdout, stderr io.Writer, getenv func(string) string, det workerconfig.Detector) (*parsed, int) {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	config := fs.String("config", "", "worker config file (YAML)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	check := fs.Bool("check-config", false, "check the settings as a start would, print a summary and exit")
	flags := map[string]string{}
	for _, s := range workerconfig.Settings() {
		set := func(v string) error { flags[s.Flag] = v; return nil }
		if s.Key == "insecure" {
			fs.BoolFunc(s.Flag, s.Help, func(v string) error { flags[s.Flag] = v; return nil })
			continue
		}
		fs.Func(s.Flag, s.Help, set)
	}
	fs.Usage = func() {} // the error is printed by Parse; --help below
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage(stdout)
			return nil, exitOK
		}
		fmt.Fprintln(stderr, `run "worker --help" for the settings`)
		return nil, exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "worker: unexpected argument %q\n", fs.Arg(0))
		return nil, exitUsage
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(stderr, "worker: --log-level %q: %v\n", *logLevel, err)
		return nil, exitUsage
	}
	load := workerconfig.Load
	if *check {
		load = workerconfig.LoadForCheck
	}
	cfg, err := load(*config, flags, getenv, det)
	if err != nil {
		fmt.Fprintf(stderr, "worker: %v\n", err)
		if *check || errors.Is(err, workerconfig.ErrInvalid) || errors.Is(err, workerconfig.ErrSyntax) || errors.Is(err, os.ErrNotExist) {
			return nil, exitUsage
		}
		return nil, exitFailure
	}
	return &parsed{cfg: cfg, check: *check, log: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))}, exitOK
}

// summary is --check-config's one line: what the worker would offer.
func summary(c workerconfig.Config) string {
	tls := "off"
	if c.TLS.Enabled() {
		tls = "mutual"
		if c.DataPlaneTLS {
			tls += ", data plane too"
		}
	}
	metrics := c.MetricsAddress
	if metrics == "" {
		metrics = "none"
	}
	return fmt.Sprintf("worker: config ok: id %s, host %s, listen %s (advertised %s), metrics %s, coordinators %d, etcd %d endpoints, nats %t, slots %d, cpu %d, memory %d MiB, gpus %d, storage %s, tls %s, insecure %t",
		c.ID, c.Host, c.ListenAddress, c.AdvertiseAddress, metrics, len(c.Coordinators), len(c.EtcdEndpoints), c.NATSURL != "",
		c.SlotCount(), c.Resources.CPUCores, c.Resources.MemoryMiB, c.Resources.GPUs, c.StoragePath, tls, c.Insecure)
}

func usage(w io.Writer) {
	fmt.Fprintf(w, `worker — the Switchyard worker daemon

usage:
  worker --config worker.yaml [flags]

Every setting of the config file can be overridden by a flag and by an
environment variable (precedence: defaults, file, flags, environment):

`)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  key\tflag\tenvironment\t")
	for _, s := range workerconfig.Settings() {
		fmt.Fprintf(tw, "  %s\t--%s\t%s\t%s\n", s.Key, s.Flag, s.Env, s.Help)
	}
	tw.Flush()
	fmt.Fprintf(w, `
Other flags:
  --config FILE      the worker config (YAML)
  --log-level LEVEL  debug, info, warn or error (default info)
  --check-config     read and check the settings as a start would, print
                     one line and exit (0 good, 2 not); the TLS files need
                     only be named, and the switchyard binary is not looked
                     for (both may exist only where the worker runs)

The coordinator token is read from $%s.
`, agent.TokenEnv)
}

func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "devel"
}
