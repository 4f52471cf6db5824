package controller

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
	"github.com/switchyard-ml/switchyard/pkg/coordinator"
	"github.com/switchyard-ml/switchyard/pkg/jobspec"
)

// The API's own kinds of failure, beside the coordinator's, jobspec's and
// checkpoint's sentinels; failure gives one a message.
var (
	errBadRequest  = errors.New("controller: bad request")
	errAttemptOver = errors.New("controller: attempt over")
	errRefused     = errors.New("controller: refused")   // the request cannot be done in the current state
	errNotFound    = errors.New("controller: not found") // what the request names does not exist
	errNoBus       = errors.New("controller: no event bus")
	errNoCatalogue = errors.New("controller: no checkpoint catalogue")
	errNoRaft      = errors.New("controller: no raft membership")
	errUnavailable = errors.New("controller: unavailable")       // a backend (bus, catalogue, leader) to retry
	errPermission  = errors.New("controller: permission denied") // the caller's identity may not do this
)

// codeTable is the one place the API's status codes are decided: the code
// of an error is that of the first entry it matches (errors.Is), Internal
// when none does. Every handler and stream returns apiError(err).
var codeTable = []struct {
	err  error
	code codes.Code
}{
	{context.Canceled, codes.Canceled},
	{context.DeadlineExceeded, codes.DeadlineExceeded},
	{coordinator.ErrJobNotFound, codes.NotFound},
	{checkpoint.ErrNoCheckpoint, codes.NotFound},
	{errNotFound, codes.NotFound},
	{coordinator.ErrJobConflict, codes.AlreadyExists},
	// a step that is not newer: AlreadyExists, so a committer tells it
	// from an attempt that is over (FailedPrecondition) by the code
	{checkpoint.ErrStale, codes.AlreadyExists},
	{coordinator.ErrJobFinished, codes.FailedPrecondition},
	{coordinator.ErrInvalidTransition, codes.FailedPrecondition},
	{errAttemptOver, codes.FailedPrecondition},
	{errRefused, codes.FailedPrecondition},
	{errNoBus, codes.FailedPrecondition},
	{coordinator.ErrInvalidCommand, codes.InvalidArgument},
	{jobspec.ErrInvalid, codes.InvalidArgument},
	{jobspec.ErrSyntax, codes.InvalidArgument},
	{errBadRequest, codes.InvalidArgument},
	{errPermission, codes.PermissionDenied},
	{errNoCatalogue, codes.Unimplemented},
	{errNoRaft, codes.Unimplemented},
	{coordinator.ErrNotLeader, codes.Unavailable},
	{coordinator.ErrShutdown, codes.Unavailable},
	{coordinator.ErrOutcomeUnknown, codes.Unavailable},
	{errUnavailable, codes.Unavailable},
}

// apiError turns err into a gRPC status by codeTable; a status error (one
// forwarded from the leader) keeps its code.
func apiError(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	for _, e := range codeTable {
		if errors.Is(err, e.err) {
			return status.Error(e.code, err.Error())
		}
	}
	return status.Error(codes.Internal, err.Error())
}

// failure is an error of kind (a codeTable entry) with its own message; it
// also matches the errors among args, so a cause's kind (a cancelled
// context) is found first when the table lists it first.
func failure(kind error, format string, args ...any) error {
	return &kindError{kind: kind, msg: fmt.Sprintf(format, args...), cause: errors.Join(errorArgs(args)...)}
}

type kindError struct {
	kind  error
	msg   string
	cause error // the errors among the message's arguments, or nil
}

func (e *kindError) Error() string { return e.msg }
func (e *kindError) Unwrap() []error {
	if e.cause == nil {
		return []error{e.kind}
	}
	return []error{e.cause, e.kind}
}

func errorArgs(args []any) []error {
	var errs []error
	for _, a := range args {
		if err, ok := a.(error); ok {
			errs = append(errs, err)
		}
	}
	return errs
}
