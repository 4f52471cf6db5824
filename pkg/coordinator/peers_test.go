package coordinator

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/switchyard-ml/switchyard/internal/syncbuf"
	"github.com/switchyard-ml/switchyard/pkg/security"
)

// forwarder relays TCP connections to target: a proxy (or NAT) between
// replicas, counting the connections it carried.
type forwarder struct {
	lis   net.Listener
	conns atomic.Int64
	mu    sync.Mutex
	open  []net.Conn
}

func newForwarder(t *testing.T, target string) *forwarder {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &forwarder{lis: lis}
	go func() {
		for {
			in, err := lis.Accept()
			if err != nil {
				return
			}
			out, err := net.DialTimeout("tcp", target, 5*time.Second)
			if err != nil {
				in.Close()
				continue
			}
			f.conns.Add(1)
			f.mu.Lock()
			f.open = append(f.open, in, out)
			f.mu.Unlock()
			go func() { io.Copy(out, in); out.Close(); in.Close() }() //nolint:errcheck // ends with either side
			go func() { io.Copy(in, out); in.Close(); out.Close() }() //nolint:errcheck
		}
	}()
	t.Cleanup(func() {
		lis.Close()
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, c := range f.open {
			c.Close()
		}
	})
	return f
}

// TestPeerAddrs: the raft configuration holds an address for c3 where
// nothing listens (c3 advertises it); c1 and c2 reach c3 only through
// PeerAddrs, at a forwarder to its real listener. c3, started after c1
// and c2 committed, catches up; with the leader's other peer shut down,
// a command commits only because the leader reaches c3 through the
// override. The peers not in PeerAddrs are dialled at their configured
// addresses, without raft's fallback warning. Over TCP and mutual TLS
// (whose certificate names the host dialled, the forwarder's).
func TestPeerAddrs(t *testing.T) {
	t.Run("tcp", func(t *testing.T) { testPeerAddrs(t, nil) })
	t.Run("tls", func(t *testing.T) {
		tc, err := security.EphemeralMutualTLS("127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		testPeerAddrs(t, tc)
	})
}

func testPeerAddrs(t *testing.T, tc *tls.Config) {
	ctx := context.Background()
	addrs := freeAddrs(t, 4)
	real3, dead3 := addrs[2], addrs[3]
	fwd := newForwarder(t, real3)
	servers := []Server{{"c1", addrs[0]}, {"c2", addrs[1]}, {"c3", dead3}}
	var logs syncbuf.Buffer
	start := func(id, bind, advertise string, peers map[string]string) *Node {
		cfg := fastConfig(t, id)
		cfg.BindAddr, cfg.AdvertiseAddr, cfg.PeerAddrs = bind, advertise, peers
		cfg.Bootstrap, cfg.Servers, cfg.TLS = true, servers, tc
		cfg.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(&logs, tWriter{t}), &slog.HandlerOptions{Level: slog.LevelWarn}))
		n, err := NewNode(cfg)
		if err != nil {
			t.Fatalf("start %s: %v", id, err)
		}
		t.Cleanup(func() { n.Shutdown() })
		return n
	}
	via := map[string]string{"c3": fwd.lis.Addr().String()}
	n1 := start("c1", addrs[0], "", via)
	n2 := start("c2", addrs[1], "", via)
	leader := leaderOf(t, []*Node{n1, n2}, 20*time.Second)
	if _, err := leader.Apply(ctx, submitCmd(0, "job-1", 1)); err != nil {
		t.Fatal(err)
	}
	n3 := start("c3", real3, dead3, nil)
	if n3.Addr() != dead3 {
		t.Fatalf("c3 advertises %s, want %s", n3.Addr(), dead3)
	}
	checkFor(t, 20*time.Second, func() error { return sameState(n1, n2, n3) })
	if fwd.conns.Load() == 0 {
		t.Fatal("c3 caught up, but not through the forwarder")
	}

	// the leader and c3 alone: a commit needs c3's ack, through the override
	other := n1
	if leader == n1 {
		other = n2
	}
	if err := other.Shutdown(); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 20*time.Second, func() error {
		_, err := leader.Apply(ctxTimeout(t, 5*time.Second), submitCmd(0, "job-2", 1))
		if errors.Is(err, ErrNotLeader) {
			return fmt.Errorf("%w (an election after the shutdown)", err)
		}
		if err != nil {
			t.Fatal(err)
		}
		return nil
	})
	checkFor(t, 20*time.Second, func() error { return sameState(leader, n3) })
	if servers, err := leader.Servers(); err != nil || servers[2].Address != dead3 {
		t.Fatalf("the configuration changed: %+v %v", servers, err)
	}
	if strings.Contains(logs.String(), "unable to get address") {
		t.Fatalf("raft fell back on the configured address by itself:\n%s", logs.String())
	}
}
