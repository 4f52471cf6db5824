package coordinator

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"
)

// Server is one voting member of the raft cluster.
type Server struct {
	// ID is the replica's stable name (e.g. "coord-1").
	ID string `json:"id"`
	// Address is the replica's raft TCP address (host:port).
	Address string `json:"address"`
}

// Config configures one Node. Zero durations and counts take the defaults
// of DefaultConfig; Validate checks the rest.
type Config struct {
	// ID is this replica's stable name; required.
	ID string
	// BindAddr is the raft TCP listen address (host:port). Port 0 picks a
	// free port; a restarted replica must reuse its previous address.
	BindAddr string
	// AdvertiseAddr is the address the other replicas dial, when it differs
	// from BindAddr (which must then not be unspecified, e.g. 0.0.0.0).
	AdvertiseAddr string
	// DataDir holds raft.db (log and stable store) and snapshots/; required.
	DataDir string

	// Bootstrap makes this replica create a new cluster of Servers (or of
	// itself alone when Servers is empty) if DataDir holds no raft state.
	// Bootstrap exactly one replica, or all of them with the same Servers.
	Bootstrap bool
	Servers   []Server

	// Raft timing (see hashicorp/raft Config). Fail-over takes roughly
	// HeartbeatTimeout + ElectionTimeout (with randomisation).
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	CommitTimeout      time.Duration

	// Snapshotting: check every SnapshotInterval; snapshot once
	// SnapshotThreshold entries were applied since the last one; keep
	// TrailingLogs entries behind a snapshot and SnapshotRetain snapshots.
	SnapshotInterval  time.Duration
	SnapshotThreshold uint64
	TrailingLogs      uint64
	SnapshotRetain    int

	// ApplyTimeout bounds how long Apply waits to enqueue and commit.
	ApplyTimeout time.Duration
	// MaxEventsPerJob caps each job's event history; all replicas must agree.
	MaxEventsPerJob int

	// Logger receives the node's and raft's logs (slog.Default() if nil).
	Logger *slog.Logger
	// RaftLogLevel is the lowest raft log level passed on: "debug", "info",
	// "warn" or "error". Default "warn".
	RaftLogLevel string
	// Now is the leader's clock, used to stamp commands (time.Now if nil).
	// It is never read inside Apply.
	Now func() time.Time
}

// DefaultConfig returns the defaults: raft's LAN timings (1 s heartbeat and
// election timeouts), a snapshot every 8192 entries checked every 2 minutes,
// two snapshots kept, 10 s apply timeout.
func DefaultConfig() Config {
	return Config{
		BindAddr:           "127.0.0.1:7300",
		HeartbeatTimeout:   time.Second,
		ElectionTimeout:    time.Second,
		LeaderLeaseTimeout: 500 * time.Millisecond,
		CommitTimeout:      50 * time.Millisecond,
		SnapshotInterval:   2 * time.Minute,
		SnapshotThreshold:  8192,
		TrailingLogs:       10240,
		SnapshotRetain:     2,
		ApplyTimeout:       10 * time.Second,
		MaxEventsPerJob:    DefaultMaxEventsPerJob,
		RaftLogLevel:       "warn",
	}
}

// ErrInvalidConfig is wrapped by every Validate failure.
var ErrInvalidConfig = errors.New("coordinator: invalid config")

func (c *Config) withDefaults() Config {
	d := DefaultConfig()
	out := *c
	if out.BindAddr == "" {
		out.BindAddr = d.BindAddr
	}
	for _, p := range []struct{ v, def *time.Duration }{
		{&out.HeartbeatTimeout, &d.HeartbeatTimeout}, {&out.ElectionTimeout, &d.ElectionTimeout},
		{&out.LeaderLeaseTimeout, &d.LeaderLeaseTimeout}, {&out.CommitTimeout, &d.CommitTimeout},
		{&out.SnapshotInterval, &d.SnapshotInterval}, {&out.ApplyTimeout, &d.ApplyTimeout},
	} {
		if *p.v == 0 {
			*p.v = *p.def
		}
	}
	if out.SnapshotThreshold == 0 {
		out.SnapshotThreshold = d.SnapshotThreshold
	}
	if out.TrailingLogs == 0 {
		out.TrailingLogs = d.TrailingLogs
	}
	if out.SnapshotRetain == 0 {
		out.SnapshotRetain = d.SnapshotRetain
	}
	if out.MaxEventsPerJob == 0 {
		out.MaxEventsPerJob = d.MaxEventsPerJob
	}
	if out.RaftLogLevel == "" {
		out.RaftLogLevel = d.RaftLogLevel
	}
	if out.Logger == nil {
		out.Logger = slog.Default()
	}
	if out.Now == nil {
		out.Now = time.Now
	}
	return out
}

// Validate reports the first invalid field, after defaults are applied.
func (c *Config) Validate() error {
	v := c.withDefaults()
	bad := func(field, why string) error { return fmt.Errorf("%w: %s: %s", ErrInvalidConfig, field, why) }
	switch {
	case v.ID == "":
		return bad("ID", "required")
	case v.DataDir == "":
		return bad("DataDir", "required")
	case v.HeartbeatTimeout < 5*time.Millisecond || v.ElectionTimeout < 5*time.Millisecond:
		return bad("HeartbeatTimeout/ElectionTimeout", "must be at least 5ms")
	case v.LeaderLeaseTimeout > v.HeartbeatTimeout:
		return bad("LeaderLeaseTimeout", "must not exceed HeartbeatTimeout")
	case v.SnapshotRetain < 1:
		return bad("SnapshotRetain", "must be at least 1")
	case v.MaxEventsPerJob < 1:
		return bad("MaxEventsPerJob", "must be at least 1")
	}
	if _, _, err := net.SplitHostPort(v.BindAddr); err != nil {
		return bad("BindAddr", err.Error())
	}
	if v.AdvertiseAddr != "" {
		if _, err := net.ResolveTCPAddr("tcp", v.AdvertiseAddr); err != nil {
			return bad("AdvertiseAddr", err.Error())
		}
	}
	if _, ok := raftLevels[v.RaftLogLevel]; !ok {
		return bad("RaftLogLevel", "want debug, info, warn or error")
	}
	seen := map[string]bool{}
	for i, s := range v.Servers {
		if s.ID == "" || s.Address == "" {
			return bad(fmt.Sprintf("Servers[%d]", i), "needs ID and Address")
		}
		if seen[s.ID] {
			return bad(fmt.Sprintf("Servers[%d]", i), "repeated ID "+s.ID)
		}
		seen[s.ID] = true
	}
	if len(v.Servers) > 0 && !seen[v.ID] {
		return bad("Servers", "must include this node's ID "+v.ID)
	}
	return nil
}
