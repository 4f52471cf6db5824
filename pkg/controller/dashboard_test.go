package controller

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/coordinator"
	"github.com/switchyard-ml/switchyard/pkg/dashboard"
	"github.com/switchyard-ml/switchyard/pkg/events"
	"github.com/switchyard-ml/switchyard/pkg/security"
)

// The dashboard's listener follows the API's rules.
func TestDashboardListenRules(t *testing.T) {
	base := func() DaemonConfig {
		rc := coordinator.DefaultConfig()
		rc.BindAddr = "127.0.0.1:0"
		return DaemonConfig{Raft: rc, APIListen: "127.0.0.1:0"}
	}
	for _, tc := range []struct {
		name     string
		edit     func(*DaemonConfig)
		insecure bool // refused with ErrInsecureListen
	}{
		{"no dashboard", func(*DaemonConfig) {}, false},
		{"loopback", func(c *DaemonConfig) { c.HTTPListen = "127.0.0.1:0" }, false},
		{"all interfaces without TLS", func(c *DaemonConfig) { c.HTTPListen = ":7480" }, true},
		{"beyond loopback without TLS", func(c *DaemonConfig) { c.HTTPListen = "10.0.0.1:7480" }, true},
		{"beyond loopback, --insecure", func(c *DaemonConfig) { c.HTTPListen, c.Insecure = "10.0.0.1:7480", true }, false},
		{"beyond loopback with TLS", func(c *DaemonConfig) {
			c.HTTPListen, c.TLS = "10.0.0.1:7480", security.TLSFiles{CA: "ca", Cert: "c", Key: "k"}
		}, false},
		{"dev mode beyond loopback, even --insecure", func(c *DaemonConfig) { c.Dev, c.HTTPListen, c.Insecure = true, "10.0.0.1:7480", true }, true},
		{"dev mode on loopback", func(c *DaemonConfig) { c.Dev, c.HTTPListen = true, "localhost:0" }, false},
	} {
		cfg := base()
		tc.edit(&cfg)
		err := cfg.checkListeners()
		if got := errors.Is(err, security.ErrInsecureListen); got != tc.insecure {
			t.Errorf("%s: %v, want refused %v", tc.name, err, tc.insecure)
		}
	}
}

// The controller as the dashboard's source: its jobs, not-found as the
// dashboard's error, rank 0's report next to the checkpoint root.
func TestDashboardSource(t *testing.T) {
	l := newLocal(t)
	l.submit("j1", fmt.Sprintf(spec2, 1))
	dir := t.TempDir()
	src := dashboardSource{s: l.s, checkpointRoot: filepath.Join(dir, "checkpoints")}
	js, err := src.Jobs(l.ctx)
	if err != nil || len(js) != 1 || js[0].Id != "j1" {
		t.Fatalf("jobs: %v %v", js, err)
	}
	if _, err := src.Job(l.ctx, "nope"); !errors.Is(err, dashboard.ErrNotFound) {
		t.Errorf("unknown job: %v", err)
	}
	j, err := src.Job(l.ctx, "j1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.Report(l.ctx, j); !errors.Is(err, dashboard.ErrNotFound) {
		t.Errorf("no report yet: %v", err)
	}
	path := filepath.Join(dir, "jobs", "j1", "attempt-0", "rank-0", "report.json")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(`{"steps": 1}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if raw, err := src.Report(l.ctx, j); err != nil || string(raw) != `{"steps": 1}` {
		t.Errorf("report: %q %v", raw, err)
	}
	if _, err := (dashboardSource{s: l.s}).Report(l.ctx, j); !errors.Is(err, dashboard.ErrNotFound) {
		t.Errorf("report without a checkpoint root: %v", err)
	}
	if _, err := src.History(l.ctx, "j1", events.KindMetrics); !errors.Is(err, dashboard.ErrUnavailable) {
		t.Errorf("metrics without a bus: %v", err)
	}
}
