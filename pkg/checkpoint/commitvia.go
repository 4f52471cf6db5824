package checkpoint

import "context"

// CommitVia returns a catalogue that reads from cat and commits through
// commit instead — for a rank whose commits must pass a gatekeeper (the
// coordinator, which refuses commits of an abandoned attempt and then
// writes to the same catalogue). commit must keep Commit's contract:
// wrap ErrStale for a step that is not newer.
func CommitVia(cat Catalogue, commit func(ctx context.Context, m Manifest) error) Catalogue {
	return commitVia{Catalogue: cat, commit: commit}
}

type commitVia struct {
	Catalogue
	commit func(ctx context.Context, m Manifest) error
}

func (c commitVia) Commit(ctx context.Context, m Manifest) error {
	if err := m.Validate(); err != nil {
		return err
	}
	return c.commit(ctx, m)
}
