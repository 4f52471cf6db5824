package controller

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
	"github.com/switchyard-ml/switchyard/pkg/security"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// TestRanksReachTheCatalogueThroughTheCoordinator: a worker's ranks read
// their own job's manifests (and no other job's), and only the current
// attempt's rank 0 retires checkpoints, in the catalogue's order (marked
// deleting, then removed).
func TestRanksReachTheCatalogueThroughTheCoordinator(t *testing.T) {
	l := newLocal(t)
	cat := checkpoint.NewMemCatalogue()
	enc := l.placeWithCatalogue(etcdCheckpoints{cat: cat, log: quietLogger(t)})
	j := l.job("j1")
	rank0, rank1 := j.Placement[0].WorkerId, j.Placement[1].WorkerId
	as := func(w string) context.Context { return security.WithIdentity(l.ctx, security.Identity{Worker: w}) }
	if _, err := l.s.CommitCheckpoint(as(rank0), &apiv1.CommitCheckpointRequest{JobId: "j1", Attempt: 0, Manifest: enc}); err != nil {
		t.Fatal(err)
	}
	want, err := checkpoint.DecodeManifest(enc)
	if err != nil {
		t.Fatal(err)
	}
	list := func(ctx context.Context) (map[string][]checkpoint.Manifest, error) {
		resp, err := l.s.ListCheckpoints(ctx, &apiv1.ListCheckpointsRequest{JobId: "j1", Manifests: true})
		if err != nil {
			return nil, err
		}
		got := map[string][]checkpoint.Manifest{}
		for _, c := range resp.Checkpoints {
			m, err := checkpoint.DecodeManifest(c.Manifest)
			if err != nil {
				t.Fatalf("checkpoint %d (%s): %v", c.Step, c.Status, err)
			}
			got[c.Status] = append(got[c.Status], m)
		}
		return got, nil
	}
	for _, ctx := range []context.Context{as(rank1), l.ctx} { // a rank's worker, an operator
		got, err := list(ctx)
		if err != nil || !reflect.DeepEqual(got, map[string][]checkpoint.Manifest{"committed": {want}}) {
			t.Fatalf("the manifests of j1: %v, %v; want step 10's as committed", got, err)
		}
	}
	if _, err := list(as("w9")); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "holds no rank of job j1") {
		t.Fatalf("a worker without a rank of j1 read its catalogue: %v", err)
	}

	retire := func(ctx context.Context, attempt int32, step int64, remove bool) error {
		_, err := l.s.RetireCheckpoint(ctx, &apiv1.RetireCheckpointRequest{JobId: "j1", Attempt: attempt, Step: step, Remove: remove})
		return err
	}
	for _, tc := range []struct {
		name    string
		err     error
		code    codes.Code
		message string
	}{
		{"rank 1's worker", retire(as(rank1), 0, 10, false), codes.PermissionDenied, "does not hold rank 0"},
		{"an attempt that is over", retire(as(rank0), 1, 10, false), codes.FailedPrecondition, "attempt 1 is over"},
		{"a step not committed", retire(as(rank0), 0, 20, false), codes.NotFound, "step 20"},
		{"the removal of a live entry", retire(as(rank0), 0, 10, true), codes.Aborted, checkpoint.ErrNotDeleting.Error()},
		{"a job that is not there", func() error {
			_, err := l.s.RetireCheckpoint(as(rank0), &apiv1.RetireCheckpointRequest{JobId: "gone", Step: 10})
			return err
		}(), codes.FailedPrecondition, "attempt 0 is over"},
	} {
		if status.Code(tc.err) != tc.code || !strings.Contains(tc.err.Error(), tc.message) {
			t.Errorf("%s: %v, want %s naming %q", tc.name, tc.err, tc.code, tc.message)
		}
	}
	if got, _ := list(l.ctx); len(got["committed"]) != 1 {
		t.Fatalf("refused retention steps changed the catalogue: %v", got)
	}
	if err := retire(as(rank0), 0, 10, false); err != nil {
		t.Fatal(err)
	}
	if got, err := list(as(rank0)); err != nil || !reflect.DeepEqual(got, map[string][]checkpoint.Manifest{"deleting": {want}}) {
		t.Fatalf("after the mark: %v, %v; want step 10's manifest as deleting", got, err)
	}
	if err := retire(as(rank0), 0, 10, true); err != nil {
		t.Fatal(err)
	}
	if got, err := list(as(rank0)); err != nil || len(got) != 0 {
		t.Fatalf("after the removal: %v, %v; want nothing", got, err)
	}
}

// TestCallerOnAForwardedCall: on a call a follower forwarded, the worker
// it names is the caller whether the follower's own call carried the
// cluster token (an operator's identity) or, with mutual TLS and no
// token, no identity at all; a worker calling directly cannot name
// another.
func TestCallerOnAForwardedCall(t *testing.T) {
	fwd := func(ctx context.Context, kv ...string) context.Context {
		return metadata.NewIncomingContext(ctx, metadata.Pairs(append([]string{forwardedKey, "c2"}, kv...)...))
	}
	for _, tc := range []struct {
		name   string
		ctx    context.Context
		worker string
		ok     bool
	}{
		{"a follower with the cluster token", fwd(security.WithIdentity(context.Background(), security.Identity{}), onBehalfKey, "w9"), "w9", true},
		{"a follower over mutual TLS, no token", fwd(context.Background(), onBehalfKey, "w9"), "w9", true},
		{"a follower forwarding an operator's call", fwd(context.Background()), "", false},
		{"a worker naming another", fwd(security.WithIdentity(context.Background(), security.Identity{Worker: "w1"}), onBehalfKey, "w9"), "w1", true},
		{"no security, no forwarding", context.Background(), "", false},
	} {
		id, ok := caller(tc.ctx)
		if id.Worker != tc.worker || ok != tc.ok || id.Ranked() {
			t.Errorf("%s: caller %+v (%v), want %q (%v)", tc.name, id, ok, tc.worker, tc.ok)
		}
	}
	// a rank's scope travels beside its worker; one that does not parse is
	// a rank of no job
	nowhere := security.RankScope{Job: "-", Attempt: -1, Rank: -1}
	for _, tc := range []struct {
		name  string
		ctx   context.Context
		scope security.RankScope
	}{
		{"a rank's scope", fwd(context.Background(), onBehalfKey, "w9", onBehalfRankKey, "job-c.2.1"), security.RankScope{Job: "job-c", Attempt: 2, Rank: 1}},
		{"a scope without a job", fwd(context.Background(), onBehalfKey, "w9", onBehalfRankKey, ".2.1"), nowhere},
		{"a scope with extra", fwd(context.Background(), onBehalfKey, "w9", onBehalfRankKey, "job-c.2.1x"), nowhere},
		{"a scope written otherwise", fwd(context.Background(), onBehalfKey, "w9", onBehalfRankKey, "job-c.02.1"), nowhere},
		{"two scopes", fwd(context.Background(), onBehalfKey, "w9", onBehalfRankKey, "job-c.2.1", onBehalfRankKey, "job-d.2.1"), nowhere},
	} {
		if id, ok := caller(tc.ctx); !ok || id.Worker != "w9" || id.Scope != tc.scope {
			t.Errorf("%s: caller %+v (%v), want w9 as %+v", tc.name, id, ok, tc.scope)
		}
	}
	if id, _ := caller(fwd(security.WithIdentity(context.Background(), security.Identity{Worker: "w1", Scope: security.RankScope{Job: "a"}}), onBehalfKey, "w9", onBehalfRankKey, "job-c.2.1")); id.Worker != "w1" || id.Scope.Job != "a" {
		t.Errorf("a rank calling directly named another: %+v", id)
	}
}

// TestWorkerReadsCatalogueThroughAFollower: a rank reads its job's
// catalogue through any replica with its worker's token. A follower that
// does not find the worker in its copy of the placement (it may be
// behind the leader) asks the leader, which refuses a worker holding no
// rank of the job by that worker's name.
func TestWorkerReadsCatalogueThroughAFollower(t *testing.T) {
	h, follower, _ := securedOnTwo(t)
	for _, w := range []string{"w1", "w2"} {
		c := h.client(follower, security.WorkerToken("s3cret", w))
		if _, err := c.ListCheckpoints(ctxT(t), &apiv1.ListCheckpointsRequest{JobId: "job-c", Manifests: true}); err != nil {
			t.Fatalf("%s, which runs a rank of job-c, through a follower: %v", w, err)
		}
	}
	c := h.client(follower, security.WorkerToken("s3cret", "w9"))
	_, err := c.ListCheckpoints(ctxT(t), &apiv1.ListCheckpointsRequest{JobId: "job-c", Manifests: true})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "worker w9 holds no rank of job job-c") {
		t.Fatalf("w9, which runs no rank of job-c, through a follower: %v", err)
	}
}

// TestProbeIsNotASync: a worker's credential probe (a restarted worker's
// first call, before it can register while its killed predecessor's
// lease still runs) does not make the silent worker look alive: no new
// work goes to it until it syncs.
func TestProbeIsNotASync(t *testing.T) {
	l := newLocal(t)
	l.register("w1")
	l.register("w2")
	l.sync("w1")
	l.sync("w2")
	l.tick()
	l.clock.add(l.s.cfg.Silence + time.Second)
	l.sync("w1")
	if _, err := l.s.SyncWorker(l.ctx, &apiv1.SyncWorkerRequest{WorkerId: "w2", Probe: true}); err != nil {
		t.Fatal(err)
	}
	l.submit("j1", fmt.Sprintf(spec2, 0))
	l.tick()
	if j := l.job("j1"); len(j.Placement) != 0 {
		t.Fatalf("placed on %v though w2 only probed since it went silent", j.Placement)
	}
	l.sync("w2")
	l.tick()
	if j := l.job("j1"); len(j.Placement) != 2 {
		t.Fatalf("not placed once w2 synced again: %s, %v", j.State, j.Placement)
	}
}

// TestRankScopes: a rank token (security.RankToken) reaches its own job's
// catalogue only; it commits and retires only as rank 0 of the attempt it
// was made for; it never syncs, even as its own worker.
func TestRankScopes(t *testing.T) {
	l := newLocal(t)
	cat := checkpoint.NewMemCatalogue()
	enc := l.placeWithCatalogue(etcdCheckpoints{cat: cat, log: quietLogger(t)})
	j := l.job("j1")
	rank0 := j.Placement[0].WorkerId
	as := func(job string, attempt, rank int32) context.Context {
		return security.WithIdentity(l.ctx, security.Identity{Worker: rank0, Scope: security.RankScope{Job: job, Attempt: attempt, Rank: rank}})
	}
	commit := func(ctx context.Context) error {
		_, err := l.s.CommitCheckpoint(ctx, &apiv1.CommitCheckpointRequest{JobId: "j1", Attempt: 0, Manifest: enc})
		return err
	}
	list := func(ctx context.Context) error {
		_, err := l.s.ListCheckpoints(ctx, &apiv1.ListCheckpointsRequest{JobId: "j1", Manifests: true})
		return err
	}
	for _, tc := range []struct {
		name    string
		err     error
		message string
	}{
		{"rank 1 commits", commit(as("j1", 0, 1)), "rank 1 of job j1's attempt 0 cannot act for rank 0"},
		{"another job's rank 0 commits", commit(as("j2", 0, 0)), "rank 0 of job j2's attempt 0 cannot act"},
		{"a later attempt's rank 0 commits", commit(as("j1", 1, 0)), "job j1's attempt 1 cannot act for rank 0 of job j1's attempt 0"},
		{"rank 1 retires", func() error {
			_, err := l.s.RetireCheckpoint(as("j1", 0, 1), &apiv1.RetireCheckpointRequest{JobId: "j1", Attempt: 0, Step: 10})
			return err
		}(), "rank 1 of job j1's attempt 0 cannot act"},
		{"another job's rank lists", list(as("j2", 0, 0)), "reads that job's checkpoints only, not job j1's"},
		{"a rank syncs as its worker", func() error {
			_, err := l.s.SyncWorker(as("j1", 0, 0), &apiv1.SyncWorkerRequest{WorkerId: rank0})
			return err
		}(), "cannot sync as worker " + rank0},
	} {
		if status.Code(tc.err) != codes.PermissionDenied || !strings.Contains(tc.err.Error(), tc.message) {
			t.Errorf("%s: %v, want PermissionDenied naming %q", tc.name, tc.err, tc.message)
		}
	}
	if ms, err := cat.List(l.ctx, "j1"); err != nil || len(ms) != 0 {
		t.Fatalf("refused commits changed the catalogue: %v, %v", ms, err)
	}
	for _, rank := range []int32{1, 0} { // any rank of the job reads
		if err := list(as("j1", 0, rank)); err != nil {
			t.Fatalf("rank %d lists its job's checkpoints: %v", rank, err)
		}
	}
	if err := commit(as("j1", 0, 0)); err != nil {
		t.Fatalf("rank 0 of the current attempt commits: %v", err)
	}
	if _, err := l.s.RetireCheckpoint(as("j1", 0, 0), &apiv1.RetireCheckpointRequest{JobId: "j1", Attempt: 0, Step: 10}); err != nil {
		t.Fatalf("rank 0 of the current attempt retires: %v", err)
	}
}

// TestRankTokenThroughAFollower: a rank's scope travels with the call a
// follower forwards, so the leader refuses what the rank token may not do
// and allows what it may.
func TestRankTokenThroughAFollower(t *testing.T) {
	h, follower, j := securedOnTwo(t)
	w0 := j.Placement[0].WorkerId
	token := func(rank int32) string {
		return security.RankToken(security.WorkerToken("s3cret", w0), security.RankScope{Job: "job-c", Attempt: j.Restarts, Rank: rank})
	}
	retire := func(rank int32) error {
		_, err := h.client(follower, token(rank)).RetireCheckpoint(ctxT(t), &apiv1.RetireCheckpointRequest{JobId: "job-c", Attempt: j.Restarts, Step: 99})
		return err
	}
	if err := retire(1); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "rank 1 of job job-c") {
		t.Fatalf("rank 1's token retires through a follower: %v, want PermissionDenied", err)
	}
	if err := retire(0); status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), "99") {
		t.Fatalf("rank 0's token retires a step not there through a follower: %v, want NotFound", err)
	}
	if _, err := h.client(follower, token(0)).ListCheckpoints(ctxT(t), &apiv1.ListCheckpointsRequest{JobId: "job-c"}); err != nil {
		t.Fatalf("rank 0's token lists its job's checkpoints through a follower: %v", err)
	}
	if _, err := h.client(follower, token(0)).SyncWorker(ctxT(t), &apiv1.SyncWorkerRequest{WorkerId: w0}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("rank 0's token syncs as its worker: %v, want PermissionDenied", err)
	}
}

// securedOnTwo is a three-replica cluster with token "s3cret", workers w1
// and w2, and job-c placed on both: the harness, a follower, the job.
func securedOnTwo(t *testing.T) (*harness, *replica, *pb.Job) {
	t.Helper()
	h := newHarness(t, 3, "s3cret")
	lead, follower := h.leader(), h.follower()
	op := h.client(lead, "s3cret")
	h.worker("w1")
	h.worker("w2")
	submit(t, op, "job-c", 0)
	return h, follower, waitJob(t, op, "job-c", "placed", func(j *pb.Job) bool { return len(j.Placement) == 2 })
}
