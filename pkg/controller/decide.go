package controller

import (
	"fmt"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/membership"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// The pure part of supervision: from what the leader knows at one instant
// (the jobs, the live workers, when each worker last synced, the rank
// failures held back) to the attempts that must end and why. It reads no
// clock, no raft and no network; tick applies its verdicts.

// observed is the input of one supervision decision.
type observed struct {
	now  time.Time
	jobs []*pb.Job
	live map[string]membership.WorkerInfo // registered workers (etcd leases)
	// lastSync is when each worker last called SyncWorker.
	lastSync map[string]time.Time
	// failing is each job's first rank failure of its current attempt,
	// held back for the grace period.
	failing map[string]pendingFailure
	// draining holds the workers that said they are shutting down: one
	// that leaves has drained, not failed.
	draining map[string]bool
	// silence is how long a worker may go without a sync; grace how
	// long a rank failure waits for a worker loss that explains it.
	silence, grace time.Duration
	// startSilence is how long a worker holding ranks of a placed job
	// (none started) may go without a sync before the job moves on; 0:
	// never.
	startSilence time.Duration
}

// ReasonRefused ends a job whose rank a worker refused to start: a
// restart would be refused too, so the job fails.
const ReasonRefused = "Refused"

// ReasonDrained ends the attempt of a job whose worker drained (it said
// it was shutting down, and left): the job restarts elsewhere from its
// checkpoint, and the restart policy does not count it.
const ReasonDrained = "WorkerDrained"

// verdict ends a job's current attempt: Reason WorkerLost, WorkerDrained,
// RankFailed or Refused, the message for the job's history and the worker it blames
// ("" : none).
type verdict struct {
	job    *pb.Job
	reason string
	msg    string
	worker string
}

// decide returns the attempts to end, in job order: an active job with a
// placed worker whose lease expired has lost it; one whose held rank
// failure sits next to a worker silent for longer than silence blames that
// worker; one whose held failure has waited out the grace period fails as
// the rank reported; a placed job whose ranks have not started on a
// worker that has not synced for startSilence (registered, but not
// taking its work: hung, or an impostor) has lost that worker.
func decide(o observed) []verdict {
	var out []verdict
	for _, j := range o.jobs {
		if !active(j) {
			continue
		}
		if w, rank, ok := lostWorker(j, o.live); ok {
			if o.draining[w] {
				out = append(out, verdict{j, ReasonDrained, fmt.Sprintf("worker %s (rank %d) drained: it shut down after the job's checkpoint", w, rank), w})
				continue
			}
			out = append(out, verdict{j, "WorkerLost", fmt.Sprintf("worker %s (rank %d) lost: its etcd lease expired", w, rank), w})
			continue
		}
		if j.State == pb.JobState_JOB_STATE_PLACED && o.startSilence > 0 {
			if w, rank, silent := silentWorker(j, o.lastSync, o.now, o.startSilence); silent {
				out = append(out, verdict{j, "WorkerLost", fmt.Sprintf("worker %s (rank %d) has not synced for %s while its rank waited to start: it is not taking work",
					w, rank, o.now.Sub(o.lastSync[w]).Round(100*time.Millisecond)), w})
				continue
			}
		}
		f, ok := o.failing[j.Id]
		if !ok || f.attempt != j.Restarts {
			continue
		}
		if w, rank, silent := silentWorker(j, o.lastSync, o.now, o.silence); silent {
			out = append(out, verdict{j, "WorkerLost", fmt.Sprintf("worker %s (rank %d) stopped responding (no sync for %s) and its peers failed: %s",
				w, rank, o.now.Sub(o.lastSync[w]).Round(100*time.Millisecond), f.msg), w})
			continue
		}
		if o.now.Sub(f.at) >= o.grace {
			reason, msg, blame := "RankFailed", f.msg, f.worker
			switch w, rank, drained := drainingWorker(j, o.draining); {
			case f.refused:
				reason = ReasonRefused
			case drained:
				// the drain stopped the rank after the job's checkpoint
				// (or its peer failed for it): the worker is not done yet
				// (other ranks of it still drain), but this job's is
				reason, blame = ReasonDrained, w
				msg = fmt.Sprintf("worker %s (rank %d) drained: it stopped the job's rank after its checkpoint (%s)", w, rank, f.msg)
			}
			out = append(out, verdict{j, reason, msg, blame})
		}
	}
	return out
}

// drainingWorker returns a placed worker of j that said it drains.
func drainingWorker(j *pb.Job, draining map[string]bool) (string, int32, bool) {
	for _, a := range j.Placement {
		if draining[a.WorkerId] {
			return a.WorkerId, a.Rank, true
		}
	}
	return "", 0, false
}

// lostWorker returns a placed worker of j that is no longer registered.
func lostWorker(j *pb.Job, live map[string]membership.WorkerInfo) (string, int32, bool) {
	for _, a := range j.Placement {
		if _, ok := live[a.WorkerId]; !ok {
			return a.WorkerId, a.Rank, true
		}
	}
	return "", 0, false
}

// silentWorker returns the placed worker of j that has been silent the
// longest, if that is longer than silence (a loaded machine can make a
// live worker late too; the dead one is the quietest).
func silentWorker(j *pb.Job, lastSync map[string]time.Time, now time.Time, silence time.Duration) (string, int32, bool) {
	var (
		worker  string
		rank    int32
		longest time.Duration
	)
	for _, a := range j.Placement {
		t, ok := lastSync[a.WorkerId]
		if d := now.Sub(t); ok && d > silence && d > longest {
			worker, rank, longest = a.WorkerId, a.Rank, d
		}
	}
	return worker, rank, worker != ""
}
