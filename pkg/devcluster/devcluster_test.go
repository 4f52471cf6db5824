package devcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"

	"github.com/switchyard-ml/switchyard/pkg/events"
)

func TestStartServesEtcdAndNATS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Start(ctx, Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	cli := etcdAs(t, c, c.EtcdUsername(), c.EtcdPassword())
	if _, err := cli.Put(ctx, "/switchyard/dev", "ok"); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, "/switchyard/dev")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "ok" {
		t.Fatalf("etcd get: %v %v", resp, err)
	}

	nc, err := nats.Connect(c.NATSURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := nc.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.AccountInfo(); err != nil {
		t.Fatalf("jetstream not enabled: %v", err)
	}
	sub, err := nc.SubscribeSync("dev.ping")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish("dev.ping", []byte("pong")); err != nil {
		t.Fatal(err)
	}
	if m, err := sub.NextMsg(5 * time.Second); err != nil || string(m.Data) != "pong" {
		t.Fatalf("nats: %v %v", m, err)
	}
}

func TestStartNeedsDataDir(t *testing.T) {
	if _, err := Start(context.Background(), Config{}); err == nil {
		t.Fatal("started without a data dir")
	}
}

// TestRestartKeepsPorts: a dev cluster started again on its DataDir (the
// coordinator killed and restarted) serves on the ports it had, so that
// workers holding the endpoints find etcd and NATS again, with their data.
func TestRestartKeepsPorts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	c, err := Start(ctx, Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	etcd, natsURL, password := c.EtcdEndpoints(), c.NATSURL(), c.EtcdPassword()
	cli := etcdAs(t, c, c.EtcdUsername(), password)
	if _, err := cli.Put(ctx, "/switchyard/kept", "yes"); err != nil {
		t.Fatal(err)
	}
	c.Close()

	c2, err := Start(ctx, Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if got := c2.EtcdEndpoints(); got[0] != etcd[0] || c2.NATSURL() != natsURL {
		t.Fatalf("after a restart: etcd %v nats %s, before %v %s", got, c2.NATSURL(), etcd, natsURL)
	}
	if c2.EtcdPassword() != password {
		t.Fatal("the etcd password changed in a restart")
	}
	// the client made before the restart reaches the restarted etcd (its
	// token is renewed with the kept password)
	resp, err := cli.Get(ctx, "/switchyard/kept")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "yes" {
		t.Fatalf("etcd after the restart: %v %v", resp, err)
	}
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()
	// the dev NATS wants the generated password: a local process without
	// it cannot publish
	u, _ := url.Parse(natsURL)
	if pass, _ := u.User.Password(); len(pass) < 20 {
		t.Fatalf("NATS URL %s carries no generated password", events.Redact(natsURL))
	}
	u.User = nil
	if nc, err := nats.Connect(u.String(), nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Fatal("connected to the dev NATS without its password")
	}

	// a kept port another process holds: a clear error naming the file
	c2.Close()
	l, err := net.Listen("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := Start(ctx, Config{DataDir: dir, StartTimeout: 2 * time.Second}); err == nil || !strings.Contains(err.Error(), "ports.json") {
		t.Fatalf("start with the kept NATS port taken: %v", err)
	}
}

// etcdAs is a client of c's etcd as user ("": none), closed at the end of
// the test.
func etcdAs(t *testing.T, c *Cluster, user, password string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.EtcdEndpoints(), DialTimeout: 5 * time.Second, Username: user, Password: password, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// wantsEtcdUser fails unless c's etcd refuses a client without a user (an
// auth error, not an unreachable server) and takes one with the kept user.
func wantsEtcdUser(ctx context.Context, t *testing.T, c *Cluster) {
	t.Helper()
	if len(c.EtcdPassword()) < 20 || c.EtcdUsername() != "root" {
		t.Fatalf("etcd user %q, password of %d characters", c.EtcdUsername(), len(c.EtcdPassword()))
	}
	_, err := etcdAs(t, c, "", "").Put(ctx, "/switchyard/anon", "x")
	var coded interface{ Code() codes.Code }
	if !errors.As(err, &coded) || coded.Code() != codes.InvalidArgument { // etcdserver: user name is empty
		t.Fatalf("a put without the user: %v, want etcd's auth error", err)
	}
	if _, err := etcdAs(t, c, c.EtcdUsername(), c.EtcdPassword()).Put(ctx, "/switchyard/root", "x"); err != nil {
		t.Fatalf("a put with the kept user: %v", err)
	}
	if _, err := clientv3.New(clientv3.Config{Endpoints: c.EtcdEndpoints(), DialTimeout: 5 * time.Second, Username: "root", Password: "guessed", Logger: zap.NewNop()}); err == nil {
		t.Fatal("etcd took a guessed password")
	}
	p, err := readPorts(c.PortsFile())
	if err != nil || p.EtcdPassword != c.EtcdPassword() {
		t.Fatalf("%s keeps etcd password %q (%v), the cluster has another", c.PortsFile(), p.EtcdPassword, err)
	}
	if fi, err := os.Stat(c.PortsFile()); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s: %v %v, want mode 0600", c.PortsFile(), fi, err)
	}
}

// TestEtcdWantsTheKeptUser: the dev etcd refuses local processes without
// its root user's password, which a restart on the DataDir keeps.
func TestEtcdWantsTheKeptUser(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	c, err := Start(ctx, Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	wantsEtcdUser(ctx, t, c)
	password := c.EtcdPassword()
	c.Close()

	c2, err := Start(ctx, Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if c2.EtcdPassword() != password {
		t.Fatal("a restart changed the etcd password")
	}
	wantsEtcdUser(ctx, t, c2)
	resp, err := etcdAs(t, c2, "root", password).Get(ctx, "/switchyard/root")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("the key put before the restart: %v %v", resp, err)
	}
}

// etcdLeftWith is dir's etcd as an earlier start left it: started bare
// (no auth), given what do writes, and stopped.
func etcdLeftWith(ctx context.Context, t *testing.T, dir string, do func(*clientv3.Client) error) *Etcd {
	t.Helper()
	e, err := StartEtcd(ctx, filepath.Join(dir, "etcd"), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if err := do(cli); err != nil {
		t.Fatal(err)
	}
	return e
}

// TestOldDataDirGetsEtcdAuth: a DataDir of a version without etcd auth
// (its ports.json keeps no etcd password) gets auth on its next start,
// with its data and ports.
func TestOldDataDirGetsEtcdAuth(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	e := etcdLeftWith(ctx, t, dir, func(cli *clientv3.Client) error {
		_, err := cli.Put(ctx, "/switchyard/old", "kept")
		return err
	})
	// as the version before wrote it
	old := fmt.Sprintf(`{"etcd_client":%d,"etcd_peer":%d,"nats":0,"nats_password":"old-nats-password"}`, e.clientPort, e.peerPort)
	if err := os.WriteFile(filepath.Join(dir, portsFile), []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}

	c, err := Start(ctx, Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.EtcdEndpoints()[0] != e.Endpoints[0] {
		t.Fatalf("etcd moved from %v to %v", e.Endpoints, c.EtcdEndpoints())
	}
	wantsEtcdUser(ctx, t, c)
	resp, err := etcdAs(t, c, c.EtcdUsername(), c.EtcdPassword()).Get(ctx, "/switchyard/old")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "kept" {
		t.Fatalf("the old data: %v %v", resp, err)
	}
	if p, _ := readPorts(c.PortsFile()); p.NATSPassword != "old-nats-password" {
		t.Fatalf("the NATS password changed: %+v", p)
	}
}

// TestEtcdPasswordLost: a DataDir whose etcd wants a user but whose
// ports.json lost the password fails to start, naming the file, and a
// wrong kept password too.
func TestEtcdPasswordLost(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	c, err := Start(ctx, Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	pf := filepath.Join(dir, portsFile)
	p, err := readPorts(pf)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		password string
		sentinel error
	}{{"", ErrEtcdPasswordLost}, {"wrong", nil}} {
		lost := p
		lost.EtcdPassword = tc.password
		if err := writePorts(pf, lost); err != nil {
			t.Fatal(err)
		}
		_, err := Start(ctx, Config{DataDir: dir})
		if err == nil || !strings.Contains(err.Error(), pf) || (tc.sentinel != nil && !errors.Is(err, tc.sentinel)) {
			t.Fatalf("start with etcd password %q kept: %v, want an error naming %s", tc.password, err, pf)
		}
		t.Logf("kept %q: %v", tc.password, err)
	}
	// the file restored, it starts again
	if err := writePorts(pf, p); err != nil {
		t.Fatal(err)
	}
	c, err = Start(ctx, Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	wantsEtcdUser(ctx, t, c)
}

// TestEnableEtcdAuthAgain: a start that stopped after keeping the password
// but before turning auth on (root user added, auth off) finishes the job
// on the next start.
func TestEnableEtcdAuthAgain(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	e := etcdLeftWith(ctx, t, dir, func(cli *clientv3.Client) error {
		_, err := cli.UserAdd(ctx, "root", "half-way")
		return err
	})
	if err := writePorts(filepath.Join(dir, portsFile), Ports{EtcdClient: e.clientPort, EtcdPeer: e.peerPort, EtcdPassword: "kept-password-of-24-chars"}); err != nil {
		t.Fatal(err)
	}
	c, err := Start(ctx, Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.EtcdPassword() != "kept-password-of-24-chars" {
		t.Fatalf("etcd password %q, not the kept one", c.EtcdPassword())
	}
	wantsEtcdUser(ctx, t, c)
}
