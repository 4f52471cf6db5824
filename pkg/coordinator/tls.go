package coordinator

import (
	"crypto/tls"
	"errors"
	"net"
	"time"

	"github.com/hashicorp/raft"
)

// tlsStream is raft's stream layer over mutual TLS 1.3: the listener
// demands and verifies a client certificate, Dial verifies that the
// server's names the host dialled.
type tlsStream struct {
	net.Listener
	advertise net.Addr
	cfg       *tls.Config
}

var _ raft.StreamLayer = (*tlsStream)(nil)

func listenTLS(bind string, advertise net.Addr, cfg *tls.Config) (*tlsStream, error) {
	if len(cfg.Certificates) == 0 || cfg.RootCAs == nil {
		return nil, errors.New("raft TLS needs this replica's certificate and the CA that signs the others'")
	}
	server := cfg.Clone()
	server.ClientAuth, server.ClientCAs, server.MinVersion = tls.RequireAndVerifyClientCert, cfg.RootCAs, tls.VersionTLS13
	lis, err := tls.Listen("tcp", bind, server)
	if err != nil {
		return nil, err
	}
	if advertise == nil {
		if a, ok := lis.Addr().(*net.TCPAddr); ok && a.IP.IsUnspecified() {
			lis.Close()
			return nil, errors.New("raft: an unspecified bind address needs an advertise address")
		}
	}
	return &tlsStream{Listener: lis, advertise: advertise, cfg: cfg}, nil
}

// Addr is the address the other replicas dial.
func (s *tlsStream) Addr() net.Addr {
	if s.advertise != nil {
		return s.advertise
	}
	return s.Listener.Addr()
}

// Dial opens a TLS connection to another replica.
func (s *tlsStream) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	host, _, err := net.SplitHostPort(string(addr))
	if err != nil {
		return nil, err
	}
	c := s.cfg.Clone()
	c.ServerName, c.MinVersion = host, tls.VersionTLS13
	return tls.DialWithDialer(&net.Dialer{Timeout: timeout}, "tcp", string(addr), c)
}
