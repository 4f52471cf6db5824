// Package collbench measures the collectives of pkg/parallel: latency and
// bus bandwidth of all-reduce and all-to-all over the gRPC transport on
// loopback, with every rank a goroutine or (by default) its own process,
// and the loopback TCP ceiling they work under. It is the harness of
// `switchyard bench collectives` and of the transport's process tests; a
// program that uses it must call ChildMain first thing in main.
package collbench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/parallel"
	"github.com/switchyard-ml/switchyard/pkg/security"
	"golang.org/x/sync/errgroup"
)

// Result is one measurement of Collectives.
type Result struct {
	Op        string  `json:"op"` // all_reduce, all_to_all, tcp_loopback, tcp_loopback_bidir
	World     int     `json:"world"`
	Bytes     int     `json:"bytes"` // per rank (tcp_loopback: bytes moved, each way for bidir)
	Iters     int     `json:"iters"`
	LatencyMS float64 `json:"latency_ms"` // median per operation of the slowest rank
	AlgBWGBs  float64 `json:"algbw_gbs"`  // bytes / time
	BusBWGBs  float64 `json:"busbw_gbs"`  // all_reduce: algbw*2(W-1)/W; all_to_all: algbw*(W-1)/W
	// CPUMS is the CPU time (user and system, all threads) the ranks spent
	// together per operation, averaged over the timed iterations. On a
	// shared machine where the ranks outnumber the cores it is the steadier
	// figure: other load stretches the latency but hardly the CPU time.
	CPUMS     float64 `json:"cpu_ms_all_ranks,omitempty"`
	Transport string  `json:"transport"` // grpc-processes, grpc-goroutines, tcp
}

// Option changes how Collectives runs.
type Option func(*benchConfig)

type benchConfig struct {
	inProcess bool
	opts      parallel.Options
	comm      parallel.CommOptions
	tls       *security.PEM // mutual TLS between the ranks, or nil
	tlsErr    error
}

// InProcess runs the ranks as goroutines of this process (still over
// gRPC on loopback) instead of as separate processes.
func InProcess() Option { return func(c *benchConfig) { c.inProcess = true } }

// WithTransport sets the transport and communicator options of the ranks.
func WithTransport(o parallel.Options, co parallel.CommOptions) Option {
	return func(c *benchConfig) { c.opts, c.comm = o, co }
}

// suffix marks the transport label of an encrypted run.
func (c benchConfig) suffix() string {
	if c.tls != nil {
		return "+tls"
	}
	return ""
}

// WithTLS encrypts the ranks' connections with mutual TLS (a throwaway CA
// and certificate for 127.0.0.1), to measure what encryption costs.
func WithTLS() Option {
	return func(c *benchConfig) {
		p, err := security.EphemeralPEM("127.0.0.1")
		if err == nil {
			c.tls = &p
		}
		c.tlsErr = err
	}
}

// Collectives measures all-reduce and all-to-all over the gRPC transport
// on loopback with world ranks, for every size in sizes (bytes per rank),
// plus the loopback TCP ceiling (one stream, 1 MiB writes). Sizes of 1 MiB
// and more run iters times; smaller ones 10*iters times.
//
// By default every rank is a separate OS process: the current executable
// re-executed with SWITCHYARD_BENCH_RANK set, which must call
// ChildMain first thing in main (TestMain in tests) so that it runs the
// rank instead of the program.
func Collectives(ctx context.Context, world int, sizes []int, iters int, opts ...Option) ([]Result, error) {
	cfg := benchConfig{opts: parallel.Options{Timeout: time.Minute}}
	for _, o := range opts {
		o(&cfg)
	}
	if world < 1 || iters < 1 {
		return nil, fmt.Errorf("collbench: world %d, iters %d", world, iters)
	}
	if cfg.tlsErr != nil {
		return nil, fmt.Errorf("collbench: TLS: %w", cfg.tlsErr)
	}
	if cfg.tls != nil {
		tc, err := cfg.tls.Config()
		if err != nil {
			return nil, err
		}
		cfg.opts.TLS = tc
	}
	tcp, err := MeasureLoopbackTCP(ctx, 1<<30, 1<<20)
	if err != nil {
		return nil, err
	}
	bidir, err := MeasureLoopbackTCPBidir(ctx, 512<<20, 1<<20)
	if err != nil {
		return nil, err
	}
	var res []Result
	if cfg.inProcess {
		ts, err := parallel.NewLoopbackGRPC(ctx, world, cfg.opts)
		if err != nil {
			return nil, err
		}
		defer parallel.CloseTransports(ts)
		out := make([][]Result, world)
		var g errgroup.Group
		for r := range world {
			g.Go(func() (err error) {
				out[r], err = RunRank(ctx, ts[r], sizes, iters, cfg.comm)
				return err
			})
		}
		if err := g.Wait(); err != nil {
			return nil, err
		}
		res = out[0]
		for i := range res {
			res[i].Transport = "grpc-goroutines" + cfg.suffix()
			res[i].CPUMS /= float64(world) // every rank measured the one process
		}
	} else {
		ranks, err := startRanks(ctx, world, childConfig{Mode: "bench", Sizes: sizes, Iters: iters, Opts: cfg.opts, Comm: cfg.comm, TLS: cfg.tls})
		if err != nil {
			return nil, err
		}
		lines, err := ranks.wait()
		if err != nil {
			return nil, err
		}
		for _, l := range lines[0] {
			if j, ok := strings.CutPrefix(l, "result "); ok {
				var r Result
				if err := json.Unmarshal([]byte(j), &r); err != nil {
					return nil, fmt.Errorf("collbench: rank 0 output %q: %w", l, err)
				}
				r.Transport = "grpc-processes" + cfg.suffix()
				res = append(res, r)
			}
		}
	}
	return append(res, tcp, bidir), nil
}

// RunRank is one rank of Collectives over an already connected
// transport (every rank of the world calls it with the same arguments). All
// ranks return the same results.
func RunRank(ctx context.Context, t parallel.Transport, sizes []int, iters int, co parallel.CommOptions) ([]Result, error) {
	w := t.Size()
	all := make([]int, w)
	for i := range all {
		all[i] = i
	}
	co.Name = "bench"
	c, err := parallel.NewComm(t, all, co)
	if err != nil {
		return nil, err
	}
	var res []Result
	// timeIt runs op twice to warm up, then n times, and returns the median
	// over iterations of the slowest rank's time (every iteration starts
	// when the previous one's collective has synchronised the ranks) and the
	// CPU seconds of all ranks together per iteration. A median, not a
	// mean: other load on a shared machine shows up as a few slow
	// iterations.
	timeIt := func(n int, op func() error) (float64, float64, error) {
		for i := 0; i < 2; i++ { // warm-up
			if err := op(); err != nil {
				return 0, 0, err
			}
		}
		if err := c.Barrier(ctx); err != nil {
			return 0, 0, err
		}
		secs := make([]float64, n)
		cpu0 := processCPU()
		for i := 0; i < n; i++ {
			start := time.Now()
			if err := op(); err != nil {
				return 0, 0, err
			}
			secs[i] = time.Since(start).Seconds()
		}
		cpu := []float64{(processCPU() - cpu0) / float64(n)}
		if err := c.AllReduceF64(ctx, secs, parallel.Max); err != nil {
			return 0, 0, err
		}
		if err := c.AllReduceF64(ctx, cpu, parallel.Sum); err != nil {
			return 0, 0, err
		}
		slices.Sort(secs)
		return secs[n/2], cpu[0], nil
	}
	for _, size := range sizes {
		n := iters
		if size < 1<<20 {
			n = 10 * iters
		}
		elems := size / 4
		buf := make([]float32, elems)
		for i := range buf {
			buf[i] = float32(i%7) * 0.5
		}
		sec, cpu, err := timeIt(n, func() error { return c.AllReduce(ctx, buf, parallel.Sum) })
		if err != nil {
			return nil, fmt.Errorf("collbench all-reduce %d bytes: %w", size, err)
		}
		alg := float64(elems*4) / sec / 1e9
		res = append(res, Result{Op: "all_reduce", World: w, Bytes: elems * 4, Iters: n, LatencyMS: sec * 1e3,
			AlgBWGBs: alg, BusBWGBs: alg * 2 * float64(w-1) / float64(w), CPUMS: cpu * 1e3})

		per := elems / w
		counts := make([]int, w)
		for i := range counts {
			counts[i] = per
		}
		send, recv := buf[:per*w], make([]float32, per*w)
		sec, cpu, err = timeIt(n, func() error { return c.AllToAllVF32(ctx, send, counts, recv, counts) })
		if err != nil {
			return nil, fmt.Errorf("collbench all-to-all %d bytes: %w", size, err)
		}
		alg = float64(per*w*4) / sec / 1e9
		res = append(res, Result{Op: "all_to_all", World: w, Bytes: per * w * 4, Iters: n, LatencyMS: sec * 1e3,
			AlgBWGBs: alg, BusBWGBs: alg * float64(w-1) / float64(w), CPUMS: cpu * 1e3})
	}
	return res, nil
}

// MeasureLoopbackTCP moves total bytes through one loopback TCP connection
// in writes of write bytes and reports the throughput: the ceiling any
// transport on this machine works under.
func MeasureLoopbackTCP(ctx context.Context, total, write int) (Result, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return Result{}, err
	}
	defer lis.Close()
	done := make(chan error, 1)
	go func() {
		c, err := lis.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		buf := make([]byte, write)
		got := 0
		for got < total {
			n, err := c.Read(buf)
			got += n
			if err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", lis.Addr().String())
	if err != nil {
		return Result{}, err
	}
	defer c.Close()
	buf := make([]byte, write)
	start := time.Now()
	for sent := 0; sent < total; sent += write {
		if _, err := c.Write(buf[:min(write, total-sent)]); err != nil {
			return Result{}, err
		}
	}
	if err := <-done; err != nil {
		return Result{}, err
	}
	sec := time.Since(start).Seconds()
	gb := float64(total) / sec / 1e9
	return Result{Op: "tcp_loopback", World: 2, Bytes: total, Iters: 1, LatencyMS: sec * 1e3,
		AlgBWGBs: gb, BusBWGBs: gb, Transport: "tcp"}, nil
}

// MeasureLoopbackTCPBidir moves total bytes each way at once through one
// loopback TCP connection (both ends write and read concurrently, write
// bytes at a time) and reports the throughput per direction: the ceiling
// for the traffic of a ring, where every rank sends and receives at once.
func MeasureLoopbackTCPBidir(ctx context.Context, total, write int) (Result, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return Result{}, err
	}
	defer lis.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := lis.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	var d net.Dialer
	a, err := d.DialContext(ctx, "tcp", lis.Addr().String())
	if err != nil {
		return Result{}, err
	}
	defer a.Close()
	b, ok := <-accepted
	if !ok {
		return Result{}, errors.New("collbench: loopback accept failed")
	}
	defer b.Close()
	start := time.Now()
	var g errgroup.Group
	for w := range 4 { // a writer and a reader on each end
		g.Go(func() error { return pump([]net.Conn{a, b}[w/2], w%2 == 0, total, write) })
	}
	if err := g.Wait(); err != nil {
		return Result{}, err
	}
	sec := time.Since(start).Seconds()
	gb := float64(total) / sec / 1e9
	return Result{Op: "tcp_loopback_bidir", World: 2, Bytes: total, Iters: 1, LatencyMS: sec * 1e3,
		AlgBWGBs: gb, BusBWGBs: gb, Transport: "tcp"}, nil
}

// pump writes total bytes to c in writes of size write, or reads total
// bytes from it.
func pump(c net.Conn, writer bool, total, write int) error {
	buf := make([]byte, write)
	if writer {
		for sent := 0; sent < total; sent += write {
			if _, err := c.Write(buf[:min(write, total-sent)]); err != nil {
				return err
			}
		}
		return nil
	}
	for got := 0; got < total; {
		n, err := c.Read(buf)
		got += n
		if err != nil {
			return err
		}
	}
	return nil
}

// Child processes. The parent starts the current executable once per rank
// with benchRankEnv set and talks to it over stdin/stdout, one line at a
// time: the child prints "addr HOST:PORT", the parent answers with the JSON
// list of every rank's address, the child connects, runs, prints "result
// JSON" lines (bench) and exits 0, or prints "error TEXT" and exits 1.

const benchRankEnv = "SWITCHYARD_BENCH_RANK"

// benchProfileEnv, if set to a directory, makes every rank write a CPU
// profile there (rank-N.pprof).
const benchProfileEnv = "SWITCHYARD_BENCH_CPUPROFILE"

type childConfig struct {
	Mode  string               `json:"mode"` // bench | loop (all-reduce until failure, for fault tests)
	Rank  int                  `json:"rank"`
	World int                  `json:"world"`
	Sizes []int                `json:"sizes,omitempty"`
	Iters int                  `json:"iters,omitempty"`
	Opts  parallel.Options     `json:"opts"`
	Comm  parallel.CommOptions `json:"comm"`
	TLS   *security.PEM        `json:"tls,omitempty"`
}

// ChildMain runs this process as a rank of Collectives and exits,
// if it was started as one (SWITCHYARD_BENCH_RANK is set); otherwise it
// returns at once. Call it first thing in main.
func ChildMain() {
	if os.Getenv(benchRankEnv) == "" {
		return
	}
	if dir := os.Getenv(benchProfileEnv); dir != "" { // profiling aid: one CPU profile per rank
		if f, err := os.Create(fmt.Sprintf("%s/rank-%s.pprof", dir, os.Getenv(benchRankEnv))); err == nil {
			if pprof.StartCPUProfile(f) == nil {
				defer pprof.StopCPUProfile()
			}
		}
	}
	if err := runChild(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintf(os.Stdout, "error %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
		pprof.StopCPUProfile()
		os.Exit(1)
	}
	pprof.StopCPUProfile()
	os.Exit(0)
}

func runChild(stdin io.Reader, stdout io.Writer) error {
	in := bufio.NewReader(stdin)
	var cfg childConfig
	line, err := in.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	if err := json.Unmarshal(line, &cfg); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if cfg.TLS != nil {
		if cfg.Opts.TLS, err = cfg.TLS.Config(); err != nil {
			return err
		}
	}
	t, err := parallel.ListenGRPC(cfg.Rank, cfg.World, "127.0.0.1:0", cfg.Opts)
	if err != nil {
		return err
	}
	defer t.Close()
	fmt.Fprintf(stdout, "addr %s\n", t.Addr())
	var addrs []string
	if line, err = in.ReadBytes('\n'); err != nil {
		return fmt.Errorf("read addresses: %w", err)
	}
	if err := json.Unmarshal(line, &addrs); err != nil {
		return fmt.Errorf("addresses: %w", err)
	}
	ctx := context.Background()
	if err := t.Connect(ctx, addrs); err != nil {
		return err
	}
	switch cfg.Mode {
	case "bench":
		res, err := RunRank(ctx, t, cfg.Sizes, cfg.Iters, cfg.Comm)
		if err != nil {
			return err
		}
		for _, r := range res {
			j, _ := json.Marshal(r)
			fmt.Fprintf(stdout, "result %s\n", j)
		}
		return nil
	case "loop":
		all := make([]int, cfg.World)
		for i := range all {
			all[i] = i
		}
		c, err := parallel.NewComm(t, all, cfg.Comm)
		if err != nil {
			return err
		}
		buf := make([]float32, 1<<18)
		for i := 0; ; i++ {
			if err := c.AllReduce(ctx, buf, parallel.Sum); err != nil {
				return err
			}
			if i == 2 {
				fmt.Fprintln(stdout, "running")
			}
		}
	}
	return fmt.Errorf("unknown mode %q", cfg.Mode)
}

// rankProcs are the child processes of one run.
type rankProcs struct {
	cmds  []*exec.Cmd
	lines []chan string // stdout lines after "addr", closed at EOF
}

func startRanks(ctx context.Context, world int, cfg childConfig) (*rankProcs, error) {
	if os.Getenv(benchRankEnv) != "" {
		return nil, errors.New("collbench: a bench rank cannot start ranks (does main call ChildMain?)")
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	p := &rankProcs{}
	stdins := make([]io.WriteCloser, world)
	addrs := make([]string, world)
	for r := 0; r < world; r++ {
		cmd := exec.CommandContext(ctx, exe)
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d", benchRankEnv, r))
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			p.kill()
			return nil, err
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			p.kill()
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			p.kill()
			return nil, err
		}
		p.cmds = append(p.cmds, cmd)
		stdins[r] = stdin
		c := cfg
		c.Rank, c.World = r, world
		j, _ := json.Marshal(c)
		if _, err := fmt.Fprintf(stdin, "%s\n", j); err != nil {
			p.kill()
			return nil, err
		}
		lines := make(chan string, 1024)
		p.lines = append(p.lines, lines)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
	}
	for r := 0; r < world; r++ {
		select {
		case l, ok := <-p.lines[r]:
			a, isAddr := strings.CutPrefix(l, "addr ")
			if !ok || !isAddr {
				p.kill()
				return nil, fmt.Errorf("collbench: rank %d did not report its address (got %q)", r, l)
			}
			addrs[r] = a
		case <-time.After(30 * time.Second):
			p.kill()
			return nil, fmt.Errorf("collbench: rank %d did not start", r)
		}
	}
	j, _ := json.Marshal(addrs)
	for _, in := range stdins {
		fmt.Fprintf(in, "%s\n", j)
		in.Close()
	}
	return p, nil
}

func (p *rankProcs) kill() {
	for _, c := range p.cmds {
		c.Process.Kill()
		c.Wait()
	}
}

// wait collects every rank's output lines and fails if any rank failed.
func (p *rankProcs) wait() ([][]string, error) {
	out := make([][]string, len(p.cmds))
	var errs []error
	for r, c := range p.cmds {
		for l := range p.lines[r] {
			out[r] = append(out[r], l)
		}
		if err := c.Wait(); err != nil {
			errs = append(errs, fmt.Errorf("collbench: rank %d: %w: %s", r, err, strings.Join(out[r], "; ")))
		}
	}
	return out, errors.Join(errs...)
}

// processCPU is the CPU time this process has used (user and system, all
// threads), in seconds; 0 where the system does not say.
func processCPU() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}
