// Package jobstate is the one table of a job's states: their names and
// which of them are final. The coordinator's store, the controller, the CLI
// and the tests all read it. It also words a worker's health for the CLI
// and the dashboard.
package jobstate

import (
	"fmt"
	"strings"

	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

const prefix = "JOB_STATE_"

// Final reports whether a job in state st will never change state again
// (succeeded, failed or cancelled).
func Final(st pb.JobState) bool {
	switch st {
	case pb.JobState_JOB_STATE_SUCCEEDED, pb.JobState_JOB_STATE_FAILED, pb.JobState_JOB_STATE_CANCELLED:
		return true
	}
	return false
}

// Name is the state's upper-case name: "RUNNING" for JOB_STATE_RUNNING (a
// value outside the enum keeps protobuf's numeric name).
func Name(st pb.JobState) string {
	return strings.TrimPrefix(st.String(), prefix)
}

// Lower is Name in lower case: "running".
func Lower(st pb.JobState) string { return strings.ToLower(Name(st)) }

// Parse reads a state's name in either case ("running", "RUNNING"); the
// unspecified state is not a name.
func Parse(name string) (pb.JobState, bool) {
	v, ok := pb.JobState_value[prefix+strings.ToUpper(strings.TrimSpace(name))]
	if !ok || v == 0 {
		return 0, false
	}
	return pb.JobState(v), true
}

// CondScheduled is the condition the leader gives a job while it waits to
// be placed: false, its message says why.
const CondScheduled = "Scheduled"

// PendingReason is why a pending job waits (its Scheduled=false
// condition's message), "" for a job that is not pending.
func PendingReason(j *pb.Job) string {
	if j.GetState() != pb.JobState_JOB_STATE_PENDING {
		return ""
	}
	for _, c := range j.GetConditions() {
		if c.GetType() == CondScheduled && !c.GetStatus() {
			return c.GetMessage()
		}
	}
	return ""
}

// WorkerHealth is what the leader knows of a worker, in words: "healthy",
// "silent 4.2s" (no sync for that long; a worker killed -9 shows so until
// its lease runs out), "draining" or "unknown"; from an older
// coordinator, which only says healthy or not, "healthy" or "unhealthy".
func WorkerHealth(w *apiv1.Worker) string {
	switch h := w.GetHealth(); h {
	case "":
		if w.GetHealthy() {
			return "healthy"
		}
		return "unhealthy"
	case "silent":
		return fmt.Sprintf("silent %.1fs", w.GetSecondsSinceSync())
	default:
		return h
	}
}
