package client

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
)

// commitTimeout bounds one commit through the coordinator (its retries
// included): the coordinator verifies every shard before it answers.
const commitTimeout = 30 * time.Second

// callTimeout bounds one read of the catalogue or one retention step
// through the coordinator: with etcd down, the coordinator would wait for
// as long as the call lasts.
const callTimeout = 15 * time.Second

// Catalogue is the checkpoint catalogue of the jobs of a rank of attempt
// attempt, read and written through the coordinator: a rank needs no
// access to etcd (nor its credentials). Commits and the retention steps
// (MarkDeleting, Remove) pass the coordinator's fence, which refuses
// those of an attempt that is over and those of a worker that does not
// hold the job's rank 0. A commit whose answer was lost (a leader
// fail-over) is looked up: when the catalogue then holds the step with
// the same shards, the commit succeeded. The coordinator's refusal of a
// step that is not newer (ALREADY_EXISTS) wraps checkpoint.ErrStale, as
// Catalogue.Commit's contract asks.
func (c *Client) Catalogue(attempt int) checkpoint.Catalogue {
	return catalogue{c: c, attempt: int32(attempt)}
}

type catalogue struct {
	c       *Client
	attempt int32
}

var _ checkpoint.Catalogue = catalogue{}

func (k catalogue) Commit(ctx context.Context, m checkpoint.Manifest) error {
	if err := m.Validate(); err != nil {
		return err
	}
	enc, err := checkpoint.EncodeManifest(m)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, commitTimeout)
	defer cancel()
	_, err = k.c.CommitCheckpoint(cctx, &apiv1.CommitCheckpointRequest{JobId: m.Job, Attempt: k.attempt, Manifest: enc})
	if err == nil {
		return nil
	}
	// The call itself may have been sent twice (a retry on UNAVAILABLE, a
	// fail-over to another replica) after a first one that committed and
	// lost its answer; its second then finds the step committed.
	if got, gerr := k.Get(ctx, m.Job, m.Step); gerr == nil && slices.Equal(got.Shards, m.Shards) {
		return nil
	}
	if st, ok := status.FromError(err); ok && st.Code() == codes.AlreadyExists {
		return fmt.Errorf("%w (via the coordinator): %s", checkpoint.ErrStale, st.Message())
	}
	return fmt.Errorf("client: commit step %d of job %s through the coordinator: %w", m.Step, m.Job, olderCoordinator(err, "CommitCheckpoint"))
}

// entries reads the job's catalogue: live manifests newest first, and
// deleting ones oldest first.
func (k catalogue) entries(ctx context.Context, job string) (live, deleting []checkpoint.Manifest, err error) {
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := k.c.ListCheckpoints(cctx, &apiv1.ListCheckpointsRequest{JobId: job, Manifests: true})
	if err != nil {
		return nil, nil, fmt.Errorf("client: the checkpoints of job %s: %w", job, err)
	}
	live = []checkpoint.Manifest{}
	for _, ck := range resp.GetCheckpoints() {
		if len(ck.GetManifest()) == 0 {
			// a replica older than this worker (a rolling upgrade): another may answer
			return nil, nil, fmt.Errorf("client: checkpoint %d of job %s: %w", ck.GetStep(), job,
				status.Error(codes.Unavailable, "the coordinator sent no manifest: it is older than this worker (upgrade every coordinator before the workers)"))
		}
		m, err := checkpoint.DecodeManifest(ck.GetManifest())
		if err != nil {
			return nil, nil, fmt.Errorf("client: checkpoint %d of job %s: %w", ck.GetStep(), job, err)
		}
		if ck.GetStatus() == "deleting" {
			deleting = append(deleting, m)
		} else {
			live = append(live, m)
		}
	}
	slices.SortFunc(live, func(a, b checkpoint.Manifest) int { return cmp.Compare(b.Step, a.Step) })
	slices.SortFunc(deleting, func(a, b checkpoint.Manifest) int { return cmp.Compare(a.Step, b.Step) })
	return live, deleting, nil
}

func (k catalogue) Latest(ctx context.Context, job string) (checkpoint.Manifest, error) {
	live, _, err := k.entries(ctx, job)
	if err != nil {
		return checkpoint.Manifest{}, err
	}
	if len(live) == 0 {
		return checkpoint.Manifest{}, fmt.Errorf("%w: job %s", checkpoint.ErrNoCheckpoint, job)
	}
	return live[0], nil
}

func (k catalogue) List(ctx context.Context, job string) ([]checkpoint.Manifest, error) {
	live, _, err := k.entries(ctx, job)
	return live, err
}

func (k catalogue) Get(ctx context.Context, job string, step int64) (checkpoint.Manifest, error) {
	live, deleting, err := k.entries(ctx, job)
	if err != nil {
		return checkpoint.Manifest{}, err
	}
	if i := slices.IndexFunc(live, func(m checkpoint.Manifest) bool { return m.Step == step }); i >= 0 {
		return live[i], nil
	}
	if i := slices.IndexFunc(deleting, func(m checkpoint.Manifest) bool { return m.Step == step }); i >= 0 {
		return deleting[i], nil
	}
	return checkpoint.Manifest{}, fmt.Errorf("%w: job %s step %d", checkpoint.ErrNotFound, job, step)
}

func (k catalogue) Deleting(ctx context.Context, job string) ([]int64, error) {
	_, deleting, err := k.entries(ctx, job)
	if err != nil {
		return nil, err
	}
	steps := []int64{}
	for _, m := range deleting {
		steps = append(steps, m.Step)
	}
	return steps, nil
}

func (k catalogue) MarkDeleting(ctx context.Context, job string, step int64) error {
	return k.retire(ctx, job, step, false)
}

func (k catalogue) Remove(ctx context.Context, job string, step int64) error {
	return k.retire(ctx, job, step, true)
}

func (k catalogue) retire(ctx context.Context, job string, step int64, remove bool) error {
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	_, err := k.c.RetireCheckpoint(cctx, &apiv1.RetireCheckpointRequest{JobId: job, Attempt: k.attempt, Step: step, Remove: remove})
	if err == nil {
		return nil
	}
	st, _ := status.FromError(err)
	switch {
	case st.Code() == codes.NotFound && !remove:
		return fmt.Errorf("%w (via the coordinator): %s", checkpoint.ErrNotFound, st.Message())
	case st.Code() == codes.Aborted && remove:
		return fmt.Errorf("%w (via the coordinator): %s", checkpoint.ErrNotDeleting, st.Message())
	}
	op := "mark step %d of job %s deleting"
	if remove {
		op = "remove the entry of step %d of job %s"
	}
	return fmt.Errorf("client: "+op+" through the coordinator: %w", step, job, olderCoordinator(err, "RetireCheckpoint"))
}

// olderCoordinator is err, or for a method the coordinator does not know
// (a replica older than this worker, in a rolling upgrade) an UNAVAILABLE
// that says so: a transient failure, retried, not the end of the rank.
func olderCoordinator(err error, method string) error {
	// gRPC's own answer for a method the server's binary lacks, not a
	// coordinator without a catalogue
	if st, _ := status.FromError(err); st.Code() != codes.Unimplemented || !strings.Contains(st.Message(), "unknown method") {
		return err
	}
	return status.Errorf(codes.Unavailable, "the coordinator does not know %s: it is older than this worker (upgrade every coordinator before the workers): %v", method, err)
}
