package controller

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// TestListPages: every job once, in submission order, in pages no larger
// than asked or than maxPageBytes (the answer that failed `job list` for
// everyone: five jobs of 1 MiB each), with the state filter applied.
func TestListPages(t *testing.T) {
	var jobs []*pb.Job
	for i := range 12 {
		j := &pb.Job{Id: string(rune('a' + (11 - i))), SubmitSeq: uint64(i + 1), State: pb.JobState_JOB_STATE_PENDING}
		if i%3 == 0 {
			j.State = pb.JobState_JOB_STATE_RUNNING
		}
		if i < 5 {
			j.Spec = make([]byte, 900<<10) // five big ones, two to a page
		}
		jobs = append(jobs, j)
	}
	all := func(req *apiv1.ListJobsRequest) (ids string, pages int) {
		for {
			resp, err := listPage(jobs, req)
			if err != nil {
				t.Fatal(err)
			}
			pages++
			size := 0
			for _, j := range resp.Jobs {
				ids += j.Id
				size += len(j.Spec)
			}
			if len(resp.Jobs) > 1 && size > maxPageBytes {
				t.Fatalf("a page of %d jobs holds %d bytes", len(resp.Jobs), size)
			}
			if resp.NextPageToken == "" {
				return ids, pages
			}
			req.PageToken = resp.NextPageToken
		}
	}
	if ids, pages := all(&apiv1.ListJobsRequest{}); ids != "lkjihgfedcba" || pages != 3 {
		t.Errorf("all jobs: %q in %d pages, want submission order in 3 (2 big jobs a page, then the rest)", ids, pages)
	}
	if ids, pages := all(&apiv1.ListJobsRequest{PageSize: 2}); ids != "lkjihgfedcba" || pages != 6 {
		t.Errorf("pages of 2: %q in %d pages", ids, pages)
	}
	if ids, _ := all(&apiv1.ListJobsRequest{States: []pb.JobState{pb.JobState_JOB_STATE_RUNNING}, PageSize: 1}); ids != "lifc" {
		t.Errorf("running only: %q", ids)
	}
	for _, req := range []*apiv1.ListJobsRequest{{PageToken: "7"}, {PageToken: "sx"}, {PageSize: -1}} {
		if _, err := listPage(jobs, req); !errors.Is(err, errBadRequest) {
			t.Errorf("%v: %v", req, err)
		}
	}
}

func TestBounded(t *testing.T) {
	if got := bounded("short", 10); got != "short" {
		t.Errorf("bounded short: %q", got)
	}
	long := strings.Repeat("é", 1000) // 2000 bytes
	got := bounded(long, 101)
	if !utf8.ValidString(got) || !strings.HasSuffix(got, "... (cut from 2000 bytes)") || len(got) > 101+len("... (cut from 2000 bytes)") {
		t.Errorf("bounded long: %q", got)
	}
}

// TestUserStringsBounded: a CancelJob message over the bound is refused,
// naming it, and the job is not cancelled.
func TestUserStringsBounded(t *testing.T) {
	h := newHarness(t, 1, "")
	c := h.client(h.leader(), "")
	submit(t, c, "job-b", 0)
	_, err := c.CancelJob(ctxT(t), &apiv1.CancelJobRequest{JobId: "job-b", Message: strings.Repeat("m", 1<<20)})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "at most 1024") {
		t.Fatalf("a 1 MiB cancel message: %v", err)
	}
	j := waitJob(t, c, "job-b", "read", func(*pb.Job) bool { return true })
	if j.State == pb.JobState_JOB_STATE_CANCELLED {
		t.Fatal("cancelled by a refused request")
	}
}

// TestListJobsNeverPartial: a follower answers ListJobs with the leader's
// list, and a replica without a leader (restarted, or cut off) says so
// (UNAVAILABLE, which clients retry) instead of answering the empty or
// stale list it holds.
func TestListJobsNeverPartial(t *testing.T) {
	h := newHarness(t, 3, "")
	lead := h.leader()
	submit(t, h.client(lead, ""), "job-1", 0)
	submit(t, h.client(lead, ""), "job-2", 0)
	f := h.follower()
	resp, err := h.client(f, "").ListJobs(ctxT(t), &apiv1.ListJobsRequest{})
	if err != nil || len(resp.Jobs) != 2 {
		t.Fatalf("through a follower: %v, %v", resp, err)
	}
	for _, r := range h.replicas {
		if r != f {
			r.stop()
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for id, _ := f.node.Leader(); id != "" && time.Now().Before(deadline); id, _ = f.node.Leader() {
		time.Sleep(50 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err = h.client(f, "").ListJobs(ctx, &apiv1.ListJobsRequest{})
	if c := status.Code(err); c != codes.Unavailable && c != codes.DeadlineExceeded {
		t.Fatalf("a replica with no leader: %v, want UNAVAILABLE", err)
	}
}
