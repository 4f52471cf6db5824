package coordinator

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Server is one voting member of the raft cluster.
type Server struct {
	// ID is the replica's stable name (e.g. "coord-1").
	ID string `json:"id"`
	// Address is the replica's raft TCP address (host:port).
	Address string `json:"address"`
}

var (
	replicaIDRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$`)
	hostRE      = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$`)
)

// ValidReplicaID reports whether id can name a replica: 1-63 of
// [A-Za-z0-9._-], starting and ending with a letter or digit. Raft logs
// the IDs of its voters at every election, and they are in every
// configuration entry: a long or odd one is refused here, once.
func ValidReplicaID(id string) error {
	if !replicaIDRE.MatchString(id) {
		return fmt.Errorf("replica id %q: want 1-63 of [A-Za-z0-9._-], starting and ending with a letter or digit", clip(id))
	}
	return nil
}

// ValidRaftAddr reports whether addr can be dialled as a replica's raft
// address: HOST:PORT with an IP or DNS name and a port in 1-65535.
func ValidRaftAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("raft address %q: want HOST:PORT: %v", clip(addr), err)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("raft address %q: port %q is not in 1-65535", clip(addr), clip(port))
	}
	if net.ParseIP(host) == nil && !hostRE.MatchString(host) {
		return fmt.Errorf("raft address %q: host %q is neither an IP address nor a DNS name", clip(addr), clip(host))
	}
	return nil
}

// Validate reports whether s names a replica well (ValidReplicaID,
// ValidRaftAddr).
func (s Server) Validate() error {
	if err := ValidReplicaID(s.ID); err != nil {
		return err
	}
	return ValidRaftAddr(s.Address)
}

// clip shortens s for an error message (a hostile value can be megabytes).
func clip(s string) string {
	if len(s) <= 80 {
		return s
	}
	return s[:80] + fmt.Sprintf("... (%d bytes)", len(s))
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
	// from BindAddr (which must then not be unspecified, e.g. 0.0.0.0). It
	// may be a DNS name that does not resolve yet (a StatefulSet pod's):
	// it is advertised as given and resolved by whoever dials it, at every
	// dial. Empty: this replica's address in Servers when it is there
	// (and BindAddr's port is not 0), else BindAddr's bound address.
	AdvertiseAddr string
	// DataDir holds raft.db (log and stable store) and snapshots/; required.
	DataDir string
	// PeerAddrs maps other replicas' IDs to the address this replica
	// dials them at instead of their address in the raft configuration
	// (a NAT or a proxy between the replicas). A replica not in it is
	// dialled at its configured address. Only this replica's dialling
	// changes: the configuration, and where the others dial, do not. With
	// TLS the peer's certificate must name the host dialled here.
	PeerAddrs map[string]string

	// Dial connects to the other replicas' raft addresses, resolving
	// names at every dial (raft retries a peer that does not resolve
	// yet); nil: a net.Dialer. Tests inject a resolver here.
	Dial DialFunc

	// TLS, when set, encrypts the raft traffic between replicas with
	// mutual TLS: Certificates are this replica's, RootCAs verify the
	// others' (which must name the host of their raft address). Every
	// replica of a cluster must agree.
	TLS *tls.Config

	// Bootstrap makes this replica create a new cluster of Servers (or of
	// itself alone when Servers is empty) if DataDir holds no raft state;
	// with state there (a restart) it does nothing. Bootstrap exactly one
	// replica, or all of them with the same Servers (a StatefulSet whose
	// pods share their arguments): they then write the same first log
	// entry, which is safe. Servers must name this replica, at the address
	// it advertises.
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
	// OnApply, when set, is told each command this replica proposed and
	// saw applied: its operation ("place_job") and the time it took.
	OnApply func(op string, d time.Duration)
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

// ConfigError is Validate's error: the field of Config that is wrong
// (with an index or key: "Servers[1]", "PeerAddrs[\"c2\"]") and why. It
// is an ErrInvalidConfig; a command maps Field to its own flag.
type ConfigError struct {
	Field string
	Why   string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("%v: %s: %s", ErrInvalidConfig, e.Field, e.Why)
}

// Unwrap makes errors.Is(err, ErrInvalidConfig) hold.
func (e *ConfigError) Unwrap() error { return ErrInvalidConfig }

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
	if out.Dial == nil {
		out.Dial = (&net.Dialer{}).DialContext
	}
	return out
}

// self is this replica's entry in Servers, if there is one.
func (c *Config) self() (Server, bool) {
	for _, s := range c.Servers {
		if s.ID == c.ID {
			return s, true
		}
	}
	return Server{}, false
}

// advertise is the raft address to advertise: AdvertiseAddr, else this
// replica's address in Servers so that every replica bootstrapped with
// the same Servers writes the same configuration (unless BindAddr's port
// is 0, which Servers cannot know), else "" for the bound address.
func (c *Config) advertise() string {
	if c.AdvertiseAddr != "" {
		return c.AdvertiseAddr
	}
	if s, ok := c.self(); ok {
		if _, port, err := net.SplitHostPort(c.BindAddr); err == nil && port != "0" {
			return s.Address
		}
	}
	return ""
}

// Validate reports the first invalid field, after defaults are applied.
func (c *Config) Validate() error {
	v := c.withDefaults()
	bad := func(field, why string) error { return &ConfigError{Field: field, Why: why} }
	switch {
	case v.ID == "":
		return bad("ID", "required")
	case ValidReplicaID(v.ID) != nil:
		return bad("ID", ValidReplicaID(v.ID).Error())
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
		// a name is not resolved here: it may resolve only later
		if err := ValidRaftAddr(v.AdvertiseAddr); err != nil {
			return bad("AdvertiseAddr", err.Error())
		}
	}
	for _, id := range slices.Sorted(maps.Keys(v.PeerAddrs)) {
		field := fmt.Sprintf("PeerAddrs[%q]", clip(id))
		if err := ValidReplicaID(id); err != nil {
			return bad(field, err.Error())
		}
		if id == v.ID {
			return bad(field, "names this replica, which never dials itself")
		}
		if err := ValidRaftAddr(v.PeerAddrs[id]); err != nil {
			return bad(field, err.Error())
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
		if err := s.Validate(); err != nil {
			return bad(fmt.Sprintf("Servers[%d]", i), err.Error())
		}
		if seen[s.ID] {
			return bad(fmt.Sprintf("Servers[%d]", i), "repeated ID "+s.ID)
		}
		seen[s.ID] = true
	}
	if len(v.Servers) > 0 && !seen[v.ID] {
		ids := make([]string, len(v.Servers))
		for i, s := range v.Servers {
			ids[i] = s.ID
		}
		return bad("Servers", fmt.Sprintf("this replica %s is not among the replicas to bootstrap (%s): bootstrap only replicas it names, and add others to a running cluster (switchyard cluster add-replica)",
			v.ID, clip(strings.Join(ids, ","))))
	}
	if s, ok := v.self(); ok && v.AdvertiseAddr != "" && s.Address != v.AdvertiseAddr {
		return bad("Servers", fmt.Sprintf("names this replica %s at %s, but it advertises %s: every replica must bootstrap the same configuration", v.ID, clip(s.Address), clip(v.AdvertiseAddr)))
	}
	return nil
}
