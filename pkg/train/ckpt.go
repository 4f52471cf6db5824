package train

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
	"github.com/switchyard-ml/switchyard/pkg/data"
	"github.com/switchyard-ml/switchyard/pkg/lbl"
	"github.com/switchyard-ml/switchyard/pkg/model"
	"github.com/switchyard-ml/switchyard/pkg/runconfig"
)

// CheckpointConfig is where and how often a run saves (runconfig.Checkpoint).
type CheckpointConfig = runconfig.Checkpoint

// ckptMeta is the small, non-tensor part of a rank's state.
type ckptMeta struct {
	Step     int           `json:"step"`
	AdamT    int           `json:"adam_t"`
	Balancer lbl.State     `json:"balancer"`
	Loader   data.Position `json:"loader"`
	// Model is the part of the whole model the rank held (its experts,
	// its tensor-parallel slice), so another layout can reassemble it.
	Model model.Layout `json:"model"`
}

// checkpointer saves snapshots in the background (at most one in flight)
// and commits them at the next step boundary, when every rank has written
// its shards: rank 0 gathers the shard lists and commits the manifest.
type checkpointer struct {
	cfg     CheckpointConfig
	mgr     *checkpoint.Manager
	dist    *Dist
	params  *model.Params // the running model's parameters (layout and names)
	mcfg    model.Config
	layout  checkpoint.Layout
	checked checkedRank // this rank's state as the resume check read it
	pending *pendingSave
	spare   State // buffers of the last finished save, reused by the next snapshot
	// committing carries the result of rank 0's background commit of
	// committingStep (verify every shard, write the catalogue, retention)
	committing     chan error
	committingStep int64
	commitTroubled chan struct{}      // closed when the commit in flight retries
	commitCancel   context.CancelFunc // supersedes the commit in flight
	outage         commitOutage
	// Stall is the training time spent waiting for saves.
	Stall time.Duration
	// WriteMBps is the rate of the last save's writes (MB/s; 0: none yet).
	WriteMBps float64
	Saved     []int64 // committed steps
	// events receives the event lines of the job (rank 0's progress
	// writer; nil: none)
	events io.Writer
	// valLoss holds the validation loss of steps saved but not committed
	// yet; the commit writes it into the manifest for keep_best.
	valLoss map[int64]float64
	// lastSave is when the last save started (for EveryMinutes).
	lastSave time.Time
	// loaded is the committed step the run resumed from (0: none)
	loaded int64
}

// tidy (rank 0, before the first step of a resumed run) finishes
// deletions a crash interrupted and removes the shards of saves that never
// committed (an earlier attempt died mid-save). No save of this run is in
// flight yet, and the other ranks wait for rank 0 at the first step, so
// nothing this run writes can be collected. Failures only cost disk space.
func (c *checkpointer) tidy(ctx context.Context) {
	if c.rank() != 0 {
		return
	}
	if steps, err := c.mgr.ResumeDeletions(ctx, c.cfg.Job); err != nil {
		slog.Warn("finishing interrupted checkpoint deletions failed", "job-id", c.cfg.Job, "error", err)
	} else if len(steps) > 0 {
		slog.Info("finished interrupted checkpoint deletions", "job-id", c.cfg.Job, "steps", steps)
	}
	if removed, err := c.mgr.CollectGarbage(ctx, c.cfg.Job); err != nil {
		slog.Warn("collecting uncommitted checkpoint shards failed", "job-id", c.cfg.Job, "error", err)
	} else if len(removed) > 0 {
		slog.Info("removed shards of uncommitted checkpoints", "job-id", c.cfg.Job, "files", len(removed))
	}
}

// noteEval remembers the validation loss of step for the manifest of a
// save of that step not committed yet (one in flight, or the final one,
// taken after the final evaluation); a commit forgets the losses of its
// step and older.
func (c *checkpointer) noteEval(step int64, ev *Eval) {
	if len(ev.BitsPerByte) == 0 || step <= c.committingStep || (len(c.Saved) > 0 && step <= c.Saved[len(c.Saved)-1]) {
		return
	}
	var sum float64
	for _, b := range ev.BitsPerByte {
		sum += b
	}
	if c.valLoss == nil {
		c.valLoss = map[int64]float64{}
	}
	c.valLoss[step] = sum / float64(len(ev.BitsPerByte))
}

type pendingSave struct {
	state State // the snapshot being written; its buffers are reused by the next save
	step  int64
	done  chan struct{}
	infos []checkpoint.ShardInfo
	err   error
	took  time.Duration // the write's duration
}

// newCheckpointer saves into cfg.Dir and keeps the manifests in cat (nil:
// beside the shards in the storage).
func newCheckpointer(cfg CheckpointConfig, cat checkpoint.Catalogue, dist *Dist, params *model.Params, mcfg model.Config) (*checkpointer, error) {
	if cfg.Job == "" {
		cfg.Job = "run"
	}
	if cfg.KeepLast == 0 {
		cfg.KeepLast = 3
	}
	st, err := checkpoint.OpenStorage(cfg.Dir, nil)
	if err != nil {
		return nil, fmt.Errorf("train: checkpoint storage: %w", err)
	}
	if cat == nil {
		cat = checkpoint.NewStorageCatalogue(st)
	}
	c := &checkpointer{cfg: cfg, mgr: checkpoint.NewManager(st, cat, slog.Default()), dist: dist, layout: checkpoint.Layout{TP: 1, DP: 1, EP: 1}, params: params, mcfg: mcfg, lastSave: time.Now()}
	if dist != nil {
		l := dist.Layout
		c.layout = checkpoint.Layout{TP: l.TP(), DP: l.DP(), EP: l.EP()}
	}
	return c, nil
}

func (c *checkpointer) rank() int {
	if c.dist == nil {
		return 0
	}
	return c.dist.Rank
}

// start writes this rank's shards of s in the background.
func (c *checkpointer) start(s State) {
	p := &pendingSave{state: s, step: int64(s.Step), done: make(chan struct{})}
	c.pending = p
	c.lastSave = time.Now()
	r := c.rank()
	meta, _ := json.Marshal(ckptMeta{Step: s.Step, AdamT: s.AdamT, Balancer: s.Balancer, Loader: s.Loader, Model: c.params.Layout()})
	var tensors []checkpoint.Tensor
	for _, q := range c.params.List {
		seg := func(b []float32) []float32 { return b[q.Offset : q.Offset+q.Size] }
		tensors = append(tensors,
			checkpoint.Tensor{Name: q.Name, Shape: []int{q.Size}, Data: seg(s.Params)},
			checkpoint.Tensor{Name: "adam_m/" + q.Name, Shape: []int{q.Size}, Data: seg(s.AdamM)},
			checkpoint.Tensor{Name: "adam_v/" + q.Name, Shape: []int{q.Size}, Data: seg(s.AdamV)})
	}
	// The tensors go straight from the snapshot's buffers into the files.
	// A large state is split into parts written side by side, one core
	// hashing each.
	parts := splitTensors(tensors, stateParts(3*len(s.Params)*4))
	var shards []checkpoint.ShardSource
	names := rankShards(r)
	for i, part := range parts {
		shards = append(shards, checkpoint.TensorShard(names.state(i, len(parts)), r, checkpoint.KindParams, part))
	}
	shards = append(shards, checkpoint.BytesShard(names.meta(), r, checkpoint.KindData, meta))
	go func() {
		defer close(p.done)
		t0 := time.Now()
		defer func() { p.took = time.Since(t0) }()
		p.infos, p.err = checkpoint.SaveShardsParallel(context.Background(), c.mgr.Storage(), checkpoint.StepPrefix(c.cfg.Job, p.step), shards, len(parts))
	}()
}

// minStatePartBytes is the least size of one part of a rank's state:
// smaller states are one shard ("rank-NNNN/state.bin"), larger ones are
// split into up to min(GOMAXPROCS, maxStateParts) tensor shards
// ("rank-NNNN/state-I.bin") written concurrently, since hashing a shard
// is bound by one core. Loading accepts any split.
const (
	minStatePartBytes = 32 << 20
	maxStateParts     = 8
)

// stateParts is how many parts a state of the given size is saved in (a
// variable so that tests can split small states).
var stateParts = func(bytes int) int {
	return max(1, min(runtime.GOMAXPROCS(0), maxStateParts, bytes/minStatePartBytes))
}

// splitTensors cuts ts, in order and without splitting a tensor, into at
// most n runs of about equal bytes (no empty run).
func splitTensors(ts []checkpoint.Tensor, n int) [][]checkpoint.Tensor {
	total := 0
	for _, t := range ts {
		total += len(t.Data)
	}
	var (
		out  [][]checkpoint.Tensor
		from int
		acc  int
	)
	for i, t := range ts {
		acc += len(t.Data)
		// close the run once it reaches its share of the total
		if len(out) < n-1 && acc*n >= (len(out)+1)*total && i+1 < len(ts) {
			out = append(out, ts[from:i+1])
			from = i + 1
		}
	}
	return append(out, ts[from:])
}

// finish waits for the pending save and commits it (collective: every rank
// calls it at the same step boundary).
func (c *checkpointer) finish(ctx context.Context) error {
	p := c.pending
	if p == nil {
		return nil
	}
	c.pending = nil
	start := time.Now()
	// waiting for the write and the shard-list gather hold up training; the
	// commit's verification runs in the background on rank 0
	defer func() { c.Stall += time.Since(start) }()
	if err := c.settleCommit(); err != nil {
		<-p.done // the write must not outlive the trainer
		return err
	}
	<-p.done
	c.spare = p.state
	if p.err == nil && p.took > 0 {
		var bytes int64
		for _, in := range p.infos {
			bytes += in.Size
		}
		c.WriteMBps = float64(bytes) / 1e6 / p.took.Seconds()
	}
	mine, _ := json.Marshal(p.infos)
	if p.err != nil {
		mine = nil // tells rank 0 not to commit
	}
	all := [][]byte{mine}
	if c.dist != nil && c.dist.World.Size() > 1 {
		var err error
		if all, err = c.dist.World.AllGatherBytes(ctx, mine); err != nil {
			return fmt.Errorf("train: checkpoint step %d: %w", p.step, err)
		}
	}
	if p.err != nil {
		return fmt.Errorf("train: checkpoint step %d not saved: %w", p.step, p.err)
	}
	if c.rank() != 0 {
		return nil
	}
	m := checkpoint.Manifest{Job: c.cfg.Job, Step: p.step, CreatedUnixNano: time.Now().UnixNano(), Layout: c.layout}
	if v, ok := c.valLoss[p.step]; ok {
		m.Meta = map[string]string{checkpoint.MetaValLoss: strconv.FormatFloat(v, 'g', -1, 64)}
	}
	for st := range c.valLoss {
		if st <= p.step {
			delete(c.valLoss, st)
		}
	}
	for r, b := range all {
		var infos []checkpoint.ShardInfo
		if len(b) == 0 || json.Unmarshal(b, &infos) != nil {
			return fmt.Errorf("train: checkpoint step %d: rank %d did not save its shards; not committed", p.step, r)
		}
		m.Shards = append(m.Shards, infos...)
	}
	done, troubled := make(chan error, 1), make(chan struct{})
	cctx, cancel := context.WithCancelCause(ctx)
	c.committing, c.committingStep, c.commitTroubled = done, p.step, troubled
	c.commitCancel = func() { cancel(errSuperseded) }
	go func() { done <- c.commit(cctx, m, troubled) }()
	return nil
}

// commitPatience is how long rank 0 goes on while its commits fail for
// want of etcd or the coordinator (checkpoint.Transient: a restart, an
// election, an outage): it trains on, retrying the newest checkpoint's
// commit (a newer save replaces one whose commit is retrying). Beyond it
// the run fails as on any other commit error, and its worker restarts it
// from the newest committed checkpoint.
var commitPatience = 5 * time.Minute

// commitPauses are the waits between the tries of a commit: growing to
// the last, which repeats.
var commitPauses = []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 15 * time.Second}

// errSuperseded ends a commit that a newer save replaced.
var errSuperseded = errors.New("superseded by a newer checkpoint")

// commitOutage is what rank 0 knows of commits failing transiently.
type commitOutage struct {
	mu         sync.Mutex
	since      time.Time // the first failure (zero: commits go through)
	superseded []int64   // steps whose commits a newer save replaced
}

// commit verifies and commits m (rank 0, in the background), retrying a
// transient failure while the outage's patience lasts (troubled is closed
// at the first), then applies retention; a retention that fails
// transiently is left for the next commit. Cancelling ctx with the cause
// errSuperseded supersedes it.
func (c *checkpointer) commit(ctx context.Context, m checkpoint.Manifest, troubled chan struct{}) error {
	o := &c.outage
	o.mu.Lock()
	left := commitPatience
	if !o.since.IsZero() {
		left -= time.Since(o.since)
	}
	o.mu.Unlock()
	err := c.mgr.CommitRetrying(ctx, m, checkpoint.Retry{
		For:    left,
		Pauses: commitPauses,
		Failing: func(err error) {
			o.mu.Lock()
			if o.since.IsZero() {
				o.since = time.Now()
				slog.Warn("checkpoint commit failed; retrying while training goes on", "job-id", m.Job, "step", m.Step, "for", commitPatience, "error", err)
				announce(c.events, "CheckpointCommitRetrying", fmt.Sprintf("checkpoint of step %d: the commit failed (%v); retrying for up to %s while training goes on (a newer checkpoint replaces it)", m.Step, err, commitPatience))
			}
			o.mu.Unlock()
			close(troubled)
		},
	})
	o.mu.Lock()
	since, superseded := o.since, o.superseded
	if err == nil {
		o.since, o.superseded = time.Time{}, nil
	}
	o.mu.Unlock()
	switch {
	case err != nil && errors.Is(context.Cause(ctx), errSuperseded):
		return errSuperseded
	case err != nil && !since.IsZero():
		return fmt.Errorf("train: checkpoint step %d: commits have failed for %s: %w", m.Step, time.Since(since).Round(time.Second), err)
	case err != nil:
		return fmt.Errorf("train: checkpoint step %d: %w", m.Step, err)
	case !since.IsZero():
		took := time.Since(since)
		msg := fmt.Sprintf("checkpoint of step %d committed after commits failed for %s", m.Step, took.Round(time.Second))
		if len(superseded) > 0 {
			msg += fmt.Sprintf(" (not committed: steps %s, replaced by newer ones)", joinSteps(superseded))
		}
		slog.Info("checkpoint committed after retrying", "job-id", m.Job, "step", m.Step, "after", took.Round(time.Millisecond), "superseded", superseded)
		announce(c.events, "CheckpointCommitRetried", msg)
	}
	if _, err := c.mgr.Retain(ctx, c.cfg.Job, c.cfg.KeepLast, c.cfg.KeepBest, checkpoint.Manifest.ValLoss); err != nil {
		if checkpoint.Transient(err) && ctx.Err() == nil {
			slog.Warn("checkpoint retention failed; the next commit applies it", "job-id", m.Job, "error", err)
			return nil
		}
		return fmt.Errorf("train: checkpoint retention: %w", err)
	}
	return nil
}

func joinSteps(steps []int64) string {
	s := make([]string, len(steps))
	for i, st := range steps {
		s[i] = strconv.FormatInt(st, 10)
	}
	return strings.Join(s, ", ")
}

// settleCommit (rank 0, at a save's boundary) waits for the commit in
// flight, unless it is retrying a transient failure: then the newer save
// replaces it (a rank that waited would hold up the others in the next
// collective until their timeout).
func (c *checkpointer) settleCommit() error {
	if c.committing == nil {
		return nil
	}
	select {
	case err := <-c.committing:
		return c.committed(err)
	case <-c.commitTroubled:
	}
	c.commitCancel()
	err := <-c.committing
	if !errors.Is(err, errSuperseded) {
		return c.committed(err) // it ended first, either way
	}
	c.outage.mu.Lock()
	c.outage.superseded = append(c.outage.superseded, c.committingStep)
	c.outage.mu.Unlock()
	slog.Info("checkpoint commit superseded by a newer save", "job-id", c.cfg.Job, "step", c.committingStep)
	c.committing, c.committingStep = nil, 0 // not saved: the end's check must not count it
	return nil
}

// waitCommit waits for the commit in flight (rank 0) and records it.
func (c *checkpointer) waitCommit() error {
	if c.committing == nil {
		return nil
	}
	return c.committed(<-c.committing)
}

// committed records the end of the commit in flight.
func (c *checkpointer) committed(err error) error {
	if err == nil {
		c.Saved = append(c.Saved, c.committingStep)
	}
	c.committing = nil
	c.commitCancel()
	return err
}

// reshard assembles this rank's state from a checkpoint saved under another
// layout: every old rank's tensors are placed into the whole model's
// tensors, from which this rank's slices are cut.
func (c *checkpointer) reshard(m checkpoint.Manifest, readRank func(int) (map[string][]float32, ckptMeta, error), s *State) error {
	world := m.Layout.TP * m.Layout.DP
	global := map[string][]float32{}
	for _, q := range c.params.List {
		for _, pre := range []string{"", "adam_m/", "adam_v/"} {
			global[pre+q.Name] = make([]float32, c.params.GlobalSize(q))
		}
	}
	for r := 0; r < world; r++ {
		byName, meta, err := readRank(r)
		if err != nil {
			return err
		}
		if r == 0 {
			s.Step, s.AdamT, s.Balancer, s.Loader = meta.Step, meta.AdamT, meta.Balancer, meta.Loader
		}
		old, err := model.ParamsFor(c.mcfg, meta.Model)
		if err != nil {
			return fmt.Errorf("rank %d: %w", r, err)
		}
		for _, q := range old.List {
			for _, pre := range []string{"", "adam_m/", "adam_v/"} {
				v, ok := byName[pre+q.Name]
				g, known := global[pre+q.Name]
				if !ok || !known || len(v) != q.Size || old.GlobalSize(q) != len(g) {
					return fmt.Errorf("rank %d: tensor %s%s missing or of the wrong size", r, pre, q.Name)
				}
				old.ToGlobal(q, v, g)
			}
		}
	}
	for _, q := range c.params.List {
		c.params.FromGlobal(q, global[q.Name], s.Params[q.Offset:q.Offset+q.Size])
		c.params.FromGlobal(q, global["adam_m/"+q.Name], s.AdamM[q.Offset:q.Offset+q.Size])
		c.params.FromGlobal(q, global["adam_v/"+q.Name], s.AdamV[q.Offset:q.Offset+q.Size])
	}
	return nil
}

// dropNewer deletes (rank 0) the checkpoints newer than step, so that the
// resumed run may commit its own steps after it; the other ranks wait.
func (c *checkpointer) dropNewer(ctx context.Context, step int64) error {
	if c.rank() == 0 && step != math.MaxInt64 {
		all, err := c.mgr.Catalogue().List(ctx, c.cfg.Job)
		if err != nil {
			return fmt.Errorf("train: resume from step %d: %w", step, err)
		}
		for _, m := range all {
			if m.Step > step {
				if err := c.mgr.Delete(ctx, c.cfg.Job, m.Step); err != nil {
					return fmt.Errorf("train: resume from step %d: delete newer step %d: %w", step, m.Step, err)
				}
			}
		}
	}
	if c.dist != nil {
		return c.dist.World.Barrier(ctx)
	}
	return nil
}

// load restores the newest committed checkpoint that verifies (falling back
// past corrupt ones, which are reported) into t; it reports whether one was
// found.
func (c *checkpointer) load(ctx context.Context, t *Trainer) (bool, error) {
	c.tidy(ctx)
	m, found, err := c.choose(ctx)
	if !found || err != nil {
		return false, err
	}
	n := len(t.eng.params().Data)
	s := State{Params: make([]float32, n), AdamM: make([]float32, n), AdamV: make([]float32, n)}
	read := func(rank int) (map[string][]float32, ckptMeta, error) {
		if own := c.checked; rank == c.rank() && own.step == m.Step && own.tensors != nil {
			c.checked = checkedRank{}
			return own.tensors, own.meta, nil
		}
		return c.readRank(ctx, m, rank)
	}
	if m.Layout == c.layout {
		if err := c.assemble(m, read, &s); err != nil {
			return false, fmt.Errorf("train: resume: %w", err)
		}
	} else if err := c.reshard(m, read, &s); err != nil {
		return false, fmt.Errorf("train: resume step %d saved under %+v into %+v: %w", m.Step, m.Layout, c.layout, err)
	}
	if err := t.Restore(s); err != nil {
		return false, fmt.Errorf("train: resume from step %d: %w", m.Step, err)
	}
	c.loaded = m.Step
	// the shards' bytes, their tensors and the state assembled from them
	// (three copies of the rank's weights and moments) are garbage now:
	// handed back before training allocates, or the process keeps them
	// resident to its end (a resumed tiny rank peaked at 1.5x a fresh
	// one's, over what job check advises)
	debug.FreeOSMemory()
	return true, nil
}

// choose picks the checkpoint to resume from: the configured resume step
// (which must verify; newer ones are dropped) or the newest that verifies,
// falling back past unusable ones. found is false when there is none.
func (c *checkpointer) choose(ctx context.Context) (m checkpoint.Manifest, found bool, err error) {
	if step := c.cfg.ResumeStep; step > 0 {
		if m, err = c.mgr.Catalogue().Get(ctx, c.cfg.Job, step); err != nil {
			return m, false, fmt.Errorf("train: resume from step %d: %w", step, err)
		}
		err := checkpoint.Verify(ctx, c.mgr.Storage(), checkpoint.StepPrefix(m.Job, m.Step), m)
		if err == nil {
			err = c.usable(ctx, m)
		}
		if err != nil {
			return m, false, fmt.Errorf("train: resume from step %d: checkpoint unusable: %w", step, err)
		}
		if err := c.dropNewer(ctx, step); err != nil {
			return m, false, err
		}
		return m, true, nil
	}
	unusable := false
	m, err = c.mgr.LoadLatestUsable(ctx, c.cfg.Job, c.usable, func(step int64, err error) {
		unusable = true
		slog.Warn("checkpoint unusable, falling back", "job-id", c.cfg.Job, "step", step, "error", err)
		if c.rank() == 0 {
			announce(c.events, "CheckpointUnusable", fmt.Sprintf("checkpoint of step %d unusable, falling back to an older one: %v", step, err))
		}
	})
	// Every rank ends here in exactly one dropNewer (a barrier), where rank
	// 0 drops the unusable checkpoints the resume passed over: the resumed
	// run commits those steps again, which the catalogue refuses while they
	// are there. (Another rank may list the catalogue after rank 0 dropped
	// them, and then sees no unusable one: the barrier must not depend on
	// what it saw.)
	keep := int64(math.MaxInt64)
	switch {
	case errors.Is(err, checkpoint.ErrNoCheckpoint):
		return m, false, c.dropNewer(ctx, keep)
	case errors.Is(err, checkpoint.ErrNoUsableCheckpoint):
		// start over rather than never run again
		if c.rank() == 0 {
			announce(c.events, "CheckpointUnusable", "no committed checkpoint is usable: training starts from the beginning")
		}
		return m, false, c.dropNewer(ctx, -1)
	case err != nil:
		return m, false, fmt.Errorf("train: resume: %w", err)
	case unusable:
		keep = m.Step
	}
	return m, true, c.dropNewer(ctx, keep)
}

// checkedRank is this rank's state as usable read it, kept for the
// restore that follows so that it is not read twice.
type checkedRank struct {
	step    int64
	tensors map[string][]float32
	meta    ckptMeta
}

// usable reads every rank's state in m (whose shards verify) and checks
// what the hashes cannot: each decodes, holds every tensor of the part of
// the model its meta names with the right size, and only finite values
// (non-negative second moments). A checkpoint that fails is evidence
// against itself (ErrShardCorrupt), so the resume falls back past it on
// every rank alike: each reads the same shards to the same verdict.
func (c *checkpointer) usable(ctx context.Context, m checkpoint.Manifest) error {
	c.checked = checkedRank{}
	for r := range m.Layout.TP * m.Layout.DP {
		byName, meta, err := c.readRank(ctx, m, r)
		if err != nil {
			if !errors.Is(err, checkpoint.ErrShardCorrupt) && !errors.Is(err, checkpoint.ErrShardMissing) && !errors.Is(err, errUndecodable) {
				return err
			}
			return fmt.Errorf("%w: %w", checkpoint.ErrShardCorrupt, err)
		}
		if err := checkTensors(c.mcfg, meta, byName); err != nil {
			return fmt.Errorf("%w: step %d rank %d: %w", checkpoint.ErrShardCorrupt, m.Step, r, err)
		}
		if r == c.rank() && m.Layout == c.layout {
			c.checked = checkedRank{step: m.Step, tensors: byName, meta: meta}
		}
	}
	return nil
}

// errUndecodable marks a shard whose bytes (hash-verified) do not decode.
var errUndecodable = errors.New("does not decode")

// checkTensors checks one rank's tensors against the part of the model
// its meta says it held.
func checkTensors(mcfg model.Config, meta ckptMeta, byName map[string][]float32) error {
	ps, err := model.ParamsFor(mcfg, meta.Model)
	if err != nil {
		return fmt.Errorf("meta's model part %+v: %w", meta.Model, err)
	}
	for _, q := range ps.List {
		for _, pre := range []string{"", "adam_m/", "adam_v/"} {
			v, ok := byName[pre+q.Name]
			if !ok || len(v) != q.Size {
				return fmt.Errorf("tensor %s%s missing or of the wrong size", pre, q.Name)
			}
			for i, x := range v {
				if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) || (pre == "adam_v/" && x < 0) {
					return fmt.Errorf("tensor %s%s: value %v at %d", pre, q.Name, x, i)
				}
			}
		}
	}
	if meta.Step < 0 || meta.AdamT < 0 {
		return fmt.Errorf("meta: step %d, adam_t %d", meta.Step, meta.AdamT)
	}
	return nil
}

// readRank reads and verifies rank's state tensors (by name) and meta from
// checkpoint m.
func (c *checkpointer) readRank(ctx context.Context, m checkpoint.Manifest, rank int) (map[string][]float32, ckptMeta, error) {
	var meta ckptMeta
	prefix := checkpoint.StepPrefix(m.Job, m.Step)
	names := rankShards(rank)
	states := names.statesIn(m)
	if len(states) == 0 {
		return nil, meta, fmt.Errorf("rank %d: no state shard in the manifest", rank)
	}
	byName := map[string][]float32{}
	for _, name := range states {
		raw, err := checkpoint.ReadShardVerified(ctx, c.mgr.Storage(), prefix, m, name)
		if err != nil {
			return nil, meta, err
		}
		tensors, err := checkpoint.DecodeShard(raw)
		if err != nil {
			return nil, meta, fmt.Errorf("shard %s %w: %w", name, errUndecodable, err)
		}
		for _, tn := range tensors {
			if _, dup := byName[tn.Name]; dup {
				return nil, meta, fmt.Errorf("rank %d: tensor %s in more than one state shard", rank, tn.Name)
			}
			byName[tn.Name] = tn.Data
		}
	}
	metaRaw, err := checkpoint.ReadShardVerified(ctx, c.mgr.Storage(), prefix, m, names.meta())
	if err != nil {
		return nil, meta, err
	}
	if err := json.Unmarshal(metaRaw, &meta); err != nil {
		return nil, meta, fmt.Errorf("meta of rank %d %w: %w", rank, errUndecodable, err)
	}
	return byName, meta, nil
}

// assemble fills s from this rank's own shards of m, saved under the
// layout this run has.
func (c *checkpointer) assemble(m checkpoint.Manifest, read func(rank int) (map[string][]float32, ckptMeta, error), s *State) error {
	r := c.rank()
	byName, meta, err := read(r)
	if err != nil {
		return err
	}
	for _, q := range c.params.List {
		for _, part := range []struct {
			prefix string
			dst    []float32
		}{{"", s.Params}, {"adam_m/", s.AdamM}, {"adam_v/", s.AdamV}} {
			v, ok := byName[part.prefix+q.Name]
			if !ok || len(v) != q.Size {
				return fmt.Errorf("step %d rank %d: tensor %s%s missing or of the wrong size", m.Step, r, part.prefix, q.Name)
			}
			copy(part.dst[q.Offset:], v)
		}
	}
	s.Step, s.AdamT, s.Balancer, s.Loader = meta.Step, meta.AdamT, meta.Balancer, meta.Loader
	return nil
}

// rankShards names one rank's shards in a checkpoint: its state,
// "rank-NNNN/state.bin" or the parts "rank-NNNN/state-I.bin" of a split
// state, and "rank-NNNN/meta.json".
type rankShards int

func (r rankShards) dir() string  { return fmt.Sprintf("rank-%04d/", int(r)) }
func (r rankShards) meta() string { return r.dir() + "meta.json" }

// state is the name of part i of a state saved in parts parts.
func (r rankShards) state(i, parts int) string {
	if parts == 1 {
		return r.dir() + "state.bin"
	}
	return r.dir() + fmt.Sprintf("state-%d.bin", i)
}

// statesIn lists the rank's state shards in m, in part order.
func (r rankShards) statesIn(m checkpoint.Manifest) []string {
	dir := r.dir()
	type part struct {
		name string
		i    int
	}
	var parts []part
	for _, s := range m.Shards {
		if s.Kind != checkpoint.KindParams || !strings.HasPrefix(s.Name, dir) {
			continue
		}
		if i, ok := statePart(strings.TrimPrefix(s.Name, dir)); ok {
			parts = append(parts, part{s.Name, i})
		}
	}
	sort.Slice(parts, func(a, b int) bool { return parts[a].i < parts[b].i })
	names := make([]string, len(parts))
	for k, p := range parts {
		names[k] = p.name
	}
	return names
}

// statePart reports whether base names a state shard and which part:
// -1 for "state.bin", I for "state-I.bin".
func statePart(base string) (int, bool) {
	if base == "state.bin" {
		return -1, true
	}
	num, ok := strings.CutPrefix(base, "state-")
	if !ok {
		return 0, false
	}
	num, ok = strings.CutSuffix(num, ".bin")
	if !ok {
		return 0, false
	}
	i, err := strconv.Atoi(num)
	return i, err == nil && i >= 0
}
