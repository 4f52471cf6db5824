package events_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-ml/switchyard/internal/syncbuf"
	"github.com/switchyard-ml/switchyard/pkg/events"
	"github.com/switchyard-ml/switchyard/pkg/security"
)

// tlsFiles writes a throwaway CA, certificate and key for 127.0.0.1: the
// TLS files of a coordinator or worker started with --tls-*.
func tlsFiles(t *testing.T) security.TLSFiles {
	t.Helper()
	p, err := security.EphemeralPEM("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	f := security.TLSFiles{CA: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, "cert.pem"), Key: filepath.Join(dir, "key.pem")}
	for path, b := range map[string][]byte{f.CA: p.CA, f.Cert: p.Cert, f.Key: p.Key} {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// TestNATSTLSFollowsTheURL: a coordinator or worker with TLS files (for
// its API and etcd) and a nats:// URL of a NATS server without TLS
// reaches it, as it reaches an http:// etcd: its events arrive. With a
// tls:// URL it insists on TLS, and the warning that NATS is not reachable
// says why.
func TestNATSTLSFollowsTheURL(t *testing.T) {
	srv := startNATS(t, t.TempDir(), 0)
	t.Cleanup(srv.Close)
	files := tlsFiles(t)

	pub, err := events.NewNATS(events.NATSConfig{URL: srv.URL, TLS: files, PublishTimeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() })
	sub := newNATSBus(t, srv.URL, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ch, err := sub.Subscribe(ctx, events.Filter{Kind: events.KindLog, JobID: "tls-1", Replay: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish(logMsg("tls-1", 0)); err != nil {
		t.Fatal(err)
	}
	if m := recv(t, ch, 10*time.Second); m.Log.Line != "line 0" {
		t.Fatalf("got %+v", m)
	}

	var logs syncbuf.Buffer
	secure, err := events.NewNATS(events.NATSConfig{
		URL: strings.Replace(srv.URL, "nats://", "tls://", 1), TLS: files,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { secure.Close() })
	if got := logs.String(); !strings.Contains(got, "nats not reachable yet") || !strings.Contains(got, "secure connection not available") {
		t.Fatalf("a tls:// URL of a server without TLS: the log says %q, want why NATS is not reachable", got)
	}
}
