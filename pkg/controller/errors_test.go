package controller

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
	"github.com/switchyard-ml/switchyard/pkg/coordinator"
	"github.com/switchyard-ml/switchyard/pkg/jobspec"
)

func TestErrorCodes(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code codes.Code
		msg  string
	}{
		{fmt.Errorf("get: %w", coordinator.ErrJobNotFound), codes.NotFound, "get: " + coordinator.ErrJobNotFound.Error()},
		{fmt.Errorf("%w: j1", coordinator.ErrJobConflict), codes.AlreadyExists, ""},
		{coordinator.ErrJobFinished, codes.FailedPrecondition, ""},
		{fmt.Errorf("%w: bad", jobspec.ErrInvalid), codes.InvalidArgument, ""},
		{failure(errBadRequest, "sync without a worker id"), codes.InvalidArgument, "sync without a worker id"},
		{failure(errNoBus, "no bus"), codes.FailedPrecondition, "no bus"},
		{failure(errNoCatalogue, "no catalogue"), codes.Unimplemented, ""},
		{failure(errAttemptOver, "%s", "attempt 1 is over (100% done)"), codes.FailedPrecondition, "attempt 1 is over (100% done)"},
		// the cause decides when the table lists it first
		{failure(errUnavailable, "commit checkpoint: %v", fmt.Errorf("x: %w", checkpoint.ErrStale)), codes.AlreadyExists, ""},
		{failure(errUnavailable, "commit checkpoint: %v", errors.New("etcd down")), codes.Unavailable, "commit checkpoint: etcd down"},
		{failure(errUnavailable, "log history: %v", context.Canceled), codes.Canceled, ""},
		{failure(errRefused, "delete: %v", context.DeadlineExceeded), codes.DeadlineExceeded, ""},
		{coordinator.ErrNotLeader, codes.Unavailable, ""},
		{errors.New("something else"), codes.Internal, "something else"},
		// a forwarded answer keeps the leader's code
		{status.Error(codes.PermissionDenied, "no"), codes.PermissionDenied, "no"},
	} {
		got := apiError(tc.err)
		st, _ := status.FromError(got)
		if st.Code() != tc.code || (tc.msg != "" && st.Message() != tc.msg) {
			t.Errorf("apiError(%v) = %v %q, want %v %q", tc.err, st.Code(), st.Message(), tc.code, tc.msg)
		}
	}
	if apiError(nil) != nil {
		t.Error("apiError(nil) is not nil")
	}
}
