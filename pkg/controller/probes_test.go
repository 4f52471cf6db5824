package controller

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/coordinator"
	"github.com/switchyard-ml/switchyard/pkg/security"
)

// TestProbeHandler: liveness and readiness against a fake state.
func TestProbeHandler(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	good := health{Leader: true, EtcdOK: now.Add(-3 * time.Second), HasBus: true, BusConnected: true}
	for _, tc := range []struct {
		name        string
		edit        func(*health)
		live, ready int
		reasons     []string // in /readyz's answer
	}{
		{"ready", func(*health) {}, 200, 200, nil},
		{"no bus configured", func(h *health) { h.HasBus, h.BusConnected = false, false }, 200, 200, nil},
		{"no leader", func(h *health) { h.Leader = false }, 200, 503, []string{"raft knows no leader"}},
		{"etcd never reached", func(h *health) { h.EtcdOK = time.Time{} }, 200, 503, []string{"etcd not reached yet"}},
		{"etcd stale", func(h *health) { h.EtcdOK = now.Add(-12 * time.Second) }, 200, 503, []string{"etcd not reached for 12s"}},
		{"NATS down", func(h *health) { h.BusConnected = false }, 200, 503, []string{"NATS not connected"}},
		{"closing", func(h *health) { h.Closing = true }, 200, 503, []string{"shutting down"}},
		{"all wrong", func(h *health) { *h = health{HasBus: true} }, 200, 503,
			[]string{"raft knows no leader", "etcd not reached yet", "NATS not connected"}},
		{"raft shut down", func(h *health) { h.Shutdown, h.Leader = true, false }, 503, 503, []string{"raft is shut down"}},
	} {
		st := good
		tc.edit(&st)
		srv := httptest.NewServer(probeHandler(func() health { return st }, func() time.Time { return now }))
		for path, want := range map[string]int{"/healthz": tc.live, "/readyz": tc.ready} {
			resp, err := http.Get(srv.URL + path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != want {
				t.Errorf("%s: GET %s: %d %q, want %d", tc.name, path, resp.StatusCode, body, want)
			}
			if want == 200 && string(body) != "ok\n" {
				t.Errorf("%s: GET %s: %q", tc.name, path, body)
			}
			if path == "/readyz" {
				for _, r := range tc.reasons {
					if !strings.Contains(string(body), r) {
						t.Errorf("%s: GET /readyz: %q does not say %q", tc.name, body, r)
					}
				}
			}
		}
		srv.Close()
	}

	srv := httptest.NewServer(probeHandler(func() health { return good }, func() time.Time { return now }))
	defer srv.Close()
	resp, err := http.Head(srv.URL + "/readyz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("HEAD /readyz: %v %v", resp, err)
	}
	resp.Body.Close()
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
		req, _ := http.NewRequest(m, srv.URL+"/healthz", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
			t.Errorf("%s /healthz: %d, Allow %q", m, resp.StatusCode, resp.Header.Get("Allow"))
		}
	}
}

// TestDaemonProbes: a real dev-mode Daemon (embedded etcd and NATS) with
// TLS on serves /healthz and /readyz on its dashboard listener without a
// token or a client certificate (as a kubelet probes), while the
// dashboard still wants both; once closed, it serves nothing.
func TestDaemonProbes(t *testing.T) {
	dir := t.TempDir()
	p, err := security.EphemeralPEM("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	files := security.TLSFiles{CA: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, "cert.pem"), Key: filepath.Join(dir, "key.pem")}
	for f, b := range map[string][]byte{files.CA: p.CA, files.Cert: p.Cert, files.Key: p.Key} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	withCert, err := p.Config()
	if err != nil {
		t.Fatal(err)
	}
	rc := coordinator.DefaultConfig()
	rc.ID, rc.BindAddr, rc.DataDir, rc.Bootstrap = "coord-1", "127.0.0.1:0", filepath.Join(dir, "data"), true
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	d, err := Start(ctx, DaemonConfig{
		Raft: rc, Dev: true, APIListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0",
		Token: "s3cret", TLS: files, Logger: quietLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	noCert := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: withCert.RootCAs}}, Timeout: 5 * time.Second}
	cert := &http.Client{Transport: &http.Transport{TLSClientConfig: withCert}, Timeout: 5 * time.Second}
	get := func(c *http.Client, path, token string) (int, string, error) {
		req, _ := http.NewRequest(http.MethodGet, "https://"+d.HTTPAddr+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := c.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body, err := get(noCert, "/readyz", "")
		if err == nil && code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz never ready: %d %q %v", code, body, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code, body, err := get(noCert, "/healthz", ""); err != nil || code != 200 || body != "ok\n" {
		t.Fatalf("/healthz: %d %q %v", code, body, err)
	}
	if code, _, err := get(noCert, "/api/jobs", "s3cret"); err != nil || code != http.StatusUnauthorized {
		t.Errorf("dashboard without a client certificate: %d %v", code, err)
	}
	if code, _, err := get(cert, "/api/jobs", ""); err != nil || code != http.StatusUnauthorized {
		t.Errorf("dashboard without the token: %d %v", code, err)
	}
	if code, body, err := get(cert, "/api/jobs", "s3cret"); err != nil || code != 200 {
		t.Errorf("dashboard with certificate and token: %d %q %v", code, body, err)
	}
	if d.health().notReady(time.Now()) != nil {
		t.Errorf("ready, yet %v", d.health().notReady(time.Now()))
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if h := d.health(); !h.Closing || !h.Shutdown {
		t.Errorf("after Close: %+v", h)
	}
	if _, _, err := get(noCert, "/healthz", ""); err == nil {
		t.Error("the probes still answer after Close")
	}
}

// TestCloseHandsOverLeadership: three replicas on loopback with the
// default raft timings. Closing a follower's Daemon leaves the leader
// alone; closing the leader's hands leadership to another replica (three
// times, a fresh cluster each), and the time until one reports itself
// leader is logged (run with -v).
func TestCloseHandsOverLeadership(t *testing.T) {
	const rounds = 4 // round 0 closes a follower only
	var took []time.Duration
	for round := range rounds {
		nodes := cluster3(t, round)
		leader := waitLeader(t, nodes)
		if round == 0 {
			var follower *coordinator.Node
			for _, n := range nodes {
				if n != leader {
					follower = n
					break
				}
			}
			term := leader.Stats()["term"]
			if err := (&Daemon{Node: follower, log: quietLogger(t)}).Close(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Second) // a heartbeat timeout: nothing may happen
			if !leader.IsLeader() || leader.Stats()["term"] != term {
				t.Fatalf("closing follower %s disturbed the leader: %s leads %v, term %s -> %s",
					follower.ID(), leader.ID(), leader.IsLeader(), term, leader.Stats()["term"])
			}
			continue // two of three left: the leader's successor would have nobody to vote for it
		}
		start := time.Now()
		closed := make(chan error, 1)
		go func() { closed <- (&Daemon{Node: leader, log: quietLogger(t)}).Close() }()
		var next *coordinator.Node
		deadline := start.Add(20 * time.Second)
		for next == nil {
			for _, n := range nodes {
				if n != leader && n.IsLeader() {
					next = n
				}
			}
			if next == nil && time.Now().After(deadline) {
				t.Fatalf("round %d: no other replica took over from %s", round, leader.ID())
			}
			time.Sleep(time.Millisecond)
		}
		d := time.Since(start)
		took = append(took, d)
		if err := <-closed; err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d: %s closed, %s leads after %v", round, leader.ID(), next.ID(), d)
	}
	t.Logf("handover times: %v", took)
}

// cluster3 starts three raft replicas bootstrapped together with the
// default (production) timings.
func cluster3(t *testing.T, round int) []*coordinator.Node {
	t.Helper()
	addrs := freePorts(t, 3)
	var servers []coordinator.Server
	for i := range 3 {
		servers = append(servers, coordinator.Server{ID: "c" + strconv.Itoa(i+1), Address: addrs[i]})
	}
	nodes := make([]*coordinator.Node, 3)
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i, s := range servers {
		cfg := coordinator.DefaultConfig()
		cfg.ID, cfg.BindAddr, cfg.DataDir = s.ID, s.Address, filepath.Join(t.TempDir(), fmt.Sprintf("%s-%d", s.ID, round))
		cfg.Bootstrap, cfg.Servers, cfg.Logger = true, servers, quietLogger(t)
		wg.Add(1)
		go func() { defer wg.Done(); nodes[i], errs[i] = coordinator.NewNode(cfg) }()
	}
	wg.Wait()
	for i, n := range nodes {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		t.Cleanup(func() { n.Shutdown() }) //nolint:errcheck // may be shut down already
	}
	return nodes
}

// waitLeader waits until every replica agrees on one leader.
func waitLeader(t *testing.T, nodes []*coordinator.Node) *coordinator.Node {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var leader *coordinator.Node
		err := errors.New("no leader")
		for _, n := range nodes {
			if n.IsLeader() {
				leader, err = n, nil
			}
		}
		for _, n := range nodes {
			if id, _ := n.Leader(); err == nil && leader != nil && id != leader.ID() {
				err = fmt.Errorf("%s thinks %q leads", n.ID(), id)
			}
		}
		if err == nil {
			return leader
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestStartFailsCleanly: a coordinator that cannot start (its API port is
// taken) returns the error, having closed what it had started (the dev
// etcd and NATS, raft); before, the cleanup ran on a nil daemon and
// panicked, hiding the error.
func TestStartFailsCleanly(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	rc := coordinator.DefaultConfig()
	rc.ID, rc.BindAddr, rc.DataDir, rc.Bootstrap = "coord-1", "127.0.0.1:0", filepath.Join(t.TempDir(), "data"), true
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	d, err := Start(ctx, DaemonConfig{Raft: rc, Dev: true, APIListen: busy.Addr().String(), Logger: quietLogger(t)})
	if err == nil {
		d.Close()
		t.Fatal("started on a port in use")
	}
	if d != nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("daemon %v, error %v: want none and the listen error", d, err)
	}
}
