package coordinator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"google.golang.org/protobuf/proto"

	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

var (
	// ErrNotLeader: a write reached a replica that is not the raft leader.
	// The error is a *NotLeaderError carrying the leader's address.
	ErrNotLeader = errors.New("coordinator: not leader")
	// ErrOutcomeUnknown: leadership was lost while a command was in flight;
	// it may or may not have been committed. Retry idempotent commands
	// (SubmitJob is keyed by job ID) on the new leader.
	ErrOutcomeUnknown = errors.New("coordinator: leadership lost, command outcome unknown")
	// ErrShutdown: the node has been shut down.
	ErrShutdown = errors.New("coordinator: node shut down")
)

// NotLeaderError is returned for writes on a replica that is not the leader.
// LeaderID and LeaderAddr are empty when no leader is known (an election is
// running). errors.Is(err, ErrNotLeader) holds; so does
// errors.Is(err, ErrOutcomeUnknown) when Unknown is set.
type NotLeaderError struct {
	LeaderID   string
	LeaderAddr string
	// Unknown is set when this replica lost leadership with the command in
	// flight, so it may still commit.
	Unknown bool
}

func (e *NotLeaderError) Error() string {
	s := ErrNotLeader.Error()
	if e.Unknown {
		s = ErrOutcomeUnknown.Error()
	}
	if e.LeaderAddr == "" {
		return s + " (no leader known)"
	}
	return fmt.Sprintf("%s (leader %s at %s)", s, e.LeaderID, e.LeaderAddr)
}

// Is makes errors.Is match ErrNotLeader, and ErrOutcomeUnknown when Unknown.
func (e *NotLeaderError) Is(target error) bool {
	return target == ErrNotLeader || (e.Unknown && target == ErrOutcomeUnknown)
}

// Node is one coordinator replica: the FSM replicated with hashicorp/raft
// over TCP, with its log and stable store in DataDir/raft.db and snapshots
// in DataDir/snapshots.
type Node struct {
	cfg    Config
	log    *slog.Logger
	fsm    *FSM
	raft   *raft.Raft
	trans  *raft.NetworkTransport
	stream *stream // trans's
	hlog   hclog.Logger
	store  *raftboltdb.BoltStore
	addr   string
}

// NewNode opens (or creates) the replica's data directory, starts raft and,
// if cfg.Bootstrap is set and the directory is empty, bootstraps a cluster.
func NewNode(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	log := cfg.Logger.With("node-id", cfg.ID)
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("coordinator: data dir: %w", err)
	}
	hlog := newRaftLogger(log, cfg.RaftLogLevel)

	store, err := raftboltdb.NewBoltStore(filepath.Join(cfg.DataDir, "raft.db"))
	if err != nil {
		return nil, fmt.Errorf("coordinator: open raft.db: %w", err)
	}
	n := &Node{cfg: cfg, log: log, store: store, fsm: NewFSM(cfg.MaxEventsPerJob)}
	fail := func(err error) (*Node, error) {
		if n.trans != nil {
			n.trans.Close()
		}
		store.Close()
		return nil, err
	}
	logs, err := raft.NewLogCache(512, store)
	if err != nil {
		return fail(fmt.Errorf("coordinator: log cache: %w", err))
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, cfg.SnapshotRetain, hlog)
	if err != nil {
		return fail(fmt.Errorf("coordinator: snapshot store: %w", err))
	}
	tc := &raft.NetworkTransportConfig{MaxPool: 3, Timeout: 10 * time.Second, Logger: hlog}
	var peers *peerAddrs
	if len(cfg.PeerAddrs) > 0 {
		peers = newPeerAddrs(cfg.PeerAddrs)
		tc.ServerAddressProvider = peers
	}
	stream, err := listenStream(cfg.BindAddr, cfg.advertise(), cfg.TLS, cfg.Dial, log)
	if err != nil {
		return fail(fmt.Errorf("coordinator: raft transport on %s: %w", cfg.BindAddr, err))
	}
	tc.Stream = stream
	n.trans, n.stream, n.hlog = raft.NewNetworkTransportWithConfig(tc), stream, hlog
	n.addr = string(n.trans.LocalAddr())

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.ID)
	rc.Logger = hlog
	rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	rc.ElectionTimeout = cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.LeaderLeaseTimeout
	rc.CommitTimeout = cfg.CommitTimeout
	rc.SnapshotInterval = cfg.SnapshotInterval
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.TrailingLogs = cfg.TrailingLogs
	if err := raft.ValidateConfig(rc); err != nil {
		return fail(fmt.Errorf("%w: %v", ErrInvalidConfig, err))
	}

	if cfg.Bootstrap {
		has, err := raft.HasExistingState(logs, store, snaps)
		if err != nil {
			return fail(fmt.Errorf("coordinator: inspect raft state: %w", err))
		}
		if has {
			// a restart: the configuration is in the log, and
			// bootstrapping again is never done (nor needed)
			log.Info("raft state found; not bootstrapping", "data-dir", cfg.DataDir)
		} else {
			servers := cfg.Servers
			if len(servers) == 0 {
				servers = []Server{{ID: cfg.ID, Address: n.addr}}
			}
			var conf raft.Configuration
			for _, s := range servers {
				addr := s.Address
				if s.ID == cfg.ID {
					// the same unless BindAddr said port 0 (see
					// Config.advertise): then the real port
					addr = n.addr
				}
				conf.Servers = append(conf.Servers, raft.Server{
					Suffrage: raft.Voter, ID: raft.ServerID(s.ID), Address: raft.ServerAddress(addr),
				})
			}
			if err := raft.BootstrapCluster(rc, logs, store, snaps, n.trans, conf); err != nil {
				return fail(fmt.Errorf("coordinator: bootstrap: %w", err))
			}
			log.Info("bootstrapped raft cluster", "servers", len(conf.Servers))
		}
	}

	n.raft, err = raft.NewRaft(rc, n.fsm, logs, store, snaps, n.trans)
	if err != nil {
		return fail(fmt.Errorf("coordinator: start raft: %w", err))
	}
	if peers != nil {
		peers.raft.Store(n.raft)
	}
	attrs := []any{"addr", n.addr, "data-dir", cfg.DataDir}
	if len(cfg.PeerAddrs) > 0 {
		attrs = append(attrs, "peer-addrs", cfg.PeerAddrs)
	}
	log.Info("raft node started", attrs...)
	return n, nil
}

// ID is this replica's ID.
func (n *Node) ID() string { return n.cfg.ID }

// Addr is this replica's raft address (the real port when BindAddr had :0).
func (n *Node) Addr() string { return n.addr }

// FSM is this replica's state machine (for local reads and inspection).
func (n *Node) FSM() *FSM { return n.fsm }

// State is the raft state: "Follower", "Candidate", "Leader" or "Shutdown".
func (n *Node) State() string { return n.raft.State().String() }

// IsLeader reports whether this replica is the leader now.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// Term is raft's current term: a replica that leads again after another
// led meanwhile leads in a later term.
func (n *Node) Term() uint64 { return n.raft.CurrentTerm() }

// Leader returns the current leader's ID and raft address as this replica
// knows them; both are empty when no leader is known.
func (n *Node) Leader() (id, addr string) {
	a, i := n.raft.LeaderWithID()
	return string(i), string(a)
}

// LeaderCh delivers true when this replica becomes leader and false when it
// stops being leader.
func (n *Node) LeaderCh() <-chan bool { return n.raft.LeaderCh() }

// WaitForLeader polls until some leader is known or ctx ends.
func (n *Node) WaitForLeader(ctx context.Context) (id, addr string, err error) {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if id, addr = n.Leader(); addr != "" {
			return id, addr, nil
		}
		select {
		case <-ctx.Done():
			return "", "", fmt.Errorf("coordinator: wait for leader: %w", ctx.Err())
		case <-t.C:
		}
	}
}

func (n *Node) notLeader(unknown bool) error {
	id, addr := n.Leader()
	return &NotLeaderError{LeaderID: id, LeaderAddr: addr, Unknown: unknown}
}

func (n *Node) timeout(ctx context.Context) time.Duration {
	t := n.cfg.ApplyTimeout
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < t {
		t = max(time.Until(dl), time.Millisecond)
	}
	return t
}

// raftErr maps raft's errors onto this package's sentinels.
func (n *Node) raftErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrNotLeader):
		return n.notLeader(false)
	case errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return n.notLeader(true)
	case errors.Is(err, raft.ErrRaftShutdown):
		return ErrShutdown
	}
	return fmt.Errorf("coordinator: raft: %w", err)
}

// Apply proposes cmd on the leader and waits until this replica applied it.
// The leader stamps cmd with its clock when cmd.UnixNano is zero. On a
// follower it returns a *NotLeaderError without proposing. The returned
// error is either a replication error or the command's own (r.Err).
func (n *Node) Apply(ctx context.Context, cmd *pb.Command) (ApplyResult, error) {
	if n.raft.State() != raft.Leader {
		return ApplyResult{}, n.notLeader(false)
	}
	if cmd.GetUnixNano() == 0 {
		cmd = proto.CloneOf(cmd)
		cmd.UnixNano = n.cfg.Now().UnixNano()
	}
	data, err := proto.Marshal(cmd)
	if err != nil {
		return ApplyResult{}, fmt.Errorf("%w: encode: %v", ErrInvalidCommand, err)
	}
	start := time.Now()
	f := n.raft.Apply(data, n.timeout(ctx))
	if err := f.Error(); err != nil {
		return ApplyResult{}, n.raftErr(err)
	}
	if n.cfg.OnApply != nil {
		n.cfg.OnApply(opName(cmd), time.Since(start))
	}
	r, _ := f.Response().(ApplyResult)
	return r, r.Err
}

// opName is the name of cmd's operation ("place_job"), a bounded set.
func opName(cmd *pb.Command) string {
	m := cmd.ProtoReflect()
	if fd := m.WhichOneof(m.Descriptor().Oneofs().ByName("op")); fd != nil {
		return string(fd.Name())
	}
	return "none"
}

// Barrier waits until every entry committed before it has been applied on
// this replica (leader only).
func (n *Node) Barrier(ctx context.Context) error {
	return n.raftErr(n.raft.Barrier(n.timeout(ctx)).Error())
}

// ReadBarrier makes this leader's state safe to answer a read from: it
// confirms with a quorum that this replica still leads (a deposed leader
// cut off from the others would answer from the past) and, when its log
// holds entries it has not applied yet (a leader just elected, or writes
// in flight), waits for them (leader only). Cheaper than Barrier when the
// leader is caught up: no log entry, one heartbeat round.
func (n *Node) ReadBarrier(ctx context.Context) error {
	if err := n.raftErr(n.raft.VerifyLeader().Error()); err != nil {
		return err
	}
	// the FSM's own applied index: raft's AppliedIndex counts entries
	// handed to the FSM, not yet applied by it
	if n.fsm.AppliedIndex() < n.raft.LastIndex() {
		return n.Barrier(ctx)
	}
	return nil
}

// ProbeReplica checks that a raft server of this protocol answers at addr
// and that it is replica id, before it is made a voter: a voter at an
// address where something else listens (a replica's API port typed for
// its raft one) or under another replica's name costs a small cluster its
// quorum for good. The probe is an empty AppendEntries of term 0, which
// any server rejects below its own term and which sets nothing but its
// leader hint on a fresh one: what being added would do. It goes over a
// transport of its own (dialling as raft's does, TLS included), which
// gives up after probeTimeout: something that is no raft server may never
// answer.
func (n *Node) ProbeReplica(id, addr string) error {
	d := &dialOnly{stream: n.stream, closed: make(chan struct{})}
	t := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{Stream: d, MaxPool: 1, Timeout: probeTimeout, Logger: n.hlog})
	defer t.Close()
	req := &raft.AppendEntriesRequest{
		RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(n.cfg.ID), Addr: t.EncodePeer(raft.ServerID(n.cfg.ID), raft.ServerAddress(n.addr))},
	}
	var resp raft.AppendEntriesResponse
	if err := t.AppendEntries(raft.ServerID(id), raft.ServerAddress(addr), req, &resp); err != nil {
		return fmt.Errorf("no raft replica answers at %s: %w", addr, err)
	}
	if got := string(resp.ID); got != "" && got != id {
		return fmt.Errorf("the raft replica at %s is %q, not %q", addr, got, id)
	}
	return nil
}

// probeTimeout bounds ProbeReplica's dial and its answer.
const probeTimeout = 3 * time.Second

// dialOnly is a stream layer that dials as stream does and accepts
// nothing (until it is closed): a transport for calls out only.
type dialOnly struct {
	*stream
	closed chan struct{}
	once   sync.Once
}

func (d *dialOnly) Accept() (net.Conn, error) {
	<-d.closed
	return nil, net.ErrClosed
}

func (d *dialOnly) Close() error {
	d.once.Do(func() { close(d.closed) })
	return nil
}

// AddVoter adds (or re-addresses) a voting replica (leader only).
func (n *Node) AddVoter(ctx context.Context, id, addr string) error {
	if n.raft.State() != raft.Leader {
		return n.notLeader(false)
	}
	err := n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, n.timeout(ctx)).Error()
	if err == nil {
		n.log.Info("added voter", "peer-id", id, "peer-addr", addr)
	}
	return n.raftErr(err)
}

// RemoveServer removes a replica from the cluster (leader only). A leader
// may remove itself; it then steps down.
func (n *Node) RemoveServer(ctx context.Context, id string) error {
	if n.raft.State() != raft.Leader {
		return n.notLeader(false)
	}
	err := n.raft.RemoveServer(raft.ServerID(id), 0, n.timeout(ctx)).Error()
	if err == nil {
		n.log.Info("removed server", "peer-id", id)
	}
	return n.raftErr(err)
}

// ServerStatus is one member of the cluster configuration.
type ServerStatus struct {
	Server
	Voter  bool `json:"voter"`
	Leader bool `json:"leader"`
}

// Servers returns the cluster configuration as this replica knows it.
func (n *Node) Servers() ([]ServerStatus, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, n.raftErr(err)
	}
	leaderID, _ := n.Leader()
	var out []ServerStatus
	for _, s := range f.Configuration().Servers {
		out = append(out, ServerStatus{
			Server: Server{ID: string(s.ID), Address: string(s.Address)},
			Voter:  s.Suffrage == raft.Voter,
			Leader: string(s.ID) == leaderID,
		})
	}
	return out, nil
}

// TransferLeadership hands leadership over to another voter, the most
// up to date, when this replica leads and is not the only voter, and
// waits until it has stepped down or ctx ends. It reports whether it
// handed over; on an error this replica may still lead (raft gives up
// after about ElectionTimeout when the other voter does not take over).
func (n *Node) TransferLeadership(ctx context.Context) (bool, error) {
	if n.raft.State() != raft.Leader {
		return false, nil
	}
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return false, n.raftErr(err)
	}
	others := 0
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter && s.ID != raft.ServerID(n.cfg.ID) {
			others++
		}
	}
	if others == 0 {
		return false, nil
	}
	done := make(chan error, 1)
	go func() { done <- n.raft.LeadershipTransfer().Error() }() // raft bounds it
	select {
	case err := <-done:
		if err != nil {
			return false, fmt.Errorf("coordinator: leadership transfer: %w", err)
		}
		return true, nil
	case <-ctx.Done():
		return false, fmt.Errorf("coordinator: leadership transfer: %w", ctx.Err())
	}
}

// Snapshot takes a raft snapshot now and compacts the log behind it.
func (n *Node) Snapshot() error { return n.raftErr(n.raft.Snapshot().Error()) }

// Stats returns raft's counters (state, term, last_log_index, ...).
func (n *Node) Stats() map[string]string { return n.raft.Stats() }

// AppliedIndex is the raft index this replica's FSM has applied.
func (n *Node) AppliedIndex() uint64 { return n.raft.AppliedIndex() }

// Job reads one job from this replica's state (possibly stale on a follower).
func (n *Node) Job(id string) (*pb.Job, error) { return n.fsm.Job(id) }

// Jobs reads every job from this replica's state, in submit order.
func (n *Node) Jobs() []*pb.Job { return n.fsm.Jobs() }

// Unfinished reads the jobs not in a final state from this replica's
// state, in submit order.
func (n *Node) Unfinished() []*pb.Job { return n.fsm.Unfinished() }

// Shutdown stops raft, closes the transport and the stores. The data
// directory keeps everything needed to restart the replica.
func (n *Node) Shutdown() error {
	err := n.raft.Shutdown().Error()
	if cerr := n.trans.Close(); err == nil {
		err = cerr
	}
	if cerr := n.store.Close(); err == nil {
		err = cerr
	}
	n.log.Info("raft node stopped")
	if err != nil {
		return fmt.Errorf("coordinator: shutdown: %w", err)
	}
	return nil
}
