package security

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// ErrInsecureListen: a non-loopback listener without TLS and without the
// explicit insecure flag.
var ErrInsecureListen = errors.New("security: refusing to listen beyond loopback without TLS (give TLS files, or set insecure explicitly)")

// TLSFiles names PEM files. All empty: no TLS.
type TLSFiles struct {
	CA   string `yaml:"ca" json:"ca"`     // CA that signs the peer's certificate
	Cert string `yaml:"cert" json:"cert"` // own certificate
	Key  string `yaml:"key" json:"key"`   // own private key
}

// Enabled reports whether any file is given.
func (f TLSFiles) Enabled() bool { return f.CA != "" || f.Cert != "" || f.Key != "" }

func (f TLSFiles) load() (*x509.CertPool, []tls.Certificate, error) {
	if f.CA == "" || f.Cert == "" || f.Key == "" {
		return nil, nil, fmt.Errorf("security: TLS needs all of ca, cert and key (got ca=%q cert=%q key=%q)", f.CA, f.Cert, f.Key)
	}
	pem, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, nil, fmt.Errorf("security: read CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, nil, fmt.Errorf("security: %s holds no PEM certificate", f.CA)
	}
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("security: load key pair %s, %s: %w", f.Cert, f.Key, err)
	}
	return pool, []tls.Certificate{cert}, nil
}

// ServerTLS is a mutual-TLS server configuration: clients must present a
// certificate signed by the CA.
func ServerTLS(f TLSFiles) (*tls.Config, error) {
	pool, certs, err := f.load()
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: certs,
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}, nil
}

// ClientTLS is the client side: it verifies the server against the CA and
// presents its own certificate. serverName overrides the name checked in
// the server's certificate ("" : the dialled host).
func ClientTLS(f TLSFiles, serverName string) (*tls.Config, error) {
	pool, certs, err := f.load()
	if err != nil {
		return nil, err
	}
	return &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, Certificates: certs, ServerName: serverName}, nil
}

// CheckListen applies the listen rule to addr (host:port).
func CheckListen(addr string, tlsOn, insecure bool) error {
	if tlsOn || insecure {
		return nil
	}
	if !IsLoopback(addr) {
		return fmt.Errorf("%w: %s", ErrInsecureListen, addr)
	}
	return nil
}

// IsLoopback reports whether addr's host is a loopback name or address.
// An empty host (all interfaces) is not loopback.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Token is a bearer token as per-RPC credentials.
type Token string

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (t Token) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}

// RequireTransportSecurity is false: a token may travel over loopback
// without TLS (the listen rule keeps other addresses on TLS).
func (t Token) RequireTransportSecurity() bool { return false }

var _ credentials.PerRPCCredentials = Token("")

// Identity is who a call comes from: an operator (the cluster token:
// Worker is ""), one worker (its worker token), or one rank that a
// worker runs (a rank token: Worker and Scope set).
type Identity struct {
	Worker string
	Scope  RankScope // Job "": not a rank's
}

// Ranked reports whether the caller is a rank (a rank token).
func (id Identity) Ranked() bool { return id.Scope.Job != "" }

type identityKey struct{}

// IdentityFrom is the caller's identity as ServerOptions' interceptors
// found it; ok is false when the server checks no token.
func IdentityFrom(ctx context.Context) (id Identity, ok bool) {
	id, ok = ctx.Value(identityKey{}).(Identity)
	return id, ok
}

// WithIdentity is ctx carrying id (for tests of handlers, and for calls a
// server makes on a caller's behalf).
func WithIdentity(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, identityKey{}, id)
}

// workerTokenPrefix starts every worker token: "sy-worker.ID.MAC".
const workerTokenPrefix = "sy-worker."

// WorkerToken is the token of worker id in the cluster whose token is
// secret: an HMAC of the id under the secret, so the coordinator checks it
// without storing it, and a worker holding it can act only as itself.
// `switchyard cluster worker-token ID` prints it for the worker's
// environment.
func WorkerToken(secret, worker string) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte("switchyard worker " + worker))
	return workerTokenPrefix + worker + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

// WorkerOf reports the worker a token claims to be ("" and false for
// another kind of token); it does not verify the claim.
func WorkerOf(token string) (string, bool) {
	rest, ok := strings.CutPrefix(token, workerTokenPrefix)
	if !ok {
		return "", false
	}
	i := strings.LastIndexByte(rest, '.')
	if i <= 0 {
		return "", false
	}
	return rest[:i], true
}

// WorkerCertOU marks a worker's certificate: a client certificate (signed
// by the cluster's CA) whose subject has this organisational unit names
// its worker in the common name ("/OU=switchyard-worker/CN=w1"). Over
// mutual TLS such a certificate binds the caller to that worker, with or
// without tokens: it may only sync as that worker and commit its ranks'
// checkpoints, whatever token it also shows.
const WorkerCertOU = "switchyard-worker"

// certWorker is the worker that the verified client certificate of ctx's
// peer names, if it is a worker's certificate.
func certWorker(ctx context.Context) (worker string, ok bool) {
	p, found := peer.FromContext(ctx)
	if !found {
		return "", false
	}
	ti, isTLS := p.AuthInfo.(credentials.TLSInfo)
	if !isTLS || len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		return "", false
	}
	leaf := ti.State.VerifiedChains[0][0]
	if !slices.Contains(leaf.Subject.OrganizationalUnit, WorkerCertOU) {
		return "", false
	}
	return leaf.Subject.CommonName, true
}

// identify finds who calls: by the bearer token in ctx's incoming metadata
// when secret (the cluster token) is set — the secret itself is an
// operator, a worker token made from it is that worker — and by a
// worker's certificate, which narrows any token to its worker. ok is
// false when nothing identifies the caller (no token is checked and the
// certificate, if any, is not a worker's).
func identify(ctx context.Context, secret string) (id Identity, ok bool, err error) {
	if secret != "" {
		if id, err = tokenIdentity(ctx, secret); err != nil {
			return Identity{}, false, err
		}
		ok = true
	}
	cw, byCert := certWorker(ctx)
	switch {
	case !byCert:
		return id, ok, nil
	case cw == "":
		return Identity{}, false, status.Error(codes.Unauthenticated, "a worker certificate without a common name (the worker id)")
	case id.Worker != "" && id.Worker != cw:
		return Identity{}, false, status.Errorf(codes.PermissionDenied, "the certificate names worker %s but the token worker %s", cw, id.Worker)
	}
	id.Worker = cw // a rank's scope stays
	return id, true, nil
}

// tokenIdentity checks the bearer token in ctx's incoming metadata against
// the cluster token secret: the secret itself is an operator, a worker
// token made from it is that worker, a rank token made from that is the
// worker narrowed to the rank.
func tokenIdentity(ctx context.Context, secret string) (Identity, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		scheme, got, ok := strings.Cut(v, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			continue
		}
		if subtle.ConstantTimeCompare([]byte(got), []byte(secret)) == 1 {
			return Identity{}, nil
		}
		if w, ok := WorkerOf(got); ok && subtle.ConstantTimeCompare([]byte(got), []byte(WorkerToken(secret, w))) == 1 {
			return Identity{Worker: w}, nil
		}
		if w, r, ok := rankOf(got); ok && subtle.ConstantTimeCompare([]byte(got), []byte(rankToken(WorkerToken(secret, w), w, r))) == 1 {
			return Identity{Worker: w, Scope: r}, nil
		}
	}
	return Identity{}, status.Error(codes.Unauthenticated, "missing or wrong bearer token")
}

// Check verifies the bearer token in ctx's incoming metadata: the cluster
// token want, or a worker (or rank) token made from it.
func Check(ctx context.Context, want string) error {
	if want == "" {
		return nil
	}
	_, err := tokenIdentity(ctx, want)
	return err
}

// WorkerMethods are the only calls a worker token may make (full gRPC
// method names): a worker syncs; its ranks read their job's checkpoint
// catalogue, and its rank 0 commits checkpoints and retires old ones.
var WorkerMethods = map[string]bool{
	"/switchyard.api.v1.Coordinator/SyncWorker":       true,
	"/switchyard.api.v1.Coordinator/ListCheckpoints":  true,
	"/switchyard.api.v1.Coordinator/CommitCheckpoint": true,
	"/switchyard.api.v1.Coordinator/RetireCheckpoint": true,
}

// authorize identifies the caller of method and refuses a worker (by
// token or certificate) on an operator's call.
func authorize(ctx context.Context, token, method string) (context.Context, error) {
	id, ok, err := identify(ctx, token)
	if err != nil {
		return nil, err
	}
	if !ok {
		return ctx, nil
	}
	switch {
	case id.Ranked() && !RankMethods[method]:
		return nil, status.Errorf(codes.PermissionDenied, "rank %d of job %s (attempt %d, on worker %s) may only read, commit and retire its job's checkpoints, not call %s",
			id.Scope.Rank, id.Scope.Job, id.Scope.Attempt, id.Worker, method)
	case id.Worker != "" && !WorkerMethods[method]:
		return nil, status.Errorf(codes.PermissionDenied, "worker %s may only sync and read, commit and retire its jobs' checkpoints, not call %s", id.Worker, method)
	}
	return WithIdentity(ctx, id), nil
}

// ServerOptions returns the interceptors that identify every caller and
// put its Identity in the handler's context: they require token (or a
// worker token made from it) when it is set, and, when the server runs
// mutual TLS (mutualTLS), bind a caller with a worker's certificate
// (WorkerCertOU) to its worker. None when neither applies.
func ServerOptions(token string, mutualTLS bool) []grpc.ServerOption {
	if token == "" && !mutualTLS {
		return nil
	}
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			ctx, err := authorize(ctx, token, info.FullMethod)
			if err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			ctx, err := authorize(ss.Context(), token, info.FullMethod)
			if err != nil {
				return err
			}
			return h(srv, identified{ss, ctx})
		}),
	}
}

// identified is a server stream whose context carries the caller.
type identified struct {
	grpc.ServerStream
	ctx context.Context
}

func (s identified) Context() context.Context { return s.ctx }
