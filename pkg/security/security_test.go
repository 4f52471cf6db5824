package security_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/switchyard-ml/switchyard/pkg/client"
	"github.com/switchyard-ml/switchyard/pkg/security"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
)

// fakeCoordinator answers ListJobs and JobLogs and records what reached it.
type fakeCoordinator struct {
	apiv1.UnimplementedCoordinatorServer
	calls  atomic.Int32
	mu     sync.Mutex
	peerCN string // CommonName of the last verified client certificate
	tlsVer uint16
}

func (f *fakeCoordinator) ListJobs(ctx context.Context, _ *apiv1.ListJobsRequest) (*apiv1.ListJobsResponse, error) {
	f.calls.Add(1)
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			f.mu.Lock()
			f.tlsVer = ti.State.Version
			if chains := ti.State.VerifiedChains; len(chains) > 0 {
				f.peerCN = chains[0][0].Subject.CommonName
			}
			f.mu.Unlock()
		}
	}
	return &apiv1.ListJobsResponse{}, nil
}

// SyncWorker answers with the caller's identity in the worker id.
func (f *fakeCoordinator) SyncWorker(ctx context.Context, _ *apiv1.SyncWorkerRequest) (*apiv1.SyncWorkerResponse, error) {
	f.calls.Add(1)
	id, ok := security.IdentityFrom(ctx)
	if !ok {
		return &apiv1.SyncWorkerResponse{Tasks: []*apiv1.Task{{JobId: "-"}}}, nil // no identity
	}
	return &apiv1.SyncWorkerResponse{Tasks: []*apiv1.Task{{JobId: "caller:" + id.Worker}}}, nil
}

func (f *fakeCoordinator) JobLogs(_ *apiv1.JobLogsRequest, s grpc.ServerStreamingServer[apiv1.LogEntry]) error {
	f.calls.Add(1)
	return s.Send(&apiv1.LogEntry{Line: "hello"})
}

// serve starts a gRPC server on 127.0.0.1:0 and stops it when t ends.
func serve(t *testing.T, opts ...grpc.ServerOption) (string, *fakeCoordinator) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeCoordinator{}
	srv := grpc.NewServer(opts...)
	apiv1.RegisterCoordinatorServer(srv, f)
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(lis) }() //nolint:errcheck // ends with Stop
	t.Cleanup(func() { srv.Stop(); <-done })
	return lis.Addr().String(), f
}

func tlsServer(t *testing.T, p testPKI, opts ...grpc.ServerOption) (string, *fakeCoordinator) {
	t.Helper()
	tc, err := security.ServerTLS(p.Server)
	if err != nil {
		t.Fatal(err)
	}
	return serve(t, append(opts, grpc.Creds(credentials.NewTLS(tc)))...)
}

func dial(t *testing.T, o client.Options) *client.Client {
	t.Helper()
	c, err := client.Dial(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// rawCall makes one ListJobs call over a plain grpc connection (no
// wait-for-ready, no retries), so a refused handshake surfaces at once.
func rawCall(t *testing.T, addr string, creds credentials.TransportCredentials) error {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = apiv1.NewCoordinatorClient(conn).ListJobs(ctx, &apiv1.ListJobsRequest{})
	return err
}

func ctx5s(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestMutualTLS(t *testing.T) {
	p := newTestPKI(t)
	addr, f := tlsServer(t, p)
	// ServerName is left empty: the name checked is the dialled host.
	c := dial(t, client.Options{Endpoints: []string{addr}, TLS: p.Client})
	if _, err := c.ListJobs(ctx5s(t), &apiv1.ListJobsRequest{}); err != nil {
		t.Fatalf("ListJobs over mTLS: %v", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.peerCN != clientCN {
		t.Errorf("server saw verified client %q, want %q", f.peerCN, clientCN)
	}
	if f.tlsVer != tls.VersionTLS13 {
		t.Errorf("TLS version %#x, want TLS 1.3", f.tlsVer)
	}
}

func TestMutualTLSServerNameOverride(t *testing.T) {
	p := newTestPKI(t)
	addr, _ := tlsServer(t, p)
	_, port, _ := net.SplitHostPort(addr)
	// Dial by IP but check the certificate against the name "localhost".
	c := dial(t, client.Options{Endpoints: []string{"127.0.0.1:" + port}, TLS: p.Client, ServerName: "localhost"})
	if _, err := c.ListJobs(ctx5s(t), &apiv1.ListJobsRequest{}); err != nil {
		t.Fatalf("ListJobs with ServerName localhost: %v", err)
	}
	// A name the certificate does not carry is refused.
	bad := dial(t, client.Options{Endpoints: []string{addr}, TLS: p.Client, ServerName: "elsewhere.example"})
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := bad.ListJobs(ctx, &apiv1.ListJobsRequest{}); err == nil {
		t.Fatal("ListJobs with a server name not in the certificate succeeded")
	}
}

func TestMutualTLSRefusals(t *testing.T) {
	p := newTestPKI(t)
	addr, f := tlsServer(t, p)
	caPEM, err := os.ReadFile(p.Client.CA)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	foreign, err := security.ClientTLS(p.OtherClient, "")
	if err != nil {
		t.Fatal(err)
	}
	distrust, err := security.ClientTLS(security.TLSFiles{CA: p.OtherCA, Cert: p.Client.Cert, Key: p.Client.Key}, "")
	if err != nil {
		t.Fatal(err)
	}
	good, err := security.ClientTLS(p.Client, "")
	if err != nil {
		t.Fatal(err)
	}
	// A Go client leaves out a certificate whose issuer the server did not
	// list as acceptable; this one presents the foreign certificate anyway,
	// so the server's own verification is what refuses it.
	pushy := foreign.Clone()
	forced := pushy.Certificates[0]
	pushy.Certificates = nil
	pushy.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &forced, nil }
	tls12 := good.Clone()
	tls12.MinVersion, tls12.MaxVersion = tls.VersionTLS12, tls.VersionTLS12

	for _, tc := range []struct {
		name  string
		creds credentials.TransportCredentials
	}{
		{"no client certificate", credentials.NewTLS(&tls.Config{RootCAs: pool})},
		{"client certificate from another CA", credentials.NewTLS(foreign)},
		{"client certificate from another CA, presented anyway", credentials.NewTLS(pushy)},
		{"client does not trust the server's CA", credentials.NewTLS(distrust)},
		{"TLS 1.2 only", credentials.NewTLS(tls12)},
		{"plaintext", insecure.NewCredentials()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := rawCall(t, addr, tc.creds)
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("got %v, want Unavailable", err)
			}
		})
	}
	if n := f.calls.Load(); n != 0 {
		t.Fatalf("handler ran %d times for refused clients", n)
	}
	// The same raw path with the right certificate works, so the refusals
	// above are about the certificates and not the harness.
	if err := rawCall(t, addr, credentials.NewTLS(good)); err != nil {
		t.Fatalf("raw call with the right certificate: %v", err)
	}
}

func TestTLSFileErrors(t *testing.T) {
	p := newTestPKI(t)
	dir := t.TempDir()
	noPEM := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(noPEM, []byte("this is not PEM\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")

	for _, tc := range []struct {
		name  string
		files security.TLSFiles
		want  []string // substrings of the error
		isErr error
	}{
		{"missing CA", security.TLSFiles{CA: missing, Cert: p.Client.Cert, Key: p.Client.Key}, []string{missing}, fs.ErrNotExist},
		{"missing cert", security.TLSFiles{CA: p.Client.CA, Cert: missing, Key: p.Client.Key}, []string{missing}, fs.ErrNotExist},
		{"missing key", security.TLSFiles{CA: p.Client.CA, Cert: p.Client.Cert, Key: missing}, []string{missing}, fs.ErrNotExist},
		{"CA without PEM", security.TLSFiles{CA: noPEM, Cert: p.Client.Cert, Key: p.Client.Key}, []string{noPEM, "no PEM"}, nil},
		{"cert without PEM", security.TLSFiles{CA: p.Client.CA, Cert: noPEM, Key: p.Client.Key}, []string{noPEM}, nil},
		{"key without PEM", security.TLSFiles{CA: p.Client.CA, Cert: p.Client.Cert, Key: noPEM}, []string{noPEM}, nil},
		{"key of another certificate", security.TLSFiles{CA: p.Client.CA, Cert: p.Client.Cert, Key: p.Server.Key}, []string{p.Client.Cert, p.Server.Key}, nil},
		{"only CA", security.TLSFiles{CA: p.Client.CA}, []string{"needs all of ca, cert and key"}, nil},
		{"only cert and key", security.TLSFiles{Cert: p.Client.Cert, Key: p.Client.Key}, []string{"needs all of ca, cert and key", `ca=""`}, nil},
		{"only key", security.TLSFiles{Key: p.Client.Key}, []string{"needs all of ca, cert and key"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !tc.files.Enabled() {
				t.Fatal("files should count as enabled")
			}
			for side, load := range map[string]func() (*tls.Config, error){
				"server": func() (*tls.Config, error) { return security.ServerTLS(tc.files) },
				"client": func() (*tls.Config, error) { return security.ClientTLS(tc.files, "") },
			} {
				cfg, err := load()
				if err == nil {
					t.Fatalf("%s: no error (config %v)", side, cfg != nil)
				}
				for _, w := range tc.want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("%s: error %q does not mention %q", side, err, w)
					}
				}
				if tc.isErr != nil && !errors.Is(err, tc.isErr) {
					t.Errorf("%s: error %v is not %v", side, err, tc.isErr)
				}
			}
		})
	}
	if (security.TLSFiles{}).Enabled() {
		t.Error("empty TLSFiles should not be enabled")
	}
}

func TestServerTLSConfig(t *testing.T) {
	p := newTestPKI(t)
	s, err := security.ServerTLS(p.Server)
	if err != nil {
		t.Fatal(err)
	}
	if s.ClientAuth != tls.RequireAndVerifyClientCert || s.ClientCAs == nil || s.MinVersion != tls.VersionTLS13 || len(s.Certificates) != 1 {
		t.Errorf("server config: auth %v, CAs set %v, min %#x, %d certs", s.ClientAuth, s.ClientCAs != nil, s.MinVersion, len(s.Certificates))
	}
	c, err := security.ClientTLS(p.Client, "name")
	if err != nil {
		t.Fatal(err)
	}
	if c.RootCAs == nil || c.ServerName != "name" || c.MinVersion != tls.VersionTLS13 || len(c.Certificates) != 1 || c.InsecureSkipVerify {
		t.Errorf("client config: roots set %v, name %q, min %#x, %d certs, skip-verify %v", c.RootCAs != nil, c.ServerName, c.MinVersion, len(c.Certificates), c.InsecureSkipVerify)
	}
}

func TestTokenUnary(t *testing.T) {
	addr, f := serve(t, security.ServerOptions("s3cret", false)...)
	for _, tc := range []struct {
		name  string
		token string
		md    []string // extra outgoing metadata
		want  codes.Code
	}{
		{"no token", "", nil, codes.Unauthenticated},
		{"wrong token", "wrong", nil, codes.Unauthenticated},
		{"prefix of the token", "s3cre", nil, codes.Unauthenticated},
		{"token with a suffix", "s3cret2", nil, codes.Unauthenticated},
		{"right token without Bearer", "", []string{"authorization", "s3cret"}, codes.Unauthenticated},
		{"right token", "s3cret", nil, codes.OK},
		{"raw Bearer header", "", []string{"authorization", "Bearer s3cret"}, codes.OK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, client.Options{Endpoints: []string{addr}, Token: tc.token})
			ctx := ctx5s(t)
			if tc.md != nil {
				ctx = metadata.AppendToOutgoingContext(ctx, tc.md...)
			}
			before := f.calls.Load()
			_, err := c.ListJobs(ctx, &apiv1.ListJobsRequest{})
			if got := status.Code(err); got != tc.want {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			ran := f.calls.Load() > before
			if ran != (tc.want == codes.OK) {
				t.Fatalf("handler ran: %v, want %v", ran, tc.want == codes.OK)
			}
		})
	}
}

func TestTokenStream(t *testing.T) {
	addr, f := serve(t, security.ServerOptions("s3cret", false)...)
	for _, tc := range []struct {
		token string
		want  codes.Code
	}{{"", codes.Unauthenticated}, {"wrong", codes.Unauthenticated}, {"s3cret", codes.OK}} {
		t.Run("token="+tc.token, func(t *testing.T) {
			c := dial(t, client.Options{Endpoints: []string{addr}, Token: tc.token})
			s, err := c.JobLogs(ctx5s(t), &apiv1.JobLogsRequest{JobId: "j"})
			if err != nil {
				t.Fatal(err)
			}
			before := f.calls.Load()
			e, err := s.Recv()
			if got := status.Code(err); got != tc.want {
				t.Fatalf("Recv: got %v, want %v", err, tc.want)
			}
			if tc.want != codes.OK {
				if f.calls.Load() != before {
					t.Fatal("stream handler ran without the right token")
				}
				return
			}
			if e.GetLine() != "hello" {
				t.Fatalf("line %q, want hello", e.GetLine())
			}
			if _, err := s.Recv(); err != io.EOF {
				t.Fatalf("end of stream: %v", err)
			}
		})
	}
}

func TestTokenOverMutualTLS(t *testing.T) {
	p := newTestPKI(t)
	addr, _ := tlsServer(t, p, security.ServerOptions("s3cret", true)...)
	for _, tc := range []struct {
		token string
		want  codes.Code
	}{{"wrong", codes.Unauthenticated}, {"s3cret", codes.OK}} {
		c := dial(t, client.Options{Endpoints: []string{addr}, TLS: p.Client, Token: tc.token})
		if _, err := c.ListJobs(ctx5s(t), &apiv1.ListJobsRequest{}); status.Code(err) != tc.want {
			t.Errorf("token %q: got %v, want %v", tc.token, err, tc.want)
		}
	}
}

// TestWorkerCertificates: over mutual TLS, a worker's certificate binds
// the caller to its worker with or without tokens; other certificates
// leave the token to decide (and, without tokens, identify nobody, as
// before).
func TestWorkerCertificates(t *testing.T) {
	p := newTestPKI(t)
	for _, tc := range []struct {
		name, token string
		serverToken string
		files       security.TLSFiles
		sync        codes.Code
		caller      string // "-": the server saw no identity
		list        codes.Code
	}{
		{"worker cert, no tokens", "", "", p.Worker, codes.OK, "caller:w1", codes.PermissionDenied},
		{"operator cert, no tokens", "", "", p.Client, codes.OK, "-", codes.OK},
		{"worker cert narrows the cluster token", "s3cret", "s3cret", p.Worker, codes.OK, "caller:w1", codes.PermissionDenied},
		{"worker cert with its own worker token", security.WorkerToken("s3cret", "w1"), "s3cret", p.Worker, codes.OK, "caller:w1", codes.PermissionDenied},
		{"worker cert with another worker's token", security.WorkerToken("s3cret", "w2"), "s3cret", p.Worker, codes.PermissionDenied, "", codes.PermissionDenied},
		{"worker cert, wrong token", "wrong", "s3cret", p.Worker, codes.Unauthenticated, "", codes.Unauthenticated},
		{"operator cert with the cluster token", "s3cret", "s3cret", p.Client, codes.OK, "caller:", codes.OK},
		{"worker cert without a name", "", "", p.NamelessWorker, codes.Unauthenticated, "", codes.Unauthenticated},
	} {
		addr, _ := tlsServer(t, p, security.ServerOptions(tc.serverToken, true)...)
		c := dial(t, client.Options{Endpoints: []string{addr}, TLS: tc.files, Token: tc.token})
		resp, err := c.SyncWorker(ctx5s(t), &apiv1.SyncWorkerRequest{WorkerId: "w1"})
		if status.Code(err) != tc.sync || (err == nil && resp.Tasks[0].JobId != tc.caller) {
			t.Errorf("%s: sync %v %v, want %v as %q", tc.name, resp, err, tc.sync, tc.caller)
		}
		if _, err := c.ListJobs(ctx5s(t), &apiv1.ListJobsRequest{}); status.Code(err) != tc.list {
			t.Errorf("%s: list %v, want %v", tc.name, err, tc.list)
		}
	}
}

func TestNoTokenNoCheck(t *testing.T) {
	if opts := security.ServerOptions("", false); len(opts) != 0 {
		t.Fatalf("ServerOptions(\"\") = %d options, want none", len(opts))
	}
	addr, _ := serve(t, security.ServerOptions("", false)...)
	c := dial(t, client.Options{Endpoints: []string{addr}})
	if _, err := c.ListJobs(ctx5s(t), &apiv1.ListJobsRequest{}); err != nil {
		t.Fatalf("no token required, but: %v", err)
	}
	s, err := c.JobLogs(ctx5s(t), &apiv1.JobLogsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatalf("stream without token: %v", err)
	}
}

func TestCheck(t *testing.T) {
	in := func(kv ...string) context.Context {
		return metadata.NewIncomingContext(context.Background(), metadata.Pairs(kv...))
	}
	for _, tc := range []struct {
		name string
		ctx  context.Context
		want string
		ok   bool
	}{
		{"nothing wanted", context.Background(), "", true},
		{"no metadata", context.Background(), "t", false},
		{"empty bearer", in("authorization", "Bearer "), "t", false},
		{"right", in("authorization", "Bearer t"), "t", true},
		{"wrong", in("authorization", "Bearer u"), "t", false},
		{"second value right", in("authorization", "Bearer u", "authorization", "Bearer t"), "t", true},
		{"other header", in("x-token", "Bearer t"), "t", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := security.Check(tc.ctx, tc.want)
			if (err == nil) != tc.ok {
				t.Fatalf("Check: %v, want ok=%v", err, tc.ok)
			}
			if err != nil && status.Code(err) != codes.Unauthenticated {
				t.Fatalf("code %v, want Unauthenticated", status.Code(err))
			}
		})
	}
}

func TestTokenMetadata(t *testing.T) {
	md, err := security.Token("abc").GetRequestMetadata(context.Background())
	if err != nil || md["authorization"] != "Bearer abc" || len(md) != 1 {
		t.Fatalf("metadata %v, %v", md, err)
	}
}

func TestIsLoopbackAndCheckListen(t *testing.T) {
	for _, tc := range []struct {
		addr     string
		loopback bool
	}{
		{"127.0.0.1:1", true},
		{"127.0.0.2:1", true},
		{"[::1]:1", true},
		{"localhost:1", true},
		{"LocalHost:1", true},
		{"127.0.0.1", true},
		{"0.0.0.0:1", false},
		{":7400", false},
		{"[::]:1", false},
		{"10.0.0.1:1", false},
		{"192.168.1.5:7400", false},
		{"localhost.example.com:1", false},
		{"example.com:1", false},
		{"", false},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			if got := security.IsLoopback(tc.addr); got != tc.loopback {
				t.Fatalf("IsLoopback(%q) = %v, want %v", tc.addr, got, tc.loopback)
			}
			err := security.CheckListen(tc.addr, false, false)
			if tc.loopback != (err == nil) {
				t.Fatalf("CheckListen(%q, plain) = %v", tc.addr, err)
			}
			if err != nil {
				if !errors.Is(err, security.ErrInsecureListen) {
					t.Fatalf("error %v does not wrap ErrInsecureListen", err)
				}
				if !strings.Contains(err.Error(), tc.addr) {
					t.Fatalf("error %q does not name %q", err, tc.addr)
				}
			}
			for _, flags := range [][2]bool{{true, false}, {false, true}, {true, true}} {
				if err := security.CheckListen(tc.addr, flags[0], flags[1]); err != nil {
					t.Fatalf("CheckListen(%q, tls=%v, insecure=%v) = %v", tc.addr, flags[0], flags[1], err)
				}
			}
		})
	}
}

// TestWorkerTokens: a worker token made from the cluster token identifies
// its worker, may only sync and reach its jobs' checkpoints, and cannot be forged from the
// format alone; the cluster token identifies an operator.
func TestWorkerTokens(t *testing.T) {
	addr, _ := serve(t, security.ServerOptions("s3cret", false)...)
	w1 := security.WorkerToken("s3cret", "w1")
	if w, ok := security.WorkerOf(w1); !ok || w != "w1" {
		t.Fatalf("WorkerOf(%q) = %q %v", w1, w, ok)
	}
	if security.WorkerToken("s3cret", "w2") == w1 || security.WorkerToken("other", "w1") == w1 {
		t.Fatal("worker tokens collide")
	}
	forged := strings.Replace(w1, "w1.", "w2.", 1)
	for _, tc := range []struct {
		name, token string
		sync        codes.Code
		caller      string
		list        codes.Code
	}{
		{"cluster token", "s3cret", codes.OK, "caller:", codes.OK},
		{"worker token", w1, codes.OK, "caller:w1", codes.PermissionDenied},
		{"another cluster's worker token", security.WorkerToken("other", "w1"), codes.Unauthenticated, "", codes.Unauthenticated},
		{"renamed worker token", forged, codes.Unauthenticated, "", codes.Unauthenticated},
		{"prefix only", "sy-worker.w1.", codes.Unauthenticated, "", codes.Unauthenticated},
	} {
		c := dial(t, client.Options{Endpoints: []string{addr}, Token: tc.token})
		resp, err := c.SyncWorker(ctx5s(t), &apiv1.SyncWorkerRequest{WorkerId: "w1"})
		if status.Code(err) != tc.sync || (err == nil && resp.Tasks[0].JobId != tc.caller) {
			t.Errorf("%s: sync %v %v, want %v as %q", tc.name, resp, err, tc.sync, tc.caller)
		}
		if _, err := c.ListJobs(ctx5s(t), &apiv1.ListJobsRequest{}); status.Code(err) != tc.list {
			t.Errorf("%s: list %v, want %v", tc.name, err, tc.list)
		}
	}
	// a worker and its ranks: syncs, and the catalogue of the jobs it
	// runs (the handlers check which)
	want := []string{apiv1.Coordinator_SyncWorker_FullMethodName, apiv1.Coordinator_ListCheckpoints_FullMethodName,
		apiv1.Coordinator_CommitCheckpoint_FullMethodName, apiv1.Coordinator_RetireCheckpoint_FullMethodName}
	for _, m := range want {
		if !security.WorkerMethods[m] {
			t.Errorf("%s is not among the worker methods", m)
		}
	}
	if len(security.WorkerMethods) != len(want) {
		t.Errorf("worker methods %v, want only %v", security.WorkerMethods, want)
	}
}
