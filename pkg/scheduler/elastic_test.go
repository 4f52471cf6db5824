package scheduler

import (
	"errors"
	"math/rand/v2"
	"testing"
)

func elastic(j Job, minDP int) Job {
	j.MinDP = minDP
	return j
}

func TestElasticShrink(t *testing.T) {
	busy := func(w *Worker) { w.Job, w.Free = "other", Resources{} }
	for _, tc := range []struct {
		name    string
		snap    Snapshot
		queue   []Job
		wantDP  map[string]int // placed jobs and their dp
		pending map[string]error
	}{
		{
			name:   "fits whole: not shrunk",
			snap:   newFx().host("a", 4, cpu1).snap,
			queue:  []Job{elastic(job("j", 0, 1, 1, 4, 2, cpu1), 2)},
			wantDP: map[string]int{"j": 4},
		},
		{
			name:   "3 of 4 workers left, ep 2: dp 2 (3 is no multiple of ep)",
			snap:   newFx().host("a", 3, cpu1).snap,
			queue:  []Job{elastic(job("j", 0, 1, 1, 4, 2, cpu1), 2)},
			wantDP: map[string]int{"j": 2},
		},
		{
			name:   "ep 1: the largest dp that fits",
			snap:   newFx().host("a", 4, cpu1).set("a-w0", busy).snap,
			queue:  []Job{elastic(job("j", 0, 1, 1, 4, 1, cpu1), 1)},
			wantDP: map[string]int{"j": 3},
		},
		{
			name:    "below min_dp: waits at full size",
			snap:    newFx().host("a", 1, cpu1).snap,
			queue:   []Job{elastic(job("j", 0, 1, 1, 4, 2, cpu1), 2)},
			pending: map[string]error{"j": ErrTooLarge},
		},
		{
			name:    "not elastic: waits",
			snap:    newFx().host("a", 3, cpu1).snap,
			queue:   []Job{job("j", 0, 1, 1, 4, 2, cpu1)},
			pending: map[string]error{"j": ErrTooLarge},
		},
		{
			// the higher-priority job waits and claims the workers it
			// could use; the elastic job behind it is blocked, and a
			// blocked job keeps its size
			name:    "blocked by a waiting job: not shrunk",
			snap:    newFx().host("a", 2, cpu1).snap,
			queue:   []Job{job("big", 9, 1, 1, 2, 1, cpu1), elastic(job("j", 0, 2, 1, 2, 1, cpu1), 1)},
			wantDP:  map[string]int{"big": 2},
			pending: map[string]error{"j": ErrNoFit},
		},
		{
			name:   "shrinks onto what the earlier plans left",
			snap:   newFx().host("a", 5, cpu1).snap,
			queue:  []Job{job("first", 9, 1, 1, 2, 1, cpu1), elastic(job("j", 0, 2, 1, 4, 1, cpu1), 2)},
			wantDP: map[string]int{"first": 2, "j": 3},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			placed, pending := Schedule(tc.snap, tc.queue)
			got := map[string]int{}
			for _, p := range placed {
				got[p.Job.ID] = p.Job.Layout.DP
				if len(p.Workers) != p.Job.Layout.World() {
					t.Fatalf("job %s: %d workers for its plan's world %d", p.Job.ID, len(p.Workers), p.Job.Layout.World())
				}
				if err := Recheck(tc.snap, p); err != nil {
					t.Fatalf("recheck: %v", err)
				}
			}
			if len(got) != len(tc.wantDP) {
				t.Fatalf("placed %v, want %v (pending %+v)", got, tc.wantDP, pending)
			}
			for id, dp := range tc.wantDP {
				if got[id] != dp {
					t.Fatalf("placed %v, want %v (pending %+v)", got, tc.wantDP, pending)
				}
			}
			for _, p := range pending {
				if want := tc.pending[p.JobID]; want == nil || !errors.Is(p.Err, want) {
					t.Fatalf("pending %s: %v, want %v", p.JobID, p.Err, want)
				}
			}
		})
	}
}

// An elastic job alone on a random cluster: placed whole when it fits
// whole, else with the largest allowed dp that Place of that fixed layout
// accepts, else pending; never below MinDP, never a dp EP does not divide.
func TestElasticProperties(t *testing.T) {
	for seed := range 300 {
		r := rand.New(rand.NewPCG(uint64(seed), 17))
		snap := randomSnapshot(r, 1+r.IntN(16))
		j := randomQueue(r, 1)[0]
		if j.Validate() != nil {
			continue
		}
		j.MinDP = 1 + r.IntN(j.Layout.DP)
		fixed := j
		fixed.MinDP = 0
		_, wholeErr := Place(snap, fixed)
		want := 0
		if wholeErr == nil {
			want = j.Layout.DP
		} else if errors.Is(wholeErr, ErrNoFit) || errors.Is(wholeErr, ErrTooLarge) {
			for dp := j.Layout.DP - 1; dp >= j.MinDP; dp-- {
				small := fixed
				small.Layout.DP = dp
				if _, err := Place(snap, small); dp%j.Layout.EP == 0 && err == nil {
					want = dp
					break
				}
			}
		}
		placed, _ := Schedule(snap, []Job{j})
		got := 0
		if len(placed) == 1 {
			got = placed[0].Job.Layout.DP
			if err := Recheck(snap, placed[0]); err != nil {
				t.Fatalf("seed %d: recheck: %v", seed, err)
			}
		}
		if got != want {
			t.Fatalf("seed %d: job %+v placed with dp %d, want %d", seed, j, got, want)
		}
	}
}
