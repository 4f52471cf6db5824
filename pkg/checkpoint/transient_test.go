package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestTransient(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{context.Canceled, false},
		{fmt.Errorf("checkpoint: etcd catalogue commit j step 120: %w", context.DeadlineExceeded), true},
		{fmt.Errorf("client: commit step 4 of job j through the coordinator: %w", status.Error(codes.Unavailable, "commit checkpoint: etcd unreachable")), true},
		{status.Error(codes.DeadlineExceeded, "no answer"), true},
		{rpctypes.ErrTimeout, true},
		{rpctypes.ErrLeaderChanged, true},
		{fmt.Errorf("%w (via the coordinator): step 4", ErrStale), false},
		{status.Error(codes.FailedPrecondition, "attempt 1 is over"), false},
		{status.Error(codes.PermissionDenied, "not rank 0"), false},
		{fmt.Errorf("checkpoint: commit j step 4: %w", ErrShardCorrupt), false},
		{errors.New("disk full"), false},
	} {
		if got := Transient(tc.err); got != tc.want {
			t.Errorf("Transient(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
