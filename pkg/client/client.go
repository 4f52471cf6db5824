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
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
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
	// RefusedGrace, when > 0, lets a client that no replica has answered
	// yet give up a call once every replica has refused its connections
	// (nothing listens there, the name does not resolve, or the TLS
	// handshake fails) for this long, instead of trying until the call's
	// deadline: a CLI pointed at the wrong address, or without the TLS
	// files it needs, says so at once. A client that has had an answer
	// keeps trying through a restart until the deadline.
	RefusedGrace time.Duration
	// OneRound makes a call try each endpoint once and return the last
	// UNAVAILABLE instead of trying again until the call's deadline: for a
	// follower forwarding to the leader, which must ask raft again who
	// leads (a leader that died is replaced in a second or two) rather
	// than spend its caller's deadline on the dead one's address; its
	// caller retries.
	OneRound bool
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

// The client's keep-alive pings while calls are in flight; the server
// must permit pings this often (see KeepaliveServerOptions).
const (
	KeepaliveTime    = 10 * time.Second
	KeepaliveTimeout = 5 * time.Second
)

// KeepaliveServerOptions let a coordinator's API server take the
// clients' pings (by default gRPC closes a connection that pings more
// often than every 5 minutes).
func KeepaliveServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: KeepaliveTime / 2, PermitWithoutStream: true})}
}

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
		// while calls are in flight: a replica that stops answering (its
		// process stopped, its host overloaded) is dropped after
		// KeepaliveTime + KeepaliveTimeout, its calls UNAVAILABLE
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: KeepaliveTime, Timeout: KeepaliveTimeout}),
	}
	if o.Token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(security.Token(o.Token)))
	}
	f := &failover{refusedGrace: o.RefusedGrace, oneRound: o.OneRound}
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
// and on UNAVAILABLE (the replica is down, cut off, has no leader, does
// not connect within its share of the deadline, or stopped answering its
// keep-alive pings) to the next, round after round with a growing pause, until one answers or
// the call's context ends; a call without a deadline gives up after
// maxRounds. The replica that answers is kept for the next calls, so a
// client reads from one replica at a time.
type failover struct {
	conns        []*grpc.ClientConn
	pref         atomic.Int32
	refusedGrace time.Duration // see Options.RefusedGrace
	oneRound     bool          // see Options.OneRound
	answered     atomic.Bool   // a replica has answered a call
}

// maxRounds bounds the rounds of a call without a deadline (about 10s of
// pauses).
const maxRounds = 8

var _ grpc.ClientConnInterface = (*failover)(nil)

// minTry is the least time a unary call gives one replica to connect
// before it tries the next (when the call's deadline leaves more).
const minTry = 3 * time.Second

// Invoke sends the call to a replica that is connected: one that does not
// connect within its share of the deadline (at least minTry; a stopped
// process or an overloaded host takes the TCP connection and never
// answers the handshake) is passed over like one that refuses. Once a
// replica is connected the call has the whole deadline: a slow answer (a
// checkpoint's verification, a write waiting on raft) is not cut short
// and sent again elsewhere. A connected replica that stops answering is
// found by the keep-alive pings (KeepaliveTime + KeepaliveTimeout), which
// end its calls with UNAVAILABLE.
func (f *failover) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	return f.each(ctx, func(c *grpc.ClientConn) error {
		if err := f.connected(ctx, c); err != nil {
			return err
		}
		return c.Invoke(ctx, method, args, reply, opts...)
	})
}

// connected waits until c is READY for at most its share of ctx's
// deadline; UNAVAILABLE when it is not by then. Without a deadline, or
// with one replica, the call itself waits.
func (f *failover) connected(ctx context.Context, c *grpc.ClientConn) error {
	dl, ok := ctx.Deadline()
	if !ok || len(f.conns) < 2 {
		return nil
	}
	left := time.Until(dl)
	share := max(left/time.Duration(len(f.conns)), minTry)
	if share >= left {
		return nil
	}
	sctx, cancel := context.WithTimeout(ctx, share)
	defer cancel()
	for {
		st := c.GetState()
		switch st {
		case connectivity.Ready:
			return nil
		case connectivity.Idle:
			c.Connect()
		case connectivity.TransientFailure, connectivity.Shutdown:
			return nil // the call fails at once, with the connection's error
		}
		if !c.WaitForStateChange(sctx, st) {
			if ctx.Err() != nil {
				return nil // the call reports the context's end
			}
			return status.Errorf(codes.Unavailable, "replica %s did not connect within %s (%s)", c.Target(), share.Round(time.Millisecond), strings.ToLower(st.String()))
		}
	}
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
	began := time.Now()
	for round := 0; ; round++ {
		start := f.pref.Load()
		var err error
		refused := 0 // replicas that cannot answer this client (hopeless)
		for i := range n {
			k := (start + i) % n
			err = call(f.conns[k])
			if status.Code(err) == codes.Unavailable {
				last = innermost(status.Convert(err).Message())
				if hopeless(last) != "" {
					refused++
				}
				continue
			}
			if c := status.Code(err); (c == codes.DeadlineExceeded || c == codes.Canceled) && ctx.Err() != nil {
				return timedOut()
			}
			if k != start {
				f.pref.CompareAndSwap(start, k)
			}
			f.answered.Store(true)
			return err
		}
		if f.oneRound || (!bounded && round+1 >= maxRounds) {
			return err
		}
		if refused == int(n) && f.refusedGrace > 0 && !f.answered.Load() && time.Since(began) >= f.refusedGrace {
			why := hopeless(last)
			return status.Errorf(codes.Unavailable, "%s (tried for %s; is the coordinator running, and is this its API address?): %s",
				why, time.Since(began).Round(100*time.Millisecond), last)
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

// hopeless says why a replica's connection error means it will not
// answer this client until something is changed: nothing listens at its
// address, the address does not resolve, or the two sides do not agree
// on TLS (plaintext to TLS: the server's preface never comes; TLS to
// plaintext; a certificate that does not verify). "" for other errors.
func hopeless(msg string) string {
	switch {
	case strings.Contains(msg, "connection refused"):
		return "nothing listens there"
	case strings.Contains(msg, "no such host"):
		return "the host name does not resolve"
	case strings.Contains(msg, "error reading server preface"), strings.Contains(msg, "first record does not look like a TLS handshake"), strings.Contains(msg, "tls: "):
		return "the TLS handshake fails"
	}
	return ""
}

func (f *failover) Close() error {
	var errs []error
	for _, c := range f.conns {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}
