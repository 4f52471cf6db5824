package controller

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
	"github.com/switchyard-ml/switchyard/pkg/client"
	"github.com/switchyard-ml/switchyard/pkg/coordinator"
	"github.com/switchyard-ml/switchyard/pkg/dashboard"
	"github.com/switchyard-ml/switchyard/pkg/devcluster"
	"github.com/switchyard-ml/switchyard/pkg/etcdconn"
	"github.com/switchyard-ml/switchyard/pkg/events"
	"github.com/switchyard-ml/switchyard/pkg/jobspec"
	"github.com/switchyard-ml/switchyard/pkg/jobstate"
	"github.com/switchyard-ml/switchyard/pkg/membership"
	"github.com/switchyard-ml/switchyard/pkg/metrics"
	"github.com/switchyard-ml/switchyard/pkg/security"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// DaemonConfig is one coordinator process.
type DaemonConfig struct {
	// Raft replica settings (ID, BindAddr, DataDir, Bootstrap, Servers,
	// timings). In dev mode DataDir also holds the embedded servers.
	Raft coordinator.Config
	// APIListen is the gRPC listen address; APIAdvertise what others dial
	// (default: the listen address, with the real port when it was :0).
	APIListen    string
	APIAdvertise string
	// EtcdEndpoints and NATSURL locate the cluster's etcd and NATS (both
	// ignored in dev mode, which embeds them). NATSURL "" : no event bus.
	EtcdEndpoints []string
	NATSURL       string
	// Dev embeds etcd and NATS, and allows loopback addresses only.
	Dev bool
	// Token is required from clients when set; TLS turns on mutual TLS;
	// Insecure allows a non-loopback listener without TLS.
	Token    string
	TLS      security.TLSFiles
	Insecure bool
	// RaftTLS encrypts the raft traffic with the TLS files (mutual TLS;
	// every replica must agree).
	RaftTLS bool
	// CheckpointRoot is the shared checkpoint storage as mounted here (the
	// directory of jobs whose spec names no checkpoint path); "" : only
	// jobs with an absolute checkpoint path are listed and deleted.
	CheckpointRoot string
	// MetricsListen is where Prometheus scrapes this replica's /metrics
	// ("": no endpoint).
	MetricsListen string
	// HTTPListen is the web dashboard's listen address ("" : none), which
	// also serves the probes /healthz and /readyz (no token). It follows
	// the API's rules: the same token, HTTPS with mutual TLS when TLS is
	// on (the listener asks for a client certificate, the dashboard
	// demands one, the probes do without, as a kubelet has none),
	// loopback only without TLS unless Insecure, and loopback only in dev
	// mode.
	HTTPListen string
	// Tick is the supervision period (default 250ms).
	Tick   time.Duration
	Logger *slog.Logger
}

// Daemon is a running coordinator: raft node, API server, supervision.
type Daemon struct {
	Node    *coordinator.Node
	Server  *Server
	Dev     *devcluster.Cluster // nil unless dev mode; its etcd wants Dev.EtcdUsername and Dev.EtcdPassword
	APIAddr string
	// HTTPAddr is the dashboard's bound address ("" : none); DashboardURL
	// the URL to open.
	HTTPAddr     string
	DashboardURL string
	Etcd         []string
	NATSURL      string
	// MetricsAddr is the address of the /metrics endpoint ("" : none).
	MetricsAddr string

	grpc    *grpc.Server
	metrics *metrics.Server
	http    *http.Server
	dash    *dashboard.Handler
	// dashCancel ends the contexts of the dashboard's requests (its live
	// streams never go idle, so Shutdown alone would wait for them).
	dashCancel context.CancelFunc
	cli        *clientv3.Client
	bus        events.Bus
	cancel     context.CancelFunc
	wg         sync.WaitGroup
	closed     sync.Once
	// closing is set when Close starts: the replica is no longer ready.
	closing atomic.Bool
	log     *slog.Logger
}

// transferTimeout bounds the leadership transfer on Close.
const transferTimeout = 5 * time.Second

// Start brings a coordinator up; Close takes it down.
func Start(ctx context.Context, cfg DaemonConfig) (d *Daemon, err error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := cfg.checkListeners(); err != nil {
		return nil, err
	}
	if cfg.RaftTLS {
		if !cfg.TLS.Enabled() {
			return nil, fmt.Errorf("%w: raft TLS needs the TLS files", coordinator.ErrInvalidConfig)
		}
		if cfg.Raft.TLS, err = security.ClientTLS(cfg.TLS, ""); err != nil {
			return nil, fmt.Errorf("controller: raft TLS: %w", err)
		}
	}
	started := &Daemon{log: log}
	d = started
	defer func() {
		if err != nil {
			started.Close() // d is nil here: `return nil, err` set it
		}
	}()
	if err := d.connect(ctx, &cfg, log); err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", cfg.APIListen)
	if err != nil {
		return nil, fmt.Errorf("controller: API listen: %w", err)
	}
	if err := d.serve(cfg, lis, log); err != nil {
		lis.Close()
		return nil, err
	}
	log.Info("coordinator started", "id", cfg.Raft.ID, "raft", d.Node.Addr(), "api", d.APIAddr, "etcd", cfg.EtcdEndpoints, "nats", events.Redact(cfg.NATSURL), "dev", cfg.Dev)
	return d, nil
}

// checkListeners refuses listeners the security settings do not allow:
// dev mode is loopback-only, and beyond loopback the API needs TLS or
// --insecure. Raft's traffic is encrypted only with RaftTLS; beyond
// loopback it needs the operator's say-so: TLS on the API (a secured
// deployment, raft on a private network or RaftTLS) or --insecure.
func (cfg DaemonConfig) checkListeners() error {
	tlsOn := cfg.TLS.Enabled()
	if cfg.Dev {
		for _, a := range []string{cfg.APIListen, cfg.Raft.BindAddr, cfg.MetricsListen, cfg.HTTPListen} {
			if a != "" && !security.IsLoopback(a) {
				return fmt.Errorf("%w: dev mode is loopback-only; %q is not a loopback address", security.ErrInsecureListen, a)
			}
		}
	}
	if err := security.CheckListen(cfg.APIListen, tlsOn, cfg.Insecure); err != nil {
		return err
	}
	if err := security.CheckListen(cfg.Raft.BindAddr, tlsOn, cfg.Insecure); err != nil {
		return fmt.Errorf("controller: raft listener: %w", err)
	}
	if cfg.HTTPListen != "" {
		if err := security.CheckListen(cfg.HTTPListen, tlsOn, cfg.Insecure); err != nil {
			return fmt.Errorf("controller: dashboard listener: %w", err)
		}
	}
	return nil
}

// connect starts the embedded servers in dev mode (setting cfg's etcd and
// NATS addresses to theirs) and connects to etcd and NATS.
func (d *Daemon) connect(ctx context.Context, cfg *DaemonConfig, log *slog.Logger) error {
	var err error
	if cfg.Dev {
		if d.Dev, err = devcluster.Start(ctx, devcluster.Config{DataDir: filepath.Join(cfg.Raft.DataDir, "dev")}); err != nil {
			return fmt.Errorf("controller: dev cluster: %w", err)
		}
		cfg.EtcdEndpoints, cfg.NATSURL = d.Dev.EtcdEndpoints(), d.Dev.NATSURL()
	}
	if len(cfg.EtcdEndpoints) == 0 {
		return errors.New("controller: no etcd endpoints (give --etcd-endpoints, or --dev)")
	}
	d.Etcd, d.NATSURL = cfg.EtcdEndpoints, cfg.NATSURL
	// the API's TLS files serve for etcd and NATS too (one CA); dev mode's
	// embedded servers are plain loopback, and its etcd wants the user the
	// dev cluster generated (others come from the environment)
	backendTLS := cfg.TLS
	ec := etcdconn.Config{TLS: backendTLS}
	if cfg.Dev {
		backendTLS = security.TLSFiles{}
		ec = etcdconn.Config{Username: d.Dev.EtcdUsername(), Password: d.Dev.EtcdPassword()}
	}
	if d.cli, err = etcdconn.Open(cfg.EtcdEndpoints, ec); err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	if d.Dev == nil {
		// the replica starts without etcd (its raft state is its own) and
		// keeps trying; the etcd client would only ever say that time ran
		// out, so say once what is at the endpoints
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if _, err := d.cli.Get(sctx, membership.DefaultPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil {
			log.Warn("etcd does not answer; the replica starts and keeps trying", "error", err,
				"endpoints", etcdconn.Diagnose(ctx, cfg.EtcdEndpoints, backendTLS))
		}
		cancel()
	}
	if cfg.NATSURL != "" {
		if d.bus, err = events.NewNATS(events.NATSConfig{URL: cfg.NATSURL, Name: "coordinator-" + cfg.Raft.ID, Logger: log, TLS: backendTLS, CredsFile: os.Getenv(events.CredsEnv)}); err != nil {
			return fmt.Errorf("controller: NATS: %w", err)
		}
	}
	return nil
}

// serve starts the raft replica, the controller over it and the API server
// on lis, and runs the server and supervision until Close.
func (d *Daemon) serve(cfg DaemonConfig, lis net.Listener, log *slog.Logger) error {
	d.APIAddr = cfg.APIAdvertise
	if d.APIAddr == "" {
		d.APIAddr = lis.Addr().String()
	}
	cfg.Raft.Logger = log
	var (
		cm  *metrics.Coordinator
		reg = metrics.NewRegistry()
	)
	if cfg.MetricsListen != "" {
		cm = metrics.NewCoordinator(reg, jobStateNames(), d.metricsState)
		cfg.Raft.OnApply = cm.ObserveApply
	}
	var err error
	if d.Node, err = coordinator.NewNode(cfg.Raft); err != nil {
		return err
	}
	var cps Checkpoints = etcdCheckpoints{cat: checkpoint.NewEtcdCatalogue(d.cli, checkpoint.CataloguePrefix), root: cfg.CheckpointRoot, log: log}
	var bus events.Bus
	if d.bus != nil {
		bus = d.bus
	}
	d.Server, err = New(Config{
		Node: d.Node, APIAddr: d.APIAddr,
		Workers:     membership.NewEtcd(d.cli, membership.DefaultPrefix, log),
		Replicas:    membership.NewEtcd(d.cli, ReplicaPrefix, log),
		Bus:         bus,
		Metrics:     cm,
		Checkpoints: cps,
		Token:       cfg.Token, TLS: cfg.TLS,
		Tick: cfg.Tick, Logger: log,
	})
	if err != nil {
		return err
	}
	if cfg.MetricsListen != "" {
		// served once the node and server it reads exist
		ms, err := metrics.Serve(cfg.MetricsListen, reg, log, nil)
		if err != nil {
			return fmt.Errorf("controller: %w", err)
		}
		d.metrics, d.MetricsAddr = ms, ms.Addr()
	}
	opts := append(recoverPanics(log), security.ServerOptions(cfg.Token, cfg.TLS.Enabled())...)
	opts = append(opts, client.KeepaliveServerOptions()...)
	if cfg.TLS.Enabled() {
		tc, err := security.ServerTLS(cfg.TLS)
		if err != nil {
			return err
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(tc)))
	}
	d.grpc = grpc.NewServer(opts...)
	apiv1.RegisterCoordinatorServer(d.grpc, d.Server)
	rctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	if cfg.HTTPListen != "" {
		if err := d.serveDashboard(cfg, log); err != nil {
			cancel()
			return err
		}
	}
	d.wg.Add(2)
	go func() { defer d.wg.Done(); d.grpc.Serve(lis) }()  //nolint:errcheck // ends with Stop
	go func() { defer d.wg.Done(); d.Server.Run(rctx) }() //nolint:errcheck // returns nil when stopped
	return nil
}

// serveDashboard listens on cfg.HTTPListen and serves the web dashboard:
// HTTPS with the API's mutual TLS when TLS is on, the API's token.
func (d *Daemon) serveDashboard(cfg DaemonConfig, log *slog.Logger) error {
	var tc *tls.Config
	if cfg.TLS.Enabled() {
		var err error
		if tc, err = security.ServerTLS(cfg.TLS); err != nil {
			return err
		}
		// the probes must answer a kubelet, which has no certificate:
		// the listener asks for one, and the dashboard demands it
		tc.ClientAuth = tls.VerifyClientCertIfGiven
	}
	h, err := dashboard.New(dashboard.Config{
		Source: dashboardSource{s: d.Server, checkpointRoot: cfg.CheckpointRoot},
		Token:  cfg.Token, ClientCert: tc != nil, Logger: log,
	})
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	probes := probeHandler(d.health, time.Now)
	mux.Handle("/healthz", probes)
	mux.Handle("/readyz", probes)
	mux.Handle("/", h)
	lis, err := net.Listen("tcp", cfg.HTTPListen)
	if err != nil {
		return fmt.Errorf("controller: dashboard listen: %w", err)
	}
	base, cancel := context.WithCancel(context.Background())
	d.dash, d.dashCancel = h, cancel
	d.http = &http.Server{
		Handler:           mux,
		TLSConfig:         tc,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		BaseContext:       func(net.Listener) context.Context { return base },
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	d.HTTPAddr = lis.Addr().String()
	scheme := "http"
	if tc != nil {
		scheme = "https"
	}
	d.DashboardURL = scheme + "://" + d.HTTPAddr + "/"
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		var err error
		if tc != nil {
			err = d.http.ServeTLS(lis, "", "")
		} else {
			err = d.http.Serve(lis)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("dashboard stopped", "error", err)
		}
	}()
	log.Info("dashboard serving", "url", d.DashboardURL)
	return nil
}

// health is this replica's state for the probes.
func (d *Daemon) health() health {
	h := health{Closing: d.closing.Load()}
	if d.Node != nil {
		h.Shutdown = d.Node.State() == "Shutdown"
		id, addr := d.Node.Leader()
		h.Leader = id != "" || addr != ""
	}
	if d.Server != nil {
		h.EtcdOK = d.Server.EtcdReached()
	}
	if d.bus != nil {
		h.HasBus, h.BusConnected = true, d.bus.Stats().Connected
	}
	return h
}

// Close stops serving, stops supervision, shuts raft down and, in dev
// mode, the embedded servers. A leader first hands leadership over to
// another voter (at most transferTimeout), so that the cluster does not
// wait an election timeout for a new one; if that fails it shuts down
// all the same.
func (d *Daemon) Close() error {
	var errs []error
	d.closed.Do(func() {
		d.closing.Store(true)
		d.handOver()
		if d.http != nil {
			d.dashCancel() // requests end, live streams too
			sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			if err := d.http.Shutdown(sctx); err != nil {
				d.http.Close() // a stream blocked writing to a client that stopped reading
			}
			cancel()
			d.dash.Close() // and wait for the streams' goroutines
		}
		if d.grpc != nil {
			stopped := make(chan struct{})
			go func() { d.grpc.GracefulStop(); close(stopped) }()
			select {
			case <-stopped:
			case <-time.After(3 * time.Second):
				d.grpc.Stop() // streams (logs -f, watch) do not end by themselves
			}
		}
		if d.cancel != nil {
			d.cancel()
		}
		d.wg.Wait()
		if d.metrics != nil {
			errs = append(errs, d.metrics.Close())
		}
		if d.Node != nil {
			errs = append(errs, d.Node.Shutdown())
		}
		if d.bus != nil {
			errs = append(errs, d.bus.Close())
		}
		if d.cli != nil {
			errs = append(errs, d.cli.Close())
		}
		if d.Dev != nil {
			errs = append(errs, d.Dev.Close())
		}
	})
	return errors.Join(errs...)
}

// handOver transfers leadership to another voter when this replica leads
// and is not alone.
func (d *Daemon) handOver() {
	if d.Node == nil || !d.Node.IsLeader() {
		return
	}
	log := d.log
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithTimeout(context.Background(), transferTimeout)
	defer cancel()
	start := time.Now()
	moved, err := d.Node.TransferLeadership(ctx)
	switch {
	case err != nil:
		log.Warn("leadership transfer failed; shutting down anyway", "error", err, "took", time.Since(start))
	case moved:
		id, _ := d.Node.Leader()
		log.Info("leadership transferred", "to", id, "took", time.Since(start))
	}
}

// jobStateNames are the job states' names as the metrics label them
// ("running"), every state but the unspecified one.
func jobStateNames() []string {
	var out []string
	for v := range pb.JobState_name {
		if st := pb.JobState(v); st != pb.JobState_JOB_STATE_UNSPECIFIED {
			out = append(out, jobstate.Lower(st))
		}
	}
	slices.Sort(out)
	return out
}

// metricsState reads what the metrics export at scrape time.
func (d *Daemon) metricsState() metrics.CoordinatorState {
	var st metrics.CoordinatorState
	n := d.Node
	if n == nil {
		return st
	}
	st.Leader, st.AppliedIndex = n.IsLeader(), n.AppliedIndex()
	stats := n.Stats()
	st.Term, _ = strconv.ParseUint(stats["term"], 10, 64)
	st.LastIndex, _ = strconv.ParseUint(stats["last_log_index"], 10, 64)
	st.JobsByState = map[string]int{}
	for _, j := range n.Jobs() {
		st.JobsByState[jobstate.Lower(j.State)]++
		if j.State == pb.JobState_JOB_STATE_PENDING {
			st.Queued++
		}
	}
	if d.Server != nil {
		st.Workers = len(d.Server.liveWorkers())
	}
	if d.bus != nil {
		bs := d.bus.Stats()
		st.HasBus, st.BusConnected, st.BusDropped = true, bs.Connected, bs.Dropped
	}
	return st
}

// etcdCheckpoints reads the checkpoint catalogue the ranks commit to and
// deletes through a Manager over the job's storage.
type etcdCheckpoints struct {
	cat  checkpoint.Catalogue
	root string
	log  *slog.Logger
}

func (e etcdCheckpoints) Commit(ctx context.Context, j *pb.Job, m checkpoint.Manifest) error {
	return e.as(j).Commit(ctx, m)
}

func (e etcdCheckpoints) Fence(ctx context.Context, j *pb.Job, attempt int32) error {
	if f, ok := e.cat.(checkpoint.Fencing); ok {
		return f.Fence(ctx, j.Id, int64(attempt))
	}
	return nil
}

// as is the catalogue as job j's current attempt writes it: fenced, where
// the catalogue fences.
func (e etcdCheckpoints) as(j *pb.Job) checkpoint.Catalogue {
	if f, ok := e.cat.(checkpoint.Fencing); ok {
		return f.As(int64(j.Restarts))
	}
	return e.cat
}

func (e etcdCheckpoints) List(ctx context.Context, j *pb.Job) ([]checkpoint.Manifest, []int64, error) {
	live, err := e.cat.List(ctx, j.Id)
	if err != nil && !errors.Is(err, checkpoint.ErrNoCheckpoint) {
		return nil, nil, err
	}
	deleting, err := e.cat.Deleting(ctx, j.Id)
	if err != nil {
		return nil, nil, err
	}
	return live, deleting, nil
}

func (e etcdCheckpoints) Delete(ctx context.Context, j *pb.Job, step int64) error {
	st, err := e.storage(j)
	if err != nil {
		return err
	}
	// no file where the checkpoint should be: most likely this storage is
	// not the workers' (a wrong --checkpoint-root); deleting the entry
	// would leave the files, out of the catalogue, for good
	prefix := checkpoint.StepPrefix(j.Id, step)
	keys, err := st.List(ctx, prefix)
	if err != nil {
		return err
	}
	deleting, err := e.cat.Deleting(ctx, j.Id)
	if err != nil {
		return err
	}
	// a deletion that was interrupted (its files may all be gone) is
	// finished: the entry already says the checkpoint is going
	if len(keys) == 0 && !slices.Contains(deleting, step) {
		return fmt.Errorf("no file of it under %s in %s: is that the workers' checkpoint storage (--checkpoint-root must be their <storage_path>/checkpoints as mounted here)? nothing was deleted", prefix, e.rootOf(j))
	}
	return checkpoint.NewManager(st, e.cat, e.log).Delete(ctx, j.Id, step)
}

func (e etcdCheckpoints) Manifest(ctx context.Context, j *pb.Job, step int64) (checkpoint.Manifest, error) {
	return e.cat.Get(ctx, j.Id, step)
}

func (e etcdCheckpoints) Retire(ctx context.Context, j *pb.Job, step int64, remove bool) error {
	if remove {
		return e.as(j).Remove(ctx, j.Id, step)
	}
	return e.as(j).MarkDeleting(ctx, j.Id, step)
}

func (e etcdCheckpoints) Verify(ctx context.Context, j *pb.Job, m checkpoint.Manifest) ([]error, error) {
	st, err := e.storage(j)
	if err != nil {
		return nil, err
	}
	prefix := checkpoint.StepPrefix(j.Id, m.Step)
	errs := make([]error, len(m.Shards))
	for i, sh := range m.Shards {
		_, errs[i] = checkpoint.ReadShardVerified(ctx, st, prefix, m, sh.Name)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
	return errs, nil
}

// storage opens the job's checkpoint storage: its spec's checkpoint.path,
// or this coordinator's --checkpoint-root.
func (e etcdCheckpoints) storage(j *pb.Job) (checkpoint.Storage, error) {
	root := e.rootOf(j)
	if root == "" {
		return nil, errors.New("the checkpoint storage is not reachable from this coordinator (start it with --checkpoint-root)")
	}
	return checkpoint.OpenStorage(root, nil)
}

// rootOf is where job j's checkpoints are: its spec's checkpoint.path, or
// this coordinator's --checkpoint-root.
func (e etcdCheckpoints) rootOf(j *pb.Job) string {
	if sp, err := jobspec.Parse(j.Spec); err == nil && sp.Checkpoint.Path != "" {
		return sp.Checkpoint.Path
	}
	return e.root
}

// recoverPanics turns a panic in a handler into an INTERNAL error for that
// call (logged with its stack) instead of taking the replica down.
func recoverPanics(log *slog.Logger) []grpc.ServerOption {
	rec := func(method string, err *error) {
		if p := recover(); p != nil {
			log.Error("handler panicked", "method", method, "panic", p, "stack", string(debug.Stack()))
			*err = status.Errorf(codes.Internal, "internal error in %s", method)
		}
	}
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
			defer rec(info.FullMethod, &err)
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) (err error) {
			defer rec(info.FullMethod, &err)
			return h(srv, ss)
		}),
	}
}
