package devcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Config says where the dev cluster keeps its data.
type Config struct {
	// DataDir holds etcd/ and nats/; required.
	DataDir string
	// StartTimeout bounds how long each server may take to become ready
	// (default 30s).
	StartTimeout time.Duration
}

// Cluster is a running embedded etcd and NATS.
type Cluster struct {
	Etcd *Etcd
	NATS *NATS
}

// EtcdEndpoints are the etcd client URLs (http://127.0.0.1:PORT).
func (c *Cluster) EtcdEndpoints() []string { return c.Etcd.Endpoints }

// NATSURL is the NATS client URL (nats://127.0.0.1:PORT).
func (c *Cluster) NATSURL() string { return c.NATS.URL }

// Start starts etcd and NATS in cfg.DataDir.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("devcluster: DataDir is required")
	}
	e, err := StartEtcd(ctx, filepath.Join(cfg.DataDir, "etcd"), cfg.StartTimeout)
	if err != nil {
		return nil, err
	}
	n, err := StartNATS(filepath.Join(cfg.DataDir, "nats"), 0, cfg.StartTimeout)
	if err != nil {
		e.Close()
		return nil, err
	}
	return &Cluster{Etcd: e, NATS: n}, nil
}

// Close stops NATS and etcd.
func (c *Cluster) Close() error {
	c.NATS.Close()
	c.Etcd.Close()
	return nil
}

// Etcd is an embedded single-member etcd server.
type Etcd struct {
	Endpoints []string
	e         *embed.Etcd
}

// StartEtcd starts a single-member etcd with its data in dir, on two free
// loopback ports. A dir that holds an earlier member's data is reused.
func StartEtcd(ctx context.Context, dir string, timeout time.Duration) (*Etcd, error) {
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("devcluster: etcd dir: %w", err)
	}
	var lastErr error
	// The ports are picked free and then released, so another process may
	// take one in between: try a few times.
	for range 3 {
		ports, err := freePorts(2)
		if err != nil {
			return nil, err
		}
		cfg := embed.NewConfig()
		cfg.Name = "dev"
		cfg.Dir = dir
		cfg.LogLevel = "error"
		// its shutdown logs "server closed" errors that are no errors
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
		// A one-member cluster: short ticks make leases precise (etcd's
		// minimum lease TTL is 1.5 election timeouts, here 750ms).
		cfg.TickMs, cfg.ElectionMs = 50, 500
		client := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))}
		peer := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1]))}
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
		cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
		e, err := embed.StartEtcd(cfg)
		if err != nil {
			lastErr = err
			continue
		}
		select {
		case <-e.Server.ReadyNotify():
			return &Etcd{Endpoints: []string{client.String()}, e: e}, nil
		case err := <-e.Err():
			lastErr = err
		case <-time.After(timeout):
			lastErr = fmt.Errorf("not ready after %v", timeout)
		case <-ctx.Done():
			lastErr = ctx.Err()
		}
		e.Close()
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("devcluster: start etcd: %w", lastErr)
}

// Close stops etcd.
func (e *Etcd) Close() { e.e.Close() }

// NATS is an embedded NATS server with JetStream.
type NATS struct {
	URL  string
	Port int
	s    *server.Server
}

// StartNATS starts NATS with JetStream storing in dir, on 127.0.0.1:port
// (port 0 picks a free one). Restarting on the same dir and port brings the
// streams back, as a restarted nats-server would.
func StartNATS(dir string, port int, timeout time.Duration) (*NATS, error) {
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	if port == 0 {
		port = -1 // nats-server: random port
	}
	s, err := server.NewServer(&server.Options{
		Host:      "127.0.0.1",
		Port:      port,
		JetStream: true,
		StoreDir:  dir,
		NoLog:     true,
		NoSigs:    true,
		// A restart must not wait for clients of the previous instance.
		ServerName: "switchyard-dev",
	})
	if err != nil {
		return nil, fmt.Errorf("devcluster: nats: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(timeout) {
		s.Shutdown()
		return nil, fmt.Errorf("devcluster: nats not ready after %v", timeout)
	}
	addr := s.Addr().(*net.TCPAddr)
	return &NATS{URL: s.ClientURL(), Port: addr.Port, s: s}, nil
}

// Close stops NATS and waits until it has.
func (n *NATS) Close() {
	n.s.Shutdown()
	n.s.WaitForShutdown()
}

func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("devcluster: free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
