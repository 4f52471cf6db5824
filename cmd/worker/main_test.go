package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/workerconfig"
)

func detector() workerconfig.Detector {
	return workerconfig.Detector{
		Hostname:  func() (string, error) { return "node1", nil },
		CPUCores:  func() int { return 2 },
		MemoryMiB: func() (int64, error) { return 1024, nil },
		GPUs:      func() ([]workerconfig.GPU, error) { return nil, nil },
	}
}

func runWorker(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb, func(k string) string { return env[k] }, detector())
	return code, out.String(), errb.String()
}

func TestBadConfigExits2NamingTheField(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "worker.yaml")
	if err := os.WriteFile(cfg, []byte("coordinators: [127.0.0.1:7000]\netcd_endpoints: [127.0.0.1:2379]\nstorage_path: relative/dir\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"file", nil, []string{"--config", cfg}, `workerconfig: storage_path = "relative/dir": must be an absolute path`},
		{"flag", nil, []string{"--config", cfg, "--storage-path", dir, "--lease-ttl-seconds", "1"}, "workerconfig: lease_ttl_seconds = 1: must be in [2, 3600]"},
		{"env", map[string]string{"SWITCHYARD_WORKER_CPU_CORES": "lots"}, []string{"--config", cfg}, `SWITCHYARD_WORKER_CPU_CORES = "lots": not an integer`},
		{"missing file", nil, []string{"--config", filepath.Join(dir, "nope.yaml")}, "no such file"},
		{"trainer", nil, []string{"--config", cfg, "--storage-path", dir, "--trainer", filepath.Join(dir, "no-switchyard")}, `workerconfig: trainer = "` + filepath.Join(dir, "no-switchyard")},
		{"unknown flag", nil, []string{"--colour", "blue"}, "flag provided but not defined: -colour"},
	}
	for _, tt := range tests {
		code, _, stderr := runWorker(t, tt.env, tt.args...)
		if code != exitUsage || !strings.Contains(stderr, tt.want) {
			t.Errorf("%s: exit %d, stderr %q\nwant exit 2 and %q", tt.name, code, stderr, tt.want)
		}
	}
}

func TestHelpListsSettings(t *testing.T) {
	code, out, _ := runWorker(t, nil, "--help")
	if code != exitOK {
		t.Fatalf("exit %d", code)
	}
	for _, s := range workerconfig.Settings() {
		if !strings.Contains(out, s.Key) || !strings.Contains(out, "--"+s.Flag) || !strings.Contains(out, s.Env) {
			t.Errorf("help lacks %s / --%s / %s", s.Key, s.Flag, s.Env)
		}
	}
	if !strings.Contains(out, "SWITCHYARD_WORKER_TRAINER") || !strings.Contains(out, "SWITCHYARD_TOKEN") {
		t.Errorf("help:\n%s", out)
	}
}

func TestInsecureIsABoolFlag(t *testing.T) {
	// --insecure without a value parses; the run then stops on the config
	// (no coordinators), not on the flag.
	code, _, stderr := runWorker(t, nil, "--insecure", "--storage-path", t.TempDir())
	if code != exitUsage || !strings.Contains(stderr, "workerconfig: coordinators = []") {
		t.Fatalf("exit %d: %s", code, stderr)
	}
}

// --check-config prints one line and exits 0 for the settings a worker in
// a Kubernetes pod gets (TLS files mounted there only, values from the
// environment), and exits 2 naming the field otherwise; it connects to
// nothing (the coordinators and etcd here do not exist).
func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "worker.yaml")
	body := "coordinators: [switchyard-coordinator:7400]\netcd_endpoints: [https://etcd:2379]\nlisten_address: 0.0.0.0:7070\nstorage_path: /mnt/shared\n" +
		"tls: {ca: /etc/switchyard/tls/ca.crt, cert: /etc/switchyard/tls/tls.crt, key: /etc/switchyard/tls/tls.key}\n"
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	pod := map[string]string{"SWITCHYARD_WORKER_ID": "gpu-node-3", "SWITCHYARD_WORKER_HOST": "gpu-node-3", "SWITCHYARD_WORKER_ADVERTISE_ADDRESS": "10.0.4.3:7070"}
	code, stdout, stderr := runWorker(t, pod, "--check-config", "--config", cfg, "--metrics-addr", "0.0.0.0:7071", "--trainer", filepath.Join(dir, "not-here"))
	want := "worker: config ok: id gpu-node-3, host gpu-node-3, listen 0.0.0.0:7070 (advertised 10.0.4.3:7070), metrics 0.0.0.0:7071, coordinators 1, etcd 1 endpoints, nats false, slots 1, cpu 2, memory 1024 MiB, gpus 0, storage /mnt/shared, tls mutual, insecure false\n"
	if code != exitOK || stdout != want {
		t.Fatalf("exit %d, stdout %q, stderr %q\nwant 0 and %q", code, stdout, stderr, want)
	}
	for _, tt := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"no advertise address", nil, []string{"--config", cfg}, "advertise_address"},
		{"an incomplete TLS set", pod, []string{"--config", cfg, "--tls-ca", ""}, "workerconfig: tls.ca"},
		{"a bad value from the environment", map[string]string{"SWITCHYARD_WORKER_ADVERTISE_ADDRESS": "10.0.4.3"}, []string{"--config", cfg}, "missing port"},
		{"no config file", pod, []string{"--config", filepath.Join(dir, "nope.yaml")}, "no such file"},
		{"a stray argument", pod, []string{"--config", cfg, "extra"}, `unexpected argument "extra"`},
	} {
		code, stdout, stderr := runWorker(t, tt.env, append([]string{"--check-config"}, tt.args...)...)
		if code != exitUsage || stdout != "" || !strings.Contains(stderr, tt.want) {
			t.Errorf("%s: exit %d, stdout %q, stderr %q\nwant exit 2 and %q", tt.name, code, stdout, stderr, tt.want)
		}
	}
}
