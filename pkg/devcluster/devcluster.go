package devcluster

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/switchyard-ml/switchyard/internal/freeport"
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
	Etcd         *Etcd
	NATS         *NATS
	etcdPassword string
	portsFile    string
	closed       sync.Once
}

// EtcdEndpoints are the etcd client URLs (http://127.0.0.1:PORT).
func (c *Cluster) EtcdEndpoints() []string { return c.Etcd.Endpoints }

// EtcdUsername and EtcdPassword are the user the dev etcd wants (its root
// user, the password generated on the first start).
func (c *Cluster) EtcdUsername() string { return EtcdUser }

// EtcdPassword: see EtcdUsername.
func (c *Cluster) EtcdPassword() string { return c.etcdPassword }

// PortsFile is the file (DataDir/ports.json, mode 0600) keeping the ports
// and the passwords: where to tell a user to look for them, never to print.
func (c *Cluster) PortsFile() string { return c.portsFile }

// NATSURL is the NATS client URL (nats://127.0.0.1:PORT).
func (c *Cluster) NATSURL() string { return c.NATS.URL }

// EtcdUser is the dev etcd's one user, its root.
const EtcdUser = "root"

// ErrEtcdPasswordLost: the DataDir's etcd has authentication on but its
// ports.json keeps no password for it.
var ErrEtcdPasswordLost = errors.New("devcluster: etcd has authentication on, but no etcd password is kept")

// Start starts etcd and NATS in cfg.DataDir. The ports they get on the
// first start are kept in DataDir/ports.json and used again by every later
// start on that DataDir: workers (and CLIs) that learned the endpoints find
// the servers again after the coordinator restarts.
//
// Both servers want passwords, generated on the first start and kept in
// ports.json too: etcd's root user (authentication enabled; a DataDir of
// an older version, without it, gets it on its next start) and NATS's one
// user. Any local process could otherwise rewrite the cluster's state.
func Start(ctx context.Context, cfg Config) (c *Cluster, err error) {
	if cfg.DataDir == "" {
		return nil, errors.New("devcluster: DataDir is required")
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("devcluster: %w", err)
	}
	timeout := cfg.StartTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	pf := filepath.Join(cfg.DataDir, portsFile)
	kept, err := readPorts(pf)
	if err != nil {
		return nil, err
	}
	etcdDir := filepath.Join(cfg.DataDir, "etcd")
	e, err := startEtcd(ctx, etcdDir, kept.EtcdClient, kept.EtcdPeer, timeout)
	if err != nil {
		return nil, keptErr(err, kept.EtcdClient, pf)
	}
	var n *NATS
	defer func() {
		if err != nil {
			if n != nil {
				n.Close()
			}
			e.Close()
		}
	}()
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	authOn, err := etcdAuthEnabled(actx, e.Endpoints)
	if err != nil {
		return nil, err
	}
	switch {
	case authOn && kept.EtcdPassword == "":
		return nil, fmt.Errorf("%w in %s (restore the file with its etcd_password, or remove %s to start a fresh dev cluster)", ErrEtcdPasswordLost, pf, cfg.DataDir)
	case authOn:
		if err := checkEtcdUser(actx, e.Endpoints, kept.EtcdPassword); err != nil {
			return nil, fmt.Errorf("devcluster: etcd refuses the user %s kept in %s: %w", EtcdUser, pf, err)
		}
	case kept.EtcdPassword == "":
		if kept.EtcdPassword, err = newPassword(); err != nil {
			return nil, err
		}
	}
	if kept.NATSPassword == "" {
		if kept.NATSPassword, err = newPassword(); err != nil {
			return nil, err
		}
	}
	if n, err = startNATS(filepath.Join(cfg.DataDir, "nats"), kept.NATS, devNATSUser, kept.NATSPassword, timeout); err != nil {
		return nil, keptErr(err, kept.NATS, pf)
	}
	got := Ports{EtcdClient: e.clientPort, EtcdPeer: e.peerPort, NATS: n.Port, NATSPassword: kept.NATSPassword, EtcdPassword: kept.EtcdPassword}
	if got != kept {
		if err := writePorts(pf, got); err != nil {
			return nil, err
		}
	}
	// after the password is kept: a start that stops in between has it
	// when it tries again
	if !authOn {
		if err := enableEtcdAuth(actx, e.Endpoints, kept.EtcdPassword); err != nil {
			return nil, err
		}
	}
	return &Cluster{Etcd: e, NATS: n, etcdPassword: kept.EtcdPassword, portsFile: pf}, nil
}

// newPassword is a random password of 144 bits.
func newPassword() (string, error) {
	var b [18]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("devcluster: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// etcdClient is a client of the dev etcd, as user when it is not "".
func etcdClient(ctx context.Context, endpoints []string, user, password string) (*clientv3.Client, error) {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		Username: user, Password: password, Context: ctx,
	})
	if err != nil {
		return nil, fmt.Errorf("devcluster: etcd: %w", err)
	}
	return cli, nil
}

// etcdAuthEnabled says whether etcd wants a user (anyone may ask).
func etcdAuthEnabled(ctx context.Context, endpoints []string) (bool, error) {
	cli, err := etcdClient(ctx, endpoints, "", "")
	if err != nil {
		return false, err
	}
	defer cli.Close()
	st, err := cli.AuthStatus(ctx)
	if err != nil {
		return false, fmt.Errorf("devcluster: etcd auth status: %w", err)
	}
	return st.Enabled, nil
}

// checkEtcdUser fails unless etcd takes the root user with password.
func checkEtcdUser(ctx context.Context, endpoints []string, password string) error {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		Username: EtcdUser, Password: password, Context: ctx,
	})
	if err != nil { // authenticating is part of New
		return err
	}
	return cli.Close()
}

// enableEtcdAuth gives etcd the root user with password and turns
// authentication on. It may run again after a start that stopped half-way:
// a root user already there gets the password.
func enableEtcdAuth(ctx context.Context, endpoints []string, password string) error {
	cli, err := etcdClient(ctx, endpoints, "", "")
	if err != nil {
		return err
	}
	defer cli.Close()
	if _, err := cli.UserGet(ctx, EtcdUser); err == nil {
		_, err = cli.UserChangePassword(ctx, EtcdUser, password)
	} else {
		_, err = cli.UserAdd(ctx, EtcdUser, password)
	}
	if err == nil {
		_, err = cli.UserGrantRole(ctx, EtcdUser, "root") // a role etcd knows without adding it
	}
	if err == nil {
		_, err = cli.AuthEnable(ctx)
	}
	if err != nil {
		return fmt.Errorf("devcluster: enable etcd auth: %w", err)
	}
	return nil
}

// portsFile names, in a dev cluster's DataDir, the ports its servers keep.
const portsFile = "ports.json"

// Ports are the loopback ports of a dev cluster's servers, and the
// passwords they want (generated on the first start: any local process
// could otherwise rewrite the jobs' state in etcd, or publish forged logs,
// metrics and control messages on NATS).
type Ports struct {
	EtcdClient   int    `json:"etcd_client"`
	EtcdPeer     int    `json:"etcd_peer"`
	NATS         int    `json:"nats"`
	NATSPassword string `json:"nats_password"`
	// EtcdPassword is etcd's root user's ("" in a DataDir of a version
	// before etcd wanted one).
	EtcdPassword string `json:"etcd_password,omitempty"`
}

// devNATSUser is the dev NATS server's one user.
const devNATSUser = "switchyard"

func readPorts(path string) (Ports, error) {
	var p Ports
	raw, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return p, nil
	}
	if err == nil {
		err = json.Unmarshal(raw, &p)
	}
	if err == nil {
		for _, port := range []int{p.EtcdClient, p.EtcdPeer, p.NATS} {
			if port < 0 || port > 65535 {
				err = fmt.Errorf("port %d out of range", port)
			}
		}
	}
	if err != nil {
		return Ports{}, fmt.Errorf("devcluster: %s: %w (remove it to pick new ports)", path, err)
	}
	return p, nil
}

func writePorts(path string, p Ports) error { // 0600: it holds the password
	raw, err := json.Marshal(p)
	if err == nil {
		tmp := path + ".tmp"
		if err = os.WriteFile(tmp, raw, 0o600); err == nil {
			err = os.Rename(tmp, path)
		}
	}
	if err != nil {
		return fmt.Errorf("devcluster: keep ports: %w", err)
	}
	return nil
}

// keptErr says, for a server that could not start on a kept port, where
// the port comes from.
func keptErr(err error, port int, file string) error {
	if port == 0 {
		return err
	}
	return fmt.Errorf("%w (port %d is kept in %s since the first start, so that workers find the server again; free it, or remove the file to pick new ports)", err, port, file)
}

// Close stops NATS and etcd; closing again does nothing.
func (c *Cluster) Close() error {
	c.closed.Do(func() {
		c.NATS.Close()
		c.Etcd.Close()
	})
	return nil
}

// Etcd is an embedded single-member etcd server.
type Etcd struct {
	Endpoints            []string
	e                    *embed.Etcd
	clientPort, peerPort int
}

// StartEtcd starts a single-member etcd with its data in dir, on two free
// loopback ports, without authentication (Start turns it on). A dir that
// holds an earlier member's data is reused.
func StartEtcd(ctx context.Context, dir string, timeout time.Duration) (*Etcd, error) {
	return startEtcd(ctx, dir, 0, 0, timeout)
}

// startEtcd is StartEtcd on the given client and peer ports (0 and 0: two
// free ones).
func startEtcd(ctx context.Context, dir string, clientPort, peerPort int, timeout time.Duration) (*Etcd, error) {
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("devcluster: etcd dir: %w", err)
	}
	var lastErr error
	// Free ports are picked and then released, so another process may
	// take one in between: try a few times (given ports, once).
	for range 3 {
		ports := []int{clientPort, peerPort}
		if clientPort == 0 || peerPort == 0 {
			var err error
			if ports, err = freePorts(2); err != nil {
				return nil, err
			}
		}
		e, err := startEtcdOnce(ctx, dir, ports[0], ports[1], timeout)
		if err == nil {
			return e, nil
		}
		lastErr = err
		if ctx.Err() != nil || (clientPort != 0 && peerPort != 0) {
			break
		}
	}
	return nil, fmt.Errorf("devcluster: start etcd: %w", lastErr)
}

func startEtcdOnce(ctx context.Context, dir string, clientPort, peerPort int, timeout time.Duration) (*Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Name = "dev"
	cfg.Dir = dir
	cfg.LogLevel = "error"
	// its shutdown logs "server closed" errors that are no errors
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	// A one-member cluster: short ticks make leases precise (etcd's
	// minimum lease TTL is 1.5 election timeouts, here 750ms).
	cfg.TickMs, cfg.ElectionMs = 50, 500
	client := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(clientPort))}
	peer := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(peerPort))}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
		return &Etcd{Endpoints: []string{client.String()}, e: e, clientPort: clientPort, peerPort: peerPort}, nil
	case err = <-e.Err():
	case <-time.After(timeout):
		err = fmt.Errorf("not ready after %v", timeout)
	case <-ctx.Done():
		err = ctx.Err()
	}
	e.Close()
	return nil, err
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
// (port 0 picks a free one), without authentication. Restarting on the
// same dir and port brings the streams back, as a restarted nats-server
// would.
func StartNATS(dir string, port int, timeout time.Duration) (*NATS, error) {
	return startNATS(dir, port, "", "", timeout)
}

// startNATS is StartNATS wanting user and password when user is not "";
// the URL then carries them.
func startNATS(dir string, port int, user, password string, timeout time.Duration) (*NATS, error) {
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
		Username:  user,
		Password:  password,
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
	u := url.URL{Scheme: "nats", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(addr.Port))}
	if user != "" {
		u.User = url.UserPassword(user, password)
	}
	return &NATS{URL: u.String(), Port: addr.Port, s: s}, nil
}

// Close stops NATS and waits until it has.
func (n *NATS) Close() {
	n.s.Shutdown()
	n.s.WaitForShutdown()
}

func freePorts(n int) ([]int, error) {
	ps, err := freeport.Ports("127.0.0.1", n)
	if err != nil {
		return nil, fmt.Errorf("devcluster: %w", err)
	}
	return ps, nil
}
