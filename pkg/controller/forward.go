package controller

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/switchyard-ml/switchyard/pkg/client"
	"github.com/switchyard-ml/switchyard/pkg/security"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
)

// forwardedKey marks a call a follower forwarded, so that a replica with a
// stale view never forwards it again (no loops).
const forwardedKey = "x-switchyard-forwarded"

// onBehalfKey names, on a forwarded call, the worker whose token the
// follower checked: the leader sees the follower's cluster token.
const onBehalfKey = "x-switchyard-on-behalf-of-worker"

// onBehalfRankKey is, on a forwarded call of a rank's token, its scope
// ("JOB.ATTEMPT.RANK"), beside onBehalfKey's worker.
const onBehalfRankKey = "x-switchyard-on-behalf-of-rank"

// caller is who a call comes from (ok false when the API checks no
// token): the interceptor's identity, or, on a call a follower forwarded,
// the worker (and rank) it checked. The follower's own call carries the
// cluster token, or with mutual TLS and no token no identity at all (a
// replica's certificate is not a worker's): either way the worker it
// names is the caller, or a worker would pass every per-worker check by
// calling a follower. A direct caller that is a worker cannot name
// another. A forwarded rank scope that does not parse is a rank of no
// job, which every per-job check refuses.
func caller(ctx context.Context) (security.Identity, bool) {
	id, ok := security.IdentityFrom(ctx)
	if id.Worker == "" && forwarded(ctx) {
		md, _ := metadata.FromIncomingContext(ctx)
		if w := md.Get(onBehalfKey); len(w) == 1 {
			id.Worker, ok = w[0], true
			if r := md.Get(onBehalfRankKey); len(r) > 0 {
				id.Scope = parseScope(r)
			}
		}
	}
	return id, ok
}

// formatScope and parseScope carry a rank's scope on a forwarded call.
func formatScope(r security.RankScope) string {
	return fmt.Sprintf("%s.%d.%d", r.Job, r.Attempt, r.Rank)
}

func parseScope(vals []string) security.RankScope {
	nowhere := security.RankScope{Job: "-", Attempt: -1, Rank: -1}
	if len(vals) != 1 {
		return nowhere
	}
	var r security.RankScope
	job, rest, ok := strings.Cut(vals[0], ".")
	if _, err := fmt.Sscanf(rest, "%d.%d", &r.Attempt, &r.Rank); !ok || job == "" || err != nil || formatScope(security.RankScope{Job: job, Attempt: r.Attempt, Rank: r.Rank}) != vals[0] {
		return nowhere
	}
	r.Job = job
	return r
}

// forwarder holds one connection per leader API address.
type forwarder struct {
	token string
	tls   security.TLSFiles

	mu    sync.Mutex
	conns map[string]*forwardConn
}

type forwardConn struct{ c *client.Client }

func (f *forwarder) get(addr string) (apiv1.CoordinatorClient, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fc, ok := f.conns[addr]; ok {
		return fc.c, nil
	}
	// one try per call: a leader that does not answer has died or been
	// cut off; the caller retries, and forward asks raft again who leads
	c, err := client.Dial(client.Options{Endpoints: []string{addr}, Token: f.token, TLS: f.tls, OneRound: true})
	if err != nil {
		return nil, err
	}
	f.conns[addr] = &forwardConn{c: c}
	return c, nil
}

func (f *forwarder) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for addr, fc := range f.conns {
		fc.c.Close()
		delete(f.conns, addr)
	}
}

func forwarded(ctx context.Context) bool {
	md, _ := metadata.FromIncomingContext(ctx)
	return len(md.Get(forwardedKey)) > 0
}

// forward sends a write to the leader's API address and returns its answer.
func forward[Req, Resp any](ctx context.Context, s *Server, req Req, call func(apiv1.CoordinatorClient, context.Context, Req, ...grpc.CallOption) (Resp, error)) (Resp, error) {
	var zero Resp
	if forwarded(ctx) {
		return zero, apiError(failure(errUnavailable, "not the leader (forwarded call reached a follower; leadership is changing)"))
	}
	id, _ := s.cfg.Node.Leader()
	if id == "" {
		return zero, apiError(failure(errUnavailable, "no raft leader (an election is running); retry"))
	}
	s.mu.Lock()
	d, ok := s.replicas[id]
	s.mu.Unlock()
	if !ok || d.Address == "" {
		return zero, apiError(failure(errUnavailable, "leader %s has no API address in the replica directory yet; retry", id))
	}
	c, err := s.fwd.get(d.Address)
	if err != nil {
		return zero, apiError(failure(errUnavailable, "dial leader %s at %s: %v", id, d.Address, err))
	}
	ctx = metadata.AppendToOutgoingContext(ctx, forwardedKey, s.cfg.Node.ID())
	if id, ok := caller(ctx); ok && id.Worker != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, onBehalfKey, id.Worker)
		if id.Ranked() {
			ctx = metadata.AppendToOutgoingContext(ctx, onBehalfRankKey, formatScope(id.Scope))
		}
	}
	var p peer.Peer
	resp, err := call(c, ctx, req, grpc.Peer(&p))
	if status.Code(err) == codes.Unavailable && p.Addr == nil {
		// the leader was not reached (it died, or is cut off from this
		// replica): say so, rather than pass on the dial's "connection
		// refused", which reads as if this replica refused; raft elects
		// another leader within a few election timeouts and the caller's
		// retry is forwarded there
		s.log.Warn("forwarding to the leader failed", "leader", id, "address", d.Address, "error", err)
		return resp, apiError(failure(errUnavailable, "replica %s forwards to leader %s at %s, which does not answer (a new leader is elected within seconds if it died); retry", s.cfg.Node.ID(), id, d.Address))
	}
	return resp, err
}
