package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// hasEvent says whether the job's history holds an event of type typ.
func hasEvent(typ string) func(*pb.Job) bool {
	return func(j *pb.Job) bool { return eventTime(j, typ, 0) > 0 }
}

// TestEtcdOutage: etcd is killed while a job checkpoints and restarted
// later. The checkpoint that falls in the outage is committed once etcd is
// back, while training goes on: the job is not restarted (it has no
// restarts to spend) and its history says what happened.
func TestEtcdOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end cluster test: not in -short")
	}
	c := startCluster(t, 1, "w1", "w2")
	id := c.submit("e2e-etcd", jobSpec("e2e-etcd", 1000000, 0, 10))
	j := c.waitJob(id, 90*time.Second, "a first checkpoint", hasEvent("CheckpointCommitted"))
	c.mustBeRunning(j, "the etcd outage")
	c.etcd.kill9()
	down := time.Now()
	j = c.waitJob(id, 90*time.Second, "a commit retrying", hasEvent("CheckpointCommitRetrying"))
	c.mustBeRunning(j, "etcd's restart")
	c.startEtcd()
	t.Logf("etcd down for %s", time.Since(down).Round(time.Second))
	j = c.waitJob(id, 90*time.Second, "the commit retried", hasEvent("CheckpointCommitRetried"))
	c.mustCLI("job", "cancel", id)
	j = c.waitJob(id, 60*time.Second, "cancelled", stateIs(pb.JobState_JOB_STATE_CANCELLED))
	if j.Restarts != 0 || ranAttempts(j) != 1 {
		t.Fatalf("the job restarted (restarts %d, %d attempts) through the outage: %v", j.Restarts, ranAttempts(j), j.Events)
	}
	for _, e := range j.Events {
		if e.Type == "CheckpointCommitRetrying" || e.Type == "CheckpointCommitRetried" {
			t.Logf("%s: %s", e.Type, e.Message)
		}
		if e.Type == "WorkerLost" || e.Type == "RankFailed" || e.Type == "Failed" {
			t.Errorf("%s during the outage: %s", e.Type, e.Message)
		}
	}
	var retried int64
	for _, e := range j.Events {
		if i := strings.Index(e.Message, "checkpoint of step "); e.Type == "CheckpointCommitRetried" && i >= 0 {
			fmt.Sscanf(e.Message[i:], "checkpoint of step %d", &retried) //nolint:errcheck // checked below
		}
	}
	committed := false
	for _, e := range j.Events {
		committed = committed || (e.Type == "CheckpointCommitted" && strings.HasPrefix(e.Message, fmt.Sprintf("checkpoint of step %d committed", retried)))
	}
	if !committed {
		t.Errorf("no CheckpointCommitted event for step %d, the one retried", retried)
	}
	// it was committed, and commits went on after it (retention may have
	// dropped it by now for newer ones)
	var list apiv1.ListCheckpointsResponse
	decode(t, c.mustCLI("checkpoints", "list", id, "-o", "json"), &list)
	newest := int64(0)
	for _, ck := range list.Checkpoints {
		newest = max(newest, ck.Step)
	}
	if retried == 0 || newest < retried {
		t.Fatalf("the retried commit was of step %d; the newest committed checkpoint is of step %d", retried, newest)
	}
}
