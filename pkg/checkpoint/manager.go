package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
)

// ErrNoUsableCheckpoint is wrapped by LoadLatestVerified when the job has
// committed checkpoints but none of them verifies.
var ErrNoUsableCheckpoint = errors.New("checkpoint: no usable checkpoint")

// Manager runs the checkpoint lifecycle over a Storage (the shards) and a
// Catalogue (which checkpoints are committed): save and commit, verified
// load with fallback, deletion, retention and garbage collection. Shards of
// job J at step S live under StepPrefix(J, S).
//
// Its invariants, under crashes at any point:
//   - a manifest is committed only after every shard it lists is durable
//     and has the listed size and hash;
//   - a catalogue entry is removed only after its files are, and the
//     entry is first marked deleting, so an interrupted deletion is found
//     and finished by ResumeDeletions;
//   - files no manifest references (a save that died before committing)
//     are found and removed by CollectGarbage.
//
// A Manager is safe for concurrent use. CollectGarbage knows only the
// saves this Manager started (Save, or BeginSave by a caller that writes
// shards itself); when ranks in other processes write shards, the caller
// must not run CollectGarbage for a job while one of its saves is in flight.
type Manager struct {
	st  Storage
	cat Catalogue
	log *slog.Logger

	mu       sync.Mutex
	inflight map[string]map[int64]int // job -> step -> count
}

// NewManager returns a Manager over st and cat. A nil log discards.
func NewManager(st Storage, cat Catalogue, log *slog.Logger) *Manager {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Manager{st: st, cat: cat, log: log, inflight: map[string]map[int64]int{}}
}

// Storage returns the manager's storage.
func (g *Manager) Storage() Storage { return g.st }

// Catalogue returns the manager's catalogue.
func (g *Manager) Catalogue() Catalogue { return g.cat }

// BeginSave records that shards of job at step are being written, so
// CollectGarbage leaves them alone until the returned func is called
// (after the commit, or after giving up).
func (g *Manager) BeginSave(job string, step int64) (end func()) {
	g.mu.Lock()
	if g.inflight[job] == nil {
		g.inflight[job] = map[int64]int{}
	}
	g.inflight[job][step]++
	g.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			defer g.mu.Unlock()
			if g.inflight[job][step]--; g.inflight[job][step] == 0 {
				delete(g.inflight[job], step)
			}
			if len(g.inflight[job]) == 0 {
				delete(g.inflight, job)
			}
		})
	}
}

func (g *Manager) inflightSteps(job string) map[int64]bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := map[int64]bool{}
	for s := range g.inflight[job] {
		out[s] = true
	}
	return out
}

// Save writes shards under StepPrefix(m.Job, m.Step), sets m.Shards from
// what was written, and commits m (see Commit). m's other fields are the
// caller's. On error nothing is committed; shards already written are left
// for CollectGarbage.
func (g *Manager) Save(ctx context.Context, m Manifest, shards []ShardSource) (Manifest, error) {
	if err := ValidateJob(m.Job); err != nil {
		return Manifest{}, fmt.Errorf("checkpoint: save: %w", err)
	}
	end := g.BeginSave(m.Job, m.Step)
	defer end()
	// Refuse a stale step before writing anything.
	if latest, err := g.cat.Latest(ctx, m.Job); err == nil && latest.Step >= m.Step {
		return Manifest{}, fmt.Errorf("%w: job %s step %d, latest is %d", ErrStale, m.Job, m.Step, latest.Step)
	}
	infos, err := SaveShards(ctx, g.st, StepPrefix(m.Job, m.Step), shards)
	if err != nil {
		g.log.Warn("checkpoint save failed", "job-id", m.Job, "step", m.Step, "error", err)
		return Manifest{}, err
	}
	m = m.Clone()
	m.Shards = infos
	if err := g.Commit(ctx, m); err != nil {
		g.log.Warn("checkpoint commit failed", "job-id", m.Job, "step", m.Step, "error", err)
		return Manifest{}, err
	}
	return m, nil
}

// Commit checks that every shard of m is in storage with the listed size
// and hash (re-reading them), then commits m to the catalogue. It passes
// the failpoint FailAfterCommit.
func (g *Manager) Commit(ctx context.Context, m Manifest) error {
	if err := m.Validate(); err != nil {
		return err
	}
	if err := Verify(ctx, g.st, StepPrefix(m.Job, m.Step), m); err != nil {
		return fmt.Errorf("checkpoint: commit %s step %d: %w", m.Job, m.Step, err)
	}
	if err := g.cat.Commit(ctx, m); err != nil {
		return err
	}
	g.log.Info("checkpoint committed", "job-id", m.Job, "step", m.Step, "shards", len(m.Shards), "bytes", m.TotalSize())
	return Failpoint(FailAfterCommit)
}

// LoadLatestVerified returns the newest committed manifest of job whose
// shards all verify. A checkpoint with a missing or corrupt shard is
// skipped and reported through unusable with its step and the
// verification error (logged as a warning when unusable is nil); the
// previous one is tried. It fails with
// ErrNoCheckpoint if nothing is committed, ErrNoUsableCheckpoint if nothing
// verifies, and with the storage's error, without falling back, if shards
// cannot be read at all (an outage is not evidence against a checkpoint).
func (g *Manager) LoadLatestVerified(ctx context.Context, job string, unusable func(step int64, err error)) (Manifest, error) {
	return g.LoadLatestUsable(ctx, job, nil, unusable)
}

// LoadLatestUsable is LoadLatestVerified with a further check of a
// checkpoint whose shards verify: usable (if not nil) reads what the
// hashes cannot judge (that the tensors decode, with the names and sizes
// the model needs). Its error is evidence against the checkpoint, and
// falls back like a corrupt shard, when it wraps ErrShardCorrupt or
// ErrShardMissing; any other error stops the search.
func (g *Manager) LoadLatestUsable(ctx context.Context, job string, usable func(context.Context, Manifest) error, unusable func(step int64, err error)) (Manifest, error) {
	ms, err := g.cat.List(ctx, job)
	if err != nil {
		return Manifest{}, err
	}
	if len(ms) == 0 {
		return Manifest{}, fmt.Errorf("%w: job %s", ErrNoCheckpoint, job)
	}
	var bad []error
	for _, m := range ms {
		err := Verify(ctx, g.st, StepPrefix(job, m.Step), m)
		if err == nil && usable != nil {
			err = usable(ctx, m)
		}
		if err == nil {
			return m, nil
		}
		if !isEvidence(err) {
			return Manifest{}, fmt.Errorf("checkpoint: load %s step %d: %w", job, m.Step, err)
		}
		if unusable != nil {
			unusable(m.Step, err) // the caller reports it
		} else {
			g.log.Warn("checkpoint unusable", "job-id", job, "step", m.Step, "error", err)
		}
		bad = append(bad, fmt.Errorf("step %d: %w", m.Step, err))
	}
	return Manifest{}, fmt.Errorf("%w: job %s: %w", ErrNoUsableCheckpoint, job, errors.Join(bad...))
}

// Delete removes checkpoint step of job: it marks the entry deleting,
// removes every file under the checkpoint's prefix, then removes the
// entry. A crash in between leaves a deleting entry that ResumeDeletions
// finishes. Deleting a checkpoint that is already gone is not an error.
func (g *Manager) Delete(ctx context.Context, job string, step int64) error {
	if err := g.cat.MarkDeleting(ctx, job, step); err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		return err
	}
	if err := Failpoint(FailAfterMarkDeleting); err != nil {
		return err
	}
	return g.finishDelete(ctx, job, step)
}

func (g *Manager) finishDelete(ctx context.Context, job string, step int64) error {
	prefix := StepPrefix(job, step)
	keys, err := g.st.List(ctx, prefix)
	if err != nil {
		return fmt.Errorf("checkpoint: delete %s step %d: %w", job, step, err)
	}
	for _, k := range keys {
		if err := g.st.Delete(ctx, k); err != nil {
			return fmt.Errorf("checkpoint: delete %s step %d: %w", job, step, err)
		}
	}
	if err := Failpoint(FailAfterDeleteFiles); err != nil {
		return err
	}
	if err := g.cat.Remove(ctx, job, step); err != nil {
		return err
	}
	g.log.Info("checkpoint deleted", "job-id", job, "step", step, "files", len(keys))
	return nil
}

// ResumeDeletions finishes every deletion of job that a crash interrupted
// and returns the steps it finished.
func (g *Manager) ResumeDeletions(ctx context.Context, job string) ([]int64, error) {
	steps, err := g.cat.Deleting(ctx, job)
	if err != nil {
		return nil, err
	}
	var done []int64
	for _, s := range steps {
		if err := g.finishDelete(ctx, job, s); err != nil {
			return done, err
		}
		done = append(done, s)
	}
	return done, nil
}

// CollectGarbage removes every shard file (under a step prefix of
// JobPrefix(job)) that no committed
// manifest lists and that is not under the prefix of a deleting checkpoint
// (ResumeDeletions owns those) or of a save in flight (BeginSave). It
// returns the removed keys.
func (g *Manager) CollectGarbage(ctx context.Context, job string) ([]string, error) {
	if err := ValidateJob(job); err != nil {
		return nil, fmt.Errorf("checkpoint: gc: %w", err)
	}
	// Order matters: files listed now were written by saves that had
	// begun (BeginSave) by now; such a save is either still in flight at
	// the next read, or finished, and then its commit is visible to the
	// catalogue read after that.
	keys, err := g.st.List(ctx, JobPrefix(job))
	if err != nil {
		return nil, fmt.Errorf("checkpoint: gc %s: %w", job, err)
	}
	protected := g.inflightSteps(job)
	live, err := g.cat.List(ctx, job)
	if err != nil {
		return nil, err
	}
	deleting, err := g.cat.Deleting(ctx, job)
	if err != nil {
		return nil, err
	}
	for _, s := range deleting {
		protected[s] = true
	}
	referenced := map[string]bool{}
	for _, m := range live {
		for _, s := range m.Shards {
			referenced[ShardKey(job, m.Step, s.Name)] = true
		}
	}
	var removed []string
	for _, k := range keys {
		if referenced[k] {
			continue
		}
		step, ok := parseStepKey(job, k)
		if !ok || protected[step] {
			continue // not a shard (e.g. a storage catalogue's own file), or owned by a save or deletion
		}
		if err := g.st.Delete(ctx, k); err != nil {
			return removed, fmt.Errorf("checkpoint: gc %s: %w", job, err)
		}
		removed = append(removed, k)
	}
	if len(removed) > 0 {
		g.log.Info("checkpoint garbage collected", "job-id", job, "files", len(removed))
	}
	return removed, nil
}

// Retain deletes the committed checkpoints of job that are neither among
// the keepLast newest nor among the keepBest with the lowest validation
// loss (valLoss reports a checkpoint's loss, or false if it has none; it
// may be nil when keepBest is 0). keepLast must be at least 1: the newest
// checkpoint is never deleted by retention. It returns the deleted steps,
// oldest first.
func (g *Manager) Retain(ctx context.Context, job string, keepLast, keepBest int, valLoss func(Manifest) (float64, bool)) ([]int64, error) {
	if keepLast < 1 || keepBest < 0 {
		return nil, fmt.Errorf("checkpoint: retain: keepLast %d must be >= 1 and keepBest %d >= 0", keepLast, keepBest)
	}
	if keepBest > 0 && valLoss == nil {
		return nil, errors.New("checkpoint: retain: keepBest > 0 needs valLoss")
	}
	ms, err := g.cat.List(ctx, job)
	if err != nil {
		return nil, err
	}
	keep := map[int64]bool{}
	for i := 0; i < len(ms) && i < keepLast; i++ {
		keep[ms[i].Step] = true
	}
	if keepBest > 0 {
		type scored struct {
			step int64
			loss float64
		}
		var ss []scored
		for _, m := range ms {
			if l, ok := valLoss(m); ok && l == l { // skip NaN
				ss = append(ss, scored{m.Step, l})
			}
		}
		sort.SliceStable(ss, func(i, j int) bool {
			if ss[i].loss != ss[j].loss {
				return ss[i].loss < ss[j].loss
			}
			return ss[i].step > ss[j].step // ties: the newer
		})
		for i := 0; i < len(ss) && i < keepBest; i++ {
			keep[ss[i].step] = true
		}
	}
	var deleted []int64
	for i := len(ms) - 1; i >= 0; i-- {
		if keep[ms[i].Step] {
			continue
		}
		if err := g.Delete(ctx, job, ms[i].Step); err != nil {
			return deleted, err
		}
		deleted = append(deleted, ms[i].Step)
	}
	return deleted, nil
}
