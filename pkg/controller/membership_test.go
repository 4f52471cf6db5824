package controller

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
	"github.com/switchyard-ml/switchyard/pkg/security"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

func TestPlanMembership(t *testing.T) {
	r := func(id, addr string, alive bool) *apiv1.Replica {
		return &apiv1.Replica{Id: id, RaftAddress: addr, Voter: true, Alive: alive}
	}
	three := []*apiv1.Replica{r("c1", "h1:1", true), r("c2", "h2:1", true), r("c3", "h3:1", false)}
	down := func() error { return errors.New("connection refused") }
	up := func() error { return nil }
	for _, tc := range []struct {
		name     string
		replicas []*apiv1.Replica
		add      addChange
		noop     bool
		refuse   string
	}{
		{"one alone, a reachable second", three[:1], addChange{"c9", "h9:1", up, up}, false, ""},
		{"unreachable", three[:1], addChange{"c9", "h9:1", down, up}, false, "nothing answers"},
		{"no raft replica there", three[:1], addChange{"c9", "h9:1", up, func() error { return errors.New("the raft replica at h9:1 is \"c8\", not \"c9\"") }}, false, "is \"c8\", not \"c9\"; give the replica's raft address"},
		{"same id and address", three, addChange{"c2", "h2:1", up, up}, true, ""},
		{"live replica moved", three, addChange{"c1", "h7:1", up, up}, false, "already a member at h1:1"},
		{"address of another", three, addChange{"c9", "h2:1", up, up}, false, "is replica c2's"},
		{"two of three alive, a fourth", three, addChange{"c4", "h4:1", up, up}, false, ""},
		{"one of three alive", []*apiv1.Replica{three[0], r("c2", "h2:1", false), three[2]}, addChange{"c4", "h4:1", up, up}, false, "short of the quorum of 3"},
	} {
		noop, err := planAdd(tc.replicas, tc.add)
		if noop != tc.noop || (err == nil) != (tc.refuse == "") || (err != nil && !strings.Contains(err.Error(), tc.refuse)) {
			t.Errorf("add %s: noop %v, err %v; want noop %v, refusal %q", tc.name, noop, err, tc.noop, tc.refuse)
		}
		if err != nil && !errors.Is(err, errRefused) {
			t.Errorf("add %s: %v is not a refusal", tc.name, err)
		}
	}
	for _, tc := range []struct {
		name     string
		replicas []*apiv1.Replica
		id       string
		refuse   string
	}{
		{"the dead one", three, "c3", ""},
		{"a live one, leaving 1 of 2 alive", three, "c2", "short of the quorum of 2"},
		{"a live one of three alive", []*apiv1.Replica{three[0], three[1], r("c3", "h3:1", true)}, "c2", ""},
		{"not a member", three, "c9", "not a member"},
		{"the last", three[:1], "c1", "last voter"},
	} {
		err := planRemove(tc.replicas, tc.id)
		if (err == nil) != (tc.refuse == "") || (err != nil && !strings.Contains(err.Error(), tc.refuse)) {
			t.Errorf("remove %s: %v, want refusal %q", tc.name, err, tc.refuse)
		}
	}
}

// TestMembershipChangesRefused: what the hostile tester did to a
// one-replica cluster is refused with a clear error, and the configuration
// stays as it was (the cluster keeps its quorum).
func TestMembershipChangesRefused(t *testing.T) {
	saved := reachTimeout
	reachTimeout = time.Second
	t.Cleanup(func() { reachTimeout = saved })
	h := newHarness(t, 1, "")
	lead := h.leader()
	c := h.client(lead, "")
	ctx := ctxT(t)
	closed := freePorts(t, 1)[0]                      // nothing listens there
	web := httptest.NewServer(http.NotFoundHandler()) // something that is no raft replica
	defer web.Close()
	for _, tc := range []struct {
		id, addr string
		code     codes.Code
		says     string
	}{
		{"c9", "not an address!!", codes.InvalidArgument, "want HOST:PORT"},
		{strings.Repeat("x", 1<<20), "127.0.0.1:7000", codes.InvalidArgument, "1048576 bytes"},
		{"c9", "127.0.0.1:0", codes.InvalidArgument, "not in 1-65535"},
		{"c9", "bad_host!:7000", codes.InvalidArgument, "neither an IP address nor a DNS name"},
		{"c1", "127.0.0.1:1", codes.FailedPrecondition, "already a member"},
		{"c9", closed, codes.FailedPrecondition, "nothing answers"},
		{"c9", strings.TrimPrefix(web.URL, "http://"), codes.FailedPrecondition, "no raft replica answers at"},
	} {
		_, err := c.AddReplica(ctx, &apiv1.AddReplicaRequest{Id: tc.id, RaftAddress: tc.addr})
		if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("add %.20q at %q: %v; want %v saying %q", tc.id, tc.addr, err, tc.code, tc.says)
		}
		if len(err.Error()) > 1000 {
			t.Errorf("add %.20q: a %d-byte error", tc.id, len(err.Error()))
		}
	}
	for id, code := range map[string]codes.Code{"c1": codes.FailedPrecondition, "nope": codes.NotFound} {
		if _, err := c.RemoveReplica(ctx, &apiv1.RemoveReplicaRequest{Id: id}); status.Code(err) != code {
			t.Errorf("remove %s from a one-replica cluster: %v, want %v", id, err, code)
		}
	}
	cs, err := c.ClusterStatus(ctx, &apiv1.ClusterStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(cs.Replicas) != 1 || cs.Replicas[0].Id != "c1" || cs.LeaderId != "c1" {
		t.Fatalf("the configuration changed: %v (leader %q)", cs.Replicas, cs.LeaderId)
	}
	// the same id at the same address: nothing to do, no error
	if _, err := c.AddReplica(ctx, &apiv1.AddReplicaRequest{Id: "c1", RaftAddress: cs.Replicas[0].RaftAddress}); err != nil {
		t.Errorf("re-adding c1 where it is: %v", err)
	}
}

// TestWorkerIdentity: with a token, a worker acts only as itself: it
// syncs as its own id (directly or through a follower, which forwards
// whom it checked), the cluster token and another worker's token cannot
// sync as it, and only the worker holding rank 0 of the current attempt
// commits the job's checkpoints.
func TestWorkerIdentity(t *testing.T) {
	h := newHarness(t, 3, "s3cret")
	lead, follower := h.leader(), h.follower()
	w1 := security.WorkerToken("s3cret", "w1")
	for _, tc := range []struct {
		name   string
		r      *replica
		token  string
		worker string
		want   codes.Code
	}{
		{"itself", lead, w1, "w1", codes.OK},
		{"itself through a follower", follower, w1, "w1", codes.OK},
		{"as another worker", lead, w1, "w2", codes.PermissionDenied},
		{"as another worker through a follower", follower, w1, "w2", codes.PermissionDenied},
		{"the cluster token", lead, "s3cret", "w1", codes.PermissionDenied},
	} {
		_, err := h.client(tc.r, tc.token).SyncWorker(ctxT(t), &apiv1.SyncWorkerRequest{WorkerId: tc.worker})
		if status.Code(err) != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	h.worker("w1")
	h.worker("w2")
	admin := h.client(lead, "s3cret")
	submit(t, admin, "job-i", 0)
	j := waitJob(t, admin, "job-i", "placed", func(j *pb.Job) bool { return j.State == pb.JobState_JOB_STATE_PLACED })
	rank0, other := j.Placement[0].WorkerId, j.Placement[1].WorkerId
	m, err := checkpoint.EncodeManifest(checkpoint.Manifest{Job: "job-i", Step: 5, Layout: checkpoint.Layout{TP: 1, DP: 2, EP: 2},
		Shards: []checkpoint.ShardInfo{{Name: "rank-0000/state.bin", SHA256: strings.Repeat("0", 64), Kind: checkpoint.KindParams}}})
	if err != nil {
		t.Fatal(err)
	}
	commit := func(r *replica, worker string) error {
		_, err := h.client(r, security.WorkerToken("s3cret", worker)).CommitCheckpoint(ctxT(t), &apiv1.CommitCheckpointRequest{JobId: "job-i", Manifest: m})
		return err
	}
	if err := commit(follower, other); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "does not hold rank 0") {
		t.Fatalf("a commit by %s, which holds rank 1: %v", other, err)
	}
	if err := commit(follower, rank0); err != nil {
		t.Fatalf("a commit by %s, which holds rank 0: %v", rank0, err)
	}
	if _, err := h.client(lead, w1).ListJobs(ctxT(t), &apiv1.ListJobsRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("a worker token listing jobs: %v", err)
	}
}
