package controller

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/status"

	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
)

// TestFollowerForwardsToTheNewLeader: the leader dies (kill -9: its API
// and raft stop at once) while a client talks to a follower only, as the
// CLI does with --coordinator FOLLOWER, and a worker whose preferred
// replica is that follower. The follower must not spend the call's whole
// deadline on the dead leader's address: once a new leader is elected it
// forwards there, and the call is answered well within its deadline.
func TestFollowerForwardsToTheNewLeader(t *testing.T) {
	h := newHarness(t, 3, "")
	lead, follower := h.leader(), h.follower()
	c := h.client(follower, "")
	submit(t, c, "job-k", 0)
	// kill -9: the API and raft stop at once, the replica's loops are
	// stopped by the cleanup
	lead.grpc.Stop()
	if err := lead.node.Shutdown(); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := c.GetJob(ctx, &apiv1.GetJobRequest{JobId: "job-k"})
	if err != nil {
		t.Fatalf("job status through a follower after the leader died: %v (code %v): the follower kept forwarding to the dead leader %s", err, status.Code(err), lead.node.ID())
	}
	if r.Job.Id != "job-k" {
		t.Fatalf("answer %v", r.Job)
	}
	if _, err := c.CancelJob(ctx, &apiv1.CancelJobRequest{JobId: "job-k"}); err != nil {
		t.Fatalf("a write through the follower after the leader died: %v", err)
	}
}
