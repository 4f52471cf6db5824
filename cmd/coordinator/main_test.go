package main

import (
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-ml/switchyard/internal/freeport"
)

// runCaptured calls run with os.Stderr redirected into a pipe and returns
// the exit code and what run wrote to stderr.
func runCaptured(t *testing.T, args []string) (int, string) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	saved := os.Stderr
	os.Stderr = w
	out := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(r)
		r.Close()
		out <- string(b)
	}()
	code := func() int {
		defer func() { os.Stderr = saved; w.Close() }()
		return run(args)
	}()
	return code, <-out
}

// leftovers is what a refused run must not leave behind: goroutines
// (apart from os/signal's process-wide watcher, started once by
// signal.NotifyContext and never stopped) and open sockets.
type leftovers struct{ goroutines, sockets int }

func snapshot() leftovers {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var l leftovers
	for _, g := range strings.Split(string(buf), "\n\n") {
		if !strings.Contains(g, "os/signal.") {
			l.goroutines++
		}
	}
	l.sockets = -1
	if fds, err := os.ReadDir("/proc/self/fd"); err == nil {
		l.sockets = 0
		for _, fd := range fds {
			if dst, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name())); err == nil && strings.HasPrefix(dst, "socket:") {
				l.sockets++
			}
		}
	}
	return l
}

// checkNothingLeft waits up to 2s for the goroutine and socket counts to
// fall back to before.
func checkNothingLeft(t *testing.T, before leftovers) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		now := snapshot()
		if now.goroutines <= before.goroutines && now.sockets <= before.sockets {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("left behind: %d goroutines and %d sockets before, %d and %d after", before.goroutines, before.sockets, now.goroutines, now.sockets)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// freeAddr is host:port with a port that is free right now.
func freeAddr(t *testing.T, host string) string {
	t.Helper()
	out, err := freeport.Addrs(host, 1)
	if err != nil {
		t.Fatal(err)
	}
	return out[0]
}

func TestRunRefuses(t *testing.T) {
	t.Setenv("SWITCHYARD_TOKEN", "")
	base := func(dir string, extra ...string) []string {
		return append([]string{"--id", "c1", "--data-dir", dir, "--etcd-endpoints", "http://127.0.0.1:1"}, extra...)
	}
	for _, tc := range []struct {
		name string
		args func(dir string) []string
		code int // -1: any non-zero code
		want string
	}{
		{"insecure API listener", func(dir string) []string {
			return base(dir, "--api-addr", "0.0.0.0:0", "--raft-addr", "127.0.0.1:0", "--bootstrap")
		}, 2, "refusing to listen beyond loopback"},
		{"insecure API listener on a fixed port", func(dir string) []string {
			return base(dir, "--api-addr", freeAddr(t, "0.0.0.0"), "--raft-addr", freeAddr(t, "127.0.0.1"), "--bootstrap")
		}, 2, "refusing to listen beyond loopback"},
		{"API on all interfaces, empty host", func(dir string) []string {
			return base(dir, "--api-addr", ":0", "--raft-addr", "127.0.0.1:0", "--bootstrap")
		}, 2, "refusing to listen beyond loopback"},
		{"insecure raft listener", func(dir string) []string {
			return base(dir, "--api-addr", "127.0.0.1:0", "--raft-addr", "0.0.0.0:0", "--bootstrap")
		}, 2, "raft listener"},
		{"dev mode beyond loopback", func(dir string) []string {
			return []string{"--dev", "--data-dir", dir, "--api-addr", "10.1.2.3:7400"}
		}, -1, "loopback-only"},
		{"dev mode beyond loopback, even with --insecure", func(dir string) []string {
			return []string{"--dev", "--insecure", "--data-dir", dir, "--api-addr", "10.1.2.3:7400", "--raft-addr", "127.0.0.1:0"}
		}, -1, "loopback-only"},
		{"dev mode raft beyond loopback", func(dir string) []string {
			return []string{"--dev", "--insecure", "--data-dir", dir, "--api-addr", "127.0.0.1:0", "--raft-addr", "0.0.0.0:0"}
		}, -1, "loopback-only"},
		{"bad peers entry", func(dir string) []string {
			return base(dir, "--raft-addr", "127.0.0.1:0", "--bootstrap", "--peers", "c1=127.0.0.1:7401,c2")
		}, 2, `--peers entry "c2"`},
		{"bootstrap of peers without this replica", func(dir string) []string {
			return base(dir, "--raft-addr", "127.0.0.1:0", "--bootstrap", "--peers", "c2=coord-1.coord:7401,c3=coord-2.coord:7401")
		}, 2, "c1 is not among the replicas to bootstrap (c2,c3)"},
		{"raft peer address without an ID", func(dir string) []string {
			return base(dir, "--raft-addr", "127.0.0.1:0", "--raft-peer-addr", "127.0.0.1:7402")
		}, 2, "want ID=HOST:PORT"},
		{"raft peer address with a bad ID", func(dir string) []string {
			return base(dir, "--raft-addr", "127.0.0.1:0", "--raft-peer-addr", "c 2=127.0.0.1:7402")
		}, 2, `replica id "c 2"`},
		{"raft peer address without a port", func(dir string) []string {
			return base(dir, "--raft-addr", "127.0.0.1:0", "--raft-peer-addr", "c2=127.0.0.1")
		}, 2, `raft address "127.0.0.1"`},
		{"raft peer address given twice", func(dir string) []string {
			return base(dir, "--raft-addr", "127.0.0.1:0", "--raft-peer-addr", "c2=127.0.0.1:7402", "--raft-peer-addr", "c2=127.0.0.1:7403")
		}, 2, "replica c2 given twice"},
		{"raft peer address of this replica", func(dir string) []string {
			return base(dir, "--raft-addr", "127.0.0.1:0", "--raft-peer-addr", "c1=127.0.0.1:7402")
		}, 2, "names this replica"},
		{"missing etcd endpoints", func(dir string) []string {
			return []string{"--id", "c1", "--data-dir", dir, "--raft-addr", "127.0.0.1:0"}
		}, 2, "--etcd-endpoints is required"},
		{"raft address without a port: named by its flag, prefixed once", func(dir string) []string {
			return base(dir, "--raft-addr", "nonsense")
		}, 2, "coordinator: invalid config: --raft-addr: address nonsense: missing port in address"},
		{"bad peer address: named by its flag and entry", func(dir string) []string {
			return base(dir, "--raft-addr", "127.0.0.1:0", "--bootstrap", "--peers", "c1=127.0.0.1:7401,c2=bad")
		}, 2, "coordinator: invalid config: --peers (entry 2): raft address \"bad\""},
		{"bad log level", func(dir string) []string {
			return base(dir, "--log-level", "loud")
		}, 2, "--log-level"},
		{"unknown flag", func(dir string) []string {
			return base(dir, "--no-such-flag")
		}, 2, "no-such-flag"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			args := tc.args(dir)
			before := snapshot()
			done := make(chan struct{})
			var code int
			var stderr string
			go func() { defer close(done); code, stderr = runCaptured(t, args) }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Fatalf("run(%q) did not return: it did not refuse", args)
			}
			if tc.code >= 0 && code != tc.code || tc.code < 0 && code == 0 {
				t.Errorf("run(%q) = %d, want %d (stderr: %s)", args, code, tc.code, stderr)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr %q does not mention %q", stderr, tc.want)
			}
			if strings.Contains(stderr, "coordinator: coordinator:") {
				t.Errorf("stderr %q repeats its prefix", stderr)
			}
			checkNothingLeft(t, before)
			// Refused before anything was set up: no raft or dev-cluster
			// state was written.
			if ents, err := os.ReadDir(dir); err != nil || len(ents) != 0 {
				t.Errorf("data dir after a refusal: %v entries, err %v", len(ents), err)
			}
		})
	}
}

func TestPeerAddrFlag(t *testing.T) {
	p := peerAddrFlag{}
	for _, v := range []string{"coord-3=proxy.internal:7403", "coord-2=127.0.0.1:17402"} {
		if err := p.Set(v); err != nil {
			t.Fatalf("Set(%q): %v", v, err)
		}
	}
	if got, want := p.String(), "coord-2=127.0.0.1:17402,coord-3=proxy.internal:7403"; got != want {
		t.Fatalf("String() = %q, want %q", got, want)
	}
	if (peerAddrFlag)(nil).String() != "" {
		t.Fatal("the zero value prints something")
	}
}

// runCapturedOut is runCaptured that also captures stdout.
func runCapturedOut(t *testing.T, args []string) (code int, stdout, stderr string) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	saved := os.Stdout
	os.Stdout = w
	out := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(r)
		r.Close()
		out <- string(b)
	}()
	func() {
		defer func() { os.Stdout = saved; w.Close() }()
		code, stderr = runCaptured(t, args)
	}()
	return code, <-out, stderr
}

// --check-config accepts what a replica in a Kubernetes pod is started
// with (TLS files that exist only in the pod, a raft advertise name only
// the cluster's DNS resolves) and refuses what a start would refuse,
// without opening anything.
func TestCheckConfig(t *testing.T) {
	t.Setenv("SWITCHYARD_TOKEN", "")
	pod := func(dir string, extra ...string) []string {
		return append([]string{"--check-config", "--id", "switchyard-coordinator-1", "--data-dir", dir,
			"--raft-addr", "0.0.0.0:7401", "--raft-advertise", "switchyard-coordinator-1.switchyard-coordinator.switchyard.svc:7401",
			"--api-addr", "0.0.0.0:7400", "--metrics-addr", "0.0.0.0:7403",
			"--bootstrap", "--peers", "switchyard-coordinator-0=switchyard-coordinator-0.switchyard-coordinator.switchyard.svc:7401,switchyard-coordinator-1=switchyard-coordinator-1.switchyard-coordinator.switchyard.svc:7401",
			"--etcd-endpoints", "https://etcd-0.etcd.switchyard.svc:2379,https://etcd-1.etcd.switchyard.svc:2379"}, extra...)
	}
	tlsFiles := []string{"--tls-ca", "/etc/switchyard/tls/ca.crt", "--tls-cert", "/etc/switchyard/tls/tls.crt", "--tls-key", "/etc/switchyard/tls/tls.key"}
	for _, tc := range []struct {
		name string
		args func(dir string) []string
		code int
		want string // in stdout when code is 0, else in stderr
	}{
		{"mutual TLS from files not on this machine", func(dir string) []string {
			return pod(dir, append(tlsFiles, "--raft-tls")...)
		}, 0, "coordinator: config ok: replica switchyard-coordinator-1, raft 0.0.0.0:7401 (advertised switchyard-coordinator-1.switchyard-coordinator.switchyard.svc:7401), api 0.0.0.0:7400, http none, metrics 0.0.0.0:7403, bootstrap true, peers [switchyard-coordinator-0 switchyard-coordinator-1], etcd 2 endpoints, tls mutual, raft too"},
		{"insecure, said so", func(dir string) []string { return pod(dir, "--insecure") }, 0, "tls off, token false, insecure true"},
		{"token from the environment", func(dir string) []string {
			t.Setenv("SWITCHYARD_TOKEN", "s3cret")
			return pod(dir, "--insecure")
		}, 0, "token true"},
		{"dev mode", func(dir string) []string { return []string{"--check-config", "--dev", "--data-dir", dir} }, 0, "replica coord-1"},
		{"no TLS beyond loopback", func(dir string) []string { return pod(dir) }, 2, "refusing to listen beyond loopback"},
		{"raft TLS without files", func(dir string) []string { return pod(dir, "--insecure", "--raft-tls") }, 2, "raft TLS needs the TLS files"},
		{"a TLS file missing", func(dir string) []string { return pod(dir, tlsFiles[:4]...) }, 2, "TLS needs all of ca, cert and key"},
		{"advertise address without a port", func(dir string) []string {
			return pod(dir, append(tlsFiles, "--raft-advertise", "switchyard-coordinator-1.switchyard-coordinator")...)
		}, 2, "AdvertiseAddr"},
		{"this replica not among the peers", func(dir string) []string {
			return pod(dir, append(tlsFiles, "--id", "switchyard-coordinator-2")...)
		}, 2, "is not among the replicas to bootstrap"},
		{"dev mode beyond loopback", func(dir string) []string {
			return []string{"--check-config", "--dev", "--data-dir", dir, "--api-addr", "10.1.2.3:7400"}
		}, 2, "loopback-only"},
		{"relative checkpoint root", func(dir string) []string { return pod(dir, "--insecure", "--checkpoint-root", "ck") }, 2, "must be absolute"},
		{"a stray argument", func(dir string) []string { return pod(dir, "--insecure", "extra") }, 2, `unexpected argument "extra"`},
		{"unknown flag", func(dir string) []string { return pod(dir, "--no-such-flag") }, 2, "no-such-flag"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			before := snapshot()
			code, stdout, stderr := runCapturedOut(t, tc.args(dir))
			if code != tc.code {
				t.Fatalf("exit %d, want %d (stdout %q, stderr %q)", code, tc.code, stdout, stderr)
			}
			got := stderr
			if code == 0 {
				got = stdout
				if strings.Count(stdout, "\n") != 1 {
					t.Errorf("stdout is not one line: %q", stdout)
				}
			}
			if !strings.Contains(got, tc.want) {
				t.Errorf("output %q does not mention %q", got, tc.want)
			}
			checkNothingLeft(t, before)
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Errorf("--check-config created the data dir (stat: %v)", err)
			}
		})
	}
}
