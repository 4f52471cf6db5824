package client_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
	"github.com/switchyard-ml/switchyard/pkg/client"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
)

// commitCoordinator answers CommitCheckpoint: it commits into cat (as the
// real one does after its checks) unless refuse is set, and then answers
// refuse, so a test can play a lost answer (commit, then fail) too.
type commitCoordinator struct {
	fakeCoordinator
	cat      checkpoint.Catalogue
	commit   bool
	refuse   error
	attempts []int32
}

func (f *commitCoordinator) CommitCheckpoint(ctx context.Context, req *apiv1.CommitCheckpointRequest) (*apiv1.CommitCheckpointResponse, error) {
	f.attempts = append(f.attempts, req.Attempt)
	m, err := checkpoint.DecodeManifest(req.Manifest)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if f.commit {
		if err := f.cat.Commit(ctx, m); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	if f.refuse != nil {
		return nil, f.refuse
	}
	return &apiv1.CommitCheckpointResponse{}, nil
}

func manifest(step int64) checkpoint.Manifest {
	sum := sha256.Sum256([]byte("abc"))
	return checkpoint.Manifest{Job: "j1", Step: step, Layout: checkpoint.Layout{TP: 1, DP: 1, EP: 1}, Shards: []checkpoint.ShardInfo{
		{Name: "rank-0000/state.bin", Size: 3, SHA256: hex.EncodeToString(sum[:]), Kind: checkpoint.KindParams}}}
}

func TestCommitter(t *testing.T) {
	for _, tc := range []struct {
		name    string
		commit  bool
		refuse  error
		wantErr string // "" : success
		stale   bool
	}{
		{name: "committed", commit: true},
		{name: "answer lost after the commit", commit: true, refuse: status.Error(codes.Internal, "leader lost")},
		{name: "step not newer", refuse: status.Error(codes.AlreadyExists, "step 5 is not newer than 7"), wantErr: "not newer than 7", stale: true},
		{name: "attempt over", refuse: status.Error(codes.FailedPrecondition, "attempt 1 of job j1 is over"), wantErr: "attempt 1 of job j1 is over"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cat := checkpoint.NewMemCatalogue()
			f := &commitCoordinator{cat: cat, commit: tc.commit, refuse: tc.refuse}
			c := dial(t, client.Options{Endpoints: []string{serve(t, f)}})
			err := c.Committer(cat, 1).Commit(context.Background(), manifest(5))
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
