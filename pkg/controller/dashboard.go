package controller

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-ml/switchyard/pkg/dashboard"
	"github.com/switchyard-ml/switchyard/pkg/events"
	"github.com/switchyard-ml/switchyard/pkg/fsutil"
	"github.com/switchyard-ml/switchyard/pkg/jobspec"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// dashboardSource is the dashboard's view of this replica: the API's
// answers (a follower forwards what the leader must answer), the event
// bus, and rank 0's report under the job's storage as mounted here.
type dashboardSource struct {
	s *Server
	// checkpointRoot is --checkpoint-root: the workers' storage is its
	// parent when it is their default <storage_path>/checkpoints.
	checkpointRoot string
}

var _ dashboard.Source = dashboardSource{}

// dashErr maps the API's status errors to the dashboard's.
func dashErr(err error) error {
	switch status.Code(err) {
	case codes.OK:
		return nil
	case codes.NotFound:
		return fmt.Errorf("%w: %s", dashboard.ErrNotFound, status.Convert(err).Message())
	case codes.Unavailable, codes.Unimplemented, codes.FailedPrecondition, codes.DeadlineExceeded:
		return fmt.Errorf("%w: %s", dashboard.ErrUnavailable, status.Convert(err).Message())
	}
	return err
}

func (d dashboardSource) Cluster(ctx context.Context) (*apiv1.ClusterStatusResponse, error) {
	r, err := d.s.ClusterStatus(ctx, &apiv1.ClusterStatusRequest{})
	return r, dashErr(err)
}

func (d dashboardSource) Jobs(ctx context.Context) ([]*pb.Job, error) {
	var out []*pb.Job
	req := &apiv1.ListJobsRequest{PageSize: maxPageSize}
	for {
		r, err := d.s.ListJobs(ctx, req)
		if err != nil {
			return nil, dashErr(err)
		}
		out = append(out, r.Jobs...)
		if r.NextPageToken == "" {
			return out, nil
		}
		req.PageToken = r.NextPageToken
	}
}

func (d dashboardSource) Job(ctx context.Context, id string) (*pb.Job, error) {
	r, err := d.s.GetJob(ctx, &apiv1.GetJobRequest{JobId: id})
	if err != nil {
		return nil, dashErr(err)
	}
	return r.Job, nil
}

func (d dashboardSource) Checkpoints(ctx context.Context, j *pb.Job) ([]*apiv1.Checkpoint, error) {
	r, err := d.s.ListCheckpoints(ctx, &apiv1.ListCheckpointsRequest{JobId: j.Id})
	if err != nil {
		return nil, dashErr(err)
	}
	return r.Checkpoints, nil
}

func (d dashboardSource) bus() (events.Bus, error) {
	if d.s.cfg.Bus == nil {
		return nil, fmt.Errorf("%w: this coordinator has no event bus (start it with --nats-url), so no metrics", dashboard.ErrUnavailable)
	}
	return d.s.cfg.Bus, nil
}

func (d dashboardSource) History(ctx context.Context, jobID string, kind events.Kind) ([]events.Message, error) {
	b, err := d.bus()
	if err != nil {
		return nil, err
	}
	return b.History(ctx, events.Filter{Kind: kind, JobID: jobID})
}

func (d dashboardSource) Subscribe(ctx context.Context, jobID string, kind events.Kind, replay bool) (<-chan events.Message, error) {
	b, err := d.bus()
	if err != nil {
		return nil, err
	}
	return b.Subscribe(ctx, events.Filter{Kind: kind, JobID: jobID, Replay: replay})
}

// maxReport bounds a report read from the storage.
const maxReport = 16 << 20

// Report reads <storage>/jobs/<id>/attempt-<restarts>/rank-0/report.json,
// where the workers' storage is looked for next to the checkpoints
// (--checkpoint-root, or the spec's checkpoint.path on a directory), as
// the workers' default <storage_path>/checkpoints puts them, then at the
// checkpoint directory itself.
func (d dashboardSource) Report(_ context.Context, j *pb.Job) ([]byte, error) {
	var roots []string
	if sp, err := jobspec.Parse(j.Spec); err == nil && filepath.IsAbs(sp.Checkpoint.Path) {
		roots = append(roots, sp.Checkpoint.Path)
	}
	if d.checkpointRoot != "" {
		roots = append(roots, d.checkpointRoot)
	}
	rel := filepath.Join("jobs", j.Id, fmt.Sprintf("attempt-%d", j.Restarts), "rank-0", "report.json")
	for _, root := range roots {
		for _, dir := range []string{filepath.Dir(root), root} {
			raw, err := fsutil.ReadFile(filepath.Join(dir, rel), maxReport)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return nil, err
			}
			return raw, nil
		}
	}
	if len(roots) == 0 {
		return nil, fmt.Errorf("%w: the job's storage is not reachable from this coordinator (start it with --checkpoint-root)", dashboard.ErrNotFound)
	}
	return nil, fmt.Errorf("%w: no report of job %s's attempt %d yet", dashboard.ErrNotFound, j.Id, j.Restarts)
}
