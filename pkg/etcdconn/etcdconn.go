// Package etcdconn opens the etcd clients of coordinators and workers
// (and of `switchyard train --checkpoint-etcd` run by hand) one way:
// mutual TLS from the process's TLS files when it has them, and the etcd
// user from the environment (SWITCHYARD_ETCD_USERNAME and
// SWITCHYARD_ETCD_PASSWORD; never from flags or config files, which end up
// in process lists and logs), unless the caller gives one (the dev
// coordinator, whose embedded etcd's password it generated). A worker's
// ranks do not inherit that user: they reach the checkpoint catalogue
// through the coordinator.
package etcdconn

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/switchyard-ml/switchyard/pkg/security"
)

// The environment variables holding the etcd user.
const (
	UsernameEnv = "SWITCHYARD_ETCD_USERNAME"
	PasswordEnv = "SWITCHYARD_ETCD_PASSWORD"
)

// DialTimeout bounds the first connection.
const DialTimeout = 5 * time.Second

// ReconnectMaxDelay bounds the pause between a client's tries to reach
// an etcd that went away. gRPC's default pause grows to two minutes: a
// coordinator or rank would still be waiting half a minute after etcd
// came back from a one-minute restart, its checkpoint commits and lease
// renewals failing meanwhile.
const ReconnectMaxDelay = time.Second

// Config is what Open needs beyond the endpoints.
type Config struct {
	TLS security.TLSFiles // all empty: plain TCP
	// Context is the client's lifetime context (nil: background).
	Context context.Context
	// Username and Password are the etcd user, both or neither; given,
	// they win over the environment.
	Username, Password string
	// Getenv reads the user when Config gives none (nil: os.Getenv).
	Getenv func(string) string
}

// Open returns an etcd client for endpoints.
func Open(endpoints []string, c Config) (*clientv3.Client, error) {
	getenv := c.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	cc := clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: DialTimeout,
		Logger:      zap.NewNop(),
		Username:    c.Username,
		Password:    c.Password,
		Context:     c.Context,
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: ReconnectMaxDelay},
			MinConnectTimeout: DialTimeout,
		})},
	}
	if (cc.Username == "") != (cc.Password == "") {
		return nil, errors.New("etcd: give both the username and the password, or neither")
	}
	if cc.Username == "" {
		cc.Username, cc.Password = getenv(UsernameEnv), getenv(PasswordEnv)
		if (cc.Username == "") != (cc.Password == "") {
			return nil, fmt.Errorf("etcd: give both %s and %s, or neither", UsernameEnv, PasswordEnv)
		}
	}
	if c.TLS.Enabled() {
		tc, err := security.ClientTLS(c.TLS, "")
		if err != nil {
			return nil, fmt.Errorf("etcd TLS: %w", err)
		}
		cc.TLS = tc
	}
	cli, err := clientv3.New(cc)
	if err != nil {
		return nil, fmt.Errorf("etcd %v: %w", endpoints, err)
	}
	return cli, nil
}

// Diagnose says, for each endpoint, what a plain connection to it meets:
// the TCP connection's error ("connection refused"), the TLS handshake's
// or the server's first TLS alert ("unknown certificate authority"), or
// that it answers. The etcd client itself retries quietly and reports only
// that time ran out; this is for the message of that error.
func Diagnose(ctx context.Context, endpoints []string, files security.TLSFiles) string {
	var out []string
	for _, ep := range endpoints {
		out = append(out, ep+": "+probe(ctx, ep, files))
	}
	return strings.Join(out, "; ")
}

// probeTimeout bounds each step of a probe.
const probeTimeout = 2 * time.Second

func probe(ctx context.Context, endpoint string, files security.TLSFiles) string {
	hostport, secure := endpoint, false
	if u, err := url.Parse(endpoint); err == nil && u.Host != "" {
		hostport, secure = u.Host, u.Scheme == "https"
	}
	d := net.Dialer{Timeout: probeTimeout}
	conn, err := d.DialContext(ctx, "tcp", hostport)
	if err != nil {
		return err.Error()
	}
	defer conn.Close()
	if !secure {
		return "reachable (plain TCP)"
	}
	if !files.Enabled() {
		return "an https endpoint, and this process has no TLS files"
	}
	host, _, _ := net.SplitHostPort(hostport)
	tc, err := security.ClientTLS(files, host)
	if err != nil {
		return "TLS files: " + err.Error()
	}
	tconn := tls.Client(conn, tc)
	tconn.SetDeadline(time.Now().Add(probeTimeout)) //nolint:errcheck
	if err := tconn.HandshakeContext(ctx); err != nil {
		return "TLS handshake: " + err.Error()
	}
	// TLS 1.3: a server that refuses the client's certificate says so
	// after the handshake, in its first record; one that accepts it
	// waits for the client (the read times out)
	tconn.SetReadDeadline(time.Now().Add(probeTimeout / 4)) //nolint:errcheck
	var b [1]byte
	if _, err := tconn.Read(b[:]); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return "reachable (TLS accepted)"
		}
		return "TLS: " + err.Error()
	}
	return "reachable (TLS accepted)"
}
