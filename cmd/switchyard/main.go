// Command switchyard is the Switchyard CLI. Today it trains a model in this
// process (train) and measures the engine (bench); job submission to a
// cluster comes with the control plane.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/switchyard-ml/switchyard/pkg/parallel"
)

const usage = `switchyard — train Mixture-of-Experts language models

usage:
  switchyard train [--preset tiny|small] [--config run.yaml] [flags]   train in this process
  switchyard launch --nproc N [--tp a --ep b --dp c] -- <train flags>   train with N local processes
  switchyard bench engine --preset tiny|small [--json]                 measure a training step
  switchyard help

run "switchyard train --help" for the training flags.
`

// exit codes
const (
	exitOK      = 0
	exitFailure = 1 // the run failed
	exitUsage   = 2 // bad command line or config
)

func main() {
	parallel.BenchChildMain() // a rank of "bench collectives" runs here and exits
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string) int {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return exitUsage
	}
	var err error
	switch args[0] {
	case "train":
		err = cmdTrain(ctx, args[1:])
	case "bench":
		err = cmdBench(ctx, args[1:])
	case "launch":
		err = cmdLaunch(ctx, args[1:])
	case "help", "-h", "--help":
		fmt.Print(usage)
		return exitOK
	default:
		fmt.Fprintf(os.Stderr, "switchyard: unknown command %q\n\n%s", args[0], usage)
		return exitUsage
	}
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(os.Stderr, "switchyard:", err)
	var ue usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	return exitFailure
}

// usageError marks errors in what the user asked for (exit code 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }
