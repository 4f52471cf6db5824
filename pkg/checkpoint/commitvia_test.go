package checkpoint_test

import (
	"context"
	"errors"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
)

func testManifest(t *testing.T, job string, step int64) checkpoint.Manifest {
	t.Helper()
	m := validManifest()
	m.Job, m.Step = job, step
	return m
}

// Commits go through the gate; reads see what the gate committed into the
// catalogue underneath; a refusal commits nothing.
func TestCommitVia(t *testing.T) {
	ctx := context.Background()
	inner := checkpoint.NewMemCatalogue()
	open := true
	gated := checkpoint.CommitVia(inner, func(ctx context.Context, m checkpoint.Manifest) error {
		if !open {
			return errors.New("attempt is over")
		}
		return inner.Commit(ctx, m)
	})
	m := testManifest(t, "job-a", 10)
	if err := gated.Commit(ctx, m); err != nil {
		t.Fatal(err)
	}
	if got, err := gated.Latest(ctx, "job-a"); err != nil || got.Step != 10 {
		t.Fatalf("latest %v %v", got.Step, err)
	}
	if err := gated.Commit(ctx, m); !errors.Is(err, checkpoint.ErrStale) {
		t.Fatalf("re-commit of step 10: %v, want checkpoint.ErrStale from the catalogue", err)
	}
	open = false
	if err := gated.Commit(ctx, testManifest(t, "job-a", 20)); err == nil {
		t.Fatal("the gate refused but the commit succeeded")
	}
	if got, _ := gated.Latest(ctx, "job-a"); got.Step != 10 {
		t.Fatalf("latest after a refused commit: %d", got.Step)
	}
	if err := gated.Commit(ctx, checkpoint.Manifest{}); err == nil {
		t.Fatal("an invalid manifest reached the gate")
	}
}
