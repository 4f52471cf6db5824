package coordinator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/switchyard-ml/switchyard/internal/freeport"
	"github.com/switchyard-ml/switchyard/pkg/security"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// checkFor polls fn until it returns nil or the timeout passes.
func checkFor(t *testing.T, timeout time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// freeAddrs reserves n loopback ports and releases them for the nodes.
func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	out, err := freeport.Addrs("127.0.0.1", n)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func startNode(t *testing.T, cfg Config) *Node {
	t.Helper()
	cfg.Logger = testLogger(t)
	n, err := NewNode(cfg)
	if err != nil {
		t.Fatalf("start %s: %v", cfg.ID, err)
	}
	t.Cleanup(func() { n.Shutdown() })
	return n
}

func jobIDs(n *Node) string {
	var ids []string
	for _, j := range n.Jobs() {
		ids = append(ids, j.Id)
	}
	return fmt.Sprint(ids)
}

func sameState(nodes ...*Node) error {
	want := nodes[0].FSM().State()
	for _, n := range nodes[1:] {
		if got := n.FSM().State(); !proto.Equal(got, want) {
			return fmt.Errorf("%s has %s, %s has %s", n.ID(), jobIDs(n), nodes[0].ID(), jobIDs(nodes[0]))
		}
	}
	return nil
}

func leaderOf(t *testing.T, nodes []*Node, timeout time.Duration) *Node {
	t.Helper()
	var leader *Node
	checkFor(t, timeout, func() error {
		leader = nil
		for _, n := range nodes {
			if n.IsLeader() {
				leader = n
			}
		}
		if leader == nil {
			return errors.New("no leader")
		}
		for _, n := range nodes {
			if id, _ := n.Leader(); id != leader.ID() {
				return fmt.Errorf("%s thinks the leader is %q, not %s", n.ID(), id, leader.ID())
			}
		}
		return nil
	})
	return leader
}

// TestClusterFailover runs three replicas bootstrapped together with the
// default (production) raft timings, kills the leader and measures how long
// the survivors take to elect a new one.
func TestClusterFailover(t *testing.T) {
	ctx := context.Background()
	addrs := freeAddrs(t, 3)
	servers := []Server{{"c1", addrs[0]}, {"c2", addrs[1]}, {"c3", addrs[2]}}
	cfgs := make([]Config, 3)
	nodes := make([]*Node, 3)
	for i, s := range servers {
		cfgs[i] = DefaultConfig()
		cfgs[i].ID, cfgs[i].BindAddr, cfgs[i].DataDir = s.ID, s.Address, filepath.Join(t.TempDir(), s.ID)
		cfgs[i].Bootstrap, cfgs[i].Servers = true, servers
		nodes[i] = startNode(t, cfgs[i])
	}
	leader := leaderOf(t, nodes, 10*time.Second)

	// A follower refuses writes and names the leader.
	for _, n := range nodes {
		if n == leader {
			continue
		}
		_, err := n.Apply(ctx, submitCmd(0, "job-1", 2))
		var nle *NotLeaderError
		if !errors.Is(err, ErrNotLeader) || !errors.As(err, &nle) || nle.LeaderAddr != leader.Addr() || nle.LeaderID != leader.ID() {
			t.Fatalf("follower %s: err %v, want not-leader naming %s at %s", n.ID(), err, leader.ID(), leader.Addr())
		}
	}
	r, err := leader.Apply(ctx, submitCmd(0, "job-1", 2))
	if err != nil || !r.Created || r.Job.SubmittedUnixNano == 0 {
		t.Fatalf("submit on leader: %+v %v", r, err)
	}
	if _, err := leader.Apply(ctx, placeCmd(0, "job-1", "w1", "w2")); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 20*time.Second, func() error { return sameState(nodes...) })

	// Kill the leader.
	var old int
	for i, n := range nodes {
		if n == leader {
			old = i
		}
	}
	start := time.Now()
	if err := leader.Shutdown(); err != nil {
		t.Fatal(err)
	}
	var rest []*Node
	for i, n := range nodes {
		if i != old {
			rest = append(rest, n)
		}
	}
	newLeader := leaderOf(t, rest, 15*time.Second)
	failover := time.Since(start)
	t.Logf("leader fail-over: %v (heartbeat %v, election %v); new leader %s",
		failover.Round(time.Millisecond), cfgs[0].HeartbeatTimeout, cfgs[0].ElectionTimeout, newLeader.ID())

	// The client retries its submit on the new leader (it could not know
	// whether the first one committed): no duplicate.
	r, err = newLeader.Apply(ctx, submitCmd(0, "job-1", 2))
	if err != nil || r.Created || r.Job.State != pb.JobState_JOB_STATE_PLACED {
		t.Fatalf("retried submit: %+v %v", r, err)
	}
	if _, err := newLeader.Apply(ctx, submitCmd(0, "job-2", 1)); err != nil {
		t.Fatal(err)
	}
	if _, err := newLeader.Apply(ctx, progressCmd(0, "job-1", 3, 4.5)); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 20*time.Second, func() error { return sameState(rest...) })

	// The old leader restarts from its data dir (Bootstrap is set again and
	// must be a no-op) and catches up.
	restarted := startNode(t, cfgs[old])
	all := append(rest, restarted)
	checkFor(t, 20*time.Second, func() error { return sameState(all...) })
	if got := jobIDs(restarted); got != "[job-1 job-2]" {
		t.Fatalf("restarted replica has %s", got)
	}
	j, _ := restarted.Job("job-1")
	if j.State != pb.JobState_JOB_STATE_RUNNING || j.Progress.Step != 3 || j.SubmitSeq != 1 {
		t.Fatalf("job-1 on the restarted replica: %v", j)
	}
}

func fastConfig(t *testing.T, id string) Config {
	c := DefaultConfig()
	c.ID, c.BindAddr, c.DataDir = id, "127.0.0.1:0", filepath.Join(t.TempDir(), id)
	c.HeartbeatTimeout, c.ElectionTimeout, c.LeaderLeaseTimeout = 500*time.Millisecond, 500*time.Millisecond, 250*time.Millisecond
	c.SnapshotThreshold, c.TrailingLogs, c.SnapshotInterval = 16, 8, time.Hour
	return c
}

// startLeader starts replica id bootstrapped alone and waits until it
// leads.
func startLeader(t *testing.T, id string) *Node {
	t.Helper()
	c := fastConfig(t, id)
	c.Bootstrap = true
	n := startNode(t, c)
	if _, _, err := n.WaitForLeader(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestJoinLeaveCatchUp grows a one-node cluster to three by AddVoter,
// restarts a replica that missed compacted log entries (it restores its own
// snapshot, then installs the leader's), and removes a replica.
func TestJoinLeaveCatchUp(t *testing.T) {
	ctx := context.Background()
	n1 := startLeader(t, "c1")
	c2, c3 := fastConfig(t, "c2"), fastConfig(t, "c3")
	n2, n3 := startNode(t, c2), startNode(t, c3)
	for _, n := range []*Node{n2, n3} {
		if err := n1.AddVoter(ctx, n.ID(), n.Addr()); err != nil {
			t.Fatal(err)
		}
	}
	if err := n2.AddVoter(ctx, "x", "127.0.0.1:1"); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("AddVoter on a follower: %v", err)
	}
	servers, err := n1.Servers()
	if err != nil || len(servers) != 3 || !servers[0].Leader {
		t.Fatalf("servers %+v %v", servers, err)
	}
	for i := range 10 {
		if _, err := n1.Apply(ctx, submitCmd(0, fmt.Sprintf("j%02d", i), 1)); err != nil {
			t.Fatal(err)
		}
	}
	checkFor(t, 20*time.Second, func() error { return sameState(n1, n2, n3) })

	// n3 snapshots and stops; the cluster moves on and compacts past it.
	if err := n3.Snapshot(); err != nil {
		t.Fatal(err)
	}
	if err := n3.Shutdown(); err != nil {
		t.Fatal(err)
	}
	// With one of three down, a loaded machine (CI runs -race on 2 cores)
	// can make the leader miss its lease and step down: apply on whoever
	// leads, retrying a command whose outcome is unknown (both commands
	// are idempotent or detectably done).
	apply := func(cmd *pb.Command, done func(*Node) bool) *Node {
		t.Helper()
		for try := 0; ; try++ {
			l := leaderOf(t, []*Node{n1, n2}, 20*time.Second)
			if done != nil && done(l) {
				return l
			}
			_, err := l.Apply(ctx, cmd)
			if err == nil {
				return l
			}
			if !errors.Is(err, ErrNotLeader) || try == 5 {
				t.Fatal(err)
			}
		}
	}
	var lead *Node
	for i := 10; i < 50; i++ {
		id := fmt.Sprintf("j%02d", i)
		apply(submitCmd(0, id, 1), nil)
		lead = apply(placeCmd(0, id, "w1"), func(n *Node) bool {
			j, err := n.Job(id)
			return err == nil && j.State == pb.JobState_JOB_STATE_PLACED
		})
	}
	// lead is the leader now (c1, unless the lease slipped); other the
	// second survivor.
	other := n2
	if lead == n2 {
		other = n1
	}
	if err := lead.Snapshot(); err != nil {
		t.Fatal(err)
	}
	c3.BindAddr = n3.Addr()
	n3 = startNode(t, c3)
	if got := len(n3.Jobs()); got != 10 {
		t.Fatalf("restarted replica restored %d jobs from its own snapshot, want 10", got)
	}
	checkFor(t, 20*time.Second, func() error { return sameState(n1, n2, n3) })
	if n := len(n3.Jobs()); n != 50 {
		t.Fatalf("caught-up replica has %d jobs", n)
	}
	// The leader had compacted the entries n3 missed, so n3 caught up by
	// installing the leader's snapshot.
	if got, want := n3.Stats()["last_snapshot_index"], lead.Stats()["last_snapshot_index"]; got != want {
		t.Fatalf("n3 last snapshot index %s, leader's %s: caught up without the snapshot?", got, want)
	}

	// the other survivor leaves.
	lead = leaderOf(t, []*Node{n1, n2, n3}, 20*time.Second)
	if lead == other {
		other = n1
		if lead == n1 {
			other = n2
		}
	}
	if err := lead.RemoveServer(ctx, other.ID()); err != nil {
		t.Fatal(err)
	}
	other.Shutdown()
	if servers, _ := lead.Servers(); len(servers) != 2 {
		t.Fatalf("servers after leave: %+v", servers)
	}
	var rest []*Node
	for _, n := range []*Node{n1, n2, n3} {
		if n != other {
			rest = append(rest, n)
		}
	}
	checkFor(t, 20*time.Second, func() error {
		l := leaderOf(t, rest, 20*time.Second)
		_, err := l.Apply(ctx, submitCmd(0, "after-leave", 1))
		return err
	})
	checkFor(t, 20*time.Second, func() error { return sameState(rest...) })
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestConfigValidate(t *testing.T) {
	ok := DefaultConfig()
	ok.ID, ok.DataDir = "c1", t.TempDir()
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	named := ok
	named.AdvertiseAddr = "coord-0.coord.unresolvable.invalid:7401" // resolved only when dialled
	named.Servers = []Server{{"c1", named.AdvertiseAddr}, {"c2", "coord-1.coord.unresolvable.invalid:7401"}}
	if err := named.Validate(); err != nil {
		t.Fatal(err)
	}
	notMe := ok
	notMe.Bootstrap, notMe.Servers = true, []Server{{"c2", "a:1"}, {"c3", "b:1"}}
	if err := notMe.Validate(); !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "c1 is not among the replicas to bootstrap (c2,c3)") {
		t.Errorf("bootstrap without this replica: %v", err)
	}
	withPeers := ok
	withPeers.PeerAddrs = map[string]string{"c2": "127.0.0.1:7402", "c3": "proxy.example:7403"}
	if err := withPeers.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*Config){
		"no id":          func(c *Config) { c.ID = "" },
		"no data dir":    func(c *Config) { c.DataDir = "" },
		"bad bind":       func(c *Config) { c.BindAddr = "nope" },
		"bad level":      func(c *Config) { c.RaftLogLevel = "loud" },
		"lease":          func(c *Config) { c.LeaderLeaseTimeout = 2 * c.HeartbeatTimeout },
		"servers w/o me": func(c *Config) { c.Servers = []Server{{"c2", "127.0.0.1:1"}} },
		"repeated":       func(c *Config) { c.Servers = []Server{{"c1", "a:1"}, {"c1", "a:2"}} },
		"odd id":         func(c *Config) { c.ID = "c 1" },
		"long id":        func(c *Config) { c.ID = strings.Repeat("c", 64) },
		"peer address":   func(c *Config) { c.Servers = []Server{{"c1", "a:1"}, {"c2", "not an address!!"}} },
		"peer port 0":    func(c *Config) { c.Servers = []Server{{"c1", "a:1"}, {"c2", "b:0"}} },
		"advertise":      func(c *Config) { c.AdvertiseAddr = "coord-0:0" },
		"other address": func(c *Config) {
			c.AdvertiseAddr, c.Servers = "coord-0:7401", []Server{{"c1", "10.0.0.1:7401"}, {"c2", "coord-1:7401"}}
		},
		"peer-addr id":   func(c *Config) { c.PeerAddrs = map[string]string{"c 2": "127.0.0.1:1"} },
		"peer-addr self": func(c *Config) { c.PeerAddrs = map[string]string{"c1": "127.0.0.1:1"} },
		"peer-addr addr": func(c *Config) { c.PeerAddrs = map[string]string{"c2": "127.0.0.1"} },
		"peer-addr port": func(c *Config) { c.PeerAddrs = map[string]string{"c2": "b:70000"} },
	} {
		c := ok
		mut(&c)
		if err := c.Validate(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestClusterOverTLS: three replicas whose raft traffic is mutual TLS
// elect a leader and replicate; a replica whose certificate another CA
// signed never hears from them.
func TestClusterOverTLS(t *testing.T) {
	ctx := context.Background()
	tc, err := security.EphemeralMutualTLS("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := security.EphemeralMutualTLS("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	addrs := freeAddrs(t, 3)
	servers := []Server{{"c1", addrs[0]}, {"c2", addrs[1]}, {"c3", addrs[2]}}
	var nodes []*Node
	for i, s := range servers {
		cfg := DefaultConfig()
		cfg.ID, cfg.BindAddr, cfg.DataDir = s.ID, s.Address, filepath.Join(t.TempDir(), s.ID)
		cfg.Bootstrap, cfg.Servers, cfg.TLS = true, servers, tc
		if i == 2 {
			cfg.TLS = stranger
		}
		nodes = append(nodes, startNode(t, cfg))
	}
	leader := leaderOf(t, nodes[:2], 20*time.Second)
	if _, err := leader.Apply(ctx, submitCmd(0, "job-t", 2)); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 20*time.Second, func() error { return sameState(nodes[0], nodes[1]) })
	if len(nodes[2].Jobs()) != 0 {
		t.Fatal("the replica of another CA got the log")
	}
}

// TestProbeReplica: a replica about to be added is asked who it is: a
// fresh one and a member answer with their own ID (a member's term stays
// as it was), another replica's address names that replica, and what is
// no raft server (an HTTP port) is refused.
func TestProbeReplica(t *testing.T) {
	ctx := context.Background()
	n1 := startLeader(t, "c1")
	n2, n3 := startNode(t, fastConfig(t, "c2")), startNode(t, fastConfig(t, "c3"))
	if err := n1.ProbeReplica("c2", n2.Addr()); err != nil {
		t.Fatalf("a fresh replica: %v", err)
	}
	if err := n1.ProbeReplica("c9", n3.Addr()); err == nil || !strings.Contains(err.Error(), `is "c3", not "c9"`) {
		t.Fatalf("c3's address given for c9: %v", err)
	}
	web := httptest.NewServer(http.NotFoundHandler())
	defer web.Close()
	if err := n1.ProbeReplica("c9", strings.TrimPrefix(web.URL, "http://")); err == nil || !strings.Contains(err.Error(), "no raft replica answers") {
		t.Fatalf("an HTTP port: %v", err)
	}
	if err := n1.AddVoter(ctx, "c2", n2.Addr()); err != nil {
		t.Fatal(err)
	}
	if _, err := n1.Apply(ctx, submitCmd(0, "j1", 1)); err != nil {
		t.Fatal(err)
	}
	term := n1.Stats()["term"]
	if err := n1.ProbeReplica("c2", n2.Addr()); err != nil {
		t.Fatalf("a member: %v", err)
	}
	if _, err := n1.Apply(ctx, submitCmd(0, "j2", 1)); err != nil {
		t.Fatalf("after the probe of a member: %v", err)
	}
	if got := n1.Stats()["term"]; got != term || !n1.IsLeader() {
		t.Fatalf("the probe disturbed the cluster: term %s -> %s, c1 leads %v", term, got, n1.IsLeader())
	}
}
