package controller

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-ml/switchyard/pkg/coordinator"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// TestJobReaderCatchUp: a follower answers "not found" only when the
// leader does not know the job either; a job the leader knows is waited
// for, and a replica that stays behind says so (UNAVAILABLE, retried by
// clients) instead of denying a job that exists.
func TestJobReaderCatchUp(t *testing.T) {
	errBroken := errors.New("fsm broken")
	errNoLeader := errors.New("no raft leader")
	cases := []struct {
		name      string
		appearsAt int   // local lookup that first finds the job; 0: never
		localErr  error // returned by every local lookup instead
		leader    string
		wantCode  codes.Code
		wantErr   error
		wantMsg   string
		wantAsks  int
	}{
		{name: "known here", appearsAt: 1, leader: "has", wantCode: codes.OK},
		{name: "this is the leader", leader: "self", wantErr: coordinator.ErrJobNotFound},
		{name: "leader does not know it either", leader: "lacks", wantErr: coordinator.ErrJobNotFound, wantAsks: 1},
		{name: "replicated after a few polls", appearsAt: 4, leader: "has", wantCode: codes.OK, wantAsks: 1},
		{name: "replica stays behind", leader: "has", wantCode: codes.Unavailable, wantMsg: "replica c2 is behind the leader: job j1", wantAsks: 1},
		{name: "leader unreachable, job arrives", appearsAt: 3, leader: "error", wantCode: codes.OK, wantAsks: 1},
		{name: "leader unreachable, nothing arrives", leader: "error", wantCode: codes.Unavailable, wantMsg: "leader could not be asked (no raft leader)", wantAsks: 1},
		{name: "other local error", localErr: errBroken, leader: "has", wantErr: errBroken},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			lookups, asks := 0, 0
			r := jobReader{
				replica: "c2", lag: 300 * time.Millisecond, unasked: 200 * time.Millisecond, poll: 5 * time.Millisecond,
				local: func(id string) (*pb.Job, error) {
					lookups++
					if tc.localErr != nil {
						return nil, tc.localErr
					}
					if tc.appearsAt > 0 && lookups >= tc.appearsAt {
						return &pb.Job{Id: id}, nil
					}
					return nil, coordinator.ErrJobNotFound
				},
			}
			if tc.leader != "self" {
				r.leaderHas = func(context.Context, string) (bool, error) {
					asks++
					switch tc.leader {
					case "has":
						return true, nil
					case "lacks":
						return false, nil
					}
					return false, errNoLeader
				}
			}
			j, err := r.read(context.Background(), "j1")
			if asks != tc.wantAsks {
				t.Errorf("leader asked %d times, want %d", asks, tc.wantAsks)
			}
			switch {
			case tc.wantErr != nil:
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err %v, want %v", err, tc.wantErr)
				}
			case tc.wantCode == codes.OK:
				if err != nil || j.GetId() != "j1" {
					t.Fatalf("got %v, %v", j, err)
				}
				if tc.appearsAt > 0 && lookups != tc.appearsAt {
					t.Errorf("%d lookups, want %d", lookups, tc.appearsAt)
				}
			default:
				if status.Code(err) != tc.wantCode || !strings.Contains(err.Error(), tc.wantMsg) {
					t.Fatalf("err %v, want %s containing %q", err, tc.wantCode, tc.wantMsg)
				}
			}
		})
	}
	t.Run("cancelled while waiting", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		r := jobReader{replica: "c2", lag: time.Hour, poll: time.Millisecond,
			local:     func(string) (*pb.Job, error) { return nil, coordinator.ErrJobNotFound },
			leaderHas: func(context.Context, string) (bool, error) { return true, nil },
		}
		time.AfterFunc(20*time.Millisecond, cancel)
		if _, err := r.read(ctx, "j1"); !errors.Is(err, context.Canceled) {
			t.Fatalf("err %v, want context.Canceled", err)
		}
	})
}
