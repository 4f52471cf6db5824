package controller

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// fences raises the checkpoint catalogue's fence for the attempts about
// to be placed (Checkpoints.Fence), off the leader's lock: supervision
// asks (ready) for every unfinished job's current attempt, a goroutine of
// Run writes the fences while this replica leads, and a pending job is
// placed once its attempt is fenced, usually by the next tick. A
// catalogue that is slow or down then holds up placements only, not every
// sync and supervision pass behind the lock.
type fences struct {
	mu     sync.Mutex
	done   map[string]int32        // job -> the attempt its fence is known to be at (fences never lower)
	want   map[string]*pb.Job      // job -> the record whose attempt to fence
	failed map[string]fenceFailure // job -> its last failure, for the attempt it names
	asked  map[string]time.Time    // job -> when its attempt in want was first asked for
	now    func() time.Time
	kick   chan struct{}
	// fenced is signalled when a fence was raised: supervision places the
	// job at once rather than at its next tick
	fenced chan struct{}
}

// fenceFailure is why an attempt's fence failed, and when to try again.
type fenceFailure struct {
	attempt int32
	err     error
	tries   int
	next    time.Time
}

func newFences() *fences {
	return &fences{done: map[string]int32{}, want: map[string]*pb.Job{}, failed: map[string]fenceFailure{}, asked: map[string]time.Time{}, now: time.Now, kick: make(chan struct{}, 1), fenced: make(chan struct{}, 1)}
}

// ready reports whether j's current attempt is fenced; if it is not, it
// asks for it and returns the last failure to fence that attempt, if
// any. Called under the leader's lock: it does not wait.
func (f *fences) ready(j *pb.Job) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if a, ok := f.done[j.Id]; ok && a >= j.Restarts {
		return true, nil
	}
	fail, failed := f.failed[j.Id]
	if failed && fail.attempt != j.Restarts {
		delete(f.failed, j.Id) // an earlier attempt's
		failed = false
	}
	if failed && errors.Is(fail.err, checkpoint.ErrFenced) {
		return false, fail.err // for good: not asked again
	}
	if w, ok := f.want[j.Id]; !ok || w.Restarts < j.Restarts {
		f.want[j.Id] = proto.CloneOf(j)
		f.asked[j.Id] = f.now()
		select {
		case f.kick <- struct{}{}:
		default:
		}
	}
	if failed {
		return false, fail.err
	}
	return false, nil
}

// waited is how long j's current attempt has been asked for and not yet
// fenced (0 when it is fenced or was not asked for).
func (f *fences) waited(j *pb.Job) time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	w, ok := f.want[j.Id]
	if !ok || w.Restarts != j.Restarts {
		return 0
	}
	return f.now().Sub(f.asked[j.Id])
}

// reset forgets what was asked and what failed (a change of leader:
// the next one asks again); what is known fenced stays so.
func (f *fences) reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.want)
	clear(f.failed)
	clear(f.asked)
}

// retain forgets the jobs not in open (finished or deleted).
func (f *fences) retain(open map[string]int32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for id := range f.done {
		if _, ok := open[id]; !ok {
			delete(f.done, id)
		}
	}
	for id := range f.want {
		if _, ok := open[id]; !ok {
			delete(f.want, id)
			delete(f.asked, id)
		}
	}
	for id := range f.failed {
		if _, ok := open[id]; !ok {
			delete(f.failed, id)
		}
	}
}

// Fences that failed are tried again after fenceRetry, doubling up to
// fenceRetryMax.
const (
	fenceRetry    = time.Second
	fenceRetryMax = 30 * time.Second
)

// run writes the fences asked for while leading() says this replica
// leads, until ctx ends (Run owns it).
func (f *fences) run(ctx context.Context, cps Checkpoints, log *slog.Logger, leading func() bool) {
	t := time.NewTicker(fenceRetry)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.kick:
		case <-t.C:
		}
		if leading() {
			f.flush(ctx, cps, log)
		}
	}
}

// flush writes the fences asked for and due, one at a time.
func (f *fences) flush(ctx context.Context, cps Checkpoints, log *slog.Logger) {
	f.mu.Lock()
	now := f.now()
	todo := make([]*pb.Job, 0, len(f.want))
	for id, j := range f.want {
		if fail, ok := f.failed[id]; ok && fail.attempt == j.Restarts && now.Before(fail.next) {
			continue
		}
		todo = append(todo, j)
	}
	f.mu.Unlock()
	for _, j := range todo {
		if ctx.Err() != nil {
			return
		}
		fctx, cancel := context.WithTimeout(ctx, fenceTimeout)
		err := cps.Fence(fctx, j, j.Restarts)
		cancel()
		f.mu.Lock()
		if err != nil {
			fail := f.failed[j.Id]
			if fail.attempt != j.Restarts {
				fail = fenceFailure{attempt: j.Restarts}
			}
			changed := fail.err == nil || fail.err.Error() != err.Error()
			fail.err, fail.tries = err, fail.tries+1
			fail.next = f.now().Add(min(fenceRetry<<min(fail.tries-1, 5), fenceRetryMax))
			f.failed[j.Id] = fail
			if errors.Is(err, checkpoint.ErrFenced) {
				delete(f.want, j.Id) // a verdict, not an outage
				delete(f.asked, j.Id)
			}
			f.mu.Unlock()
			if changed && ctx.Err() == nil {
				log.Warn("fencing the checkpoint catalogue failed; the job is placed once it is fenced", "job-id", j.Id, "attempt", j.Restarts, "error", err)
			}
			continue
		}
		delete(f.failed, j.Id)
		if w, ok := f.want[j.Id]; ok && w.Restarts <= j.Restarts {
			delete(f.want, j.Id)
			delete(f.asked, j.Id)
		}
		if a, ok := f.done[j.Id]; !ok || a < j.Restarts {
			f.done[j.Id] = j.Restarts
		}
		f.mu.Unlock()
		select {
		case f.fenced <- struct{}{}:
		default:
		}
	}
}

// fenceTimeout bounds one fence (one etcd transaction).
const fenceTimeout = 5 * time.Second
