package client

import (
	"context"
	"fmt"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
)

// commitTimeout bounds one commit through the coordinator (its retries
// included): the coordinator verifies every shard before it answers.
const commitTimeout = 30 * time.Second

// lostAnswerCheck bounds the look in the catalogue after a failed commit
// for the step committed all the same.
const lostAnswerCheck = 10 * time.Second

// Committer returns a catalogue that reads from cat and commits through the
// coordinator, which refuses commits of an attempt that is over (the
// fence) and then writes to the same catalogue. A commit whose answer was
// lost (a leader fail-over) is retried by the client; when cat then holds
// the step with the same shards, the commit succeeded. The coordinator's
// refusal of a step that is not newer (ALREADY_EXISTS) wraps
// checkpoint.ErrStale, as Catalogue.Commit's contract asks.
func (c *Client) Committer(cat checkpoint.Catalogue, attempt int) checkpoint.Catalogue {
	return checkpoint.CommitVia(cat, func(ctx context.Context, m checkpoint.Manifest) error {
		enc, err := checkpoint.EncodeManifest(m)
		if err != nil {
			return err
		}
		cctx, cancel := context.WithTimeout(ctx, commitTimeout)
		defer cancel()
		_, err = c.CommitCheckpoint(cctx, &apiv1.CommitCheckpointRequest{JobId: m.Job, Attempt: int32(attempt), Manifest: enc})
		if err == nil {
			return nil
		}
		// bounded: with etcd down it would wait for as long as ctx lasts
		gctx, gcancel := context.WithTimeout(ctx, lostAnswerCheck)
		got, gerr := cat.Get(gctx, m.Job, m.Step)
		gcancel()
		if gerr == nil && slices.Equal(got.Shards, m.Shards) {
			return nil // committed by an earlier try whose answer was lost
		}
		if st, ok := status.FromError(err); ok && st.Code() == codes.AlreadyExists {
			return fmt.Errorf("%w (via the coordinator): %s", checkpoint.ErrStale, st.Message())
		}
		return fmt.Errorf("client: commit step %d of job %s through the coordinator: %w", m.Step, m.Job, err)
	})
}
