package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-ml/switchyard/pkg/etcdconn"
	"github.com/switchyard-ml/switchyard/pkg/events"
	"github.com/switchyard-ml/switchyard/pkg/fsutil"
	"github.com/switchyard-ml/switchyard/pkg/membership"
	"github.com/switchyard-ml/switchyard/pkg/metrics"
	"github.com/switchyard-ml/switchyard/pkg/workerconfig"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
)

// Defaults of Options.
const (
	DefaultSyncInterval = 500 * time.Millisecond
	DefaultStopGrace    = 10 * time.Second
)

const (
	// syncTimeout bounds one SyncWorker call.
	syncTimeout = 5 * time.Second
	// registerTimeout bounds one registration attempt.
	registerTimeout = 10 * time.Second
	// closeTimeout bounds deregistration at shutdown.
	closeTimeout = 5 * time.Second
	// Registration retry backoff.
	minBackoff = 200 * time.Millisecond
	maxBackoff = 10 * time.Second
	// takenRetry is the longest wait for an id another registration holds
	takenRetry = time.Second
)

// ErrOptions is wrapped by the errors of New.
var ErrOptions = errors.New("agent: invalid options")

// Options configure an Agent.
type Options struct {
	Config   workerconfig.Config
	Client   apiv1.CoordinatorClient // the coordinator API
	Registry membership.Registry
	Bus      events.Bus // nil: no logs or metrics are published
	// SyncInterval is the time between SyncWorker calls (default 500ms).
	SyncInterval time.Duration
	// StopGrace is the time between SIGTERM and SIGKILL when a rank is
	// stopped (default 10s).
	StopGrace time.Duration
	Logger    *slog.Logger
	// Version of the worker, registered for `cluster status`.
	Version string
	// Token is the worker's own coordinator token (OwnToken): its ranks
	// get rank tokens made from it (security.RankToken) ("": none).
	Token string
	// Relay reaches the coordinator as the worker's connections do (its
	// TLS certificate) but without its token: with rank_user the ranks'
	// calls go through the worker, each with the rank's own token.
	// Required with rank_user; Connect sets it.
	Relay apiv1.CoordinatorClient
}

// Agent is a running worker. Create it with New and call Run once.
type Agent struct {
	o       Options
	trainer string     // absolute path of the switchyard binary
	ranks   *rankUser  // the OS user ranks run as (nil: the worker's)
	proxy   *rankProxy // their way to the coordinator (with ranks; set by Run)
	owner   string     // OwnerEnv's value in this worker's ranks: "ID@STORAGE"
	log     *slog.Logger
	kick    chan struct{} // a task changed state: sync now (buffered 1)
	ran     atomic.Bool
	// for /readyz: registered in etcd now; the last sync reached the
	// coordinator; draining (SIGTERM received)
	registered, synced, draining atomic.Bool
	drainStarted                 chan struct{} // closed when the drain begins

	// the worker's and its jobs' metrics (nil without metrics_address)
	reg     *prometheus.Registry
	wm      *metrics.Worker
	tm      *metrics.Training
	mu      sync.Mutex
	tasks   map[taskKey]*task
	closing bool           // Run is stopping: start nothing more
	wg      sync.WaitGroup // one per task goroutine
}

// usableDir makes dir if need be and checks that a file can be written
// in it.
func usableDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".switchyard-probe-*")
	if err != nil {
		return err
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}

// New checks the options (the config must validate and the trainer must
// resolve, see workerconfig.Config.TrainerPath) and fills the defaults.
func New(o Options) (*Agent, error) {
	if o.Client == nil {
		return nil, fmt.Errorf("%w: Client is required", ErrOptions)
	}
	if o.Registry == nil {
		return nil, fmt.Errorf("%w: Registry is required", ErrOptions)
	}
	if err := o.Config.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrOptions, err)
	}
	trainer, err := o.Config.TrainerPath()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrOptions, err)
	}
	if err := usableDir(o.Config.StoragePath); err != nil {
		// refused here, not by every rank placed on it later
		return nil, fmt.Errorf("%w: storage_path %s cannot be used: %w", ErrOptions, o.Config.StoragePath, err)
	}
	ranks, err := checkRankUser(o, trainer)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrOptions, err)
	}
	if ranks != nil && o.Relay == nil {
		return nil, fmt.Errorf("%w: Relay is required with rank_user", ErrOptions)
	}
	if o.SyncInterval <= 0 {
		o.SyncInterval = DefaultSyncInterval
	}
	if o.StopGrace <= 0 {
		o.StopGrace = DefaultStopGrace
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	storage, err := filepath.Abs(o.Config.StoragePath)
	if err != nil {
		return nil, fmt.Errorf("%w: storage_path: %w", ErrOptions, err)
	}
	a := &Agent{
		o:       o,
		trainer: trainer,
		ranks:   ranks,
		owner:   o.Config.ID + "@" + storage,
		log:     o.Logger.With("worker-id", o.Config.ID),
		kick:    make(chan struct{}, 1),
		tasks:   map[taskKey]*task{},

		drainStarted: make(chan struct{}),
	}
	if o.Config.MetricsAddress != "" {
		var renewals func() uint64
		if r, ok := o.Registry.(interface{ Renewals() uint64 }); ok {
			renewals = r.Renewals
		}
		a.reg = metrics.NewRegistry()
		a.wm = metrics.NewWorker(a.reg, a.ranksRunning, renewals)
		a.tm = metrics.NewTraining(a.reg)
	}
	return a, nil
}

// ranksRunning counts the tasks whose process runs.
func (a *Agent) ranksRunning() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, t := range a.tasks {
		if t.running() {
			n++
		}
	}
	return n
}

// Trainer is the resolved path of the binary that runs ranks.
func (a *Agent) Trainer() string { return a.trainer }

// Run registers the worker and runs the tasks the coordinator assigns
// until ctx ends; then it stops every task (SIGTERM, SIGKILL after
// StopGrace), waits for them, deregisters and returns nil. It returns an
// error only when the worker cannot register at all (its info is invalid).
// A registration that is lost (the lease expired) is made again, with
// backoff; the tasks keep running meanwhile.
func (a *Agent) Run(ctx context.Context) error {
	if !a.ran.CompareAndSwap(false, true) {
		return errors.New("agent: Run called twice")
	}
	// The registration outlives ctx until the tasks have stopped, so the
	// worker stays visible while its ranks shut down.
	if err := a.checkCredentials(ctx); err != nil {
		return err
	}
	if a.reg != nil {
		ms, err := metrics.Serve(a.o.Config.MetricsAddress, a.reg, a.log, a.healthHandlers())
		if err != nil {
			return fmt.Errorf("agent: %w", err)
		}
		defer ms.Close()
		a.log.Info("metrics", "url", "http://"+ms.Addr()+"/metrics")
	}
	if a.ranks != nil {
		p, err := startRankProxy(a.o.Relay, a.o.Token, a.ranks)
		if err != nil {
			return fmt.Errorf("agent: %w", err)
		}
		defer p.close() // after every rank stopped
		a.proxy = p
		a.log.Info("ranks run as rank_user, reaching the coordinator through the worker", "rank-user", a.ranks.String(), "socket", p.endpoint())
	}
	life, endLife := context.WithCancel(context.WithoutCancel(ctx))
	defer endLife()
	reg, release, err := a.registerRetry(ctx, life)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	a.registered.Store(true)
	a.log.Info("worker registered", "address", a.o.Config.AdvertiseAddress, "trainer", a.trainer)

	// the id is this worker's now: ranks of its earlier run (killed -9,
	// its ranks ignoring the SIGTERM that followed) go before any starts
	// again in their run directories and ports
	if pids := killOrphans(a.owner); len(pids) > 0 {
		a.log.Warn("killed ranks left running by this worker's earlier run", "pids", pids)
	}
	regDone := make(chan struct{})
	go func() {
		defer close(regDone)
		a.keepRegistered(life, reg, release)
	}()

	ctlDone := make(chan struct{})
	go func() {
		defer close(ctlDone)
		a.followControl(ctx)
	}()

	a.syncLoop(ctx)

	<-ctlDone
	a.drain()
	a.stopAll()
	endLife()
	<-regDone
	a.log.Info("worker stopped")
	return nil
}

// checkCredentials makes one call to the coordinator before the worker
// registers. A token or certificate the coordinator refuses would make a
// worker that shows in etcd, and in cluster status, but can never take
// work: it stops here, saying why. A coordinator that does not answer is
// no reason to stop: the worker registers and waits for it. The call is
// a probe, not a sync: until this worker registers, its id in etcd may
// still be its killed predecessor's, and a sync would have the
// coordinator place work on it that the old lease's end then takes away.
func (a *Agent) checkCredentials(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	_, err := a.o.Client.SyncWorker(cctx, &apiv1.SyncWorkerRequest{WorkerId: a.o.Config.ID, Probe: true})
	if refused(err) {
		return fmt.Errorf("agent: the coordinator refuses this worker's credentials (%s): check $SWITCHYARD_TOKEN (the cluster token, or this worker's from switchyard cluster worker-token) and the TLS files", status.Convert(err).Message())
	}
	return nil
}

// refused reports whether err is the coordinator refusing the worker's
// credentials.
func refused(err error) bool {
	c := status.Code(err)
	return c == codes.Unauthenticated || c == codes.PermissionDenied
}

func (a *Agent) info() membership.WorkerInfo {
	c := a.o.Config
	return membership.WorkerInfo{
		ID:       c.ID,
		Address:  c.AdvertiseAddress,
		Draining: a.draining.Load(),
		Resources: membership.Resources{
			CPUCores:    c.Resources.CPUCores,
			MemoryBytes: c.Resources.MemoryMiB << 20,
			GPUs:        c.Resources.GPUs,
		},
		Labels:   c.Labels,
		Host:     c.Host,
		Version:  a.o.Version,
		Commands: c.AllowCommands,
		RankUser: c.RankUser,
		Roots:    fsutil.RootForms(append([]string{c.StoragePath}, c.AllowedPaths...)),
		Slots:    c.SlotCount(),
		GPUDevices: func() []membership.GPU {
			var gs []membership.GPU
			for _, g := range c.Resources.GPUDevices {
				gs = append(gs, membership.GPU{Index: g.Index, UUID: g.UUID, Name: g.Name, MemoryMiB: g.MemoryMiB, Links: g.Links})
			}
			return gs
		}(),
	}
}

// registerOnce makes one registration that lives as long as life. The
// attempt is abandoned when ctx ends or after registerTimeout. release
// frees what the registration holds once it is closed.
func (a *Agent) registerOnce(ctx, life context.Context) (reg membership.Registration, release func(), err error) {
	rctx, cancel := context.WithCancel(life)
	abort := context.AfterFunc(ctx, cancel)
	timer := time.AfterFunc(registerTimeout, cancel)
	reg, err = a.o.Registry.Register(rctx, a.info(), time.Duration(a.o.Config.LeaseTTLSeconds)*time.Second)
	notAborted, notTimedOut := abort(), timer.Stop()
	if err == nil && notAborted && notTimedOut {
		return reg, cancel, nil
	}
	cancel()
	if err == nil { // registered, but too late: undo it
		cctx, ccancel := context.WithTimeout(context.Background(), closeTimeout)
		reg.Close(cctx)
		ccancel()
		err = errors.New("registration attempt abandoned")
	}
	if !notTimedOut {
		err = fmt.Errorf("no answer within %v: %w", registerTimeout, err)
		if eps := a.o.Config.EtcdEndpoints; len(eps) > 0 && ctx.Err() == nil {
			// the etcd client only says time ran out: say what is there
			dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
			err = fmt.Errorf("%w (etcd %s)", err, etcdconn.Diagnose(dctx, eps, a.o.Config.TLS))
			dcancel()
		}
	}
	return nil, nil, err
}

// registerRetry registers, retrying with backoff until ctx ends; an
// invalid worker info is not retried.
func (a *Agent) registerRetry(ctx, life context.Context) (membership.Registration, func(), error) {
	backoff := minBackoff
	for {
		reg, release, err := a.registerOnce(ctx, life)
		if err == nil {
			return reg, release, nil
		}
		a.wm.RegisterFailed()
		if errors.Is(err, membership.ErrInvalidWorker) {
			return nil, nil, fmt.Errorf("agent: register: %w", err)
		}
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		wait := backoff
		if errors.Is(err, membership.ErrTaken) {
			// often this worker's own lease from before a restart (kill
			// -9): it runs out within the TTL, so look again soon
			wait = min(backoff, takenRetry)
		}
		a.log.Warn("cannot register; retrying", "error", err, "backoff", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, nil, ctx.Err()
		case <-t.C:
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// keepRegistered registers again whenever the registration is lost, and
// deregisters when life ends.
func (a *Agent) keepRegistered(life context.Context, reg membership.Registration, release func()) {
	closeReg := func() {
		cctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		defer cancel()
		if err := reg.Close(cctx); err != nil {
			a.log.Debug("deregister", "error", err)
		}
		release()
	}
	drain := a.drainStarted
	for {
		select {
		case <-life.Done():
			closeReg()
			return
		case <-drain:
			// the registration says so, for a leader elected meanwhile
			drain = nil
			uctx, cancel := context.WithTimeout(life, registerTimeout)
			if err := reg.Update(uctx, a.info()); err != nil && life.Err() == nil {
				a.log.Warn("could not mark the registration as draining", "error", err)
			}
			cancel()
			continue
		case <-reg.Lost():
		}
		a.registered.Store(false)
		closeReg()
		if life.Err() != nil {
			return
		}
		a.wm.LeaseLost()
		a.log.Warn("worker registration lost; registering again")
		var err error
		reg, release, err = a.registerRetry(life, life)
		if err != nil {
			if life.Err() == nil {
				a.log.Error("cannot register again", "error", err)
			}
			return
		}
		a.registered.Store(true)
		a.log.Info("worker registered again")
	}
}

// syncLoop calls SyncWorker every SyncInterval (and at once when a task
// changed state) until ctx ends.
func (a *Agent) syncLoop(ctx context.Context) {
	t := time.NewTicker(a.o.SyncInterval)
	defer t.Stop()
	var out outage
	for {
		a.syncOnce(ctx, &out)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.kick:
		}
	}
}

// sync makes one SyncWorker call.
func (a *Agent) sync(ctx context.Context, draining bool) (*apiv1.SyncWorkerResponse, error) {
	req := &apiv1.SyncWorkerRequest{WorkerId: a.o.Config.ID, Tasks: a.statuses(), Draining: draining}
	cctx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	t0 := time.Now()
	resp, err := a.o.Client.SyncWorker(cctx, req)
	if ctx.Err() == nil {
		a.wm.Synced(time.Since(t0), err)
		a.synced.Store(err == nil)
	}
	return resp, err
}

// unreachableReminder is how often a worker that cannot reach its
// coordinator says so again (at Warn) while the outage lasts.
var unreachableReminder = time.Minute

// outage is how long the coordinator has been unreachable, for the log.
type outage struct {
	since, warned time.Time // zero: reachable
}

// logRound rounds an outage's length for the log: to the second from
// ten seconds on, to the millisecond before.
func logRound(d time.Duration) time.Duration {
	if d >= 10*time.Second {
		return d.Round(time.Second)
	}
	return d.Round(time.Millisecond)
}

func (a *Agent) syncOnce(ctx context.Context, out *outage) {
	resp, err := a.sync(ctx, false)
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		now := time.Now()
		switch {
		case refused(err):
			a.log.Error("the coordinator refuses this worker's credentials; tasks keep running", "error", err)
		case out.since.IsZero():
			a.log.Warn("coordinator unreachable; tasks keep running", "error", err)
			out.warned = now
		case now.Sub(out.warned) >= unreachableReminder:
			a.log.Warn("coordinator still unreachable; tasks keep running", "for", logRound(now.Sub(out.since)), "error", err)
			out.warned = now
		default:
			a.log.Debug("sync failed", "error", err)
		}
		if out.since.IsZero() {
			out.since = now
		}
		return
	}
	if !out.since.IsZero() {
		a.log.Info("coordinator reachable again", "after", logRound(time.Since(out.since)))
		*out = outage{}
	}
	a.reconcile(resp.GetTasks())
}

// followControl turns the coordinator's control messages (cancel, or any
// other change of a job this worker runs) into an immediate sync, so a
// cancelled job's ranks stop at once instead of at the next sync. The
// coordinator's answer stays the authority on what runs. Without a bus
// (or when NATS is down) the periodic sync does the same, a little later.
func (a *Agent) followControl(ctx context.Context) {
	if a.o.Bus == nil {
		return
	}
	ch, err := a.o.Bus.Subscribe(ctx, events.Filter{Kind: events.KindControl})
	if err != nil {
		a.log.Warn("control messages unavailable; relying on the periodic sync", "error", err)
		return
	}
	for m := range ch {
		a.mu.Lock()
		mine := false
		for k := range a.tasks {
			mine = mine || k.jobID == m.JobID
		}
		a.mu.Unlock()
		if mine && m.Control != nil {
			a.log.Info("control message", "job-id", m.JobID, "action", m.Control.Action, "reason", m.Control.Reason)
			a.kickSync()
		}
	}
}

// kickSync asks the sync loop to report now.
func (a *Agent) kickSync() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// statuses reports every task held, ordered by key.
func (a *Agent) statuses() []*apiv1.TaskStatus {
	a.mu.Lock()
	out := make([]*apiv1.TaskStatus, 0, len(a.tasks))
	for _, tk := range a.tasks {
		out = append(out, tk.status())
	}
	a.mu.Unlock()
	slices.SortFunc(out, func(x, y *apiv1.TaskStatus) int {
		return cmp.Or(cmp.Compare(x.JobId, y.JobId), cmp.Compare(x.Attempt, y.Attempt), cmp.Compare(x.Rank, y.Rank))
	})
	return out
}

// reconcile makes the tasks held match want, the full set the coordinator
// assigns: start the new ones, stop the running ones no longer listed,
// forget the finished ones no longer listed.
func (a *Agent) reconcile(want []*apiv1.Task) {
	wanted := make(map[taskKey]*apiv1.Task, len(want))
	for _, t := range want {
		k := keyOf(t)
		if _, dup := wanted[k]; dup {
			a.log.Warn("coordinator listed a task twice", "job-id", k.jobID, "attempt", k.attempt, "rank", k.rank)
			continue
		}
		wanted[k] = t
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, tk := range a.tasks {
		if _, ok := wanted[k]; ok {
			continue
		}
		if tk.exited() {
			delete(a.tasks, k)
			continue
		}
		if tk.requestStop() {
			a.log.Info("stopping task no longer assigned", "job-id", k.jobID, "attempt", k.attempt, "rank", k.rank)
		}
	}
	if a.closing {
		return
	}
	for k, t := range wanted {
		if _, have := a.tasks[k]; have {
			continue
		}
		tk := newTask(k, t)
		a.tasks[k] = tk
		a.wg.Add(1)
		go a.runTask(tk)
	}
}

// stopAll stops every task and waits for them.
func (a *Agent) stopAll() {
	a.mu.Lock()
	a.closing = true
	for _, tk := range a.tasks {
		tk.requestStop()
	}
	n := len(a.tasks)
	a.mu.Unlock()
	if n > 0 {
		a.log.Info("stopping tasks", "tasks", n)
	}
	a.wg.Wait()
}

// forgetStopped drops tk once it exited after being asked to stop.
func (a *Agent) forgetStopped(tk *task) {
	if !tk.stopRequested() {
		return
	}
	a.mu.Lock()
	if a.tasks[tk.key] == tk {
		delete(a.tasks, tk.key)
	}
	a.mu.Unlock()
}

func (a *Agent) publish(m events.Message) {
	if a.o.Bus == nil {
		return
	}
	if err := a.o.Bus.Publish(m); err != nil {
		a.log.Debug("publish", "kind", m.Kind, "job-id", m.JobID, "error", err)
	}
}
