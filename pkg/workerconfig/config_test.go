package workerconfig

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// fakeDetector is a machine with 8 cores, 16 GiB and the given GPUs.
func fakeDetector(gpus ...GPU) Detector {
	return Detector{
		Hostname:  func() (string, error) { return "node1", nil },
		CPUCores:  func() int { return 8 },
		MemoryMiB: func() (int64, error) { return 16384, nil },
		GPUs:      func() ([]GPU, error) { return gpus, nil },
	}
}

func writeFile(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const minimal = `
coordinators: [127.0.0.1:7000]
etcd_endpoints: [http://127.0.0.1:2379]
storage_path: /var/lib/switchyard
`

func envMap(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestLoadDefaultsAndDetection(t *testing.T) {
	path := writeFile(t, "w.yaml", minimal)
	h100 := GPU{Index: 0, Name: "NVIDIA H100", MemoryMiB: 81559}
	c, err := Load(path, nil, nil, fakeDetector(h100))
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		ID:               "node1-7070",
		Host:             "node1",
		Coordinators:     []string{"127.0.0.1:7000"},
		EtcdEndpoints:    []string{"http://127.0.0.1:2379"},
		AdvertiseAddress: "127.0.0.1:7070",
		ListenAddress:    "127.0.0.1:7070",
		Resources:        Resources{CPUCores: 8, MemoryMiB: 16384, GPUs: 1, GPUDevices: []GPU{h100}},
		StoragePath:      "/var/lib/switchyard",
		EnforceMemory:    true,
		LeaseTTLSeconds:  10,
		DrainSeconds:     60,
	}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("got  %+v\nwant %+v", c, want)
	}
}

func TestPrecedence(t *testing.T) {
	path := writeFile(t, "w.yaml", minimal+`
id: from-file
nats_url: nats://file:4222
listen_address: 127.0.0.1:7100
resources: {cpu_cores: 4, memory_mib: 2048, gpus: 0}
labels: {rack: r1, zone: file}
lease_ttl_seconds: 5
`)
	flags := map[string]string{
		"id":        "from-flag",
		"nats-url":  "nats://flag:4222",
		"cpu-cores": "6",
		"labels":    "zone=flag",
	}
	env := envMap(map[string]string{
		"SWITCHYARD_WORKER_ID":                "from-env",
		"SWITCHYARD_WORKER_LEASE_TTL_SECONDS": "30",
		"SWITCHYARD_WORKER_COORDINATORS":      "c1:7000, c2:7000,",
		"SWITCHYARD_WORKER_LABELS":            "gpu=none",
	})
	c, err := Load(path, flags, env, fakeDetector(GPU{Name: "never asked"}))
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"id: env over flag over file", c.ID, "from-env"},
		{"nats_url: flag over file", c.NATSURL, "nats://flag:4222"},
		{"cpu_cores: flag over file", c.Resources.CPUCores, 6},
		{"memory_mib: file over detection", c.Resources.MemoryMiB, int64(2048)},
		{"gpus: file 0 skips detection", c.Resources.GPUs, 0},
		{"lease: env over file", c.LeaseTTLSeconds, 30},
		{"coordinators: env list", c.Coordinators, []string{"c1:7000", "c2:7000"}},
		{"labels merged", c.Labels, map[string]string{"rack": "r1", "zone": "flag", "gpu": "none"}},
		{"advertise from listen", c.AdvertiseAddress, "127.0.0.1:7100"},
	}
	for _, ch := range checks {
		if !reflect.DeepEqual(ch.got, ch.want) {
			t.Errorf("%s: got %v, want %v", ch.name, ch.got, ch.want)
		}
	}
}

func TestLoadWithoutFile(t *testing.T) {
	c, err := Load("", map[string]string{
		"coordinators": "127.0.0.1:7000", "etcd-endpoints": "127.0.0.1:2379", "storage-path": "/tmp/x",
		"listen-address": "127.0.0.1:0", "advertise-address": "127.0.0.1:9001", "insecure": "true",
	}, nil, fakeDetector())
	if err != nil {
		t.Fatal(err)
	}
	if c.ID != "node1-9001" || !c.Insecure || c.Resources.GPUs != 0 {
		t.Fatalf("%+v", c)
	}
}

func TestSettingsNames(t *testing.T) {
	want := map[string][2]string{
		"resources.cpu_cores": {"cpu-cores", "SWITCHYARD_WORKER_CPU_CORES"},
		"tls.ca":              {"tls-ca", "SWITCHYARD_WORKER_TLS_CA"},
		"advertise_address":   {"advertise-address", "SWITCHYARD_WORKER_ADVERTISE_ADDRESS"},
		"lease_ttl_seconds":   {"lease-ttl-seconds", "SWITCHYARD_WORKER_LEASE_TTL_SECONDS"},
		"trainer":             {"trainer", "SWITCHYARD_WORKER_TRAINER"},
		"metrics_address":     {"metrics-addr", "SWITCHYARD_WORKER_METRICS_ADDR"},
		"rank_user":           {"rank-user", "SWITCHYARD_WORKER_RANK_USER"},
	}
	seen := map[string]bool{}
	for _, s := range Settings() {
		if seen[s.Flag] || seen[s.Env] {
			t.Fatalf("duplicate %s / %s", s.Flag, s.Env)
		}
		seen[s.Flag], seen[s.Env] = true, true
		if w, ok := want[s.Key]; ok && (s.Flag != w[0] || s.Env != w[1]) {
			t.Errorf("%s: flag %s env %s, want %v", s.Key, s.Flag, s.Env, w)
		}
		if s.Help == "" {
			t.Errorf("%s: no help", s.Key)
		}
	}
	if len(Settings()) != 26 {
		t.Fatalf("%d settings", len(Settings()))
	}
}

func TestOverrideSyntaxErrors(t *testing.T) {
	tests := []struct {
		flags map[string]string
		env   map[string]string
		msg   string
	}{
		{flags: map[string]string{"bogus": "1"}, msg: "unknown flag --bogus"},
		{flags: map[string]string{"cpu-cores": "many"}, msg: `flag --cpu-cores = "many": not an integer`},
		{flags: map[string]string{"labels": "zone"}, msg: `flag --labels = "zone": "zone" is not k=v`},
		{env: map[string]string{"SWITCHYARD_WORKER_INSECURE": "yes please"}, msg: `SWITCHYARD_WORKER_INSECURE = "yes please": not a boolean`},
		{env: map[string]string{"SWITCHYARD_WORKER_MEMORY_MIB": "1.5"}, msg: `SWITCHYARD_WORKER_MEMORY_MIB = "1.5": not an integer`},
	}
	for _, tt := range tests {
		_, err := Load("", tt.flags, envMap(tt.env), fakeDetector())
		if !errors.Is(err, ErrSyntax) || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("err = %v, want ErrSyntax containing %q", err, tt.msg)
		}
	}
}

func TestFileSyntaxErrors(t *testing.T) {
	for _, tt := range []struct{ body, msg string }{
		{minimal + "colour: blue\n", "colour (line 5): unknown key; the top level has advertise_address, "},
		{minimal + "tls: {ca: a, pem: b}\n", "tls.pem (line 5): unknown key; tls has ca, cert, key"},
		{minimal + "tls: {ca: a, Cert: b}\n", `tls.Cert (line 5): unknown key; tls has ca, cert, key; did you mean "cert"?`},
		{minimal + "resources:\n  gpus: 1\n  cpu-cores: 4\n", `resources.cpu-cores (line 7): unknown key; resources has `},
		{minimal + "resources:\n  gpus: 1\n  cpu-cores: 4\n", `; did you mean "cpu_cores"?`},
		{minimal + "---\nid: x\n", "one YAML document"},
		{minimal + "lease_ttl_seconds: soon\n", `lease_ttl_seconds (line 5): "soon" is a string; want an integer`},
		{minimal + "lease_ttl_seconds: 2.5\n", "lease_ttl_seconds = 2.5: must be a whole number"},
	} {
		_, err := Load(writeFile(t, "w.yaml", tt.body), nil, nil, fakeDetector())
		if !errors.Is(err, ErrSyntax) || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("err = %v, want ErrSyntax containing %q", err, tt.msg)
		}
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml"), nil, nil, fakeDetector()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	if _, err := Load("/dev/zero", nil, nil, fakeDetector()); err == nil || !strings.Contains(err.Error(), "over the limit of 1 MiB") {
		t.Errorf("a config that never ends: %v", err)
	}
}

func TestDetectionErrors(t *testing.T) {
	path := writeFile(t, "w.yaml", minimal)
	det := fakeDetector()
	det.GPUs = func() ([]GPU, error) { return nil, errors.New("driver mismatch") }
	_, err := Load(path, nil, nil, det)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "resources.gpus: detect GPUs: driver mismatch (set resources.gpus to skip detection)") {
		t.Fatalf("err = %v", err)
	}
	// Setting gpus skips the failing detector.
	if _, err := Load(path, map[string]string{"gpus": "2"}, nil, det); err != nil {
		t.Fatal(err)
	}
	// No detectors at all: the values must be configured.
	_, err = Load(path, nil, nil, Detector{})
	for _, want := range []string{`workerconfig: id = "": must be`, `workerconfig: host = "": must be`, "workerconfig: resources.cpu_cores = 0: must be >= 1", "workerconfig: resources.memory_mib = 0: must be >= 1"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v\nwant it to contain %q", err, want)
		}
	}
}

func TestValidateRules(t *testing.T) {
	dir := t.TempDir()
	pem := filepath.Join(dir, "x.pem")
	if err := os.WriteFile(pem, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	valid := func() Config {
		return Config{
			ID: "w1", Host: "node1", Coordinators: []string{"10.0.0.1:7000"}, EtcdEndpoints: []string{"https://etcd:2379"},
			AdvertiseAddress: "127.0.0.1:7070", ListenAddress: "127.0.0.1:7070",
			Resources: Resources{CPUCores: 1, MemoryMiB: 1}, StoragePath: "/data", LeaseTTLSeconds: 10,
		}
	}
	if err := valid().Validate(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		change func(*Config)
		msg    string // "" : valid
	}{
		{func(c *Config) { c.AdvertiseAddress = "foo" }, `workerconfig: advertise_address = "foo": missing port`},
		{func(c *Config) { c.AdvertiseAddress = "" }, `workerconfig: advertise_address = "": required when listen_address has no specific host or port`},
		{func(c *Config) { c.AdvertiseAddress = ":7070" }, `workerconfig: advertise_address = ":7070": missing host`},
		{func(c *Config) { c.AdvertiseAddress = "0.0.0.0:7070" }, `workerconfig: advertise_address = "0.0.0.0:7070": must name a host peers can dial`},
		{func(c *Config) { c.AdvertiseAddress = "h:0" }, `workerconfig: advertise_address = "h:0": port must be a number in [1, 65535]`},
		{func(c *Config) { c.AdvertiseAddress = "10.0.0.5:7070" }, `workerconfig: advertise_address = "10.0.0.5:7070": peers could not reach it: listen_address "127.0.0.1:7070" accepts loopback connections only`},
		{func(c *Config) { c.ListenAddress = "127.0.0.1:99999" }, `workerconfig: listen_address = "127.0.0.1:99999": port must be a number in [0, 65535]`},
		{func(c *Config) { c.MetricsAddress = "localhost" }, `workerconfig: metrics_address = "localhost": `},
		{func(c *Config) { c.ListenAddress = ":7070" }, `workerconfig: listen_address = ":7070": is not a loopback address: set tls.ca, tls.cert and tls.key, or insecure: true`},
		{func(c *Config) { c.ListenAddress = "0.0.0.0:7070"; c.AdvertiseAddress = "10.0.0.5:7070" }, `workerconfig: listen_address = "0.0.0.0:7070": is not a loopback address`},
		{func(c *Config) { c.ListenAddress = "0.0.0.0:7070"; c.Insecure = true }, ""},
		{func(c *Config) { c.ListenAddress = "[::1]:7070"; c.AdvertiseAddress = "localhost:7070" }, ""},
		{func(c *Config) { c.ListenAddress = "0.0.0.0:7070"; c.TLS = TLS{CA: pem, Cert: pem, Key: pem} }, ""},
		{func(c *Config) { c.TLS = TLS{Cert: pem, Key: pem} }, `workerconfig: tls.ca = "": required with the other TLS files (mutual TLS needs ca, cert and key)`},
		{func(c *Config) { c.TLS = TLS{CA: pem, Cert: pem, Key: filepath.Join(dir, "nope")} }, `workerconfig: tls.key = "` + filepath.Join(dir, "nope") + `": no such file`},
		{func(c *Config) { c.TLS = TLS{CA: dir, Cert: pem, Key: pem} }, `workerconfig: tls.ca = "` + dir + `": not a regular file`},
		{func(c *Config) { c.Coordinators = nil }, `workerconfig: coordinators = []: at least one coordinator address host:port is required`},
		{func(c *Config) { c.Coordinators = []string{"a:1", "b"} }, `workerconfig: coordinators[1] = "b": missing port`},
		{func(c *Config) { c.EtcdEndpoints = nil }, `workerconfig: etcd_endpoints = []: at least one etcd endpoint is required`},
		{func(c *Config) { c.EtcdEndpoints = []string{"ftp://e:1"} }, `workerconfig: etcd_endpoints[0] = "ftp://e:1": scheme must be http or https`},
		{func(c *Config) { c.EtcdEndpoints = []string{"http://e"} }, `workerconfig: etcd_endpoints[0] = "http://e": missing port`},
		{func(c *Config) { c.EtcdEndpoints = []string{"e:2379"} }, ""},
		{func(c *Config) { c.NATSURL = "http://n:4222" }, `workerconfig: nats_url = "http://n:4222": scheme must be nats, tls, ws or wss`},
		{func(c *Config) { c.NATSURL = "nats://" }, `workerconfig: nats_url = "nats://": missing host`},
		{func(c *Config) { c.NATSURL = "nats://127.0.0.1:4222" }, ""},
		{func(c *Config) { c.ID = "-x" }, `workerconfig: id = "-x": must be 1-128 of`},
		{func(c *Config) { c.Host = "a b" }, `workerconfig: host = "a b": must be 1-128 of`},
		{func(c *Config) { c.Resources.CPUCores = 0 }, `workerconfig: resources.cpu_cores = 0: must be >= 1`},
		{func(c *Config) { c.Resources.MemoryMiB = -5 }, `workerconfig: resources.memory_mib = -5: must be >= 1`},
		{func(c *Config) { c.Resources.GPUs = -1 }, `workerconfig: resources.gpus = -1: must be >= 0`},
		{func(c *Config) { c.Labels = map[string]string{"rack": "r 1"} }, `workerconfig: labels.rack = "r 1": label values must be`},
		{func(c *Config) { c.Labels = map[string]string{"": "x"} }, `workerconfig: labels = "": label keys must be`},
		{func(c *Config) { c.StoragePath = "" }, `workerconfig: storage_path = "": required (the directory for checkpoint shards)`},
		{func(c *Config) { c.StoragePath = "data" }, `workerconfig: storage_path = "data": must be an absolute path`},
		{func(c *Config) { c.LeaseTTLSeconds = 1 }, `workerconfig: lease_ttl_seconds = 1: must be in [2, 3600]`},
		{func(c *Config) { c.RankUser = "trainer" }, ""},
		{func(c *Config) { c.RankUser = "65534:65534" }, ""},
		{func(c *Config) { c.RankUser = "1001" }, ""},
		{func(c *Config) { c.RankUser = "a b" }, `workerconfig: rank_user = "a b": want a user name, a uid, or uid:gid`},
		{func(c *Config) { c.RankUser = "65534:" }, `workerconfig: rank_user = "65534:": want a user name, a uid, or uid:gid`},
		{func(c *Config) { c.Resources.CPUCores, c.Resources.GPUs = 8, 8 }, ""}, // 8 slots, one per GPU
		{func(c *Config) { c.Resources.CPUCores, c.Resources.GPUs, c.Slots = 8, 8, 4 }, ""},
		{func(c *Config) { c.Slots = -1 }, `workerconfig: slots = -1: must be in [0, 256]`},
		{func(c *Config) { c.Resources.CPUCores, c.Resources.GPUs, c.Resources.GPUIndices = 2, 2, []int{4, 6} }, ""},
		{func(c *Config) { c.Resources.CPUCores, c.Resources.GPUs, c.Resources.GPUIndices = 2, 2, []int{4} }, `workerconfig: resources.gpu_indices = [4]: names 1 GPUs, resources.gpus declares 2`},
		{func(c *Config) { c.Resources.CPUCores, c.Resources.GPUs, c.Resources.GPUIndices = 2, 2, []int{4, 4} }, `workerconfig: resources.gpu_indices = [4 4]: must be distinct`},
		{func(c *Config) { c.Resources.CPUCores, c.Resources.GPUs, c.Slots = 8, 8, 3 }, `workerconfig: slots = 3: must divide resources.gpus = 8`},
		{func(c *Config) { c.Resources.GPUs = 4 }, `workerconfig: slots = 0: more slots than resources.cpu_cores = 1`},
		{func(c *Config) { c.Resources.CPUCores, c.Slots, c.ListenAddress = 2, 2, "127.0.0.1:0" }, `workerconfig: slots = 2: several slots need a fixed listen_address port`},
		{func(c *Config) { c.Resources.CPUCores, c.Slots, c.ListenAddress = 4, 4, "127.0.0.1:65534" }, `workerconfig: slots = 4: listen_address port 65534 + 4 slots passes 65535`},
	}
	for _, tt := range tests {
		c := valid()
		tt.change(&c)
		err := c.Validate()
		if tt.msg == "" {
			if err != nil {
				t.Errorf("unexpected: %v", err)
			}
			continue
		}
		var fe *FieldError
		if !errors.Is(err, ErrInvalid) || !errors.As(err, &fe) || !strings.HasPrefix(err.Error(), tt.msg) {
			t.Errorf("err = %v\nwant prefix %q", err, tt.msg)
		}
	}
}

func TestParseNvidiaSMI(t *testing.T) {
	out := "0, GPU-aa11, NVIDIA H100 80GB HBM3, 81559 MiB\n1, GPU-bb22, NVIDIA H100 80GB HBM3, 81559 MiB\n\n" +
		"2, GPU-cc33, Tesla T4, [N/A]\n3, MIG-dd44, Odd, Name, With Commas, 15360 MiB\r\n"
	got, err := ParseNvidiaSMI([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	want := []GPU{
		{Index: 0, UUID: "GPU-aa11", Name: "NVIDIA H100 80GB HBM3", MemoryMiB: 81559}, {Index: 1, UUID: "GPU-bb22", Name: "NVIDIA H100 80GB HBM3", MemoryMiB: 81559},
		{Index: 2, UUID: "GPU-cc33", Name: "Tesla T4"}, {Index: 3, UUID: "MIG-dd44", Name: "Odd, Name, With Commas", MemoryMiB: 15360},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v", got)
	}
	if g, err := ParseNvidiaSMI(nil); err != nil || g != nil {
		t.Fatalf("empty: %v %v", g, err)
	}
	for _, bad := range []string{
		"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver",
		"x, GPU-1, name, 10 MiB",
		"0, GPU-1, name, lots",
		"0, GPU-1, name, 10 GiB",
		"-1, GPU-1, name, 10 MiB",
		"0, GPU-1, 10 MiB",
		"0, name, 10 MiB",
		"0, H100, name, 10 MiB",
	} {
		if _, err := ParseNvidiaSMI([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestDetectGPUs(t *testing.T) {
	var gotName string
	var gotArgs []string
	gpus, err := DetectGPUs(func(name string, args ...string) ([]byte, error) {
		gotName, gotArgs = name, args
		return []byte("0, GPU-9f2c, NVIDIA H200, 143771 MiB\n"), nil
	})
	if err != nil || len(gpus) != 1 || gpus[0].MemoryMiB != 143771 || gpus[0].UUID != "GPU-9f2c" {
		t.Fatalf("%+v %v", gpus, err)
	}
	if gotName != "nvidia-smi" || strings.Join(gotArgs, " ") != "--query-gpu=index,uuid,name,memory.total --format=csv,noheader" {
		t.Fatalf("ran %s %v", gotName, gotArgs)
	}
	_, err = DetectGPUs(func(string, ...string) ([]byte, error) { return nil, errors.New("exit status 9") })
	if err == nil || err.Error() != "nvidia-smi: exit status 9" {
		t.Fatalf("err = %v", err)
	}
}

// TestParseTopo: nvidia-smi's topology matrix (terminal escapes, NIC
// columns and rows, affinities with empty fields, the legend) gives each
// GPU's link to every other; what is not such a matrix is an error.
func TestParseTopo(t *testing.T) {
	for _, c := range []struct {
		file string
		want map[int]map[int]string
	}{
		{"topo-nvlink4.txt", map[int]map[int]string{
			0: {1: "NV18", 2: "NV18", 3: "NV18"}, 1: {0: "NV18", 2: "NV18", 3: "NV18"},
			2: {0: "NV18", 1: "NV18", 3: "NV18"}, 3: {0: "NV18", 1: "NV18", 2: "NV18"},
		}},
		{"topo-pcie3.txt", map[int]map[int]string{0: {1: "PIX", 2: "SYS"}, 1: {0: "PIX", 2: "SYS"}, 2: {0: "SYS", 1: "SYS"}}},
	} {
		raw, err := os.ReadFile(filepath.Join("testdata", c.file))
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseTopo(raw)
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: %v %v", c.file, got, err)
		}
	}
	if got, err := ParseTopo([]byte("\tGPU0\tCPU Affinity\nGPU0\t X \t0-15\n")); err != nil || !reflect.DeepEqual(got, map[int]map[int]string{0: {}}) {
		t.Errorf("one GPU: %v %v", got, err)
	}
	for _, bad := range []string{
		"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver",
		"\tGPU0\tGPU1\nGPU0\t X \nGPU1\tNV4\t X \n",      // a link missing
		"\tGPU0\tGPU1\nGPU0\tNV4\tNV4\nGPU1\tNV4\t X \n", // itself not X
	} {
		if _, err := ParseTopo([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// TestDetectGPULinks: with several GPUs the links are read too; a
// topology nvidia-smi cannot print leaves the GPUs without them; a
// worker restricted to some GPUs keeps the links among those.
func TestDetectGPULinks(t *testing.T) {
	topo, err := os.ReadFile(filepath.Join("testdata", "topo-pcie3.txt"))
	if err != nil {
		t.Fatal(err)
	}
	list := []byte("0, GPU-a, NVIDIA L4, 23034 MiB\n1, GPU-b, NVIDIA L4, 23034 MiB\n2, GPU-c, NVIDIA L4, 23034 MiB\n")
	for _, topoErr := range []error{nil, errors.New("exit status 2")} {
		det := Detector{GPUs: func() ([]GPU, error) {
			return DetectGPUs(func(name string, args ...string) ([]byte, error) {
				if slices.Equal(args, TopoArgs) {
					return topo, topoErr
				}
				return list, nil
			})
		}}
		c := Defaults()
		c.Resources.GPUs, c.Resources.GPUIndices = -1, []int{0, 2}
		c.Resources.CPUCores, c.Resources.MemoryMiB = 1, 1024
		if err := c.complete(det); err != nil {
			t.Fatal(err)
		}
		g := c.Resources.GPUDevices
		if len(g) != 2 || g[0].Index != 0 || g[1].Index != 2 {
			t.Fatalf("kept %+v", g)
		}
		if topoErr != nil {
			if g[0].Links != nil || g[1].Links != nil {
				t.Errorf("links %v %v without a topology", g[0].Links, g[1].Links)
			}
			continue
		}
		if !reflect.DeepEqual(g[0].Links, map[int]string{2: "SYS"}) || !reflect.DeepEqual(g[1].Links, map[int]string{0: "SYS"}) {
			t.Errorf("links of the kept GPUs: %v %v", g[0].Links, g[1].Links)
		}
	}
}

func TestParseMemInfo(t *testing.T) {
	n, err := parseMemInfo([]byte("MemFree:  100 kB\nMemTotal:       16318076 kB\n"))
	if err != nil || n != 15935 {
		t.Fatalf("%d %v", n, err)
	}
	if _, err := parseMemInfo([]byte("MemFree: 1 kB\n")); err == nil {
		t.Fatal("no error without MemTotal")
	}
	if _, err := parseMemInfo([]byte("MemTotal: 1 MB\n")); err == nil {
		t.Fatal("no error for an odd unit")
	}
}

// TestSystemDetector runs the real detectors: whatever this machine is,
// they must not fail (no nvidia-smi means no GPUs).
func TestSystemDetector(t *testing.T) {
	d := SystemDetector()
	if _, err := d.Hostname(); err != nil {
		t.Fatal(err)
	}
	if d.CPUCores() < 1 {
		t.Fatal("no CPUs")
	}
	if _, err := os.Stat("/proc/meminfo"); err == nil {
		if m, err := d.MemoryMiB(); err != nil || m < 1 {
			t.Fatalf("%d %v", m, err)
		}
	}
	gpus, err := d.GPUs()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("detected %d GPUs: %+v", len(gpus), gpus)
}

func TestExampleConfig(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"ca.pem", "worker.pem", "worker-key.pem"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("pem"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	env := envMap(map[string]string{
		"SWITCHYARD_WORKER_TLS_CA":   filepath.Join(dir, "ca.pem"),
		"SWITCHYARD_WORKER_TLS_CERT": filepath.Join(dir, "worker.pem"),
		"SWITCHYARD_WORKER_TLS_KEY":  filepath.Join(dir, "worker-key.pem"),
	})
	c, err := Load("testdata/worker.yaml", nil, env, fakeDetector(GPU{Index: 0, UUID: "GPU-0", Name: "H100", MemoryMiB: 81559}, GPU{Index: 1, UUID: "GPU-1", Name: "H100", MemoryMiB: 81559}))
	if err != nil {
		t.Fatal(err)
	}
	if c.ID != "node1-7070" || c.Resources.GPUs != 2 || c.Labels["rack"] != "r7" || len(c.EtcdEndpoints) != 3 {
		t.Fatalf("%+v", c)
	}
	// Without the TLS files (as on this machine) the example is refused,
	// naming the missing file.
	_, err = Load("testdata/worker.yaml", nil, nil, fakeDetector())
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `workerconfig: tls.ca = "/etc/switchyard/ca.pem": no such file`) {
		t.Fatalf("err = %v", err)
	}
}

func TestTrainerSetting(t *testing.T) {
	path := writeFile(t, "w.yaml", minimal+"trainer: /opt/file/switchyard\n")
	c, err := Load(path, nil, nil, fakeDetector())
	if err != nil || c.Trainer != "/opt/file/switchyard" {
		t.Fatalf("file: %q %v", c.Trainer, err)
	}
	c, err = Load(path, map[string]string{"trainer": "/opt/flag/switchyard"}, envMap(map[string]string{"SWITCHYARD_WORKER_TRAINER": "/opt/env/switchyard"}), fakeDetector())
	if err != nil || c.Trainer != "/opt/env/switchyard" {
		t.Fatalf("env over flag: %q %v", c.Trainer, err)
	}
	// Unset, it stays empty: TrainerPath resolves it when the worker starts.
	if c, err = Load(writeFile(t, "w.yaml", minimal), nil, nil, fakeDetector()); err != nil || c.Trainer != "" {
		t.Fatalf("default: %q %v", c.Trainer, err)
	}
}

func TestResolveTrainer(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "worker")
	beside := filepath.Join(dir, TrainerName)
	onPath := func(name string) (string, error) {
		if name == TrainerName {
			return "/usr/bin/switchyard", nil
		}
		return "", errors.New("executable file not found in $PATH")
	}
	notOnPath := func(string) (string, error) { return "", errors.New("executable file not found in $PATH") }
	executable := func() (string, error) { return exe, nil }

	// Nothing beside the worker: PATH.
	if got, err := resolveTrainer("", executable, onPath); err != nil || got != "/usr/bin/switchyard" {
		t.Fatalf("path: %q %v", got, err)
	}
	// A non-executable file beside the worker is not a trainer.
	if err := os.WriteFile(beside, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := resolveTrainer("", executable, onPath); err != nil || got != "/usr/bin/switchyard" {
		t.Fatalf("non-executable beside: %q %v", got, err)
	}
	// An executable beside the worker wins over PATH.
	if err := os.Chmod(beside, 0o755); err != nil {
		t.Fatal(err)
	}
	if got, err := resolveTrainer("", executable, onPath); err != nil || got != beside {
		t.Fatalf("beside: %q %v", got, err)
	}
	// Set: looked up as given, made absolute; not found is an error naming the field.
	if got, err := resolveTrainer("/x/switchyard", executable, func(n string) (string, error) { return n, nil }); err != nil || got != "/x/switchyard" {
		t.Fatalf("set: %q %v", got, err)
	}
	_, err := resolveTrainer("nope", executable, notOnPath)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `trainer = "nope"`) {
		t.Fatalf("set, missing: %v", err)
	}
	_, err = resolveTrainer("", func() (string, error) { return "", errors.New("no exe") }, notOnPath)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "set trainer") {
		t.Fatalf("none: %v", err)
	}
	// The real lookup finds an executable given by path.
	if got, err := (Config{Trainer: beside}).TrainerPath(); err != nil || got != beside {
		t.Fatalf("TrainerPath: %q %v", got, err)
	}
}

// gpu_indices restricts the detected GPUs to those named, in that order,
// and names a GPU the machine lacks.
func TestGPUIndicesRestrictDetection(t *testing.T) {
	dir := t.TempDir()
	write := func(extra string) string {
		p := filepath.Join(dir, "w.yaml")
		raw := "id: w1\nhost: h1\ncoordinators: [127.0.0.1:7400]\netcd_endpoints: [http://127.0.0.1:2379]\nstorage_path: /data\nlisten_address: 127.0.0.1:7070\n" +
			"resources: {cpu_cores: 8, memory_mib: 1024, gpus: -1" + extra + "}\n"
		if err := os.WriteFile(p, []byte(raw), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	det := fakeDetector(GPU{Index: 0, UUID: "GPU-a", Name: "H100", MemoryMiB: 1}, GPU{Index: 1, UUID: "GPU-b", Name: "H100", MemoryMiB: 1}, GPU{Index: 2, UUID: "GPU-c", Name: "H100", MemoryMiB: 1}, GPU{Index: 3, UUID: "GPU-d", Name: "H100", MemoryMiB: 1})
	c, err := Load(write(", gpu_indices: [3, 1]"), nil, nil, det)
	if err != nil {
		t.Fatal(err)
	}
	if c.Resources.GPUs != 2 || c.SlotCount() != 2 || c.SlotGPUs(0)[0] != 3 || c.SlotGPUs(1)[0] != 1 || c.Resources.GPUDevices[0].UUID != "GPU-d" {
		t.Fatalf("gpus %d, slots %d, slot GPUs %v %v", c.Resources.GPUs, c.SlotCount(), c.SlotGPUs(0), c.SlotGPUs(1))
	}
	if _, err := Load(write(", gpu_indices: [5]"), nil, nil, det); err == nil || !strings.Contains(err.Error(), "GPU 5 is not on this machine") {
		t.Fatalf("missing GPU: %v", err)
	}
}

// LoadForCheck wants the TLS files named, not present: Load refuses the
// same settings for the missing files, and both refuse an incomplete set.
func TestLoadForCheck(t *testing.T) {
	path := writeFile(t, "w.yaml", minimal+`
listen_address: 0.0.0.0:7070
advertise_address: 10.0.0.5:7070
tls: {ca: /etc/switchyard/tls/ca.crt, cert: /etc/switchyard/tls/tls.crt, key: /etc/switchyard/tls/tls.key}
`)
	c, err := LoadForCheck(path, nil, nil, fakeDetector())
	if err != nil {
		t.Fatal(err)
	}
	if !c.TLS.Enabled() || c.ID != "node1-7070" {
		t.Fatalf("%+v", c)
	}
	if _, err := Load(path, nil, nil, fakeDetector()); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("Load: %v, want the missing TLS files", err)
	}
	_, err = LoadForCheck(path, map[string]string{"tls-key": ""}, nil, fakeDetector())
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Path != "tls.key" {
		t.Fatalf("without tls.key: %v", err)
	}
}

// TestParseDoesNotPanic: YAML on which yaml.v3's decoder panics (a merge
// key beside a mapping used as a key in a map field) is an error, not a
// crash of the worker at start.
func TestParseDoesNotPanic(t *testing.T) {
	for _, in := range []string{
		"id: w1\nlabels: {<<: {a: 1}, ? {a: 1} : 2}\n",
		"id: w1\nlabels: &d {a: b}\nenv: {<<: [*d], *d: 1}\n",
	} {
		if _, err := Parse([]byte(in)); err == nil {
			t.Errorf("%q parsed", in)
		}
	}
}
