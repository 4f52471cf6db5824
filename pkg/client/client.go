// Package client dials the coordinator's API (proto/switchyard/api/v1) for
// the CLI and the workers: a connection to every replica, each call sent
// to the replica that last answered and failed over to the others when it
// cannot be reached or has no leader, the bearer token on every call, and
// mutual TLS when files are given.
package client

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/switchyard-ml/switchyard/pkg/security"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
)

// Options say how to reach the coordinators.
type Options struct {
	// Endpoints are the replicas' API addresses (host:port); any one will do.
	Endpoints []string
	// Token is the bearer token ("" : none).
	Token string
	// TLS files; all empty: plaintext.
	TLS security.TLSFiles
	// ServerName overrides the name checked in the server certificate.
	ServerName string
}

// Client is a connection to the coordinator cluster.
type Client struct {
	apiv1.CoordinatorClient
	routes *failover
}

// retryConfig: a call a replica answers UNAVAILABLE (no leader, shutting
// down) is retried once on that replica; then the failover moves on. A
// call does not wait for a replica that cannot be reached: the failover
// tries the next one (it waits between rounds).
const retryConfig = `{
  "loadBalancingConfig": [{"pick_first": {}}],
  "methodConfig": [{
    "name": [{"service": "switchyard.api.v1.Coordinator"}],
    "waitForReady": false,
    "retryPolicy": {
      "maxAttempts": 2,
      "initialBackoff": "0.1s",
      "maxBackoff": "0.1s",
      "backoffMultiplier": 1,
      "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }]
}`

// Dial connects lazily (the first call connects).
func Dial(o Options) (*Client, error) {
	var eps []string
	for _, e := range o.Endpoints {
		for _, p := range strings.Split(e, ",") {
			if p = strings.TrimSpace(p); p != "" {
				eps = append(eps, p)
			}
		}
	}
	if len(eps) == 0 {
		return nil, errors.New("client: no coordinator endpoint given")
	}
	creds := insecure.NewCredentials()
	if o.TLS.Enabled() {
		tc, err := security.ClientTLS(o.TLS, o.ServerName)
		if err != nil {
			return nil, err
		}
		creds = credentials.NewTLS(tc)
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultServiceConfig(retryConfig),
	}
	if o.Token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(security.Token(o.Token)))
	}
	f := &failover{}
	for _, e := range eps {
		// one channel per replica: its certificate is checked against
		// the host dialled
		conn, err := grpc.NewClient("passthrough:///"+e, opts...)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("client: %w", err)
		}
		f.conns = append(f.conns, conn)
	}
	return &Client{CoordinatorClient: apiv1.NewCoordinatorClient(f), routes: f}, nil
}

// Close closes the connections.
func (c *Client) Close() error { return c.routes.Close() }

// failover sends each call to one replica, the one that last answered,
// and on UNAVAILABLE (the replica is down, cut off, or has no leader) or
// no answer within its share of the deadline (it hangs) to the next, round after round with a growing pause, until one answers or
// the call's context ends; a call without a deadline gives up after
// maxRounds. The replica that answers is kept for the next calls, so a
// client reads from one replica at a time.
type failover struct {
	conns []*grpc.ClientConn
	pref  atomic.Int32
}

// maxRounds bounds the rounds of a call without a deadline (about 10s of
// pauses).
const maxRounds = 8

var _ grpc.ClientConnInterface = (*failover)(nil)

// minTry is the least time a unary call gives one replica before it
// tries the next (when the call's deadline leaves more).
const minTry = 3 * time.Second

// Invoke gives each replica its share of the call's deadline (at least
// minTry): a replica that hangs (stopped, or its host overloaded: the
// TCP connection is there, no answer comes) is left for the next one as
// one that refuses would be, instead of holding the whole call. Streams
// (NewStream) live as long as their context and get no share.
func (f *failover) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	return f.each(ctx, func(c *grpc.ClientConn) error {
		tctx, cancel, share := f.tryContext(ctx)
		defer cancel()
		err := c.Invoke(tctx, method, args, reply, opts...)
		if err != nil && share > 0 && tctx.Err() != nil && ctx.Err() == nil {
			return status.Errorf(codes.Unavailable, "replica %s did not answer within %s", c.Target(), share.Round(time.Millisecond))
		}
		return err
	})
}

// tryContext is ctx with one replica's share of its deadline, or ctx
// itself (share 0) when there is no deadline, one replica, or no room.
func (f *failover) tryContext(ctx context.Context) (context.Context, context.CancelFunc, time.Duration) {
	dl, ok := ctx.Deadline()
	if !ok || len(f.conns) < 2 {
		return ctx, func() {}, 0
	}
	left := time.Until(dl)
	share := max(left/time.Duration(len(f.conns)), minTry)
	if share >= left {
		return ctx, func() {}, 0
	}
	tctx, cancel := context.WithTimeout(ctx, share)
	return tctx, cancel, share
}

// NewStream opens the stream on the first replica that takes it; what
// happens to the stream later is the caller's to handle.
func (f *failover) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	var s grpc.ClientStream
	err := f.each(ctx, func(c *grpc.ClientConn) (err error) {
		s, err = c.NewStream(ctx, desc, method, opts...)
		return err
	})
	return s, err
}

func (f *failover) each(ctx context.Context, call func(*grpc.ClientConn) error) error {
	n := int32(len(f.conns))
	_, bounded := ctx.Deadline()
	pause := 100 * time.Millisecond
	last := "" // what a replica last said when it did not answer
	// timedOut is the context's error with the replicas' last word (an
	// address nobody listens on: "connection refused"; one that hangs:
	// "did not answer within")
	timedOut := func() error {
		st := status.FromContextError(ctx.Err())
		if last == "" {
			return st.Err()
		}
		return status.Errorf(st.Code(), "%s; no replica answered, the last said: %s", st.Message(), last)
	}
	for round := 0; ; round++ {
		start := f.pref.Load()
		var err error
		for i := range n {
			k := (start + i) % n
			err = call(f.conns[k])
			if status.Code(err) == codes.Unavailable {
				last = innermost(status.Convert(err).Message())
				continue
			}
			if c := status.Code(err); (c == codes.DeadlineExceeded || c == codes.Canceled) && ctx.Err() != nil {
				return timedOut()
			}
			if k != start {
				f.pref.CompareAndSwap(start, k)
			}
			return err
		}
		if !bounded && round+1 >= maxRounds {
			return err
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return timedOut()
		case <-t.C:
		}
		pause = min(2*pause, 2*time.Second)
	}
}

// innermost is the last description of a gRPC message that nests others
// ("max retries exhausted: ... rpc error: code = Unavailable desc =
// connection error: desc = \"transport: ... connection refused\""): the
// cause, without the wrappers.
func innermost(msg string) string {
	if i := strings.LastIndex(msg, "desc = "); i >= 0 {
		msg = strings.Trim(msg[i+len("desc = "):], `"`)
	}
	return msg
}

func (f *failover) Close() error {
	var errs []error
	for _, c := range f.conns {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}
