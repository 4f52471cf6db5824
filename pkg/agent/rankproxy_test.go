package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/switchyard-ml/switchyard/pkg/client"
	"github.com/switchyard-ml/switchyard/pkg/security"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
)

// echoCoordinator answers ListCheckpoints with the caller's identity as
// its interceptors found it: "worker/job/attempt/rank".
type echoCoordinator struct {
	apiv1.UnimplementedCoordinatorServer
}

func (echoCoordinator) ListCheckpoints(ctx context.Context, _ *apiv1.ListCheckpointsRequest) (*apiv1.ListCheckpointsResponse, error) {
	id, ok := security.IdentityFrom(ctx)
	who := fmt.Sprintf("%s/%s/%d/%d", id.Worker, id.Scope.Job, id.Scope.Attempt, id.Scope.Rank)
	if !ok {
		who = "nobody"
	}
	return &apiv1.ListCheckpointsResponse{Checkpoints: []*apiv1.Checkpoint{{JobId: who}}}, nil
}

// TestRankProxy: a rank's call through its worker's socket reaches a
// coordinator that wants mutual TLS and a token as the rank (its scope),
// though the rank holds no TLS file; a call without a rank token is not
// relayed (it would go as the worker's certificate), nor is any call but
// the catalogue's.
func TestRankProxy(t *testing.T) {
	pem, err := security.EphemeralPEM("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files := security.TLSFiles{CA: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, "cert.pem"), Key: filepath.Join(dir, "key.pem")}
	for path, b := range map[string][]byte{files.CA: pem.CA, files.Cert: pem.Cert, files.Key: pem.Key} {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tc, err := security.ServerTLS(files)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(append(security.ServerOptions("s3cret", true), grpc.Creds(credentials.NewTLS(tc)))...)
	apiv1.RegisterCoordinatorServer(srv, echoCoordinator{})
	served := make(chan struct{})
	go func() { defer close(served); srv.Serve(lis) }() //nolint:errcheck // ends with Stop
	t.Cleanup(func() { srv.Stop(); <-served })

	up, err := client.Dial(client.Options{Endpoints: []string{lis.Addr().String()}, TLS: files})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	me := &rankUser{spec: "me", uid: uint32(os.Getuid()), gid: uint32(os.Getgid())}
	worker := security.WorkerToken("s3cret", "w1")
	p, err := startRankProxy(up, worker, me)
	if err != nil {
		t.Fatal(err)
	}
	socket := strings.TrimPrefix(p.endpoint(), "unix://")
	if st, err := os.Stat(socket); err != nil || st.Mode().Perm() != 0o600 || statUID(st) != os.Getuid() {
		t.Fatalf("the socket: %v, %v; want mode 0600, the rank user's", st, err)
	}

	rank := security.RankToken(worker, security.RankScope{Job: "job-7", Attempt: 2, Rank: 0})
	call := func(p *rankProxy, token string) (string, error) {
		c, err := client.Dial(client.Options{Endpoints: []string{p.endpoint()}, Token: token})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, err := c.ListCheckpoints(ctx, &apiv1.ListCheckpointsRequest{JobId: "job-7"})
		if err != nil {
			return "", err
		}
		if _, err := c.ListJobs(ctx, &apiv1.ListJobsRequest{}); status.Code(err) != codes.Unimplemented {
			t.Errorf("ListJobs through the worker: %v, want Unimplemented", err)
		}
		return resp.Checkpoints[0].JobId, nil
	}
	if who, err := call(p, rank); err != nil || who != "w1/job-7/2/0" {
		t.Fatalf("the rank's call: %q, %v; want it made as w1's rank 0 of job-7's attempt 2", who, err)
	}
	for name, token := range map[string]string{
		"no token":                      "",
		"the worker's token":            worker,
		"the cluster token":             "s3cret",
		"a forged rank token":           "sy-rank.job-7.2.0.w1.AAAA",
		"another worker's rank token":   security.RankToken(security.WorkerToken("s3cret", "w2"), security.RankScope{Job: "job-7", Attempt: 2}),
		"a rank token, its claim moved": strings.Replace(rank, ".2.0.", ".3.0.", 1),
	} {
		if who, err := call(p, token); status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "rank token") {
			t.Errorf("%s: %q, %v; want it not relayed", name, who, err)
		}
	}
	p.close()
	if _, err := os.Stat(filepath.Dir(socket)); !os.IsNotExist(err) {
		t.Errorf("the socket's directory is left: %v", err)
	}

	// a worker without a token (its coordinator checks none): calls go
	// as they are, with nothing of the caller's
	open, err := startRankProxy(up, "", me)
	if err != nil {
		t.Fatal(err)
	}
	defer open.close()
	if who, err := call(open, ""); status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "missing or wrong bearer token") {
		t.Errorf("relayed without a token to a coordinator that wants one: %q, %v; want the coordinator's refusal", who, err)
	}
}

// TestSweepRankProxyDirs: a worker starting removes the socket
// directories of workers killed -9 (a socket nobody listens on, or none a
// minute on) and keeps a live worker's, a young one's and what is not a
// worker's.
func TestSweepRankProxyDirs(t *testing.T) {
	tmp := t.TempDir()
	mk := func(name string, age time.Duration) string {
		dir := filepath.Join(tmp, rankProxyPrefix+name)
		if err := os.Mkdir(dir, 0o711); err != nil {
			t.Fatal(err)
		}
		old := time.Now().Add(-age)
		if err := os.Chtimes(dir, old, old); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	listen := func(dir string) *net.UnixListener {
		lis, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, rankProxySocket), Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		return lis
	}
	live := mk("live", time.Hour)
	l := listen(live)
	defer l.Close()
	dead := mk("dead", 0)
	d := listen(dead)
	d.SetUnlinkOnClose(false) // as after kill -9: the file stays, nobody listens
	d.Close()
	young := mk("young", 10*time.Second)
	empty := mk("empty", time.Hour)
	odd := mk("odd", time.Hour)
	if err := os.WriteFile(filepath.Join(odd, rankProxySocket), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(tmp, rankProxyPrefix+"file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	removed := sweepRankProxyDirs(tmp, time.Now())
	slices.Sort(removed)
	if want := []string{dead, empty}; !slices.Equal(removed, want) {
		t.Fatalf("removed %q, want %q", removed, want)
	}
	for _, keep := range []string{live, young, odd, file} {
		if _, err := os.Lstat(keep); err != nil {
			t.Errorf("%s: %v (should stay)", keep, err)
		}
	}
	for _, gone := range []string{dead, empty} {
		if _, err := os.Lstat(gone); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s: %v (should be gone)", gone, err)
		}
	}
	if c, err := net.Dial("unix", filepath.Join(live, rankProxySocket)); err != nil {
		t.Errorf("the live socket: %v", err)
	} else {
		c.Close()
	}
}
