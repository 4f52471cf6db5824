package security

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
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

// Check verifies the bearer token in ctx's incoming metadata.
func Check(ctx context.Context, want string) error {
	if want == "" {
		return nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		scheme, got, ok := strings.Cut(v, " ")
		if ok && strings.EqualFold(scheme, "Bearer") && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1 {
			return nil
		}
	}
	return status.Error(codes.Unauthenticated, "missing or wrong bearer token")
}

// ServerOptions returns the interceptors that require token on every call
// (none when token is empty).
func ServerOptions(token string) []grpc.ServerOption {
	if token == "" {
		return nil
	}
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := Check(ctx, token); err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := Check(ss.Context(), token); err != nil {
				return err
			}
			return h(srv, ss)
		}),
	}
}
