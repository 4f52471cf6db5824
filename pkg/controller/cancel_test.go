package controller

import (
	"fmt"
	"testing"
	"time"

	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// TestCancelRecordsTheLastStep: progress is recorded at most every
// ProgressEvery; a job cancelled in between keeps rank 0's newest
// reported step (its history may show a checkpoint of that step
// committed), not the older recorded one.
func TestCancelRecordsTheLastStep(t *testing.T) {
	l := newLocal(t)
	l.s.cfg.ProgressEvery = time.Hour
	l.submit("j1", fmt.Sprintf(spec2, 1))
	l.register("w1")
	l.register("w2")
	l.tick()
	t1, t2 := l.sync("w1"), l.sync("w2")
	r0, w0, w1 := t1[0], "w1", "w2"
	if t2[0].Rank == 0 {
		r0, w0, w1 = t2[0], "w2", "w1"
	}
	l.sync(w0, status_(r0, apiv1.TaskState_TASK_STATE_RUNNING, 3)) // the first step: recorded
	if got := l.job("j1").GetProgress().GetStep(); got != 3 {
		t.Fatalf("progress after the first report: step %d, want 3", got)
	}
	l.clock.add(time.Second)
	l.sync(w0, status_(r0, apiv1.TaskState_TASK_STATE_RUNNING, 8)) // within ProgressEvery: held
	l.sync(w1)
	if got := l.job("j1").GetProgress().GetStep(); got != 3 {
		t.Fatalf("progress within ProgressEvery: step %d, want 3 (not recorded yet)", got)
	}
	r, err := l.s.CancelJob(l.ctx, &apiv1.CancelJobRequest{JobId: "j1"})
	if err != nil {
		t.Fatal(err)
	}
	if r.Job.State != pb.JobState_JOB_STATE_CANCELLED || r.Job.GetProgress().GetStep() != 8 {
		t.Errorf("cancelled job: %v at step %d, want CANCELLED at rank 0's last reported step 8", r.Job.State, r.Job.GetProgress().GetStep())
	}
}
