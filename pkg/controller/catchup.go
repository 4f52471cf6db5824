package controller

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-ml/switchyard/pkg/coordinator"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// jobReader answers the streams' and the catalogue's reads of one job from
// this replica's state. A job committed through the leader reaches a
// follower a moment later, or many seconds later when the follower has just
// restarted: hashicorp/raft backs off from a peer that was down (up to about
// 10s between tries). So "not found" on a follower is the answer only when
// the leader does not know the job either; when the leader knows it, the
// follower waits for its log to catch up, and says it is behind if that
// takes too long (UNAVAILABLE, which clients retry).
type jobReader struct {
	replica string
	local   func(id string) (*pb.Job, error)
	// leaderHas asks the leader whether it knows the job; nil on the
	// leader itself (and for calls a follower forwarded).
	leaderHas func(ctx context.Context, id string) (bool, error)
	// lag bounds the wait for a job the leader knows; unasked bounds it
	// when the leader could not be asked (an election).
	lag, unasked time.Duration
	poll         time.Duration
}

func (r jobReader) read(ctx context.Context, id string) (*pb.Job, error) {
	j, err := r.local(id)
	if !errors.Is(err, coordinator.ErrJobNotFound) || r.leaderHas == nil {
		return j, err
	}
	has, askErr := r.leaderHas(ctx, id)
	if askErr == nil && !has {
		return nil, err
	}
	wait := r.lag
	if askErr != nil {
		wait = r.unasked
	}
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(r.poll):
		}
		if j, err := r.local(id); !errors.Is(err, coordinator.ErrJobNotFound) {
			return j, err
		}
	}
	if askErr != nil {
		return nil, apiError(failure(errUnavailable, "job %s is not known to replica %s, and the leader could not be asked (%v); retry", id, r.replica, askErr))
	}
	return nil, apiError(failure(errUnavailable, "replica %s is behind the leader: job %s is committed there but not replicated here after %s; retry, or name another --coordinator", r.replica, id, wait))
}

// Bounds of jobReader's waits on a follower.
const (
	leaderAskWait   = 2 * time.Second
	leaderAskBudget = 5 * time.Second
)

// localJob reads a job from this replica (see jobReader).
func (s *Server) localJob(ctx context.Context, id string) (*pb.Job, error) {
	r := jobReader{replica: s.cfg.Node.ID(), local: s.cfg.Node.Job, lag: s.cfg.ReplicaLag, unasked: min(leaderAskWait, s.cfg.ReplicaLag), poll: 50 * time.Millisecond}
	if !s.cfg.Node.IsLeader() && !forwarded(ctx) {
		r.leaderHas = s.leaderHasJob
	}
	return r.read(ctx, id)
}

// leaderHasJob asks the leader for the job through the forwarding path.
func (s *Server) leaderHasJob(ctx context.Context, id string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, leaderAskBudget)
	defer cancel()
	_, err := forward(ctx, s, &apiv1.GetJobRequest{JobId: id}, apiv1.CoordinatorClient.GetJob)
	switch status.Code(err) {
	case codes.OK:
		return true, nil
	case codes.NotFound:
		return false, nil
	}
	return false, fmt.Errorf("asking the leader: %w", err)
}
