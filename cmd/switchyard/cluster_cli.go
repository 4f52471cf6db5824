package main

// What every command that talks to the coordinator shares: the connection
// flags (one place), flags after positional arguments, the per-call
// deadline, and turning gRPC errors into one-line messages whose status
// code exitCode (main.go) maps to the exit status.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-ml/switchyard/pkg/client"
	"github.com/switchyard-ml/switchyard/pkg/security"
)

// defaultCoordinator is the API address of a coordinator started with its
// defaults on this machine.
const defaultCoordinator = "127.0.0.1:7400"

// cli is where the cluster commands write and what they read the clock
// from; tests pass buffers and a fixed clock.
type cli struct {
	out    io.Writer
	errOut io.Writer
	now    func() time.Time
	// tty: out is a terminal, so `job watch` redraws one progress line.
	tty bool
}

// stdCLI writes to the process's stdout and stderr.
func stdCLI() *cli {
	return &cli{out: os.Stdout, errOut: os.Stderr, now: time.Now, tty: isTerminal(os.Stdout)}
}

// isTerminal reports whether f is a character device (a terminal, not a
// pipe or a file).
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// remoteFlags are the flags of every command that calls the coordinator.
type remoteFlags struct {
	coordinator string
	token       secretFlag
	tls         security.TLSFiles
	timeout     time.Duration
	output      string
}

// Output formats of -o.
const (
	outTable = "table"
	outJSON  = "json"
)

func envOr(key, def string) string {
	if v, ok := os.LookupEnv(key); ok && v != "" {
		return v
	}
	return def
}

// register adds the flags to fs; the environment supplies the defaults
// (flag beats environment beats built-in default).
func (r *remoteFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&r.coordinator, "coordinator", envOr("SWITCHYARD_COORDINATOR", defaultCoordinator), "comma-separated coordinator API addresses (env SWITCHYARD_COORDINATOR)")
	// the token's default is read when it is used, not given here: the
	// flag package prints a default in every usage message
	fs.Var(&r.token, "token", "bearer token (default $SWITCHYARD_TOKEN)")
	fs.StringVar(&r.tls.CA, "tls-ca", os.Getenv("SWITCHYARD_TLS_CA"), "CA certificate (PEM) that signs the coordinators' certificates (env SWITCHYARD_TLS_CA)")
	fs.StringVar(&r.tls.Cert, "tls-cert", os.Getenv("SWITCHYARD_TLS_CERT"), "client certificate (PEM) (env SWITCHYARD_TLS_CERT)")
	fs.StringVar(&r.tls.Key, "tls-key", os.Getenv("SWITCHYARD_TLS_KEY"), "client private key (PEM) (env SWITCHYARD_TLS_KEY)")
	fs.DurationVar(&r.timeout, "timeout", 15*time.Second, "deadline of each call (for -f and watch streams: of opening the stream)")
	fs.StringVar(&r.output, "o", outTable, "output format: table or json (protojson, proto field names; streams: one object per line)")
}

func (r *remoteFlags) validate() error {
	if r.output != outTable && r.output != outJSON {
		return fmt.Errorf("-o %q: must be table or json", r.output)
	}
	if r.timeout <= 0 {
		return fmt.Errorf("--timeout %s: must be > 0", r.timeout)
	}
	if strings.Trim(r.coordinator, ", ") == "" {
		return errors.New("--coordinator: no address given")
	}
	return nil
}

func (r *remoteFlags) json() bool { return r.output == outJSON }

// bearer is the token: --token (even empty), else $SWITCHYARD_TOKEN.
func (r *remoteFlags) bearer() string {
	if r.token.set {
		return r.token.value
	}
	return os.Getenv("SWITCHYARD_TOKEN")
}

// secretFlag is a string flag whose value no usage message prints.
type secretFlag struct {
	value string
	set   bool
}

func (f *secretFlag) String() string { return "" }

func (f *secretFlag) Set(v string) error {
	f.value, f.set = v, true
	return nil
}

// refusedGrace is how long a command tries coordinators that refuse every
// connection before it says that none listens at the address given (a
// restart of the only coordinator takes less).
const refusedGrace = 3 * time.Second

// dial connects lazily to the coordinators; bad TLS files are a usage error.
func (r *remoteFlags) dial() (*client.Client, error) {
	cl, err := client.Dial(client.Options{
		Endpoints:    []string{r.coordinator},
		Token:        r.bearer(),
		TLS:          r.tls,
		RefusedGrace: refusedGrace,
	})
	if err != nil {
		return nil, usageError{err}
	}
	return cl, nil
}

// call is the context of one unary call (or one bounded stream).
func (r *remoteFlags) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, r.timeout)
}

// unary dials the coordinators, makes one call under the --timeout
// deadline and turns a failure into the CLI's error for op.
func unary[Resp any](ctx context.Context, r *remoteFlags, op string, call func(context.Context, *client.Client) (Resp, error)) (Resp, error) {
	cl, err := r.dial()
	if err != nil {
		var zero Resp
		return zero, err
	}
	defer cl.Close()
	return unaryOn(ctx, r, cl, op, call)
}

// unaryOn is unary on a client the caller keeps open (job submit --watch).
func unaryOn[Resp any](ctx context.Context, r *remoteFlags, cl *client.Client, op string, call func(context.Context, *client.Client) (Resp, error)) (Resp, error) {
	cctx, cancel := r.call(ctx)
	defer cancel()
	resp, err := call(cctx, cl)
	if err != nil {
		var zero Resp
		return zero, callError(op, r, err)
	}
	return resp, nil
}

// openStream opens a stream that may run for as long as the job does: the
// --timeout deadline bounds only finding a coordinator and sending the
// request. It returns the stream's context, the stream and a cancel func
// to call when done. A stream that could not be opened in time fails with
// DeadlineExceeded, like a unary call.
func openStream[S any](ctx context.Context, r *remoteFlags, open func(context.Context) (S, error)) (S, context.CancelFunc, error) {
	sctx, cancel := context.WithCancel(ctx)
	var expired atomic.Bool
	timer := time.AfterFunc(r.timeout, func() { expired.Store(true); cancel() })
	s, err := open(sctx)
	if !timer.Stop() || err != nil {
		cancel()
		var zero S
		if err == nil || expired.Load() {
			err = status.Errorf(codes.DeadlineExceeded, "no coordinator answered within %s", r.timeout)
		}
		return zero, func() {}, err
	}
	return s, cancel, nil
}

// rpcError is a failed call: what the CLI was doing and the server's
// status. It keeps the status (GRPCStatus) so that exitCode can map it.
type rpcError struct {
	op          string
	st          *status.Status
	coordinator string
}

// callError wraps a call's error; errors that carry no gRPC status are
// wrapped as they are.
func callError(op string, r *remoteFlags, err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("%s: %w", op, err)
	}
	return &rpcError{op: op, st: st, coordinator: r.coordinator}
}

func (e *rpcError) Error() string {
	msg := e.st.Message()
	switch e.st.Code() {
	case codes.Unavailable, codes.DeadlineExceeded:
		hint := ""
		if tlsMismatch(msg) {
			hint = " (the coordinator and this CLI do not agree on TLS: give --tls-ca/--tls-cert/--tls-key, or SWITCHYARD_TLS_*, as the coordinator wants)"
		}
		return fmt.Sprintf("%s: coordinator %s unreachable or unavailable: %s%s", e.op, e.coordinator, msg, hint)
	case codes.Unauthenticated, codes.PermissionDenied:
		return fmt.Sprintf("%s: permission denied: %s (check --token and --tls-*)", e.op, msg)
	case codes.Canceled:
		return e.op + ": cancelled"
	}
	return e.op + ": " + msg
}

// tlsMismatch says whether a transport error looks like plaintext talking
// to TLS (the server's preface never came) or TLS to plaintext.
func tlsMismatch(msg string) bool {
	for _, s := range []string{"error reading server preface", "first record does not look like a TLS handshake", "tls: "} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// GRPCStatus lets status.FromError (and so exitCode) see the code.
func (e *rpcError) GRPCStatus() *status.Status { return e.st }

// notFound is a NotFound found on the client side (e.g. a checkpoint step
// that ListCheckpoints did not return).
func notFound(op string, r *remoteFlags, format string, args ...any) error {
	return &rpcError{op: op, st: status.Newf(codes.NotFound, format, args...), coordinator: r.coordinator}
}

// command is one subcommand of a group (`job status`, `cluster status`).
type command struct {
	name     string
	synopsis string // arguments, e.g. "ID [--from STEP]"
	summary  string
	run      func(ctx context.Context, name string, args []string) error
}

// group dispatches args[0] among cmds.
func (c *cli) group(ctx context.Context, group string, args []string, cmds []command) error {
	usage := func() string {
		var b strings.Builder
		fmt.Fprintf(&b, "usage:\n")
		for _, cmd := range cmds {
			fmt.Fprintf(&b, "  switchyard %s %s %s\n      %s\n", group, cmd.name, cmd.synopsis, cmd.summary)
		}
		fmt.Fprintf(&b, "\nrun \"switchyard %s COMMAND -h\" for its flags.", group)
		return b.String()
	}
	if len(args) == 0 {
		return usageError{fmt.Errorf("%s: missing command\n%s", group, usage())}
	}
	switch args[0] {
	case "help", "-h", "--help":
		fmt.Fprintln(c.out, usage())
		return nil
	}
	for _, cmd := range cmds {
		if cmd.name == args[0] {
			return cmd.run(ctx, group+" "+cmd.name+" "+cmd.synopsis, args[1:])
		}
	}
	return usageError{fmt.Errorf("%s: unknown command %q\n%s", group, args[0], usage())}
}

// flags makes the flag set of a command with the remote flags registered.
func (c *cli) flags(synopsis string) (*flag.FlagSet, *remoteFlags) {
	fs := flag.NewFlagSet(synopsis, flag.ContinueOnError)
	fs.SetOutput(c.errOut)
	fs.Usage = func() {
		fmt.Fprintf(c.errOut, "usage: switchyard %s\n\nflags (before or after the arguments):\n", synopsis)
		fs.PrintDefaults()
	}
	r := &remoteFlags{}
	r.register(fs)
	return fs, r
}

// parse parses flags anywhere among args and checks that between min and
// max positional arguments remain (max < 0: no limit). -h gives
// flag.ErrHelp, which exits 0.
func (c *cli) parse(fs *flag.FlagSet, r *remoteFlags, args []string, min, max int) ([]string, error) {
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, usageError{err}
	}
	if len(pos) < min || (max >= 0 && len(pos) > max) {
		fs.Usage()
		return nil, usageError{fmt.Errorf("%s: wrong number of arguments (%d)", fs.Name(), len(pos))}
	}
	if err := r.validate(); err != nil {
		return nil, usageError{err}
	}
	return pos, nil
}

// parseInterspersed parses the flags among args wherever they are (the
// standard flag package stops at the first positional argument) and
// returns the positional arguments in order. "--" ends the flags.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			pos = append(pos, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimLeft(a, "-")
		if strings.Contains(name, "=") {
			continue
		}
		f := fs.Lookup(name)
		if f == nil {
			continue // fs.Parse reports it
		}
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
			continue
		}
		if i+1 < len(args) {
			i++
			flags = append(flags, args[i])
		}
	}
	if err := fs.Parse(flags); err != nil {
		return nil, err
	}
	return append(fs.Args(), pos...), nil
}
