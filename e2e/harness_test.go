package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard-ml/switchyard/internal/freeport"
	"github.com/switchyard-ml/switchyard/internal/syncbuf"
)

// bins holds the binaries the tests run: ours, built once, and the real
// etcd and NATS servers pinned as tools in go.mod.
var bins struct {
	dir         string
	switchyard  string
	coordinator string
	worker      string
	etcd        string
	nats        string
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "switchyard-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := func() int {
		defer os.RemoveAll(dir)
		if err := build(dir); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: build:", err)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

func build(dir string) error {
	bins.dir = dir
	cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/switchyard", "./cmd/coordinator", "./cmd/worker")
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%v\n%s", err, out)
	}
	bins.switchyard = filepath.Join(dir, "switchyard")
	bins.coordinator = filepath.Join(dir, "coordinator")
	bins.worker = filepath.Join(dir, "worker")
	for _, tool := range []struct {
		pkg string
		dst *string
	}{{"github.com/nats-io/nats-server/v2", &bins.nats}, {"go.etcd.io/etcd/server/v3", &bins.etcd}} {
		cmd := exec.Command("go", "tool", "-n", tool.pkg)
		cmd.Dir = ".."
		out, err := cmd.Output()
		if err != nil {
			return fmt.Errorf("go tool -n %s: %v", tool.pkg, err)
		}
		*tool.dst = strings.TrimSpace(string(out))
	}
	return nil
}

// proc is a child process with its output kept for the test log.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *syncbuf.Buffer
	done chan struct{}
	err  error
}

// start runs bin with args; the process is killed when the test ends and
// its output is logged if the test failed.
func start(t *testing.T, name string, env []string, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, out: &syncbuf.Buffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("---- %s output (last 3000 bytes) ----\n%s", name, tail(p.out.String(), 3000))
		}
	})
	return p
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill9 kills the process group at once (no clean-up runs).
func (p *proc) kill9() {
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL) //nolint:errcheck
	<-p.done
}

// signal sends sig to the process alone (not its children).
func (p *proc) signal(sig syscall.Signal) {
	syscall.Kill(p.cmd.Process.Pid, sig) //nolint:errcheck
}

// stop asks politely, then kills.
func (p *proc) stop() {
	if p.exited() {
		return
	}
	syscall.Kill(p.cmd.Process.Pid, syscall.SIGCONT) //nolint:errcheck // a paused one cannot stop
	syscall.Kill(p.cmd.Process.Pid, syscall.SIGTERM) //nolint:errcheck
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.kill9()
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL) //nolint:errcheck // children left behind
}

// freePortRun returns a port p such that p..p+n-1 were all free (and are
// reserved for this test process; see internal/freeport).
func freePortRun(t *testing.T, n int) int {
	t.Helper()
	p, err := freeport.Run("127.0.0.1", n)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func freePorts(t *testing.T, n int) []int {
	t.Helper()
	ps, err := freeport.Ports("127.0.0.1", n)
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

func waitTCP(t *testing.T, addr string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("nothing listens on %s after %v", addr, timeout)
}

// eventually polls fn until it returns nil or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = fn(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: not within %v: %v", what, timeout, err)
}

// cliResult is one run of the switchyard CLI.
type cliResult struct {
	stdout, stderr string
	code           int
}

func runCLI(ctx context.Context, env []string, args ...string) cliResult {
	return runCLIIn(ctx, "", env, args...)
}

// runCLIIn is runCLI in the network namespace netns ("": this one), run
// as `ip netns exec netns switchyard ...` (which also gives it the
// namespace's /etc/netns/netns/hosts as /etc/hosts).
func runCLIIn(ctx context.Context, netns string, env []string, args ...string) cliResult {
	cmd := exec.CommandContext(ctx, bins.switchyard, args...)
	if netns != "" {
		cmd = exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", netns, bins.switchyard}, args...)...)
	}
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	cmd.Env = append(os.Environ(), env...)
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
	}
	return cliResult{stdout: so.String(), stderr: se.String(), code: code}
}

func decode(t *testing.T, r cliResult, m proto.Message) {
	t.Helper()
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal([]byte(r.stdout), m); err != nil {
		t.Fatalf("decode %T from %q (stderr %q): %v", m, r.stdout, r.stderr, err)
	}
}
