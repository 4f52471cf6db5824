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

// outageRun trains 6 steps, saving every 2, with cat's commits failing.
func outageRun(t *testing.T, failures int, err error) (*outageCatalogue, string, error) {
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
	var out bytes.Buffer
	tr, nerr := NewParallel(cfg, corpus, &out, nil, WithCatalogue(cat))
	if nerr != nil {
		t.Fatal(nerr)
	}
	_, rerr := tr.Run(context.Background())
	if cerr := tr.Close(); rerr == nil {
		rerr = cerr
	}
	return cat, out.String(), rerr
}

// A commit that fails for want of etcd or the coordinator is retried
// while training goes on: the run ends with every checkpoint committed,
// and the job's history says so.
func TestCommitRetriedThroughAnOutage(t *testing.T) {
	unavailable := status.Error(codes.Unavailable, "commit checkpoint: etcd catalogue commit run step 2: context deadline exceeded")
	cat, out, err := outageRun(t, 3, unavailable)
	if err != nil {
		t.Fatalf("the run failed: %v", err)
	}
	ms, err := cat.List(context.Background(), "run")
	if err != nil {
		t.Fatal(err)
	}
	var steps []int64
	for _, m := range ms {
		steps = append(steps, m.Step)
	}
	if !slices.Equal(steps, []int64{6, 4, 2}) {
		t.Fatalf("committed %v, want 6 4 2", steps)
	}
	if cat.tries[2] != 4 {
		t.Errorf("step 2 tried %d times, want 4 (3 failures)", cat.tries[2])
	}
	for _, want := range []string{`"CheckpointCommitRetrying"`, "checkpoint of step 2: the commit failed", `"CheckpointCommitRetried"`, "checkpoint of step 2 committed after 4 tries"} {
		if !strings.Contains(out, want) {
			t.Errorf("the events do not say %s:\n%s", want, out)
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
	cat, _, err = outageRun(t, -1, status.Error(codes.Unavailable, "etcd down"))
	if err == nil || !strings.Contains(err.Error(), "etcd down") {
		t.Fatalf("got %v, want the outage's error once the patience is spent", err)
	}
	if cat.tries[2] < 2 {
		t.Errorf("step 2 tried %d times, want retries", cat.tries[2])
	}
}
