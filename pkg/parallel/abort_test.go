package parallel

import (
	"context"
	"errors"
	"testing"
	"time"
)

// A member that fails a collective tells the group: members that are not
// linked to it in the ring (and would otherwise wait out the timeout) fail
// at once with ErrAborted, on every transport.
func TestCollectiveAbortPropagates(t *testing.T) {
	forTransports(t, func(t *testing.T, k transportKind) {
		const w = 4
		opts := testOptions()
		opts.Timeout = 30 * time.Second // far longer than the test may take
		ts := k.make(t, w, opts)
		cs := worldComms(t, ts, CommOptions{Segment: 16 << 10})
		dead, cancel := context.WithCancel(context.Background())
		cancel()
		start := time.Now()
		errs := onAll(w, func(r int) error {
			ctx := context.Background()
			if r == 0 {
				ctx = dead // rank 0 fails its part at once
			}
			if err := cs[r].AllReduce(ctx, make([]float32, 1<<16), Sum); err != nil {
				return err
			}
			// A later collective on the failed communicator fails too.
			return cs[r].AllReduce(context.Background(), make([]float32, 1<<16), Sum)
		})
		took := time.Since(start)
		t.Logf("took %v: %v", took, errs)
		if !errors.Is(errs[0], context.Canceled) {
			t.Errorf("rank 0: %v, want Canceled", errs[0])
		}
		for r := 1; r < w; r++ {
			if !errors.Is(errs[r], ErrAborted) {
				t.Errorf("rank %d: %v, want ErrAborted", r, errs[r])
			}
		}
		if took > 5*time.Second {
			t.Fatalf("ranks took %v to fail", took)
		}
	})
}
