package train

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
	"github.com/switchyard-ml/switchyard/pkg/client"
	"github.com/switchyard-ml/switchyard/pkg/data"
	"github.com/switchyard-ml/switchyard/pkg/lbl"
	"github.com/switchyard-ml/switchyard/pkg/model"
	"github.com/switchyard-ml/switchyard/pkg/runconfig"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
)

// CheckpointConfig is where and how often a run saves (runconfig.Checkpoint).
type CheckpointConfig = runconfig.Checkpoint

// CataloguePrefix is where the etcd catalogue keeps manifests.
const CataloguePrefix = checkpoint.CataloguePrefix

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
	pending *pendingSave
	spare   State // buffers of the last finished save, reused by the next snapshot
	// committing carries the result of rank 0's background commit of
	// committingStep (verify every shard, write the catalogue, retention)
	committing     chan error
	committingStep int64
	// Stall is the training time spent waiting for saves.
	Stall time.Duration
	Saved []int64 // committed steps
	// closeCat releases the catalogue's connection (nil: nothing to close)
	closeCat func() error
	// events receives the event lines of the job (rank 0's progress
	// writer; nil: none)
	events io.Writer
	// valLoss holds the validation loss of steps saved but not committed
	// yet; the commit writes it into the manifest for keep_best.
	valLoss map[int64]float64
	// lastSave is when the last save started (for EveryMinutes).
	lastSave time.Time
}

// coordinatorCommit wraps cat so that commits go through the coordinator.
// A commit whose answer was lost (a leader fail-over) is retried by the
// client; if the retry finds the step already committed with the same
// shards, it succeeded.
func coordinatorCommit(cfg CheckpointConfig, cat checkpoint.Catalogue) (checkpoint.Catalogue, func() error, error) {
	cl, err := client.Dial(client.Options{Endpoints: cfg.CommitVia, Token: os.Getenv("SWITCHYARD_TOKEN"), TLS: cfg.CommitTLS})
	if err != nil {
		return nil, nil, fmt.Errorf("train: checkpoint commits via %v: %w", cfg.CommitVia, err)
	}
	gate := checkpoint.CommitVia(cat, func(ctx context.Context, m checkpoint.Manifest) error {
		enc, err := checkpoint.EncodeManifest(m)
		if err != nil {
			return err
		}
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		_, err = cl.CommitCheckpoint(cctx, &apiv1.CommitCheckpointRequest{JobId: m.Job, Attempt: int32(cfg.Attempt), Manifest: enc})
		if err == nil {
			return nil
		}
		if got, gerr := cat.Get(ctx, m.Job, m.Step); gerr == nil && slices.Equal(got.Shards, m.Shards) {
			return nil // committed by an earlier try whose answer was lost
		}
		if st, ok := status.FromError(err); ok && st.Code() == codes.AlreadyExists {
			return fmt.Errorf("%w (via the coordinator): %s", checkpoint.ErrStale, st.Message())
		}
		return fmt.Errorf("train: commit step %d through the coordinator: %w", m.Step, err)
	})
	return gate, cl.Close, nil
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

// valLossKey is the manifest Meta key of the validation loss.
const valLossKey = "val_loss"

func manifestValLoss(m checkpoint.Manifest) (float64, bool) {
	v, err := strconv.ParseFloat(m.Meta[valLossKey], 64)
	return v, err == nil
}

// noteEval remembers the validation loss of step if that step's save is
// not committed yet.
func (c *checkpointer) noteEval(step int64, ev *Eval) {
	if c.pending == nil || c.pending.step != step || len(ev.BitsPerByte) == 0 {
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

// close releases the catalogue connection; background work must be done.
func (c *checkpointer) close() error {
	if c.closeCat == nil {
		return nil
	}
	err := c.closeCat()
	c.closeCat = nil
	return err
}

type pendingSave struct {
	state State // the snapshot being written; its buffers are reused by the next save
	step  int64
	done  chan struct{}
	infos []checkpoint.ShardInfo
	err   error
}

func newCheckpointer(cfg CheckpointConfig, dist *Dist, params *model.Params, mcfg model.Config) (*checkpointer, error) {
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
	var (
		cat    checkpoint.Catalogue = checkpoint.NewStorageCatalogue(st)
		closer func() error
	)
	if len(cfg.Etcd) > 0 {
		cli, err := clientv3.New(clientv3.Config{Endpoints: cfg.Etcd, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			return nil, fmt.Errorf("train: checkpoint catalogue in etcd %v: %w", cfg.Etcd, err)
		}
		cat, closer = checkpoint.NewEtcdCatalogue(cli, CataloguePrefix), cli.Close
		if len(cfg.CommitVia) > 0 {
			gate, closeGate, err := coordinatorCommit(cfg, cat)
			if err != nil {
				cli.Close()
				return nil, err
			}
			cat = gate
			closer = func() error { return errors.Join(closeGate(), cli.Close()) }
		}
	} else if len(cfg.CommitVia) > 0 {
		return nil, fmt.Errorf("train: checkpoint commits through the coordinator need the etcd catalogue (checkpoint.etcd)")
	}
	c := &checkpointer{cfg: cfg, mgr: checkpoint.NewManager(st, cat, slog.Default()), dist: dist, layout: checkpoint.Layout{TP: 1, DP: 1, EP: 1}, params: params, mcfg: mcfg, closeCat: closer, lastSave: time.Now()}
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
	for i, part := range parts {
		name := fmt.Sprintf("rank-%04d/state.bin", r)
		if len(parts) > 1 {
			name = fmt.Sprintf("rank-%04d/state-%d.bin", r, i)
		}
		shards = append(shards, checkpoint.TensorShard(name, r, checkpoint.KindParams, part))
	}
	shards = append(shards, checkpoint.BytesShard(fmt.Sprintf("rank-%04d/meta.json", r), r, checkpoint.KindData, meta))
	go func() {
		defer close(p.done)
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
	if err := c.waitCommit(); err != nil {
		return err
	}
	<-p.done
	c.spare = p.state
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
		m.Meta = map[string]string{valLossKey: strconv.FormatFloat(v, 'g', -1, 64)}
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
	done := make(chan error, 1)
	c.committing, c.committingStep = done, p.step
	go func() {
		if err := c.mgr.Commit(ctx, m); err != nil {
			done <- fmt.Errorf("train: checkpoint step %d: %w", m.Step, err)
			return
		}
		if _, err := c.mgr.Retain(ctx, c.cfg.Job, c.cfg.KeepLast, c.cfg.KeepBest, manifestValLoss); err != nil {
			done <- fmt.Errorf("train: checkpoint retention: %w", err)
			return
		}
		done <- nil
	}()
	return nil
}

// waitCommit waits for the commit in flight (rank 0) and records it.
func (c *checkpointer) waitCommit() error {
	if c.committing == nil {
		return nil
	}
	err := <-c.committing
	if err == nil {
		c.Saved = append(c.Saved, c.committingStep)
	}
	c.committing = nil
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
	if c.rank() == 0 {
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
	var (
		m   checkpoint.Manifest
		err error
	)
	if step := c.cfg.ResumeStep; step > 0 {
		if m, err = c.mgr.Catalogue().Get(ctx, c.cfg.Job, step); err != nil {
			return false, fmt.Errorf("train: resume from step %d: %w", step, err)
		}
		if err := checkpoint.Verify(ctx, c.mgr.Storage(), checkpoint.StepPrefix(m.Job, m.Step), m); err != nil {
			return false, fmt.Errorf("train: resume from step %d: checkpoint unusable: %w", step, err)
		}
		if err := c.dropNewer(ctx, step); err != nil {
			return false, err
		}
	} else {
		m, err = c.mgr.LoadLatestVerified(ctx, c.cfg.Job, func(step int64, err error) {
			slog.Warn("checkpoint unusable, falling back", "job-id", c.cfg.Job, "step", step, "error", err)
			if c.rank() == 0 {
				announce(c.events, "CheckpointUnusable", fmt.Sprintf("checkpoint of step %d unusable, falling back to an older one: %v", step, err))
			}
		})
		if errors.Is(err, checkpoint.ErrNoCheckpoint) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("train: resume: %w", err)
		}
	}
	r := c.rank()
	prefix := checkpoint.StepPrefix(m.Job, m.Step)
	readRank := func(rank int) (map[string][]float32, ckptMeta, error) {
		var meta ckptMeta
		byName := map[string][]float32{}
		names := stateShardNames(m, rank)
		if len(names) == 0 {
			return nil, meta, fmt.Errorf("rank %d: no state shard in the manifest", rank)
		}
		for _, name := range names {
			raw, err := checkpoint.ReadShardVerified(ctx, c.mgr.Storage(), prefix, m, name)
			if err != nil {
				return nil, meta, err
			}
			tensors, err := checkpoint.DecodeShard(raw)
			if err != nil {
				return nil, meta, err
			}
			for _, tn := range tensors {
				if _, dup := byName[tn.Name]; dup {
					return nil, meta, fmt.Errorf("rank %d: tensor %s in more than one state shard", rank, tn.Name)
				}
				byName[tn.Name] = tn.Data
			}
		}
		metaRaw, err := checkpoint.ReadShardVerified(ctx, c.mgr.Storage(), prefix, m, fmt.Sprintf("rank-%04d/meta.json", rank))
		if err != nil {
			return nil, meta, err
		}
		if err := json.Unmarshal(metaRaw, &meta); err != nil {
			return nil, meta, fmt.Errorf("meta of rank %d: %w", rank, err)
		}
		return byName, meta, nil
	}
	n := len(t.eng.params().Data)
	s := State{Params: make([]float32, n), AdamM: make([]float32, n), AdamV: make([]float32, n)}
	if m.Layout == c.layout {
		byName, meta, err := readRank(r)
		if err != nil {
			return false, fmt.Errorf("train: resume: %w", err)
		}
		for _, q := range c.params.List {
			for _, part := range []struct {
				prefix string
				dst    []float32
			}{{"", s.Params}, {"adam_m/", s.AdamM}, {"adam_v/", s.AdamV}} {
				v, ok := byName[part.prefix+q.Name]
				if !ok || len(v) != q.Size {
					return false, fmt.Errorf("train: resume: step %d rank %d: tensor %s%s missing or of the wrong size", m.Step, r, part.prefix, q.Name)
				}
				copy(part.dst[q.Offset:], v)
			}
		}
		s.Step, s.AdamT, s.Balancer, s.Loader = meta.Step, meta.AdamT, meta.Balancer, meta.Loader
	} else if err := c.reshard(m, readRank, &s); err != nil {
		return false, fmt.Errorf("train: resume step %d saved under %+v into %+v: %w", m.Step, m.Layout, c.layout, err)
	}
	if err := t.Restore(s); err != nil {
		return false, fmt.Errorf("train: resume from step %d: %w", m.Step, err)
	}
	return true, nil
}

// stateShardNames lists the tensor shards holding rank's state in m:
// "rank-NNNN/state.bin", or the parts "rank-NNNN/state-I.bin" of a split
// state, in part order.
func stateShardNames(m checkpoint.Manifest, rank int) []string {
	dir := fmt.Sprintf("rank-%04d/", rank)
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
