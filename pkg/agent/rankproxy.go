package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/switchyard-ml/switchyard/pkg/client"
	"github.com/switchyard-ml/switchyard/pkg/security"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
)

// rankProxy serves a worker's ranks, when they run as rank_user, the
// three coordinator calls they make (their job's checkpoint catalogue) on
// a unix socket only root and the rank user can open. The ranks then need
// neither the worker's TLS key (the rank user cannot read it) nor a route
// to the coordinators. Each call is relayed with the rank's own bearer
// token, which must be a rank token, over the worker's connections (its
// TLS certificate, no token of its own): the coordinator checks the rank
// as if it had called. The worker verifies the token first (one it made
// for one of its ranks), so no call goes as the worker's certificate
// alone. Without a worker token (a coordinator that checks none, and no
// TLS: checkRankUser refuses TLS without one) calls are relayed as they
// are.
type rankProxy struct {
	apiv1.UnimplementedCoordinatorServer
	up          apiv1.CoordinatorClient
	workerToken string
	srv         *grpc.Server
	dir         string
	done        chan struct{}
}

// rankProxySocket is the socket's name in its directory, made by
// MkdirTemp with rankProxyPrefix.
const (
	rankProxySocket = "coordinator.sock"
	rankProxyPrefix = "switchyard-ranks-"
)

// sweepRankProxyDirs removes the socket directories under tmp that
// workers killed -9 left behind: this user's, whose socket refuses a
// connection (nobody listens on it any more), or which have no socket a
// minute after they were made (a worker that died before it listened;
// a younger one may be a worker starting beside this one). A live
// worker's socket accepts, so its directory stays. It returns what it
// removed.
func sweepRankProxyDirs(tmp string, now time.Time) []string {
	matches, _ := filepath.Glob(filepath.Join(tmp, rankProxyPrefix+"*"))
	var removed []string
	for _, dir := range matches {
		fi, err := os.Lstat(dir)
		if err != nil || !fi.IsDir() {
			continue
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); !ok || int(st.Uid) != os.Getuid() {
			continue // another user's: not ours to judge
		}
		if !rankProxyDirStale(filepath.Join(dir, rankProxySocket), fi.ModTime(), now) {
			continue
		}
		if os.RemoveAll(dir) == nil {
			removed = append(removed, dir)
		}
	}
	return removed
}

// rankProxyDirStale reports whether the socket at path, in a directory
// made at made, belongs to no live worker.
func rankProxyDirStale(path string, made, now time.Time) bool {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return now.Sub(made) > time.Minute
	}
	if err != nil || fi.Mode().Type() != fs.ModeSocket {
		return false // not what a worker makes: left alone
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

// startRankProxy listens in a new directory under the system's temporary
// one (a socket path must be short), searchable by all, the socket the
// rank user's alone, and relays to up.
func startRankProxy(up apiv1.CoordinatorClient, workerToken string, u *rankUser) (*rankProxy, error) {
	sweepRankProxyDirs(os.TempDir(), time.Now())
	dir, err := os.MkdirTemp("", rankProxyPrefix)
	if err != nil {
		return nil, fmt.Errorf("rank proxy: %w", err)
	}
	fail := func(err error) (*rankProxy, error) {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("rank proxy: %w", err)
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		return fail(err)
	}
	if err := u.reach(dir, 1, "the worker's socket directory"); err != nil {
		return fail(fmt.Errorf("%w (set TMPDIR to a directory it can reach)", err))
	}
	path := filepath.Join(dir, rankProxySocket)
	lis, err := net.Listen("unix", path)
	if err != nil {
		return fail(err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		lis.Close()
		return fail(err)
	}
	if err := os.Chown(path, int(u.uid), int(u.gid)); err != nil {
		lis.Close()
		return fail(err)
	}
	p := &rankProxy{up: up, workerToken: workerToken, srv: grpc.NewServer(client.KeepaliveServerOptions()...), dir: dir, done: make(chan struct{})}
	apiv1.RegisterCoordinatorServer(p.srv, p)
	go func() {
		defer close(p.done)
		p.srv.Serve(lis) //nolint:errcheck // ends with close
	}()
	return p, nil
}

// endpoint is the address a rank dials (client.Dial's form).
func (p *rankProxy) endpoint() string { return "unix://" + filepath.Join(p.dir, rankProxySocket) }

// close stops serving (calls in flight end) and removes the socket.
func (p *rankProxy) close() {
	p.srv.Stop()
	<-p.done
	os.RemoveAll(p.dir)
}

// relay is the context of the call to the coordinator: the rank's token,
// verified, and nothing else of what it sent.
func (p *rankProxy) relay(ctx context.Context) (context.Context, error) {
	if p.workerToken == "" {
		return metadata.NewOutgoingContext(ctx, metadata.MD{}), nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	auth := md.Get("authorization")
	if len(auth) == 1 {
		if tok, ok := strings.CutPrefix(auth[0], "Bearer "); ok {
			if _, ok := security.VerifyRankToken(p.workerToken, tok); ok {
				return metadata.NewOutgoingContext(ctx, metadata.Pairs("authorization", auth[0])), nil
			}
		}
	}
	return nil, status.Errorf(codes.Unauthenticated, "the worker relays a rank's calls with the rank token it gave the rank ($%s) only", TokenEnv)
}

func (p *rankProxy) ListCheckpoints(ctx context.Context, req *apiv1.ListCheckpointsRequest) (*apiv1.ListCheckpointsResponse, error) {
	ctx, err := p.relay(ctx)
	if err != nil {
		return nil, err
	}
	return p.up.ListCheckpoints(ctx, req)
}

func (p *rankProxy) CommitCheckpoint(ctx context.Context, req *apiv1.CommitCheckpointRequest) (*apiv1.CommitCheckpointResponse, error) {
	ctx, err := p.relay(ctx)
	if err != nil {
		return nil, err
	}
	return p.up.CommitCheckpoint(ctx, req)
}

func (p *rankProxy) RetireCheckpoint(ctx context.Context, req *apiv1.RetireCheckpointRequest) (*apiv1.RetireCheckpointResponse, error) {
	ctx, err := p.relay(ctx)
	if err != nil {
		return nil, err
	}
	return p.up.RetireCheckpoint(ctx, req)
}
