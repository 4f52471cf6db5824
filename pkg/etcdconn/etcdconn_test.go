package etcdconn

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/switchyard-ml/switchyard/internal/testnet"
	"github.com/switchyard-ml/switchyard/pkg/devcluster"
	"github.com/switchyard-ml/switchyard/pkg/security"
)

// TestUserFromTheEnvironment: against an etcd with auth on, a client
// without the user is refused and one with it (from the environment)
// reads and writes.
func TestUserFromTheEnvironment(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	e, err := devcluster.StartEtcd(ctx, t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	admin, err := Open(e.Endpoints, Config{Getenv: func(string) string { return "" }})
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []func() error{
		func() error { _, err := admin.RoleAdd(ctx, "root"); return err },
		func() error { _, err := admin.UserAdd(ctx, "root", "pw"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := admin.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	admin.Close()
	env := map[string]string{UsernameEnv: "root", PasswordEnv: "pw"}
	withUser, err := Open(e.Endpoints, Config{Getenv: func(k string) string { return env[k] }})
	if err != nil {
		t.Fatal(err)
	}
	defer withUser.Close()
	if _, err := withUser.Put(ctx, "/switchyard/x", "1"); err != nil {
		t.Fatalf("with the user: %v", err)
	}
	anon, err := Open(e.Endpoints, Config{Getenv: func(string) string { return "" }})
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	if _, err := anon.Get(ctx, "/switchyard/x"); err == nil {
		t.Fatal("read without the user")
	}
	// a user in Config wins over the environment's
	wrongEnv := func(k string) string { return map[string]string{UsernameEnv: "root", PasswordEnv: "wrong"}[k] }
	explicit, err := Open(e.Endpoints, Config{Username: "root", Password: "pw", Getenv: wrongEnv})
	if err != nil {
		t.Fatalf("the user in Config: %v", err)
	}
	defer explicit.Close()
	if _, err := explicit.Get(ctx, "/switchyard/x"); err != nil {
		t.Fatalf("read with the user in Config: %v", err)
	}
	if _, err := Open(e.Endpoints, Config{Getenv: wrongEnv}); err == nil {
		t.Fatal("connected with a wrong password from the environment")
	}
	if _, err := Open(e.Endpoints, Config{Username: "root"}); err == nil || !strings.Contains(err.Error(), "both") {
		t.Fatalf("a Config user without a password: %v", err)
	}
	if _, err := Open(e.Endpoints, Config{Getenv: func(k string) string { return map[string]string{UsernameEnv: "root"}[k] }}); err == nil || !strings.Contains(err.Error(), PasswordEnv) {
		t.Fatalf("a user without a password: %v", err)
	}
	if _, err := Open(e.Endpoints, Config{TLS: security.TLSFiles{CA: "/nonexistent/ca.pem"}}); err == nil || !strings.Contains(err.Error(), "etcd TLS") {
		t.Fatalf("half the TLS files: %v", err)
	}
}

// writePEM writes p's files into dir and returns them.
func writePEM(t *testing.T, dir string, p security.PEM) security.TLSFiles {
	t.Helper()
	f := security.TLSFiles{CA: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, "cert.pem"), Key: filepath.Join(dir, "key.pem")}
	for path, b := range map[string][]byte{f.CA: p.CA, f.Cert: p.Cert, f.Key: p.Key} {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// TestDiagnose: what a plain connection meets at each endpoint, named.
func TestDiagnose(t *testing.T) {
	server, err := security.EphemeralPEM("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	other, err := security.EphemeralPEM("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	good, wrongCA := writePEM(t, t.TempDir(), server), writePEM(t, t.TempDir(), other)
	// trusts the server, but shows a certificate of another CA
	wrongCert := writePEM(t, t.TempDir(), security.PEM{CA: server.CA, Cert: other.Cert, Key: other.Key})
	cert, err := tls.X509KeyPair(server.Cert, server.Key)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(server.CA)
	lis, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	testnet.Accept(t, lis, func(c net.Conn) {
		c.(*tls.Conn).Handshake() //nolint:errcheck // the client reads the outcome
		time.Sleep(time.Second)
		c.Close()
	})
	plain, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := dead.Addr().String()
	dead.Close()

	tlsURL := "https://" + lis.Addr().String()
	ctx := context.Background()
	for _, tc := range []struct {
		endpoint string
		files    security.TLSFiles
		says     string
	}{
		{"http://" + deadAddr, good, "connection refused"},
		{"http://" + plain.Addr().String(), security.TLSFiles{}, "reachable (plain TCP)"},
		{tlsURL, security.TLSFiles{}, "no TLS files"},
		{tlsURL, wrongCA, "TLS handshake: tls: failed to verify certificate"},
		{tlsURL, wrongCert, "TLS: remote error: tls:"},
		{tlsURL, good, "reachable (TLS accepted)"},
	} {
		got := Diagnose(ctx, []string{tc.endpoint}, tc.files)
		if !strings.HasPrefix(got, tc.endpoint+": ") || !strings.Contains(got, tc.says) {
			t.Errorf("%s: %q, want it to say %q", tc.endpoint, got, tc.says)
		}
	}
}

// outage is a TCP proxy to target on a fixed loopback port that can be
// taken down (its connections cut and nothing listening: connections are
// refused, as while etcd restarts) and brought back on the same port.
type outage struct {
	t      *testing.T
	addr   string
	target string

	mu    sync.Mutex
	lis   net.Listener
	conns []net.Conn
}

func newOutage(t *testing.T, target string) *outage {
	t.Helper()
	o := &outage{t: t, target: target}
	o.up()
	o.addr = o.lis.Addr().String()
	t.Cleanup(o.down)
	return o
}

func (o *outage) up() {
	o.t.Helper()
	addr := "127.0.0.1:0"
	if o.addr != "" {
		addr = o.addr
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		o.t.Fatal(err)
	}
	o.mu.Lock()
	o.lis = lis
	o.mu.Unlock()
	testnet.Accept(o.t, lis, func(c net.Conn) {
		s, err := net.Dial("tcp", o.target)
		if err != nil {
			c.Close()
			return
		}
		o.mu.Lock()
		o.conns = append(o.conns, c, s)
		o.mu.Unlock()
		go func() { io.Copy(s, c); s.Close() }() //nolint:errcheck
		io.Copy(c, s)                            //nolint:errcheck
		c.Close()
	})
}

// down closes the listener and every connection through it.
func (o *outage) down() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.lis.Close()
	for _, c := range o.conns {
		c.Close()
	}
	o.conns = nil
}

// TestReconnectSoonAfterAnOutage: etcd is unreachable for ten seconds (a
// restart), then back. A client that kept trying meanwhile reaches it
// again within a few seconds, not after gRPC's default pause, which by
// then has grown to about six seconds (and to half a minute after a
// one-minute outage).
func TestReconnectSoonAfterAnOutage(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	e, err := devcluster.StartEtcd(ctx, t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	o := newOutage(t, strings.TrimPrefix(e.Endpoints[0], "http://"))
	c, err := Open([]string{"http://" + o.addr}, Config{Getenv: func(string) string { return "" }})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Put(ctx, "/switchyard/r", "1"); err != nil {
		t.Fatal(err)
	}
	o.down()
	time.Sleep(10 * time.Second)
	o.up()
	back := time.Now()
	deadline := back.Add(3 * time.Second)
	for {
		gctx, gcancel := context.WithTimeout(ctx, 300*time.Millisecond)
		_, err := c.Get(gctx, "/switchyard/r")
		gcancel()
		if err == nil {
			t.Logf("etcd reachable again %v after it came back", time.Since(back).Round(time.Millisecond))
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd back for %v and the client still fails: %v", time.Since(back).Round(time.Millisecond), err)
		}
	}
}
