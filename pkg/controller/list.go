package controller

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// Pages of ListJobs: no answer may reach gRPC's 4 MiB message limit,
// however many jobs there are and whatever they hold (a spec is up to
// 1 MiB), or `job list` fails for everyone.
const (
	defaultPageSize = 100
	maxPageSize     = 1000
	maxPageBytes    = 2 << 20
)

// listPage is one page of jobs in submission order: those in the wanted
// states (all when none) submitted after the page token's, at most the
// page size of them and, past the first, no more than maxPageBytes in
// all. The token names the last job's submission sequence number.
func listPage(jobs []*pb.Job, req *apiv1.ListJobsRequest) (*apiv1.ListJobsResponse, error) {
	size := int(req.GetPageSize())
	switch {
	case size < 0:
		return nil, failure(errBadRequest, "page_size %d: must be >= 0", size)
	case size == 0:
		size = defaultPageSize
	}
	size = min(size, maxPageSize)
	var after uint64
	if tok := req.GetPageToken(); tok != "" {
		n, err := strconv.ParseUint(strings.TrimPrefix(tok, "s"), 10, 64)
		if err != nil || !strings.HasPrefix(tok, "s") {
			return nil, failure(errBadRequest, "page_token %.40q: not a token this API gave", tok)
		}
		after = n
	}
	want := map[pb.JobState]bool{}
	for _, st := range req.GetStates() {
		want[st] = true
	}
	sorted := slices.Clone(jobs)
	slices.SortFunc(sorted, func(a, b *pb.Job) int { return cmp.Compare(a.SubmitSeq, b.SubmitSeq) })
	resp := &apiv1.ListJobsResponse{}
	bytes := 0
	for _, j := range sorted {
		if j.SubmitSeq <= after || (len(want) > 0 && !want[j.State]) {
			continue
		}
		n := proto.Size(j)
		if len(resp.Jobs) == size || (len(resp.Jobs) > 0 && bytes+n > maxPageBytes) {
			resp.NextPageToken = "s" + strconv.FormatUint(resp.Jobs[len(resp.Jobs)-1].SubmitSeq, 10)
			break
		}
		resp.Jobs = append(resp.Jobs, j)
		bytes += n
	}
	return resp, nil
}

// Bounds on the strings a client or worker puts into the raft log and the
// event stream: one megabyte-long message would be copied into every
// snapshot, every job answer and every event, and refused by NATS.
const (
	maxUserMessage = 1 << 10 // CancelJob's message: refused past it
	maxRankMessage = 4 << 10 // a rank's failure or event message: cut
	maxEventType   = 64
)

// bounded cuts s to at most n bytes (at a rune boundary), saying how long
// it was.
func bounded(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + fmt.Sprintf("... (cut from %d bytes)", len(s))
}
