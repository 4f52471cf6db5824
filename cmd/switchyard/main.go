// Command switchyard is the Switchyard CLI: it trains a model in this
// process (train, launch), measures the engine (bench), and submits and
// follows jobs on a coordinator cluster over gRPC (job, cluster,
// checkpoints).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-ml/switchyard/pkg/parallel/collbench"
)

const usage = `switchyard — train Mixture-of-Experts language models

usage:
  switchyard dev [--workers 2] [--steps 150] [--spec SPEC.yaml | --no-job] [--keep] [--data-dir D] [--gpus N]
                                                                      a whole cluster here: coordinator (embedded etcd, NATS), workers, the demo job
  switchyard train [--preset tiny|small|medium|science] [--config run.yaml] [flags]
                                                                      train in this process (--out DIR --plots: and draw it)
  switchyard launch --nproc N [--tp a --ep b --dp c] -- <train flags>   train with N local processes
  switchyard bench engine|collectives|checkpoint [flags]               measure a training step, the collectives, checkpoint saves
  switchyard gpus [--json]                                             the CUDA driver, GPUs and libraries the GPU engine finds here
  switchyard help

cluster (talks to the coordinator over gRPC):
  switchyard job check SPEC.yaml                        validate a spec here (no cluster): its layout and what each rank needs
  switchyard job submit SPEC.yaml [--id ID] [--watch]   validate and submit a job spec
  switchyard job list [--state pending,running,...]     list jobs
  switchyard job status ID                              state, conditions, progress, placement, events
  switchyard job logs [-f] ID                           print (-f: follow) a job's log lines
  switchyard job watch ID                               follow progress until the job ends
  switchyard job plot ID --out DIR [--storage DIR]      PNG and SVG pictures of rank 0's metrics so far (with --storage: domain x expert heat maps)
  switchyard job cancel ID
  switchyard job resume ID [--from STEP]                restart from a committed checkpoint
  switchyard job delete ID [--checkpoints]              remove a job that has ended (--checkpoints: and its checkpoints)
  switchyard cluster status                             coordinator replicas and workers
  switchyard cluster add-replica ID RAFT_ADDR
  switchyard cluster remove-replica ID
  switchyard cluster worker-token WORKER_ID             that worker's own token (from the cluster token; no call)
  switchyard checkpoints list JOB
  switchyard checkpoints show JOB STEP                  shards with size and sha256
  switchyard checkpoints delete JOB STEP
  switchyard checkpoints commit --step N DIR            in rank 0 of a command job: commit the checkpoint the trainer wrote to DIR
  switchyard experiment submit EXP.yaml [--dry-run]     a base spec and axes: one job per combination (ids from the file: again submits nothing new)
  switchyard experiment report EXP.yaml [--storage DIR] [--plots DIR]
                                                        states and, from rank 0's reports under the workers' storage, the comparison over seeds
                                                        (--plots: the variants' loss curves and per-domain val bits/byte side by side)

run by workers:
  switchyard exec --config run.yaml                     one rank of a command job (runtime: command): resume point, environment, then the program

  flags of every cluster command, before the command or after its arguments:
  --coordinator ADDR[,ADDR...]  coordinator API addresses (env SWITCHYARD_COORDINATOR; default 127.0.0.1:7400)
  --token TOKEN                 bearer token (env SWITCHYARD_TOKEN)
  --tls-ca/--tls-cert/--tls-key mutual TLS files (env SWITCHYARD_TLS_CA, SWITCHYARD_TLS_CERT, SWITCHYARD_TLS_KEY)
  --timeout 15s                 deadline of each call
  -o table|json                 json: protojson with proto field names (streams: one object per line)

exit status:
  0  ok
  1  failure (for job watch and job submit --watch: the job failed or was cancelled)
  2  bad command line, config or job spec
  3  not found
  4  coordinator unreachable or unavailable (or no answer within --timeout)
  5  permission denied (missing or wrong token, TLS)

run "switchyard train --help" for the training flags.
`

// exit codes
const (
	exitOK          = 0
	exitFailure     = 1 // the run failed; a watched job failed or was cancelled
	exitUsage       = 2 // bad command line, config or job spec
	exitNotFound    = 3 // gRPC NotFound
	exitUnavailable = 4 // coordinator unreachable: gRPC Unavailable, DeadlineExceeded
	exitPermission  = 5 // gRPC Unauthenticated, PermissionDenied
)

func main() {
	collbench.ChildMain() // a rank of "bench collectives" runs here and exits
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string) int {
	return runCLI(ctx, args, stdCLI())
}

// runCLI runs one command line; the cluster commands write where c says
// (tests capture it), the in-process commands to the process's stdout.
func runCLI(ctx context.Context, args []string, c *cli) int {
	if len(args) == 0 {
		fmt.Fprint(c.errOut, usage)
		return exitUsage
	}
	args, err := hoistClusterFlags(args)
	if err != nil {
		fmt.Fprintln(c.errOut, "switchyard:", err)
		return exitUsage
	}
	switch args[0] {
	case "train":
		err = cmdTrain(ctx, args[1:])
	case "bench":
		err = cmdBench(ctx, args[1:])
	case "launch":
		err = cmdLaunch(ctx, args[1:])
	case "exec":
		err = cmdExec(ctx, args[1:])
	case "dev":
		err = cmdDev(ctx, args[1:])
	case "job":
		err = c.cmdJob(ctx, args[1:])
	case "cluster":
		err = c.cmdCluster(ctx, args[1:])
	case "checkpoints":
		err = c.cmdCheckpoints(ctx, args[1:])
	case "experiment":
		err = c.cmdExperiment(ctx, args[1:])
	case "gpus":
		err = c.cmdGPUs(args[1:])
	case "help", "-h", "--help":
		fmt.Fprint(c.out, usage)
		return exitOK
	default:
		fmt.Fprintf(c.errOut, "switchyard: unknown command %q\n\n%s", args[0], usage)
		return exitUsage
	}
	code := exitCode(err)
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(c.errOut, "switchyard:", err)
	}
	return code
}

// hoistClusterFlags lets the cluster flags come before the command, as in
// "switchyard --token T cluster status": they move to after the
// subcommand, where every cluster command parses its flags.
func hoistClusterFlags(args []string) ([]string, error) {
	var lead []string
	fs := flag.NewFlagSet("switchyard", flag.ContinueOnError)
	(&remoteFlags{}).register(fs)
	i := 0
	for ; i < len(args) && len(args[i]) > 1 && args[i][0] == '-'; i++ {
		a := args[i]
		if a == "-h" || a == "--help" {
			break
		}
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if fs.Lookup(name) == nil {
			return nil, usageError{fmt.Errorf("flag %s before the command: only the cluster flags (--coordinator, --token, --tls-ca, --tls-cert, --tls-key, --timeout, -o) may come first", a)}
		}
		lead = append(lead, a)
		if !hasValue {
			if i+1 == len(args) {
				return nil, usageError{fmt.Errorf("flag %s needs a value", a)}
			}
			i++
			lead = append(lead, args[i])
		}
	}
	if len(lead) == 0 {
		return args, nil
	}
	rest := args[i:]
	if len(rest) == 0 {
		return nil, usageError{errors.New("no command after the flags")}
	}
	switch rest[0] {
	case "job", "cluster", "checkpoints", "experiment":
	default:
		return nil, usageError{fmt.Errorf("the cluster flags before the command apply to job, cluster, checkpoints and experiment, not %q", rest[0])}
	}
	head := 1 // the command, then its subcommand if there is one
	if len(rest) > 1 && !strings.HasPrefix(rest[1], "-") {
		head = 2
	}
	return slices.Concat(rest[:head], lead, rest[head:]), nil
}

// exitCode maps an error to the exit status (see usage): the one place
// where gRPC status codes become exit codes.
func exitCode(err error) int {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	var ue usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	if st, ok := status.FromError(err); ok {
		switch st.Code() {
		case codes.NotFound:
			return exitNotFound
		case codes.Unavailable, codes.DeadlineExceeded:
			return exitUnavailable
		case codes.Unauthenticated, codes.PermissionDenied:
			return exitPermission
		case codes.InvalidArgument:
			return exitUsage
		}
	}
	return exitFailure
}

// usageError marks errors in what the user asked for (exit code 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }
