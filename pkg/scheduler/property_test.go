package scheduler

import (
	"errors"
	"math/rand/v2"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// TestScheduleProperties runs Schedule on random clusters and queues and
// checks its invariants against independent re-computations.
func TestScheduleProperties(t *testing.T) {
	n := 400
	if testing.Short() {
		n = 50
	}
	for seed := range n {
		r := rand.New(rand.NewPCG(uint64(seed), 7))
		snap := randomSnapshot(r, 1+r.IntN(24))
		queue := randomQueue(r, 1+r.IntN(12))
		placed, pending := Schedule(snap, queue)
		checkSchedule(t, seed, snap, queue, placed, pending)

		// Determinism: the same input in another order gives the same output.
		snap2 := snap
		snap2.Workers = append([]Worker(nil), snap.Workers...)
		r.Shuffle(len(snap2.Workers), func(a, b int) { snap2.Workers[a], snap2.Workers[b] = snap2.Workers[b], snap2.Workers[a] })
		queue2 := append([]Job(nil), queue...)
		r.Shuffle(len(queue2), func(a, b int) { queue2[a], queue2[b] = queue2[b], queue2[a] })
		placed2, pending2 := Schedule(snap2, queue2)
		if !reflect.DeepEqual(placed, placed2) || !samePending(pending, pending2) {
			t.Fatalf("seed %d: output depends on input order:\n%+v\n%+v\n%+v\n%+v", seed, placed, placed2, pending, pending2)
		}
	}
}

func samePending(a, b []Pending) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].JobID != b[i].JobID || a[i].Reason != b[i].Reason || a[i].Err.Error() != b[i].Err.Error() {
			return false
		}
	}
	return true
}

func checkSchedule(t *testing.T, seed int, snap Snapshot, queue []Job, placed []Plan, pending []Pending) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("seed %d: "+format, append([]any{seed}, args...)...)
	}
	// Unique workers by id (duplicates are ignored by the scheduler).
	count := map[string]int{}
	for _, w := range snap.Workers {
		count[w.ID]++
	}
	byID := map[string]Worker{}
	for _, w := range snap.Workers {
		if count[w.ID] == 1 {
			byID[w.ID] = w
		}
	}
	host := func(w Worker) string {
		if w.Host == "" {
			return w.ID
		}
		return w.Host
	}

	// Every job is accounted for exactly once.
	seen := map[string]int{}
	for _, p := range placed {
		seen[p.Job.ID]++
	}
	for _, p := range pending {
		seen[p.JobID]++
		if p.Reason == "" {
			fail("job %s pending without a reason", p.JobID)
		}
		if !errors.Is(p.Err, ErrInvalidJob) && !errors.Is(p.Err, ErrTooLarge) && !errors.Is(p.Err, ErrNoFit) && !errors.Is(p.Err, ErrBlocked) {
			fail("job %s pending with unexpected error %v", p.JobID, p.Err)
		}
	}
	want := map[string]int{}
	for _, j := range queue {
		want[j.ID]++
	}
	if !reflect.DeepEqual(seen, want) {
		fail("jobs accounted %v, queued %v", seen, want)
	}

	used := map[string]string{}
	for _, p := range placed {
		j := p.Job
		world := j.Layout.World()
		// Gang: all ranks placed.
		if len(p.Workers) != world || len(p.Hosts) != world {
			fail("job %s: %d workers, %d hosts for world %d", j.ID, len(p.Workers), len(p.Hosts), world)
		}
		for r, id := range p.Workers {
			w, ok := byID[id]
			if !ok {
				fail("job %s rank %d: unknown worker %q", j.ID, r, id)
			}
			// No double booking, across the whole output.
			if other, dup := used[id]; dup {
				fail("worker %s in plans of %s and %s", id, other, j.ID)
			}
			used[id] = j.ID
			// Fit.
			if !w.Healthy || w.Job != "" || !j.PerRank.FitsIn(w.Free) || !labelsMatch(w.Labels, j.Labels) || !rootsHold(w.Roots, j.Paths) || !gpusHold(w, j) {
				fail("job %s rank %d: worker %+v does not fit %+v", j.ID, r, w, j.PerRank)
			}
			// Topology: TP group on one host; Hosts is right.
			if p.Hosts[r] != host(w) {
				fail("job %s rank %d: host %q, worker is on %q", j.ID, r, p.Hosts[r], host(w))
			}
			if p.Hosts[r] != p.Hosts[r-r%j.Layout.TP] {
				fail("job %s rank %d: TP group split", j.ID, r)
			}
		}
		if err := Recheck(snap, p); err != nil {
			fail("recheck of a fresh plan: %v", err)
		}
	}

	// Replay the queue order with an independent oracle: which workers are
	// left, which are claimed by waiting jobs, and whether each pending
	// job's error matches the arithmetic.
	order := append([]Job(nil), queue...)
	sort.SliceStable(order, func(a, b int) bool {
		if order[a].Priority != order[b].Priority {
			return order[a].Priority > order[b].Priority
		}
		if order[a].Seq != order[b].Seq {
			return order[a].Seq < order[b].Seq
		}
		return order[a].ID < order[b].ID
	})
	planOf := map[string]Plan{}
	for _, p := range placed {
		planOf[p.Job.ID] = p
	}
	pendOf := map[string]Pending{}
	for _, p := range pending {
		if _, ok := pendOf[p.JobID]; !ok {
			pendOf[p.JobID] = p
		}
	}
	taken := map[string]bool{}
	claimed := map[string]bool{}
	done := map[string]bool{}
	for _, j := range order {
		if done[j.ID] {
			continue
		}
		done[j.ID] = true
		if p, ok := planOf[j.ID]; ok {
			for _, id := range p.Workers {
				if claimed[id] {
					fail("job %s took worker %s claimed by a waiting higher-priority job", j.ID, id)
				}
				taken[id] = true
			}
			continue
		}
		pd := pendOf[j.ID]
		if j.Validate() != nil {
			if !errors.Is(pd.Err, ErrInvalidJob) {
				fail("invalid job %s: %v", j.ID, pd.Err)
			}
			continue
		}
		static := func(w Worker) bool {
			return labelsMatch(w.Labels, j.Labels) && rootsHold(w.Roots, j.Paths) && j.PerRank.FitsIn(w.Total) && gpusHold(w, j)
		}
		slots := func(ok func(Worker) bool) int {
			perHost := map[string]int{}
			for _, w := range byID {
				if ok(w) {
					perHost[host(w)]++
				}
			}
			s := 0
			for _, n := range perHost {
				s += n / j.Layout.TP
			}
			return s
		}
		free := func(useClaimed bool) func(Worker) bool {
			return func(w Worker) bool {
				return static(w) && w.Healthy && w.Job == "" && !taken[w.ID] && j.PerRank.FitsIn(w.Free) && (useClaimed || !claimed[w.ID])
			}
		}
		switch {
		case errors.Is(pd.Err, ErrTooLarge):
			if slots(static) >= j.Layout.DP {
				fail("job %s: ErrTooLarge but the cluster has room: %v", j.ID, pd.Err)
			}
			continue // claims nothing
		case errors.Is(pd.Err, ErrNoFit):
			if slots(static) < j.Layout.DP || slots(free(true)) >= j.Layout.DP {
				fail("job %s: ErrNoFit is wrong: %v", j.ID, pd.Err)
			}
		case errors.Is(pd.Err, ErrBlocked):
			if slots(free(false)) >= j.Layout.DP || slots(free(true)) < j.Layout.DP {
				fail("job %s: ErrBlocked is wrong: %v", j.ID, pd.Err)
			}
		default:
			fail("job %s: unexpected %v", j.ID, pd.Err)
		}
		// It claims every untaken worker of its kind on hosts with room
		// for a TP group.
		perHost := map[string][]string{}
		for _, w := range byID {
			if !taken[w.ID] && static(w) {
				perHost[host(w)] = append(perHost[host(w)], w.ID)
			}
		}
		for _, ids := range perHost {
			if len(ids) >= j.Layout.TP {
				for _, id := range ids {
					claimed[id] = true
				}
			}
		}
	}
}

// gpusHold is Worker.gpuMemoryFor said another way: a rank without GPUs,
// or a worker whose GPU memory is unknown, needs nothing; otherwise its
// GPUs hold at least the job's need.
func gpusHold(w Worker, j Job) bool {
	if j.PerRank.GPUs < 1 || w.GPUMemoryMiB < 1 {
		return true
	}
	return max(w.GPUMemoryMiB, j.GPUMemoryMiB) == w.GPUMemoryMiB
}

// rootsHold is pathsAllowed computed another way (filepath.Rel): a worker
// that names no roots takes any path.
func rootsHold(roots, paths []string) bool {
	if len(roots) == 0 {
		return true
	}
	for _, p := range paths {
		in := false
		for _, r := range roots {
			rel, err := filepath.Rel(r, p)
			in = in || (err == nil && rel != ".." && !strings.HasPrefix(rel, "../"))
		}
		if !in {
			return false
		}
	}
	return true
}

// TestPlaceMatchesScheduleHead: Place of the head job is Schedule's first
// decision.
func TestPlaceMatchesScheduleHead(t *testing.T) {
	for seed := range 200 {
		r := rand.New(rand.NewPCG(uint64(seed), 11))
		snap := randomSnapshot(r, 16)
		j := randomQueue(r, 1)[0]
		placed, pending := Schedule(snap, []Job{j})
		plan, err := Place(snap, j)
		switch {
		case err == nil && (len(placed) != 1 || !reflect.DeepEqual(placed[0], plan)):
			t.Fatalf("seed %d: Place gave %+v, Schedule %+v", seed, plan, placed)
		case err != nil && (len(pending) != 1 || pending[0].Err.Error() != err.Error()):
			t.Fatalf("seed %d: Place: %v, Schedule: %+v", seed, err, pending)
		}
	}
}

// TestRecheckAfterApplying: once a plan is applied (its workers busy), it
// and any plan on the same workers are stale, and the other plans of the
// same pass still pass.
func TestRecheckAfterApplying(t *testing.T) {
	for seed := range 100 {
		r := rand.New(rand.NewPCG(uint64(seed), 13))
		snap := randomSnapshot(r, 16)
		placed, _ := Schedule(snap, randomQueue(r, 8))
		if len(placed) == 0 {
			continue
		}
		applied := snap
		applied.Workers = append([]Worker(nil), snap.Workers...)
		mine := map[string]bool{}
		for _, id := range placed[0].Workers {
			mine[id] = true
		}
		for i := range applied.Workers {
			if mine[applied.Workers[i].ID] {
				applied.Workers[i].Job = placed[0].Job.ID
			}
		}
		if err := Recheck(applied, placed[0]); !errors.Is(err, ErrStale) {
			t.Fatalf("seed %d: applied plan rechecks: %v", seed, err)
		}
		for _, p := range placed[1:] {
			if err := Recheck(applied, p); err != nil {
				t.Fatalf("seed %d: %v", seed, err)
			}
		}
	}
}
