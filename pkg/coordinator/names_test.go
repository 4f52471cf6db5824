package coordinator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/switchyard-ml/switchyard/internal/syncbuf"
)

// fakeDNS maps host names to loopback IPs; a name not (yet) in it does
// not resolve. It dials like a net.Dialer that resolves at every dial.
type fakeDNS struct {
	mu    sync.Mutex
	hosts map[string]string
}

func (d *fakeDNS) set(name, ip string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.hosts[name] = ip
}

func (d *fakeDNS) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	ip, ok := d.hosts[host]
	d.mu.Unlock()
	if !ok {
		return nil, &net.OpError{Op: "dial", Net: network, Err: &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}}
	}
	return (&net.Dialer{}).DialContext(ctx, network, net.JoinHostPort(ip, port))
}

// namedCluster starts replicas c1..cN named coord-I.coord.test, each bound
// to a loopback port and advertising its name (taken from Servers, as a
// StatefulSet pod started with the shared --peers does), dialling through
// dns. Only the names in resolved resolve at first.
func namedCluster(t *testing.T, n int, dns *fakeDNS, logs io.Writer, resolved ...int) ([]*Node, []Config) {
	t.Helper()
	addrs := freeAddrs(t, n)
	var servers []Server
	for i := range n {
		_, port, _ := net.SplitHostPort(addrs[i])
		servers = append(servers, Server{ID: fmt.Sprintf("c%d", i+1), Address: net.JoinHostPort(fmt.Sprintf("coord-%d.coord.test", i), port)})
	}
	for _, i := range resolved {
		dns.set(fmt.Sprintf("coord-%d.coord.test", i), "127.0.0.1")
	}
	nodes, cfgs := make([]*Node, n), make([]Config, n)
	for i, s := range servers {
		cfgs[i] = fastConfig(t, s.ID)
		cfgs[i].BindAddr, cfgs[i].Dial = addrs[i], dns.dial
		cfgs[i].Bootstrap, cfgs[i].Servers = true, servers
		cfgs[i].Logger = slog.New(slog.NewTextHandler(io.MultiWriter(logs, tWriter{t}), &slog.HandlerOptions{Level: slog.LevelWarn}))
		node, err := NewNode(cfgs[i])
		if err != nil {
			t.Fatalf("start %s: %v", s.ID, err)
		}
		t.Cleanup(func() { node.Shutdown() })
		if node.Addr() != s.Address {
			t.Fatalf("%s advertises %s, want its name %s", s.ID, node.Addr(), s.Address)
		}
		nodes[i] = node
	}
	return nodes, cfgs
}

// TestClusterByNames: three replicas configured by DNS names alone. c3's
// name does not resolve at first (a StatefulSet pod not ready yet): c3
// still starts, the others commit without it, and c3 catches up once its
// name resolves. The configuration keeps the names.
func TestClusterByNames(t *testing.T) {
	dns := &fakeDNS{hosts: map[string]string{}}
	var logs syncbuf.Buffer
	nodes, _ := namedCluster(t, 3, dns, &logs, 0, 1)
	// c3 does not hear the leader, so leaderOf (all agree) would wait
	var leader *Node
	checkFor(t, 20*time.Second, func() error {
		for _, n := range nodes {
			if n.IsLeader() {
				if _, err := n.Apply(ctxTimeout(t, 2*time.Second), submitCmd(0, "job-1", 1)); err != nil {
					return err
				}
				leader = n
				return nil
			}
		}
		return errors.New("no leader")
	})
	if leader != nodes[2] {
		// the leader cannot reach c3 (a leader c3 could: it dials the others)
		checkFor(t, 10*time.Second, func() error {
			if !strings.Contains(logs.String(), "waiting for a raft peer's name to resolve") {
				return errors.New("the unresolved name was not logged")
			}
			return nil
		})
		if len(nodes[2].Jobs()) != 0 {
			t.Fatal("c3 got the log while its name did not resolve")
		}
	}
	dns.set("coord-2.coord.test", "127.0.0.1")
	checkFor(t, 20*time.Second, func() error { return sameState(nodes...) })
	servers, err := nodes[2].Servers()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range servers {
		if !strings.HasSuffix(strings.Split(s.Address, ":")[0], ".coord.test") {
			t.Errorf("configuration holds %s for %s, want its name", s.Address, s.ID)
		}
	}
}

// TestTransferLeadership: a leader hands over to another voter; a
// follower's call does nothing and leaves the leader be.
func TestTransferLeadership(t *testing.T) {
	ctx := ctxTimeout(t, 20*time.Second)
	dns := &fakeDNS{hosts: map[string]string{}}
	nodes, _ := namedCluster(t, 3, dns, io.Discard, 0, 1, 2)
	leader := leaderOf(t, nodes, 20*time.Second)
	for _, n := range nodes {
		if n == leader {
			continue
		}
		if moved, err := n.TransferLeadership(ctx); moved || err != nil {
			t.Fatalf("follower %s: moved %v, %v", n.ID(), moved, err)
		}
	}
	if !leader.IsLeader() {
		t.Fatal("a follower's call moved the leadership")
	}
	moved, err := leader.TransferLeadership(ctx)
	if !moved || err != nil {
		t.Fatalf("leader %s: moved %v, %v", leader.ID(), moved, err)
	}
	next := leaderOf(t, nodes, 10*time.Second)
	if next == leader {
		t.Fatalf("%s still leads", leader.ID())
	}

	// a lone voter has nobody to hand over to
	c := fastConfig(t, "solo")
	c.Bootstrap = true
	solo := startNode(t, c)
	if _, _, err := solo.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 5*time.Second, func() error {
		if !solo.IsLeader() {
			return errors.New("solo does not lead")
		}
		return nil
	})
	if moved, err := solo.TransferLeadership(ctx); moved || err != nil || !solo.IsLeader() {
		t.Fatalf("lone voter: moved %v, %v, leads %v", moved, err, solo.IsLeader())
	}
}

// TestRestartNeverBootstrapsAgain: every replica is started with the same
// Bootstrap and Servers; after the configuration changed (c3 removed), a
// replica restarted with those settings keeps the cluster's configuration
// and its log instead of bootstrapping the first one again.
func TestRestartNeverBootstrapsAgain(t *testing.T) {
	ctx := ctxTimeout(t, 30*time.Second)
	dns := &fakeDNS{hosts: map[string]string{}}
	nodes, cfgs := namedCluster(t, 3, dns, io.Discard, 0, 1, 2)
	leader := leaderOf(t, nodes, 20*time.Second)
	if _, err := leader.Apply(ctx, submitCmd(0, "job-1", 1)); err != nil {
		t.Fatal(err)
	}
	var gone int // a follower, removed
	for i, n := range nodes {
		if n != leader {
			gone = i
			break
		}
	}
	if err := leader.RemoveServer(ctx, nodes[gone].ID()); err != nil {
		t.Fatal(err)
	}
	var restart int // the other follower, restarted with Bootstrap
	for i, n := range nodes {
		if n != leader && i != gone {
			restart = i
		}
	}
	checkFor(t, 10*time.Second, func() error {
		s, err := nodes[restart].Servers()
		if err != nil || len(s) != 2 {
			return fmt.Errorf("%s sees %v %v", nodes[restart].ID(), s, err)
		}
		return nil
	})
	want := ids(t, leader)
	if err := nodes[restart].Shutdown(); err != nil {
		t.Fatal(err)
	}
	nodes[restart] = startNode(t, cfgs[restart])
	if got := ids(t, nodes[restart]); !slices.Equal(got, want) {
		t.Fatalf("restarted with Bootstrap: configuration %v, want %v", got, want)
	}
	checkFor(t, 10*time.Second, func() error { return sameState(leader, nodes[restart]) })
	if _, err := leader.Apply(ctx, submitCmd(0, "job-2", 1)); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 10*time.Second, func() error { return sameState(leader, nodes[restart]) })
	if got := ids(t, leader); !slices.Equal(got, want) {
		t.Fatalf("after the restart the leader has %v, want %v", got, want)
	}
}

// ids is the replica IDs of n's configuration, sorted.
func ids(t *testing.T, n *Node) []string {
	t.Helper()
	s, err := n.Servers()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, x := range s {
		out = append(out, x.ID+"="+x.Address)
	}
	slices.Sort(out)
	return out
}
