package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
)

var (
	// ErrStale is wrapped by Catalogue.Commit when the step is not newer
	// than every checkpoint the catalogue holds for the job.
	ErrStale = errors.New("checkpoint: step not newer than the latest checkpoint")
	// ErrNoCheckpoint is wrapped when a job has no committed checkpoint.
	ErrNoCheckpoint = errors.New("checkpoint: no committed checkpoint")
	// ErrNotDeleting is wrapped by Catalogue.Remove when the checkpoint
	// was not marked deleting first.
	ErrNotDeleting = errors.New("checkpoint: checkpoint not marked deleting")
	// ErrFenced is wrapped by the writes of a Fencing catalogue's view
	// (As) when a newer attempt of the job fenced it: the writer's
	// attempt is over.
	ErrFenced = errors.New("checkpoint: a newer attempt of the job fenced the catalogue")
)

// Fencing is a catalogue that tells a job's attempts apart, so that a
// write in flight from an attempt that has ended (a coordinator that lost
// its leadership while its commit waited on the catalogue) cannot land
// after the next attempt started:
//   - Fence raises the job's fence to attempt, before anything of that
//     attempt runs; it never lowers it (a fence above attempt wraps
//     ErrFenced; the same attempt again is no error).
//   - As(attempt) is the catalogue as that attempt writes it: Commit,
//     MarkDeleting and Remove wrap ErrFenced and change nothing when the
//     job's fence is above attempt, atomically with the write. A job
//     never fenced takes writes from any attempt. Reads are the
//     catalogue's.
//
// The contract tests in package checkpointtest check these rules
// (checkpointtest.Fencing).
type Fencing interface {
	Catalogue
	Fence(ctx context.Context, job string, attempt int64) error
	As(attempt int64) Catalogue
}

// Catalogue records which checkpoints are committed. A checkpoint is
// committed once its manifest is in the catalogue; it is then either live
// or deleting. The production implementation keeps it in etcd (one
// transaction per call); MemCatalogue and StorageCatalogue are the
// in-memory and single-writer file-backed ones. Implementations must be
// safe for concurrent use, and each method must be atomic.
//
// The rules every implementation follows (the contract tests in package
// checkpointtest check them):
//   - Commit stores a valid manifest only if its step is greater than the
//     step of every entry of the job, live or deleting; otherwise it
//     returns an error wrapping ErrStale and changes nothing. (It may
//     instead succeed when the catalogue holds that very step with m's
//     shards: a commit retried after its answer was lost, as the
//     catalogue through the coordinator does.)
//   - Latest and List see live entries only. Latest of a job without one
//     wraps ErrNoCheckpoint. List is newest first.
//   - Get returns an entry in either state; a missing one wraps ErrNotFound.
//   - MarkDeleting moves a live entry to deleting (idempotent; missing
//     wraps ErrNotFound). It cannot be undone.
//   - Remove drops a deleting entry (a missing one is not an error; a live
//     one wraps ErrNotDeleting), so an entry disappears only after the
//     deletion that removes its files was recorded.
//   - Deleting lists the deleting steps of a job, oldest first.
type Catalogue interface {
	Commit(ctx context.Context, m Manifest) error
	Latest(ctx context.Context, job string) (Manifest, error)
	List(ctx context.Context, job string) ([]Manifest, error)
	Get(ctx context.Context, job string, step int64) (Manifest, error)
	MarkDeleting(ctx context.Context, job string, step int64) error
	Remove(ctx context.Context, job string, step int64) error
	Deleting(ctx context.Context, job string) ([]int64, error)
}

// catalogueState is the data of a catalogue: what MemCatalogue holds and
// StorageCatalogue persists.
type catalogueState struct {
	Entries map[int64]*catalogueEntry `json:"entries"`
}

type catalogueEntry struct {
	Manifest Manifest `json:"manifest"`
	Deleting bool     `json:"deleting,omitempty"`
}

func newCatalogueState() *catalogueState {
	return &catalogueState{Entries: map[int64]*catalogueEntry{}}
}

func (s *catalogueState) commit(m Manifest) error {
	if err := m.Validate(); err != nil {
		return err
	}
	for step := range s.Entries {
		if step >= m.Step {
			return fmt.Errorf("%w: job %s step %d, catalogue holds step %d", ErrStale, m.Job, m.Step, step)
		}
	}
	s.Entries[m.Step] = &catalogueEntry{Manifest: m.Clone()}
	return nil
}

// live returns the live manifests, newest first.
func (s *catalogueState) live() []Manifest {
	out := []Manifest{}
	for _, e := range s.Entries {
		if !e.Deleting {
			out = append(out, e.Manifest.Clone())
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Step > out[j].Step })
	return out
}

func (s *catalogueState) get(job string, step int64) (Manifest, error) {
	e, ok := s.Entries[step]
	if !ok {
		return Manifest{}, fmt.Errorf("%w: job %s step %d", ErrNotFound, job, step)
	}
	return e.Manifest.Clone(), nil
}

func (s *catalogueState) markDeleting(job string, step int64) error {
	e, ok := s.Entries[step]
	if !ok {
		return fmt.Errorf("%w: job %s step %d", ErrNotFound, job, step)
	}
	e.Deleting = true
	return nil
}

func (s *catalogueState) remove(job string, step int64) error {
	e, ok := s.Entries[step]
	if !ok {
		return nil
	}
	if !e.Deleting {
		return fmt.Errorf("%w: job %s step %d", ErrNotDeleting, job, step)
	}
	delete(s.Entries, step)
	return nil
}

func (s *catalogueState) deleting() []int64 {
	out := []int64{}
	for step, e := range s.Entries {
		if e.Deleting {
			out = append(out, step)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// MemCatalogue is a Catalogue in memory, with fences (Fencing).
type MemCatalogue struct {
	*memCatalogue
	as int64 // the attempt this view writes as (As); -1: unfenced
}

type memCatalogue struct {
	mu     sync.Mutex
	jobs   map[string]*catalogueState
	fences map[string]int64
}

var _ Fencing = (*MemCatalogue)(nil)

// NewMemCatalogue returns an empty MemCatalogue.
func NewMemCatalogue() *MemCatalogue {
	return &MemCatalogue{memCatalogue: &memCatalogue{jobs: map[string]*catalogueState{}, fences: map[string]int64{}}, as: -1}
}

func (c *memCatalogue) job(job string) *catalogueState {
	s, ok := c.jobs[job]
	if !ok {
		s = newCatalogueState()
		c.jobs[job] = s
	}
	return s
}

// As implements Fencing: the same catalogue, writing as attempt.
func (c *MemCatalogue) As(attempt int64) Catalogue {
	return &MemCatalogue{memCatalogue: c.memCatalogue, as: max(attempt, 0)}
}

// Fence implements Fencing.
func (c *MemCatalogue) Fence(ctx context.Context, job string, attempt int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if attempt < 0 {
		return fmt.Errorf("checkpoint: fence %s: attempt %d: attempts are >= 0", job, attempt)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if f, ok := c.fences[job]; ok && f > attempt {
		return fmt.Errorf("%w: job %s is fenced at attempt %d, above %d", ErrFenced, job, f, attempt)
	}
	c.fences[job] = attempt
	return nil
}

// FenceOf is job's fence: the attempt it was last raised to, false when
// it never was.
func (c *MemCatalogue) FenceOf(job string) (int64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f, ok := c.fences[job]
	return f, ok
}

// writable is nil when this view may write job's entries; called with
// mu held.
func (c *MemCatalogue) writable(job string) error {
	if f, ok := c.fences[job]; ok && c.as >= 0 && f > c.as {
		return fmt.Errorf("%w: job %s is fenced at attempt %d, this write is attempt %d's", ErrFenced, job, f, c.as)
	}
	return nil
}

// Commit implements Catalogue.
func (c *MemCatalogue) Commit(ctx context.Context, m Manifest) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.writable(m.Job); err != nil {
		return err
	}
	return c.job(m.Job).commit(m)
}

// Latest implements Catalogue.
func (c *MemCatalogue) Latest(ctx context.Context, job string) (Manifest, error) {
	return latestOf(ctx, c, job)
}

// List implements Catalogue.
func (c *MemCatalogue) List(ctx context.Context, job string) ([]Manifest, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.job(job).live(), nil
}

// Get implements Catalogue.
func (c *MemCatalogue) Get(ctx context.Context, job string, step int64) (Manifest, error) {
	if err := ctx.Err(); err != nil {
		return Manifest{}, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.job(job).get(job, step)
}

// MarkDeleting implements Catalogue.
func (c *MemCatalogue) MarkDeleting(ctx context.Context, job string, step int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.job(job).Entries[step]; ok && !e.Deleting {
		// as etcd's: a missing entry, or one already deleting, is no write
		if err := c.writable(job); err != nil {
			return err
		}
	}
	return c.job(job).markDeleting(job, step)
}

// Remove implements Catalogue.
func (c *MemCatalogue) Remove(ctx context.Context, job string, step int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.job(job).Entries[step]; ok && e.Deleting {
		// as etcd's: a missing entry, or a live one, is no write
		if err := c.writable(job); err != nil {
			return err
		}
	}
	return c.job(job).remove(job, step)
}

// Deleting implements Catalogue.
func (c *MemCatalogue) Deleting(ctx context.Context, job string) ([]int64, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.job(job).deleting(), nil
}

// latestOf is Latest for every catalogue: the head of List, newest first.
func latestOf(ctx context.Context, c Catalogue, job string) (Manifest, error) {
	ms, err := c.List(ctx, job)
	if err != nil {
		return Manifest{}, err
	}
	if len(ms) == 0 {
		return Manifest{}, fmt.Errorf("%w: job %s", ErrNoCheckpoint, job)
	}
	return ms[0], nil
}
