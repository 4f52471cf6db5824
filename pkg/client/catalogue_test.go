package client_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
	"github.com/switchyard-ml/switchyard/pkg/checkpoint/checkpointtest"
	"github.com/switchyard-ml/switchyard/pkg/client"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
)

// catalogueCoordinator answers the catalogue's calls from cat as the real
// coordinator does from etcd (its fence aside): commits, the manifests of
// ListCheckpoints, and the retention steps. A commit is made unless
// dropCommit is set, and then answered refuse when set, so a test can play
// a lost answer (commit, then fail) too.
type catalogueCoordinator struct {
	fakeCoordinator
	cat        checkpoint.Catalogue
	dropCommit bool
	refuse     error

	mu       sync.Mutex
	attempts []int32
}

func (f *catalogueCoordinator) saw(attempt int32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.attempts = append(f.attempts, attempt)
}

func (f *catalogueCoordinator) CommitCheckpoint(ctx context.Context, req *apiv1.CommitCheckpointRequest) (*apiv1.CommitCheckpointResponse, error) {
	f.saw(req.Attempt)
	m, err := checkpoint.DecodeManifest(req.Manifest)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if !f.dropCommit {
		switch err := f.cat.Commit(ctx, m); {
		case errors.Is(err, checkpoint.ErrStale):
			return nil, status.Error(codes.AlreadyExists, err.Error())
		case err != nil:
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	if f.refuse != nil {
		return nil, f.refuse
	}
	return &apiv1.CommitCheckpointResponse{}, nil
}

func (f *catalogueCoordinator) ListCheckpoints(ctx context.Context, req *apiv1.ListCheckpointsRequest) (*apiv1.ListCheckpointsResponse, error) {
	live, err := f.cat.List(ctx, req.JobId)
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	deleting, err := f.cat.Deleting(ctx, req.JobId)
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	resp := &apiv1.ListCheckpointsResponse{}
	add := func(m checkpoint.Manifest, st string) error {
		ck := &apiv1.Checkpoint{JobId: m.Job, Step: m.Step, Status: st}
		if req.Manifests {
			var err error
			if ck.Manifest, err = checkpoint.EncodeManifest(m); err != nil {
				return err
			}
		}
		resp.Checkpoints = append(resp.Checkpoints, ck)
		return nil
	}
	for _, m := range live {
		if err := add(m, "committed"); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	// deleting ones after the live, newest first: the client sorts
	for i := len(deleting) - 1; i >= 0; i-- {
		m, err := f.cat.Get(ctx, req.JobId, deleting[i])
		if err != nil {
			return nil, status.Error(codes.Unavailable, err.Error())
		}
		if err := add(m, "deleting"); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	return resp, nil
}

func (f *catalogueCoordinator) RetireCheckpoint(ctx context.Context, req *apiv1.RetireCheckpointRequest) (*apiv1.RetireCheckpointResponse, error) {
	f.saw(req.Attempt)
	var err error
	if req.Remove {
		err = f.cat.Remove(ctx, req.JobId, req.Step)
	} else {
		err = f.cat.MarkDeleting(ctx, req.JobId, req.Step)
	}
	switch {
	case errors.Is(err, checkpoint.ErrNotFound):
		return nil, status.Error(codes.NotFound, err.Error())
	case errors.Is(err, checkpoint.ErrNotDeleting):
		return nil, status.Error(codes.Aborted, "retire checkpoint: "+err.Error())
	case err != nil:
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	return &apiv1.RetireCheckpointResponse{}, nil
}

// TestCatalogueContract: the catalogue through the coordinator keeps the
// Catalogue contract, its errors included, over the wire.
func TestCatalogueContract(t *testing.T) {
	checkpointtest.Catalogue(t, func(t *testing.T) checkpoint.Catalogue {
		f := &catalogueCoordinator{cat: checkpoint.NewMemCatalogue()}
		return dial(t, client.Options{Endpoints: []string{serve(t, f)}}).Catalogue(1)
	})
}

func manifest(step int64) checkpoint.Manifest {
	sum := sha256.Sum256([]byte("abc"))
	return checkpoint.Manifest{Job: "j1", Step: step, Layout: checkpoint.Layout{TP: 1, DP: 1, EP: 1}, Shards: []checkpoint.ShardInfo{
		{Name: "rank-0000/state.bin", Size: 3, SHA256: hex.EncodeToString(sum[:]), Kind: checkpoint.KindParams}}}
}

func TestCatalogueCommit(t *testing.T) {
	for _, tc := range []struct {
		name       string
		dropCommit bool
		refuse     error
		wantErr    string // "" : success
		stale      bool
	}{
		{name: "committed"},
		{name: "answer lost after the commit", refuse: status.Error(codes.Internal, "leader lost")},
		// the call was sent again after a first that committed lost its answer
		{name: "answer lost, the resend refused as not newer", refuse: status.Error(codes.AlreadyExists, "step 5 is not newer than 5")},
		{name: "step not newer", dropCommit: true, refuse: status.Error(codes.AlreadyExists, "step 5 is not newer than 7"), wantErr: "not newer than 7", stale: true},
		{name: "attempt over", dropCommit: true, refuse: status.Error(codes.FailedPrecondition, "attempt 1 of job j1 is over"), wantErr: "attempt 1 of job j1 is over"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &catalogueCoordinator{cat: checkpoint.NewMemCatalogue(), dropCommit: tc.dropCommit, refuse: tc.refuse}
			cat := dial(t, client.Options{Endpoints: []string{serve(t, f)}}).Catalogue(1)
			err := cat.Commit(context.Background(), manifest(5))
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("commit: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("commit: %v, want an error naming %q", err, tc.wantErr)
			case errors.Is(err, checkpoint.ErrStale) != tc.stale:
				t.Fatalf("commit: %v, ErrStale %v, want %v", err, errors.Is(err, checkpoint.ErrStale), tc.stale)
			}
			if len(f.attempts) == 0 || f.attempts[0] != 1 {
				t.Fatalf("the coordinator saw attempts %v, want attempt 1", f.attempts)
			}
		})
	}
}

// TestCatalogueRetireSendsAttempt: the retention steps carry the rank's
// attempt, for the coordinator's fence, and its refusal is the caller's
// error, not taken for a missing entry.
func TestCatalogueRetireSendsAttempt(t *testing.T) {
	ctx := context.Background()
	f := &catalogueCoordinator{cat: checkpoint.NewMemCatalogue()}
	cat := dial(t, client.Options{Endpoints: []string{serve(t, f)}}).Catalogue(3)
	if err := cat.Commit(ctx, manifest(5)); err != nil {
		t.Fatal(err)
	}
	if err := cat.MarkDeleting(ctx, "j1", 5); err != nil {
		t.Fatal(err)
	}
	if err := cat.Remove(ctx, "j1", 5); err != nil {
		t.Fatal(err)
	}
	for i, a := range f.attempts {
		if a != 3 {
			t.Fatalf("call %d carried attempt %d, want 3 (all: %v)", i, a, f.attempts)
		}
	}
	over := &fencedCoordinator{}
	cat = dial(t, client.Options{Endpoints: []string{serve(t, over)}}).Catalogue(3)
	for _, remove := range []bool{false, true} {
		var err error
		if remove {
			err = cat.Remove(ctx, "j1", 5)
		} else {
			err = cat.MarkDeleting(ctx, "j1", 5)
		}
		if err == nil || errors.Is(err, checkpoint.ErrNotFound) || errors.Is(err, checkpoint.ErrNotDeleting) || !strings.Contains(err.Error(), "attempt 3 is over") {
			t.Fatalf("retire (remove %v) refused by the fence: %v, want the refusal itself", remove, err)
		}
	}
}

// fencedCoordinator refuses every retention step: the attempt is over.
type fencedCoordinator struct{ fakeCoordinator }

func (*fencedCoordinator) RetireCheckpoint(_ context.Context, req *apiv1.RetireCheckpointRequest) (*apiv1.RetireCheckpointResponse, error) {
	return nil, status.Errorf(codes.FailedPrecondition, "job %s: attempt %d is over", req.JobId, req.Attempt)
}

// TestCatalogueAgainstAnOlderCoordinator: in a rolling upgrade a rank may
// reach a coordinator that predates RetireCheckpoint or sends no
// manifests; what it gets is a transient failure that says so (retried,
// and retention waits for the next commit), not the end of the rank.
func TestCatalogueAgainstAnOlderCoordinator(t *testing.T) {
	ctx := context.Background()
	f := &olderCoordinator{catalogueCoordinator{cat: checkpoint.NewMemCatalogue()}}
	// an older binary's service: RetireCheckpoint is not in it
	desc := apiv1.Coordinator_ServiceDesc
	desc.Methods = slices.DeleteFunc(slices.Clone(desc.Methods), func(m grpc.MethodDesc) bool { return m.MethodName == "RetireCheckpoint" })
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	srv.RegisterService(&desc, f)
	go srv.Serve(lis) //nolint:errcheck // ends with Stop
	t.Cleanup(srv.Stop)
	cat := dial(t, client.Options{Endpoints: []string{lis.Addr().String()}}).Catalogue(0)
	if err := cat.Commit(ctx, manifest(5)); err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"mark deleting": cat.MarkDeleting(ctx, "j1", 5),
		"latest":        func() error { _, err := cat.Latest(ctx, "j1"); return err }(),
	} {
		if !checkpoint.Transient(err) || !strings.Contains(err.Error(), "older than this worker") {
			t.Errorf("%s: %v (transient %v), want a transient failure naming an older coordinator", name, err, checkpoint.Transient(err))
		}
	}
}

// olderCoordinator lists checkpoints without their manifests, as a
// coordinator older than the field does.
type olderCoordinator struct{ catalogueCoordinator }

func (f *olderCoordinator) ListCheckpoints(ctx context.Context, req *apiv1.ListCheckpointsRequest) (*apiv1.ListCheckpointsResponse, error) {
	req.Manifests = false
	return f.catalogueCoordinator.ListCheckpoints(ctx, req)
}
