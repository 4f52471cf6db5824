package devcluster

import (
	"context"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	clientv3 "go.etcd.io/etcd/client/v3"

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

	cli, err := clientv3.New(clientv3.Config{Endpoints: c.EtcdEndpoints(), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
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
	etcd, natsURL := c.EtcdEndpoints(), c.NATSURL()
	cli, err := clientv3.New(clientv3.Config{Endpoints: etcd, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
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
	// the client made before the restart reaches the restarted etcd
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
