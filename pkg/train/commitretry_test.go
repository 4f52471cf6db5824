package train

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
)

// outageCatalogue is a catalogue whose first failures commits fail with
// err (etcd or the coordinator down), then pass to the catalogue beneath.
type outageCatalogue struct {
	checkpoint.Catalogue
	err error

	mu       sync.Mutex
	failures int // commits still to fail (< 0: all)
	tries    map[int64]int
}

func (o *outageCatalogue) Commit(ctx context.Context, m checkpoint.Manifest) error {
	o.mu.Lock()
	o.tries[m.Step]++
	fail := o.failures != 0
	if o.failures > 0 {
		o.failures--
	}
	o.mu.Unlock()
	if fail {
		return o.err
	}
	return o.Catalogue.Commit(ctx, m)
}

// outageTrainer is a trainer of 6 steps, saving every 2, whose commits
// fail with err the first failures times (< 0: always), with short pauses
// between retries; out receives its event lines.
func outageTrainer(t *testing.T, failures int, err error) (*Trainer, *outageCatalogue, *bytes.Buffer) {
	t.Helper()
	t.Setenv(EventsEnv, "1")
	pauses := commitPauses
	commitPauses = []time.Duration{10 * time.Millisecond, 20 * time.Millisecond}
	t.Cleanup(func() { commitPauses = pauses })
	cfg, corpus := smallRun(t, "global", 6)
	cfg.Checkpoint = CheckpointConfig{Dir: t.TempDir(), Every: 2, KeepLast: 5, Job: "run"}
	st, serr := checkpoint.NewDirStorage(cfg.Checkpoint.Dir)
	if serr != nil {
		t.Fatal(serr)
	}
	cat := &outageCatalogue{Catalogue: checkpoint.NewStorageCatalogue(st), err: err, failures: failures, tries: map[int64]int{}}
	out := &bytes.Buffer{}
	tr, nerr := NewParallel(cfg, corpus, out, nil, WithCatalogue(cat))
	if nerr != nil {
		t.Fatal(nerr)
	}
	return tr, cat, out
}

// outageRun runs an outageTrainer to its end.
func outageRun(t *testing.T, failures int, err error) (*outageCatalogue, string, error) {
	t.Helper()
	tr, cat, out := outageTrainer(t, failures, err)
	_, rerr := tr.Run(context.Background())
	if cerr := tr.Close(); rerr == nil {
		rerr = cerr
	}
	return cat, out.String(), rerr
}

func (o *outageCatalogue) set(failures int) {
	o.mu.Lock()
	o.failures = failures
	o.mu.Unlock()
}

// A commit that fails for want of etcd or the coordinator is retried
// while training goes on; a newer save replaces it rather than wait for
// it (rank 0 would hold up the other ranks); once the outage is over the
// newest is committed, and the job's history says what happened.
func TestCommitRetriedThroughAnOutage(t *testing.T) {
	down := status.Error(codes.Unavailable, "commit checkpoint: etcd catalogue commit run: context deadline exceeded")
	tr, cat, out := outageTrainer(t, -1, down)
	ctx := context.Background()
	step := func() {
		t.Helper()
		if _, err := tr.TrainStep(ctx); err != nil {
			t.Fatal(err)
		}
		if err := tr.checkpointAfterStep(ctx); err != nil {
			t.Fatalf("step %d: %v", tr.Step(), err)
		}
	}
	step()
	step() // saves step 2
	step() // commits it: etcd is down
	select {
	case <-tr.ckpt.commitTroubled:
	case <-time.After(time.Minute):
		t.Fatal("the commit of step 2 did not fail")
	}
	step()
	step() // the save of step 4 replaces the commit of step 2
	cat.set(0)
	if err := tr.ckpt.waitCommit(); err != nil {
		t.Fatalf("the commit of step 4 once etcd is back: %v", err)
	}
	step()
	if err := tr.checkpointAtEnd(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	ms, err := cat.List(ctx, "run")
	if err != nil {
		t.Fatal(err)
	}
	var steps []int64
	for _, m := range ms {
		steps = append(steps, m.Step)
	}
	if !slices.Equal(steps, []int64{6, 4}) {
		t.Fatalf("committed %v, want 6 4 (2 replaced by 4)", steps)
	}
	if cat.tries[2] < 1 || cat.tries[4] < 1 || cat.tries[6] != 1 {
		t.Errorf("tries %v: want steps 2 and 4 tried, step 6 once", cat.tries)
	}
	got := out.String()
	if n := strings.Count(got, `"CheckpointCommitRetrying"`); n != 1 {
		t.Errorf("%d CheckpointCommitRetrying events, want 1 for the outage:\n%s", n, got)
	}
	for _, want := range []string{"checkpoint of step 2: the commit failed", `"CheckpointCommitRetried"`, "checkpoint of step 4 committed after commits failed for", "(not committed: steps 2, replaced by newer ones)"} {
		if !strings.Contains(got, want) {
			t.Errorf("the events do not say %s:\n%s", want, got)
		}
	}
}

// A refusal is not retried, and an outage longer than commitPatience ends
// the run (its worker restarts it from the newest committed checkpoint).
func TestCommitRefusalOrLongOutageFails(t *testing.T) {
	over := status.Error(codes.FailedPrecondition, "job run: attempt 0 is over")
	cat, _, err := outageRun(t, -1, over)
	if err == nil || !strings.Contains(err.Error(), "attempt 0 is over") {
		t.Fatalf("got %v, want the refusal", err)
	}
	if cat.tries[2] != 1 {
		t.Errorf("a refused commit was tried %d times", cat.tries[2])
	}

	patience := commitPatience
	commitPatience = 200 * time.Millisecond
	t.Cleanup(func() { commitPatience = patience })
	_, _, err = outageRun(t, -1, status.Error(codes.Unavailable, "etcd down"))
	if err == nil || !strings.Contains(err.Error(), "etcd down") {
		t.Fatalf("got %v, want the outage's error once the patience is spent", err)
	}

}
