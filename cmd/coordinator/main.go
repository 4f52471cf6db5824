// Command coordinator runs one replica of the Switchyard coordinator: the
// raft-replicated job state, the gRPC API and, on the leader, the
// scheduler and job supervision. With --dev it is a whole one-machine
// cluster control plane: embedded etcd and NATS and a single raft replica,
// on loopback only.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/controller"
	"github.com/switchyard-ml/switchyard/pkg/coordinator"
	"github.com/switchyard-ml/switchyard/pkg/etcdconn"
	"github.com/switchyard-ml/switchyard/pkg/events"
	"github.com/switchyard-ml/switchyard/pkg/security"
)

const usage = `coordinator — a Switchyard coordinator replica

usage:
  coordinator --dev [--data-dir DIR]                 one-machine control plane (embedded etcd and NATS)
  coordinator --id ID --data-dir DIR --raft-addr HOST:PORT --api-addr HOST:PORT \
              --etcd-endpoints URL[,URL] [--nats-url URL] \
              [--bootstrap --peers ID=RAFT_ADDR,...] \
              [--raft-peer-addr ID=HOST:PORT ...]    a replica of a 1-, 3- or 5-replica cluster

Start every replica of a new cluster with --bootstrap and the same --peers
(or bootstrap one and add the others with "switchyard cluster add-replica").
Every replica may be started with the same --bootstrap --peers (a
StatefulSet): bootstrap happens once, on an empty data dir; a restarted
replica finds its raft state and never bootstraps again, and a replica that
--peers does not name refuses to start. A restarted replica keeps its --id,
--data-dir and --raft-addr.
Raft addresses may be DNS names (coord-0.coord.ns.svc:7401) that resolve
only later: a replica advertises its name as given (--raft-advertise, or
its own entry in --peers) and names are resolved at every dial, raft
retrying a peer that does not resolve yet.
--raft-peer-addr (repeatable) makes this replica dial replica ID at
HOST:PORT instead of its raft address in the cluster configuration (a NAT
or proxy between the replicas); the others are dialled as configured.

Security: --token (or SWITCHYARD_TOKEN) makes every API call need
"Bearer <token>"; --tls-ca/--tls-cert/--tls-key turn on mutual TLS. An API
or raft address that is not loopback is refused without TLS unless
--insecure is given. --http-addr serves the web dashboard under the same
rules (HTTPS with the same mutual TLS when TLS is on); open it with the
token in the address's fragment: http://HOST:PORT/#token=TOKEN. --raft-tls encrypts the raft traffic with the same
files (mutual TLS 1.3; the certificates must name the raft hosts).

Probes: --http-addr also serves GET /healthz (liveness: the process serves
and raft runs) and GET /readyz (200 when raft knows a leader, etcd answered
in the last 10s and NATS, if given, is connected; else 503 and the
reasons), with no token and, over TLS, no client certificate. Without
--http-addr there are no probes.
On SIGTERM a leader hands leadership to another replica (at most 5s)
before it stops.

--check-config parses and checks the command line and environment as a
start does, without starting: the TLS files need only be named (they may
exist only where the replica runs, e.g. a Kubernetes Secret) and
--raft-advertise is checked as HOST:PORT, not resolved (a cluster DNS
name). It prints one line and exits 0, or prints the error and exits 2.

flags:
`

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	c, err := parse(args, os.Getenv)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errReported):
		return 2
	case err != nil:
		fmt.Fprintln(os.Stderr, describe(err))
		return 2
	}
	if c.check {
		if err := c.daemon.Check(); err != nil {
			fmt.Fprintln(os.Stderr, describe(err))
			return 2
		}
		fmt.Println(c.summary())
		return 0
	}
	if err := c.daemon.Raft.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, describe(err))
		return 2
	}
	dev, log := c.daemon.Dev, c.daemon.Logger
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	d, err := controller.Start(ctx, c.daemon)
	if err != nil {
		fmt.Fprintln(os.Stderr, describe(err))
		if errors.Is(err, security.ErrInsecureListen) || errors.Is(err, coordinator.ErrInvalidConfig) {
			return 2
		}
		return 1
	}
	if d.DashboardURL != "" {
		fmt.Fprintf(os.Stderr, "dashboard: %s\n", d.DashboardURL)
	}
	if dev {
		fmt.Fprintf(os.Stderr, "dev cluster: API %s  etcd %s  NATS %s\n", d.APIAddr, strings.Join(d.Etcd, ","), events.Redact(d.NATSURL))
		// the passwords stay in the file (mode 0600), out of logs
		fmt.Fprintf(os.Stderr, "etcd wants user %s with the etcd_password, NATS the nats_password, both kept in %s\n", d.Dev.EtcdUsername(), d.Dev.PortsFile())
		fmt.Fprintf(os.Stderr, "workers join with: %s=%s %s=PASSWORD worker --coordinators %s --etcd-endpoints %s --nats-url %s --storage-path /abs/path --listen-address 127.0.0.1:PORT\n",
			etcdconn.UsernameEnv, d.Dev.EtcdUsername(), etcdconn.PasswordEnv, d.APIAddr, strings.Join(d.Etcd, ","), events.Redact(d.NATSURL))
	}
	if d.MetricsAddr != "" {
		log.Info("metrics", "url", "http://"+d.MetricsAddr+"/metrics")
	}
	<-ctx.Done()
	log.Info("shutting down")
	done := make(chan error, 1)
	go func() { done <- d.Close() }()
	select {
	case err = <-done:
	case <-time.After(20 * time.Second):
		err = errors.New("shutdown took longer than 20s")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "coordinator: shutdown:", err)
		return 1
	}
	return 0
}

// errReported is a command-line error the flag package has already
// printed.
var errReported = errors.New("coordinator: bad command line")

// command is a parsed command line.
type command struct {
	daemon controller.DaemonConfig
	check  bool // --check-config: check, print a summary, exit
}

// parse reads the command line and the environment (getenv) as every
// start does, for run and for --check-config alike. It opens nothing:
// run validates the raft settings and controller.Start the rest, or
// --check-config does both without the files and DNS names that exist
// only where the replica runs (DaemonConfig.Check).
func parse(args []string, getenv func(string) string) (command, error) {
	fs := flag.NewFlagSet("coordinator", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, usage); fs.PrintDefaults() }
	var (
		dev         = fs.Bool("dev", false, "embedded etcd and NATS, one raft replica, loopback only")
		id          = fs.String("id", "", "replica ID (stable across restarts; default coord-1 with --dev)")
		dataDir     = fs.String("data-dir", "", "raft log, snapshots (and the dev servers' data); default .switchyard-dev with --dev")
		raftAddr    = fs.String("raft-addr", "127.0.0.1:7401", "raft TCP listen address")
		raftAdv     = fs.String("raft-advertise", "", "raft address the other replicas dial, a DNS name allowed (default: this replica's --peers entry, else --raft-addr)")
		apiAddr     = fs.String("api-addr", "127.0.0.1:7400", "gRPC API listen address")
		apiAdv      = fs.String("api-advertise", "", "API address other replicas forward writes to (default --api-addr)")
		httpAddr    = fs.String("http-addr", "", "web dashboard and /healthz, /readyz probes listen address, e.g. 127.0.0.1:7480 (empty: no dashboard and no probes); same token and TLS rules as the API, but the probes need neither token nor client certificate")
		bootstrap   = fs.Bool("bootstrap", false, "create the cluster if the data directory is empty")
		peers       = fs.String("peers", "", "initial voters for --bootstrap: ID=RAFT_ADDR,... (empty: this replica alone)")
		etcd        = fs.String("etcd-endpoints", "", "comma-separated etcd endpoints")
		natsURL     = fs.String("nats-url", "", "NATS URL for events, logs and metrics (empty: none)")
		token       = fs.String("token", "", "bearer token clients must present (default $SWITCHYARD_TOKEN)")
		tlsCA       = fs.String("tls-ca", "", "CA certificate (PEM) that signs client certificates")
		tlsCert     = fs.String("tls-cert", "", "server certificate (PEM)")
		tlsKey      = fs.String("tls-key", "", "server private key (PEM)")
		insecure    = fs.Bool("insecure", false, "allow non-loopback listeners without TLS")
		raftTLS     = fs.Bool("raft-tls", false, "encrypt raft traffic with the --tls-* files too (mutual TLS; every replica must agree)")
		ckRoot      = fs.String("checkpoint-root", "", "the workers' checkpoint directory as mounted here: <storage_path>/checkpoints of the workers (for checkpoints delete and verify, and the dashboard's specialisation)")
		heartbeat   = fs.Duration("heartbeat-timeout", 0, "raft heartbeat timeout (default 1s)")
		election    = fs.Duration("election-timeout", 0, "raft election timeout (default 1s)")
		leaderLease = fs.Duration("leader-lease-timeout", 0, "raft leader lease timeout (default 500ms)")
		metricsAddr = fs.String("metrics-addr", "", "serve Prometheus metrics on http://HOST:PORT/metrics (empty: none)")
		logLevel    = fs.String("log-level", "info", "debug, info, warn or error")
		check       = fs.Bool("check-config", false, "check the command line and environment as a start would (TLS files named, not read; --raft-advertise not resolved), print a summary and exit: 0 if good, 2 if not")
		peerAddrs   = peerAddrFlag{}
	)
	fs.Var(peerAddrs, "raft-peer-addr", "dial replica ID at HOST:PORT instead of its configured raft address: ID=HOST:PORT (repeatable)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return command{}, err
		}
		return command{}, errReported
	}
	if fs.NArg() > 0 {
		return command{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return command{}, fmt.Errorf("--log-level %q: %v", *logLevel, err)
	}
	if *token == "" {
		*token = getenv("SWITCHYARD_TOKEN")
	}
	if *dev {
		if *id == "" {
			*id = "coord-1"
		}
		if *dataDir == "" {
			*dataDir = ".switchyard-dev"
		}
		*bootstrap = true
	}
	rc := coordinator.DefaultConfig()
	rc.ID, rc.BindAddr, rc.AdvertiseAddr, rc.DataDir, rc.Bootstrap = *id, *raftAddr, *raftAdv, *dataDir, *bootstrap
	if len(peerAddrs) > 0 {
		rc.PeerAddrs = peerAddrs
	}
	if *heartbeat > 0 {
		rc.HeartbeatTimeout = *heartbeat
	}
	if *election > 0 {
		rc.ElectionTimeout = *election
	}
	if *leaderLease > 0 {
		rc.LeaderLeaseTimeout = *leaderLease
	}
	if *peers != "" {
		for _, p := range strings.Split(*peers, ",") {
			pid, addr, ok := strings.Cut(strings.TrimSpace(p), "=")
			if !ok || pid == "" || addr == "" {
				return command{}, fmt.Errorf("--peers entry %q: want ID=RAFT_ADDR", p)
			}
			rc.Servers = append(rc.Servers, coordinator.Server{ID: pid, Address: addr})
		}
	}
	if !*dev && *etcd == "" {
		return command{}, errors.New("--etcd-endpoints is required (or --dev)")
	}
	var eps []string
	if *etcd != "" {
		eps = strings.Split(*etcd, ",")
	}
	if *ckRoot != "" && !filepath.IsAbs(*ckRoot) {
		return command{}, fmt.Errorf("--checkpoint-root %q must be absolute", *ckRoot)
	}
	return command{check: *check, daemon: controller.DaemonConfig{
		Raft: rc, APIListen: *apiAddr, APIAdvertise: *apiAdv, HTTPListen: *httpAddr,
		EtcdEndpoints: eps, NATSURL: *natsURL, Dev: *dev,
		Token: *token, TLS: security.TLSFiles{CA: *tlsCA, Cert: *tlsCert, Key: *tlsKey}, Insecure: *insecure, RaftTLS: *raftTLS,
		CheckpointRoot: *ckRoot, MetricsListen: *metricsAddr,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})),
	}}, nil
}

// summary is --check-config's one line: what the replica would be.
func (c command) summary() string {
	d := c.daemon
	adv := d.Raft.AdvertiseAddr
	if adv == "" {
		adv = d.Raft.BindAddr
	}
	peers := make([]string, len(d.Raft.Servers))
	for i, s := range d.Raft.Servers {
		peers[i] = s.ID
	}
	tls := "off"
	if d.TLS.Enabled() {
		tls = "mutual"
		if d.RaftTLS {
			tls += ", raft too"
		}
	}
	metrics, web := d.MetricsListen, d.HTTPListen
	if metrics == "" {
		metrics = "none"
	}
	if web == "" {
		web = "none"
	}
	return fmt.Sprintf("coordinator: config ok: replica %s, raft %s (advertised %s), api %s, http %s, metrics %s, bootstrap %t, peers [%s], etcd %d endpoints, tls %s, token %t, insecure %t, dev %t",
		d.Raft.ID, d.Raft.BindAddr, adv, d.APIListen, web, metrics, d.Raft.Bootstrap, strings.Join(peers, " "), len(d.EtcdEndpoints), tls, d.Token != "", d.Insecure, d.Dev)
}

// peerAddrFlag is --raft-peer-addr, given once per replica: ID=HOST:PORT.
type peerAddrFlag map[string]string

func (p peerAddrFlag) String() string {
	var out []string
	for _, id := range slices.Sorted(maps.Keys(p)) {
		out = append(out, id+"="+p[id])
	}
	return strings.Join(out, ",")
}

func (p peerAddrFlag) Set(v string) error {
	id, addr, ok := strings.Cut(v, "=")
	if !ok {
		return errors.New("want ID=HOST:PORT")
	}
	if err := coordinator.ValidReplicaID(id); err != nil {
		return err
	}
	if err := coordinator.ValidRaftAddr(addr); err != nil {
		return err
	}
	if _, dup := p[id]; dup {
		return fmt.Errorf("replica %s given twice", id)
	}
	p[id] = addr
	return nil
}

// configFlags names the flag of each coordinator.Config field a command
// line sets (an invalid field is reported by its flag).
var configFlags = map[string]string{
	"ID": "--id", "DataDir": "--data-dir", "BindAddr": "--raft-addr", "AdvertiseAddr": "--raft-advertise",
	"PeerAddrs": "--raft-peer-addr", "Servers": "--peers", "HeartbeatTimeout/ElectionTimeout": "--heartbeat-timeout/--election-timeout",
	"LeaderLeaseTimeout": "--leader-lease-timeout",
}

// describe is the line that reports err: once prefixed "coordinator:",
// an invalid raft setting named by its flag.
func describe(err error) string {
	var ce *coordinator.ConfigError
	if errors.As(err, &ce) {
		field, rest, _ := strings.Cut(ce.Field, "[")
		if fl, ok := configFlags[field]; ok {
			key := strings.TrimSuffix(rest, "]")
			if i, err := strconv.Atoi(key); err == nil {
				fl += fmt.Sprintf(" (entry %d)", i+1) // Servers[i]
			} else if key != "" {
				fl += " " + key // PeerAddrs["id"]
			}
			return fmt.Sprintf("coordinator: invalid config: %s: %s", fl, ce.Why)
		}
	}
	msg := err.Error()
	if strings.HasPrefix(msg, "coordinator:") {
		return msg
	}
	return "coordinator: " + msg
}
