package checkpoint

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
)

// StorageCatalogue is a Catalogue kept as one JSON document per job in a
// Storage (key "JOB/catalogue.json"), rewritten atomically by Put on every
// change. It is for single-process use — dev mode and crash tests — and
// must be the only writer of its Storage; use a Storage of its own, not
// the one holding the shards. Across processes it is only as safe as the
// caller's guarantee that one process writes at a time.
type StorageCatalogue struct {
	st Storage
	mu sync.Mutex
}

var _ Catalogue = (*StorageCatalogue)(nil)

// NewStorageCatalogue returns a catalogue kept in st.
func NewStorageCatalogue(st Storage) *StorageCatalogue { return &StorageCatalogue{st: st} }

func catalogueKey(job string) string { return job + "/catalogue.json" }

func (c *StorageCatalogue) load(ctx context.Context, job string) (*catalogueState, error) {
	if err := ValidateJob(job); err != nil {
		return nil, fmt.Errorf("checkpoint: catalogue: %w", err)
	}
	rc, err := c.st.Get(ctx, catalogueKey(job))
	if errors.Is(err, ErrNotFound) {
		return newCatalogueState(), nil
	}
	if err != nil {
		return nil, fmt.Errorf("checkpoint: catalogue %s: %w", job, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, 1<<30))
	if err != nil {
		return nil, fmt.Errorf("checkpoint: catalogue %s: %w", job, err)
	}
	s := newCatalogueState()
	if err := json.Unmarshal(b, s); err != nil {
		return nil, fmt.Errorf("checkpoint: catalogue %s: %w", job, err)
	}
	if s.Entries == nil {
		s.Entries = map[int64]*catalogueEntry{}
	}
	for step, e := range s.Entries {
		if e == nil || e.Manifest.Step != step || e.Manifest.Job != job {
			return nil, fmt.Errorf("checkpoint: catalogue %s: entry %d does not match its manifest", job, step)
		}
		if err := e.Manifest.Validate(); err != nil {
			return nil, fmt.Errorf("checkpoint: catalogue %s: entry %d: %w", job, step, err)
		}
	}
	return s, nil
}

func (c *StorageCatalogue) store(ctx context.Context, job string, s *catalogueState) error {
	b, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("checkpoint: catalogue %s: %w", job, err)
	}
	if _, _, err := c.st.Put(ctx, catalogueKey(job), bytes.NewReader(b)); err != nil {
		return fmt.Errorf("checkpoint: catalogue %s: %w", job, err)
	}
	return nil
}

// update loads the job's state, applies f and stores the result if f
// succeeded.
func (c *StorageCatalogue) update(ctx context.Context, job string, f func(*catalogueState) error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, err := c.load(ctx, job)
	if err != nil {
		return err
	}
	if err := f(s); err != nil {
		return err
	}
	return c.store(ctx, job, s)
}

func (c *StorageCatalogue) view(ctx context.Context, job string) (*catalogueState, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.load(ctx, job)
}

// Commit implements Catalogue.
func (c *StorageCatalogue) Commit(ctx context.Context, m Manifest) error {
	if err := m.Validate(); err != nil {
		return err
	}
	return c.update(ctx, m.Job, func(s *catalogueState) error { return s.commit(m) })
}

// Latest implements Catalogue.
func (c *StorageCatalogue) Latest(ctx context.Context, job string) (Manifest, error) {
	return latestOf(ctx, c, job)
}

// List implements Catalogue.
func (c *StorageCatalogue) List(ctx context.Context, job string) ([]Manifest, error) {
	s, err := c.view(ctx, job)
	if err != nil {
		return nil, err
	}
	return s.live(), nil
}

// Get implements Catalogue.
func (c *StorageCatalogue) Get(ctx context.Context, job string, step int64) (Manifest, error) {
	s, err := c.view(ctx, job)
	if err != nil {
		return Manifest{}, err
	}
	return s.get(job, step)
}

// MarkDeleting implements Catalogue.
func (c *StorageCatalogue) MarkDeleting(ctx context.Context, job string, step int64) error {
	return c.update(ctx, job, func(s *catalogueState) error { return s.markDeleting(job, step) })
}

// Remove implements Catalogue.
func (c *StorageCatalogue) Remove(ctx context.Context, job string, step int64) error {
	return c.update(ctx, job, func(s *catalogueState) error { return s.remove(job, step) })
}

// Deleting implements Catalogue.
func (c *StorageCatalogue) Deleting(ctx context.Context, job string) ([]int64, error) {
	s, err := c.view(ctx, job)
	if err != nil {
		return nil, err
	}
	return s.deleting(), nil
}
