package controller

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// fences raises the checkpoint catalogue's fence for the attempts about
// to be placed (Checkpoints.Fence), off the leader's lock: supervision
// asks (ready) for every pending job, a goroutine of Run writes the
// fences, and a job is placed once its attempt is fenced, usually by the
// next tick. A catalogue that is slow or down then holds up placements
// only, not every sync and supervision pass behind the lock.
type fences struct {
	mu     sync.Mutex
	done   map[string]int32   // job -> the attempt its fence is known to be at (fences never lower)
	want   map[string]*pb.Job // job -> the record whose attempt to fence
	failed map[string]error   // job -> why its last fence failed
	kick   chan struct{}
}

func newFences() *fences {
	return &fences{done: map[string]int32{}, want: map[string]*pb.Job{}, failed: map[string]error{}, kick: make(chan struct{}, 1)}
}

// ready reports whether j's current attempt is fenced; if it is not, it
// asks for it and returns the last failure to fence it, if any. Called
// under the leader's lock: it does not wait.
func (f *fences) ready(j *pb.Job) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if a, ok := f.done[j.Id]; ok && a >= j.Restarts {
		return true, nil
	}
	if w, ok := f.want[j.Id]; !ok || w.Restarts < j.Restarts {
		f.want[j.Id] = proto.CloneOf(j)
		select {
		case f.kick <- struct{}{}:
		default:
		}
	}
	return false, f.failed[j.Id]
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
		}
	}
	for id := range f.failed {
		if _, ok := open[id]; !ok {
			delete(f.failed, id)
		}
	}
}

// fenceRetry is how often fences that failed are tried again.
const fenceRetry = time.Second

// run writes the fences asked for until ctx ends (Run owns it).
func (f *fences) run(ctx context.Context, cps Checkpoints, log *slog.Logger) {
	t := time.NewTicker(fenceRetry)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.kick:
		case <-t.C:
		}
		f.flush(ctx, cps, log)
	}
}

// flush writes every fence asked for, one at a time.
func (f *fences) flush(ctx context.Context, cps Checkpoints, log *slog.Logger) {
	f.mu.Lock()
	todo := make([]*pb.Job, 0, len(f.want))
	for _, j := range f.want {
		todo = append(todo, j)
	}
	f.mu.Unlock()
	for _, j := range todo {
		fctx, cancel := context.WithTimeout(ctx, fenceTimeout)
		err := cps.Fence(fctx, j, j.Restarts)
		cancel()
		f.mu.Lock()
		if err != nil {
			f.failed[j.Id] = err
			f.mu.Unlock()
			log.Warn("fencing the checkpoint catalogue failed; the job is placed once it is fenced", "job-id", j.Id, "attempt", j.Restarts, "error", err)
			continue
		}
		delete(f.failed, j.Id)
		if w, ok := f.want[j.Id]; ok && w.Restarts <= j.Restarts {
			delete(f.want, j.Id)
		}
		if a, ok := f.done[j.Id]; !ok || a < j.Restarts {
			f.done[j.Id] = j.Restarts
		}
		f.mu.Unlock()
	}
}

// fenceTimeout bounds one fence (one etcd transaction).
const fenceTimeout = 5 * time.Second
