package checkpoint

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Transient says whether a catalogue's failure may pass by itself: etcd or
// the coordinator unreachable, restarting, electing a leader, or too slow
// to answer (a deadline, UNAVAILABLE). A refusal (a stale step, an attempt
// that is over, a shard that does not verify, permission) is not, nor is
// the caller's own cancellation.
func Transient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	// etcd's client errors (rpctypes.EtcdError) carry their gRPC code
	var coded interface{ Code() codes.Code }
	if errors.As(err, &coded) {
		return transientCode(coded.Code())
	}
	if st, ok := status.FromError(err); ok {
		return transientCode(st.Code())
	}
	return false
}

func transientCode(c codes.Code) bool {
	return c == codes.Unavailable || c == codes.DeadlineExceeded
}
