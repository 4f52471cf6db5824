package coordinator

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/switchyard-ml/switchyard/pkg/security"
)

// stream is raft's stream layer: TCP, or mutual TLS 1.3 when tls is set
// (the listener demands and verifies a client certificate, Dial verifies
// that the server's names the host dialled).
//
// It advertises the raft address as configured, a host name included,
// and resolves names only when it dials. raft's own TCP transport wants a
// resolved *net.TCPAddr to advertise, so a replica whose name does not
// resolve yet could not even start; that is the normal case for a
// Kubernetes StatefulSet pod, whose DNS record appears only once the pod
// is running (and, behind a headless service, once it is ready). The
// other way, resolving the name at start with retries until it resolves,
// would also pin the pod's IP in the raft configuration, which changes
// when the pod is rescheduled. With the name in the configuration and
// resolution at dial time, a peer that does not resolve yet is just a
// peer that cannot be reached yet: raft retries its RPCs (replication
// with backoff, elections every timeout) and the replica catches up as
// soon as the name resolves, and a rescheduled pod keeps its address.
type stream struct {
	net.Listener
	advertise net.Addr // nil: the listener's address
	dial      DialFunc
	tls       *tls.Config // nil: plain TCP
	log       *slog.Logger

	mu         sync.Mutex
	lastWarned time.Time // of an unresolved peer name, to say it once per dnsLogEvery
}

var _ raft.StreamLayer = (*stream)(nil)

// DialFunc connects to a raft address (host:port) as net.Dialer's
// DialContext does.
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// dnsLogEvery is how often an unresolved peer name is logged.
const dnsLogEvery = 5 * time.Second

// nameAddr is a configured raft address, a host name or an IP and port,
// as the other replicas dial it.
type nameAddr string

func (a nameAddr) Network() string { return "tcp" }
func (a nameAddr) String() string  { return string(a) }

// listenStream listens on bind and advertises advertise ("": the bound
// address, which must then not be unspecified, e.g. 0.0.0.0).
func listenStream(bind, advertise string, tc *tls.Config, dial DialFunc, log *slog.Logger) (*stream, error) {
	if tc != nil && (len(tc.Certificates) == 0 || tc.RootCAs == nil) {
		return nil, errors.New("raft TLS needs this replica's certificate and the CA that signs the others'")
	}
	lis, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, err
	}
	s := &stream{Listener: lis, dial: dial, log: log}
	if advertise != "" {
		s.advertise = nameAddr(advertise)
	} else if a, ok := lis.Addr().(*net.TCPAddr); ok && a.IP.IsUnspecified() {
		lis.Close()
		return nil, errors.New("raft: an unspecified bind address needs an advertise address")
	}
	if tc != nil {
		server := tc.Clone()
		server.ClientAuth, server.ClientCAs, server.MinVersion = tls.RequireAndVerifyClientCert, tc.RootCAs, tls.VersionTLS13
		server.VerifyConnection = notWorker
		s.Listener, s.tls = tls.NewListener(lis, server), tc
	}
	return s, nil
}

// Addr is the address the other replicas dial.
func (s *stream) Addr() net.Addr {
	if s.advertise != nil {
		return s.advertise
	}
	return s.Listener.Addr()
}

// Dial connects to another replica, resolving its name now.
func (s *stream) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, err := s.dial(ctx, "tcp", string(addr))
	if err != nil {
		if dnsErr := (*net.DNSError)(nil); errors.As(err, &dnsErr) {
			s.warnUnresolved(string(addr), err)
		}
		return nil, err
	}
	if s.tls == nil {
		return conn, nil
	}
	host, _, err := net.SplitHostPort(string(addr))
	if err != nil {
		conn.Close()
		return nil, err
	}
	c := s.tls.Clone()
	c.ServerName, c.MinVersion = host, tls.VersionTLS13
	c.VerifyConnection = notWorker
	tc := tls.Client(conn, c)
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	return tc, nil
}

// notWorker refuses a peer whose certificate is a worker's: the one CA
// signs replicas' and workers' certificates, and a worker, which the API
// allows only to sync and commit, must not speak raft.
func notWorker(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) > 0 && slices.Contains(cs.PeerCertificates[0].Subject.OrganizationalUnit, security.WorkerCertOU) {
		return fmt.Errorf("raft: %q holds a worker's certificate (OU %s), not a replica's", cs.PeerCertificates[0].Subject.CommonName, security.WorkerCertOU)
	}
	return nil
}

// warnUnresolved says, at most once per dnsLogEvery, that a peer's name
// does not resolve (yet): raft retries by itself.
func (s *stream) warnUnresolved(addr string, err error) {
	s.mu.Lock()
	now := time.Now()
	say := now.Sub(s.lastWarned) >= dnsLogEvery
	if say {
		s.lastWarned = now
	}
	s.mu.Unlock()
	if say {
		s.log.Warn("waiting for a raft peer's name to resolve; raft retries", "peer-addr", addr, "error", err)
	}
}
