package checkpoint_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
)

// lossyCatalogue commits, then loses its first lost answers (UNAVAILABLE),
// as a leader fail-over or an etcd timeout after the write does.
type lossyCatalogue struct {
	checkpoint.Catalogue
	lost  int
	tries int
}

func (l *lossyCatalogue) Commit(ctx context.Context, m checkpoint.Manifest) error {
	l.tries++
	err := l.Catalogue.Commit(ctx, m)
	if err == nil && l.lost > 0 {
		l.lost--
		return status.Error(codes.Unavailable, "the answer was lost")
	}
	return err
}

// A commit whose answer was lost is retried; the retry finds the step
// committed with its shards (ErrStale) and succeeds. A refusal is not
// retried.
func TestCommitRetrying(t *testing.T) {
	ctx := context.Background()
	st := checkpoint.NewMemStorage()
	cat := &lossyCatalogue{Catalogue: checkpoint.NewMemCatalogue(), lost: 1}
	g := checkpoint.NewManager(st, cat, nil)
	infos, err := checkpoint.SaveShards(ctx, st, checkpoint.StepPrefix(job, 10), shardsFor(10))
	if err != nil {
		t.Fatal(err)
	}
	m := checkpoint.Manifest{Job: job, Step: 10, Layout: layout, Shards: infos}
	var failing error
	recovered := 0
	r := checkpoint.Retry{
		For: time.Minute, Pauses: []time.Duration{time.Millisecond},
		Failing:   func(err error) { failing = err },
		Recovered: func(tries int, _ time.Duration) { recovered = tries },
	}
	if err := g.CommitRetrying(ctx, m, r); err != nil {
		t.Fatalf("CommitRetrying after a lost answer: %v", err)
	}
	if cat.tries != 2 || recovered != 2 || status.Code(failing) != codes.Unavailable {
		t.Fatalf("tries %d, recovered after %d, failing %v; want 2, 2, the lost answer", cat.tries, recovered, failing)
	}
	// the same step again, other shards: a refusal, one try
	other := m.Clone()
	other.Shards = other.Shards[:1]
	cat.tries = 0
	if err := g.CommitRetrying(ctx, other, r); !errors.Is(err, checkpoint.ErrStale) || cat.tries != 1 {
		t.Fatalf("a stale step: %v after %d tries, want ErrStale after 1", err, cat.tries)
	}
	// no retry at all when For is 0
	cat.lost, cat.tries = 1, 0
	m.Step = 20
	if infos, err = checkpoint.SaveShards(ctx, st, checkpoint.StepPrefix(job, 20), shardsFor(20)); err != nil {
		t.Fatal(err)
	}
	m.Shards = infos
	if err := g.CommitRetrying(ctx, m, checkpoint.Retry{}); status.Code(err) != codes.Unavailable || cat.tries != 1 {
		t.Fatalf("without retry: %v after %d tries", err, cat.tries)
	}
}
