package scheduler

import (
	"fmt"
	"strings"
)

// Recheck verifies plan against a fresh snapshot before it is committed:
// the job is valid, every rank has a distinct worker that still exists, is
// healthy and idle, carries the job's labels, allows its paths, has the
// per-rank resources free and sits on the host the plan recorded, and
// every TP group is on one host. Errors wrap ErrStale (or ErrInvalidJob)
// and name the rank.
func Recheck(snap Snapshot, plan Plan) error {
	job := plan.Job
	if err := job.Validate(); err != nil {
		return err
	}
	stale := func(format string, args ...any) error {
		return fmt.Errorf("%w: job %q: %s", ErrStale, job.ID, fmt.Sprintf(format, args...))
	}
	world := job.Layout.World()
	if len(plan.Workers) != world || len(plan.Hosts) != world {
		return stale("plan has %d workers and %d hosts for world %d", len(plan.Workers), len(plan.Hosts), world)
	}
	cl := newCluster(snap)
	rankOf := make(map[string]int, world)
	for r, id := range plan.Workers {
		if prev, dup := rankOf[id]; dup {
			return stale("rank %d: worker %q also holds rank %d", r, id, prev)
		}
		rankOf[id] = r
		i, ok := cl.byID[id]
		if !ok {
			return stale("rank %d: worker %q is gone", r, id)
		}
		w := cl.workers[i]
		host := cl.hosts[cl.hostOf[i]]
		switch {
		case !w.Healthy:
			return stale("rank %d: worker %q is unhealthy", r, id)
		case w.Job != "":
			return stale("rank %d: worker %q is busy with job %q", r, id, w.Job)
		case !labelsMatch(w.Labels, job.Labels):
			return stale("rank %d: worker %q lacks labels %s", r, id, labelsString(job.Labels))
		case !pathsAllowed(w.Roots, job.Paths):
			return stale("rank %d: worker %q does not allow %s", r, id, strings.Join(job.Paths, " and "))
		case !w.gpuMemoryFor(job):
			return stale("rank %d: worker %q has GPUs of %d MiB, a rank needs %d MiB", r, id, w.GPUMemoryMiB, job.GPUMemoryMiB)
		case !job.PerRank.FitsIn(w.Free):
			return stale("rank %d: worker %q has %s free, a rank needs %s", r, id, w.Free, job.PerRank)
		case host != plan.Hosts[r]:
			return stale("rank %d: worker %q is on host %q, the plan says %q", r, id, host, plan.Hosts[r])
		}
		if lead := r - r%job.Layout.TP; plan.Hosts[lead] != host {
			return stale("rank %d: tensor-parallel group split across hosts %q and %q", r, plan.Hosts[lead], host)
		}
	}
	return nil
}
