package checkpoint

import (
	"context"
	"errors"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Transient says whether a catalogue's failure may pass by itself: etcd or
// the coordinator unreachable, restarting, electing a leader, or too slow
// to answer (a deadline, UNAVAILABLE). A refusal (a stale step, an attempt
// that is over, a shard that does not verify, permission) is not, nor is
// the caller's own cancellation.
func Transient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	// etcd's client errors (rpctypes.EtcdError) carry their gRPC code
	var coded interface{ Code() codes.Code }
	if errors.As(err, &coded) {
		return transientCode(coded.Code())
	}
	if st, ok := status.FromError(err); ok {
		return transientCode(st.Code())
	}
	return false
}

func transientCode(c codes.Code) bool {
	return c == codes.Unavailable || c == codes.DeadlineExceeded
}

// Retry is how Manager.CommitRetrying retries a transient failure.
type Retry struct {
	// For bounds the retrying: no try starts after it (0: no retry).
	For time.Duration
	// Pauses are the waits between tries, the last repeating (none: 1s).
	Pauses []time.Duration
	// Failing is called once, after the first transient failure;
	// Recovered after a success that took more than one try (nil: none).
	Failing   func(err error)
	Recovered func(tries int, took time.Duration)
}

// CommitRetrying is Commit, tried again after a transient failure (etcd
// or the coordinator unreachable: see Transient) until r.For has passed.
// A try that finds the step committed with m's shards (an earlier try
// committed it and its answer was lost) succeeds.
func (g *Manager) CommitRetrying(ctx context.Context, m Manifest, r Retry) error {
	began := time.Now()
	for try := 0; ; try++ {
		err := g.Commit(ctx, m)
		if err != nil && try > 0 && errors.Is(err, ErrStale) {
			if got, gerr := g.cat.Get(ctx, m.Job, m.Step); gerr == nil && slices.Equal(got.Shards, m.Shards) {
				err = nil
			}
		}
		if err == nil {
			if try > 0 && r.Recovered != nil {
				r.Recovered(try+1, time.Since(began))
			}
			return nil
		}
		pause := time.Second
		if len(r.Pauses) > 0 {
			pause = r.Pauses[min(try, len(r.Pauses)-1)]
		}
		if !Transient(err) || ctx.Err() != nil || time.Since(began)+pause > r.For {
			return err
		}
		if try == 0 && r.Failing != nil {
			r.Failing(err)
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}
