package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/switchyard-ml/switchyard/internal/freeport"
)

// cmdLaunch starts nproc `switchyard train` processes on this machine that
// find each other over loopback gRPC (torchrun's standalone mode), streams
// their output with a rank prefix, and fails fast if any of them fails.
func cmdLaunch(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("launch", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: switchyard launch --nproc N [--tp a] [--ep b] [--dp c] [--balance dp|node|none] [--ranks-per-node K] -- <train flags>")
		fs.PrintDefaults()
	}
	nproc := fs.Int("nproc", 2, "processes to start")
	tp := fs.Int("tp", 1, "tensor-parallel degree")
	ep := fs.Int("ep", 1, "expert-parallel degree")
	dp := fs.Int("dp", 0, "data-parallel degree (default nproc/tp)")
	balance := fs.String("balance", "dp", "LBL balance group: dp, node or none")
	perNode := fs.Int("ranks-per-node", 0, "treat every K consecutive ranks as one node (the --balance node groups), as if on K-GPU machines; 0: all ranks are this one machine's")
	commTimeout := fs.Duration("comm-timeout", 30*time.Second, "a peer silent this long in a collective is an error on every rank")
	dataPlane := fs.String("data-plane", "tcp", "collective payload transport for every rank: tcp or grpc")
	grace := fs.Duration("grace", 0, "after a rank fails, how long the others get to exit on their own before they are killed (default comm-timeout + 10s)")
	gpus := fs.Int("gpus", 0, "spread the ranks over this many GPUs, one each in turn: rank r sees GPU r mod N (of $CUDA_VISIBLE_DEVICES when set) as its only one, through CUDA_VISIBLE_DEVICES; 0 leaves it alone")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return usageError{err}
	}
	if *grace == 0 {
		*grace = *commTimeout + 10*time.Second
	}
	hosts, err := launchHosts(*nproc, *perNode, *tp)
	if err != nil {
		return usageError{err}
	}
	df := distFlags{world: *nproc, tp: *tp, dp: *dp, ep: *ep, balance: *balance, hosts: strings.Join(hosts, ",")}
	if _, err := df.layout(); err != nil {
		return usageError{err}
	}
	cvd, cvdSet := os.LookupEnv("CUDA_VISIBLE_DEVICES")
	visible, err := rankGPUs(*nproc, *gpus, cvd, cvdSet)
	if err != nil {
		return usageError{err}
	}
	peers, err := freeLoopbackAddrs(*nproc)
	if err != nil {
		return fmt.Errorf("launch: %w", err)
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("launch: %w", err)
	}
	type exit struct {
		rank int
		err  error
	}
	exits := make(chan exit, *nproc)
	cmds := make([]*exec.Cmd, *nproc)
	var outMu sync.Mutex
	// a rank's output readers, which must reach EOF before its Wait
	// (Wait closes the pipes: a rank's last lines, often its error, would
	// be lost)
	pipes := make([]sync.WaitGroup, *nproc)
	for r := 0; r < *nproc; r++ {
		argv := append([]string{"train"}, fs.Args()...)
		argv = append(argv, "--rank", fmt.Sprint(r), "--world", fmt.Sprint(*nproc), "--tp", fmt.Sprint(*tp), "--ep", fmt.Sprint(*ep),
			"--dp", fmt.Sprint(*dp), "--balance", *balance, "--hosts", df.hosts, "--peers", strings.Join(peers, ","), "--comm-timeout", commTimeout.String(), "--data-plane", *dataPlane)
		c := exec.Command(self, argv...)
		if visible != nil {
			c.Env = append(os.Environ(), "CUDA_VISIBLE_DEVICES="+visible[r])
		}
		stdout, _ := c.StdoutPipe()
		stderr, _ := c.StderrPipe()
		if err := c.Start(); err != nil {
			for _, started := range cmds[:r] {
				started.Process.Kill()
			}
			return fmt.Errorf("launch: start rank %d: %w", r, err)
		}
		cmds[r] = c
		fmt.Fprintf(os.Stderr, "launch: rank %d pid %d on %s\n", r, c.Process.Pid, peers[r])
		for _, p := range []struct {
			src io.Reader
			dst *os.File
		}{{stdout, os.Stdout}, {stderr, os.Stderr}} {
			pipes[r].Add(1)
			go func(r int) {
				defer pipes[r].Done()
				prefixLines(p.src, p.dst, r, *nproc, &outMu)
			}(r)
		}
	}
	go func() {
		for r, c := range cmds {
			go func() { pipes[r].Wait(); exits <- exit{r, c.Wait()} }()
		}
	}()
	var first *exit
	var failed []exit
	remaining := *nproc
	var deadline <-chan time.Time
	for remaining > 0 {
		select {
		case e := <-exits:
			remaining--
			if e.err != nil {
				failed = append(failed, e)
			}
			if e.err != nil && first == nil {
				first = &e
				fmt.Fprintf(os.Stderr, "launch: rank %d failed: %v; waiting up to %s for the other ranks to stop\n", e.rank, e.err, *grace)
				deadline = time.After(*grace)
			}
		case <-ctx.Done():
			for _, c := range cmds {
				c.Process.Signal(syscall.SIGTERM)
			}
			ctx = context.Background()
			deadline = time.After(*grace)
		case <-deadline:
			fmt.Fprintf(os.Stderr, "launch: killing %d rank(s) still running\n", remaining)
			for _, c := range cmds {
				if c.ProcessState == nil {
					c.Process.Kill()
				}
			}
			deadline = nil
		}
	}
	if first == nil {
		return nil
	}
	// Name the cause: a rank that died from a signal (killed, crashed)
	// rather than the first survivor that noticed it and exited.
	cause := *first
	for _, e := range failed {
		var ee *exec.ExitError
		if errors.As(e.err, &ee) {
			if st, ok := ee.Sys().(syscall.WaitStatus); ok && st.Signaled() {
				cause = e
				break
			}
		}
	}
	parts := make([]string, 0, len(failed))
	for _, e := range failed {
		parts = append(parts, fmt.Sprintf("rank %d: %v", e.rank, e.err))
	}
	return fmt.Errorf("launch: rank %d failed (%v); ranks that failed: %s", cause.rank, cause.err, strings.Join(parts, ", "))
}

// prefixLines copies lines from src to dst, prefixed with the rank.
func prefixLines(src io.Reader, dst *os.File, rank, world int, mu *sync.Mutex) {
	sc := bufio.NewScanner(src)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	w := len(fmt.Sprint(world - 1))
	for sc.Scan() {
		mu.Lock()
		fmt.Fprintf(dst, "[rank %*d] %s\n", w, rank, sc.Text())
		mu.Unlock()
	}
}

// freeLoopbackAddrs reserves n distinct free loopback ports for the ranks
// (below the ephemeral range, so no outgoing connection takes one before
// its rank binds it).
func freeLoopbackAddrs(n int) ([]string, error) {
	return freeport.Addrs("127.0.0.1", n)
}

// rankGPUs is each rank's CUDA_VISIBLE_DEVICES when nproc ranks share
// gpus GPUs in turn (nil for gpus 0): entries of the visible list the
// process was given, or the indices 0..gpus-1.
func rankGPUs(nproc, gpus int, visible string, visibleSet bool) ([]string, error) {
	switch {
	case gpus < 0:
		return nil, fmt.Errorf("--gpus %d: must be >= 0", gpus)
	case gpus == 0:
		return nil, nil
	}
	ids := make([]string, gpus)
	for i := range ids {
		ids[i] = strconv.Itoa(i)
	}
	if visibleSet { // set, even empty (no GPU visible): its GPUs only
		var given []string
		for _, g := range strings.Split(visible, ",") {
			if g = strings.TrimSpace(g); g != "" {
				given = append(given, g)
			} else if visible != "" {
				return nil, fmt.Errorf("--gpus %d: CUDA_VISIBLE_DEVICES=%q has an empty entry", gpus, visible)
			}
		}
		if len(given) < gpus {
			return nil, fmt.Errorf("--gpus %d: CUDA_VISIBLE_DEVICES=%q names only %d", gpus, visible, len(given))
		}
		copy(ids, given)
	}
	out := make([]string, nproc)
	for r := range out {
		out[r] = strings.TrimSpace(ids[r%gpus])
	}
	return out, nil
}

// launchHosts names the node of each of nproc ranks: every perNode
// consecutive ranks share one ("node0", "node1", ...; all "node0" when
// perNode is 0). A node holds whole tensor-parallel groups.
func launchHosts(nproc, perNode, tp int) ([]string, error) {
	switch {
	case perNode < 0:
		return nil, fmt.Errorf("launch: --ranks-per-node %d: must be >= 0", perNode)
	case perNode == 0:
		perNode = max(nproc, 1)
	case nproc%perNode != 0:
		return nil, fmt.Errorf("launch: --ranks-per-node %d does not divide --nproc %d", perNode, nproc)
	case tp > 0 && perNode%tp != 0:
		return nil, fmt.Errorf("launch: --ranks-per-node %d is not a multiple of --tp %d (a tensor-parallel group stays on one node)", perNode, tp)
	}
	hosts := make([]string, max(nproc, 0))
	for r := range hosts {
		hosts[r] = fmt.Sprintf("node%d", r/perNode)
	}
	return hosts, nil
}
