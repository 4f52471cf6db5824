package security_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-ml/switchyard/pkg/client"
	"github.com/switchyard-ml/switchyard/pkg/security"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
)

// ListCheckpoints answers with the caller's identity in one checkpoint's
// job id: "worker/job/attempt/rank".
func (f *fakeCoordinator) ListCheckpoints(ctx context.Context, _ *apiv1.ListCheckpointsRequest) (*apiv1.ListCheckpointsResponse, error) {
	f.calls.Add(1)
	id, _ := security.IdentityFrom(ctx)
	who := fmt.Sprintf("%s/%s/%d/%d", id.Worker, id.Scope.Job, id.Scope.Attempt, id.Scope.Rank)
	return &apiv1.ListCheckpointsResponse{Checkpoints: []*apiv1.Checkpoint{{JobId: who}}}, nil
}

// TestRankTokens: a rank token, made from a worker's token alone, is that
// worker narrowed to one rank: it reads the catalogue (the handler sees
// the scope) and may neither sync nor make an operator's call; a token
// whose claim was changed, or made from another worker's or cluster's
// token, is nobody.
func TestRankTokens(t *testing.T) {
	addr, _ := serve(t, security.ServerOptions("s3cret", false)...)
	w1 := security.WorkerToken("s3cret", "w1.a")
	scope := security.RankScope{Job: "job-7", Attempt: 3, Rank: 0}
	r := security.RankToken(w1, scope)
	if r == "" || strings.Contains(r, w1) || strings.Contains(r, "s3cret") {
		t.Fatalf("rank token %q: empty, or holds the worker's token or the secret", r)
	}
	if got := security.RankToken("s3cret", scope); got != "" {
		t.Fatalf("a rank token made from the cluster token: %q, want none", got)
	}
	if got := security.RankToken("", scope); got != "" {
		t.Fatalf("a rank token made from no token: %q, want none", got)
	}
	if security.RankToken(w1, security.RankScope{Job: "job-7", Attempt: 3, Rank: 1}) == r ||
		security.RankToken(w1, security.RankScope{Job: "job-7", Attempt: 4, Rank: 0}) == r {
		t.Fatal("rank tokens of different scopes collide")
	}
	forge := func(old, new string) string {
		f := strings.Replace(r, old, new, 1)
		if f == r {
			t.Fatalf("forge %q -> %q: no change", old, new)
		}
		return f
	}
	for _, tc := range []struct {
		name, token string
		list        codes.Code
		caller      string
		sync, jobs  codes.Code
	}{
		{"rank token", r, codes.OK, "w1.a/job-7/3/0", codes.PermissionDenied, codes.PermissionDenied},
		{"another job", forge("job-7.", "job-8."), codes.Unauthenticated, "", codes.Unauthenticated, codes.Unauthenticated},
		{"another attempt", forge(".3.0.", ".4.0."), codes.Unauthenticated, "", codes.Unauthenticated, codes.Unauthenticated},
		{"attempt written otherwise", forge(".3.0.", ".03.0."), codes.Unauthenticated, "", codes.Unauthenticated, codes.Unauthenticated},
		{"another rank", forge(".3.0.", ".3.1."), codes.Unauthenticated, "", codes.Unauthenticated, codes.Unauthenticated},
		{"another worker", forge(".w1.a.", ".w2.a."), codes.Unauthenticated, "", codes.Unauthenticated, codes.Unauthenticated},
		{"from another worker's token", security.RankToken(security.WorkerToken("s3cret", "w2"), scope), codes.OK, "w2/job-7/3/0", codes.PermissionDenied, codes.PermissionDenied},
		{"from another cluster's", security.RankToken(security.WorkerToken("other", "w1.a"), scope), codes.Unauthenticated, "", codes.Unauthenticated, codes.Unauthenticated},
		{"no claim", "sy-rank..", codes.Unauthenticated, "", codes.Unauthenticated, codes.Unauthenticated},
		{"negative attempt", "sy-rank.job-7.-1.0.w1.a.x", codes.Unauthenticated, "", codes.Unauthenticated, codes.Unauthenticated},
	} {
		c := dial(t, client.Options{Endpoints: []string{addr}, Token: tc.token})
		resp, err := c.ListCheckpoints(ctx5s(t), &apiv1.ListCheckpointsRequest{JobId: "job-7"})
		if status.Code(err) != tc.list || (err == nil && resp.Checkpoints[0].JobId != tc.caller) {
			t.Errorf("%s: list checkpoints %v %v, want %v as %q", tc.name, resp, err, tc.list, tc.caller)
		}
		if _, err := c.SyncWorker(ctx5s(t), &apiv1.SyncWorkerRequest{WorkerId: "w1.a"}); status.Code(err) != tc.sync {
			t.Errorf("%s: sync %v, want %v", tc.name, err, tc.sync)
		}
		if _, err := c.ListJobs(ctx5s(t), &apiv1.ListJobsRequest{}); status.Code(err) != tc.jobs {
			t.Errorf("%s: list jobs %v, want %v", tc.name, err, tc.jobs)
		}
	}
	want := []string{apiv1.Coordinator_ListCheckpoints_FullMethodName, apiv1.Coordinator_CommitCheckpoint_FullMethodName, apiv1.Coordinator_RetireCheckpoint_FullMethodName}
	for _, m := range want {
		if !security.RankMethods[m] {
			t.Errorf("%s is not among the rank methods", m)
		}
	}
	if len(security.RankMethods) != len(want) {
		t.Errorf("rank methods %v, want only %v", security.RankMethods, want)
	}
}

// TestRankTokenOverMutualTLS: a worker's certificate keeps a rank token's
// scope, and refuses the rank token of another worker.
func TestRankTokenOverMutualTLS(t *testing.T) {
	p := newTestPKI(t)
	addr, _ := tlsServer(t, p, security.ServerOptions("s3cret", true)...)
	scope := security.RankScope{Job: "job-7", Attempt: 2, Rank: 1}
	for _, tc := range []struct {
		name, token string
		list        codes.Code
		caller      string
	}{
		{"its worker's", security.RankToken(security.WorkerToken("s3cret", "w1"), scope), codes.OK, "w1/job-7/2/1"},
		{"another worker's", security.RankToken(security.WorkerToken("s3cret", "w2"), scope), codes.PermissionDenied, ""},
	} {
		c := dial(t, client.Options{Endpoints: []string{addr}, TLS: p.Worker, Token: tc.token})
		resp, err := c.ListCheckpoints(ctx5s(t), &apiv1.ListCheckpointsRequest{JobId: "job-7"})
		if status.Code(err) != tc.list || (err == nil && resp.Checkpoints[0].JobId != tc.caller) {
			t.Errorf("%s: list checkpoints %v %v, want %v as %q", tc.name, resp, err, tc.list, tc.caller)
		}
	}
}
