package workerconfig

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"

	"gopkg.in/yaml.v3"

	"github.com/switchyard-ml/switchyard/internal/yamlcheck"

	"github.com/switchyard-ml/switchyard/pkg/fsutil"
	"github.com/switchyard-ml/switchyard/pkg/security"
)

var (
	// ErrInvalid is wrapped by every validation error (see FieldError).
	ErrInvalid = errors.New("workerconfig: invalid config")
	// ErrSyntax is wrapped by errors decoding the file, a flag or an
	// environment variable.
	ErrSyntax = errors.New("workerconfig: malformed config")
)

// Config is a worker's configuration.
type Config struct {
	ID               string   `yaml:"id" json:"id"`
	Host             string   `yaml:"host" json:"host"` // the machine; tensor-parallel groups stay on one host
	Coordinators     []string `yaml:"coordinators" json:"coordinators"`
	EtcdEndpoints    []string `yaml:"etcd_endpoints" json:"etcd_endpoints"`
	NATSURL          string   `yaml:"nats_url" json:"nats_url"`
	AdvertiseAddress string   `yaml:"advertise_address" json:"advertise_address"` // host:port peers dial
	ListenAddress    string   `yaml:"listen_address" json:"listen_address"`
	// MetricsAddress serves the worker's and its jobs' Prometheus metrics
	// on http://HOST:PORT/metrics ("": none).
	MetricsAddress string    `yaml:"metrics_address" json:"metrics_address"`
	Resources      Resources `yaml:"resources" json:"resources"`
	// Slots is how many ranks the worker runs at once (of one job or
	// several), each with an equal share of its resources and GPUs and
	// its own data-plane port: slot k listens on listen_address's port + k
	// and is advertised the same way. 0: one per GPU, or 1 without GPUs.
	Slots       int               `yaml:"slots" json:"slots,omitempty"`
	Labels      map[string]string `yaml:"labels" json:"labels"`
	StoragePath string            `yaml:"storage_path" json:"storage_path"`
	// AllowedPaths are directories outside StoragePath that jobs may name:
	// corpora to read, checkpoint.path to write. A job naming a path
	// outside both fails to start, naming it.
	AllowedPaths []string `yaml:"allowed_paths" json:"allowed_paths,omitempty"`
	Trainer      string   `yaml:"trainer" json:"trainer,omitempty"` // switchyard binary that runs ranks ("" : see TrainerPath)
	TLS          TLS      `yaml:"tls" json:"tls"`
	// DataPlaneTLS encrypts the connections between this worker's ranks
	// and their peers with mutual TLS, with the files of TLS (every worker
	// of a job must agree). Off by default: see the cost in the README.
	DataPlaneTLS bool `yaml:"data_plane_tls" json:"data_plane_tls,omitempty"`
	// AllowCommands lets jobs with runtime: command run their programs on
	// this worker (as the worker's user). Off by default: with it, whoever
	// may submit jobs may run code here.
	AllowCommands bool `yaml:"allow_commands" json:"allow_commands,omitempty"`
	// RankUser runs every rank (engine and command jobs) as this OS user,
	// not the worker's: a user name, a uid, or uid:gid, not root. The
	// worker must run as root; the user gets the rank's run directory and
	// its job's checkpoint directory, reaches the coordinator through the
	// worker, and cannot read the worker's environment (its token) nor, if
	// they are kept from other users, its config and TLS key. With TLS it
	// needs the cluster's token, and excludes DataPlaneTLS. "": ranks run
	// as the worker's user.
	RankUser string `yaml:"rank_user" json:"rank_user,omitempty"`
	// EnforceMemory kills a rank whose processes use more resident
	// private memory than its job's resources.memory_mib (on by default;
	// Linux only).
	EnforceMemory   bool `yaml:"enforce_memory" json:"enforce_memory"`
	LeaseTTLSeconds int  `yaml:"lease_ttl_seconds" json:"lease_ttl_seconds"`
	// DrainSeconds bounds the drain on SIGTERM: the worker takes no new
	// ranks, and each running rank whose job saves checkpoints runs until
	// its job commits one more (its restart elsewhere resumes from it), at
	// most this long; then every rank is stopped. 0: stop at once.
	DrainSeconds int  `yaml:"drain_seconds" json:"drain_seconds"`
	Insecure     bool `yaml:"insecure" json:"insecure"`
}

// Resources is what the worker offers.
type Resources struct {
	CPUCores  int   `yaml:"cpu_cores" json:"cpu_cores"`   // 0: detect
	MemoryMiB int64 `yaml:"memory_mib" json:"memory_mib"` // 0: detect
	GPUs      int   `yaml:"gpus" json:"gpus"`             // -1: detect
	// GPUIndices restricts the worker to these GPUs of the machine (by
	// nvidia-smi index): of those detected, or naming the declared ones
	// (as many as gpus). Empty: all detected, or 0..gpus-1.
	GPUIndices []int `yaml:"gpu_indices,omitempty" json:"gpu_indices,omitempty"`
	// GPUDevices are the detected GPUs (empty when gpus was set by hand).
	GPUDevices []GPU `yaml:"-" json:"gpu_devices,omitempty"`
}

// MaxSlots bounds the ranks one worker runs at once.
const MaxSlots = 256

// SlotCount is the number of ranks the worker runs at once (Slots, or its
// default).
func (c Config) SlotCount() int {
	switch {
	case c.Slots > 0:
		return c.Slots
	case c.Resources.GPUs > 0:
		return c.Resources.GPUs
	}
	return 1
}

// SlotGPUs are the GPUs of slot k (none without GPUs): the k-th g of the
// worker's (g = gpus/slots) by their index on this machine (detected, or
// gpu_indices, or 0..gpus-1).
func (c Config) SlotGPUs(k int) []int {
	n := c.SlotCount()
	if c.Resources.GPUs <= 0 || k < 0 || k >= n {
		return nil
	}
	g := c.Resources.GPUs / n
	ids := make([]int, 0, g)
	for i := k * g; i < (k+1)*g; i++ {
		idx := i
		switch r := c.Resources; {
		case i < len(r.GPUDevices):
			idx = r.GPUDevices[i].Index
		case i < len(r.GPUIndices):
			idx = r.GPUIndices[i]
		}
		ids = append(ids, idx)
	}
	return ids
}

// TLS names the PEM files for mutual TLS.
type TLS = security.TLSFiles

// Defaults is the configuration before the file, flags, environment and
// detection.
func Defaults() Config {
	return Config{
		ListenAddress:   "127.0.0.1:7070",
		LeaseTTLSeconds: 10,
		DrainSeconds:    60,
		Resources:       Resources{GPUs: -1},
		EnforceMemory:   true,
	}
}

// MaxFileSize is the largest config file accepted.
const MaxFileSize = 1 << 20

// Parse decodes a config file strictly (unknown fields, repeated keys and
// several documents are errors; an unknown key is named by its path and
// line) on top of Defaults. It neither detects nor validates.
func Parse(raw []byte) (Config, error) {
	c := Defaults()
	if err := decodeInto(&c, raw); err != nil {
		return Config{}, err
	}
	return c, nil
}

func decodeInto(c *Config, raw []byte) error {
	if len(raw) > MaxFileSize {
		return fmt.Errorf("%w: file is %d bytes, the limit is %d", ErrSyntax, len(raw), MaxFileSize)
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := yamlcheck.Decode(dec, c); err != nil && !errors.Is(err, io.EOF) {
		if u := yamlcheck.UnknownKey(raw, c); u != nil {
			return fmt.Errorf("%w: %w", ErrSyntax, u)
		}
		return fmt.Errorf("%w: %v", ErrSyntax, yamlcheck.TypeErrors(raw, c, err))
	}
	var extra yaml.Node
	if err := yamlcheck.Decode(dec, &extra); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: the config is one YAML document", ErrSyntax)
	}
	if fr := yamlcheck.Fractional(raw, c); len(fr) > 0 {
		return fmt.Errorf("%w: %s = %s: must be a whole number", ErrSyntax, fr[0].Path, fr[0].Value)
	}
	return nil
}

// Load builds the configuration: Defaults, then the file at path (skipped
// when path is ""), then flags (by flag name, without dashes: "nats-url"),
// then the environment (env may be nil; os.Getenv in production), then
// detection with det for what is still unset; and validates the result.
func Load(path string, flags map[string]string, env func(string) string, det Detector) (Config, error) {
	return load(path, flags, env, det, true)
}

// LoadForCheck is Load for checking a worker's settings away from the
// machine they are meant for (worker --check-config, the deployment
// tests): the same steps, except that the TLS files must be named but
// need not exist here (a Kubernetes Secret mounted in the worker's pod).
func LoadForCheck(path string, flags map[string]string, env func(string) string, det Detector) (Config, error) {
	return load(path, flags, env, det, false)
}

func load(path string, flags map[string]string, env func(string) string, det Detector, statFiles bool) (Config, error) {
	c := Defaults()
	if path != "" {
		raw, err := fsutil.ReadFile(path, MaxFileSize)
		if err != nil {
			return Config{}, fmt.Errorf("workerconfig: read config: %w", err)
		}
		if err := decodeInto(&c, raw); err != nil {
			return Config{}, fmt.Errorf("%s: %w", path, err)
		}
	}
	if err := applyFlags(&c, flags); err != nil {
		return Config{}, err
	}
	if err := applyEnv(&c, env); err != nil {
		return Config{}, err
	}
	if err := c.complete(det); err != nil {
		return Config{}, err
	}
	if err := c.validate(statFiles); err != nil {
		return Config{}, err
	}
	return c, nil
}

// complete fills what is still unset: detected values, then the values
// derived from others (advertise address, id).
func (c *Config) complete(det Detector) error {
	if c.Host == "" && det.Hostname != nil {
		h, err := det.Hostname()
		if err != nil {
			return fmt.Errorf("%w: host: detect the host name: %v (set host)", ErrInvalid, err)
		}
		c.Host = h
	}
	if c.Resources.CPUCores == 0 && det.CPUCores != nil {
		c.Resources.CPUCores = det.CPUCores()
	}
	if c.Resources.MemoryMiB == 0 && det.MemoryMiB != nil {
		m, err := det.MemoryMiB()
		if err != nil {
			return fmt.Errorf("%w: resources.memory_mib: detect memory: %v (set resources.memory_mib)", ErrInvalid, err)
		}
		c.Resources.MemoryMiB = m
	}
	if c.Resources.GPUs == -1 {
		c.Resources.GPUs = 0
		if det.GPUs != nil {
			gpus, err := det.GPUs()
			if err != nil {
				return fmt.Errorf("%w: resources.gpus: detect GPUs: %v (set resources.gpus to skip detection)", ErrInvalid, err)
			}
			if want := c.Resources.GPUIndices; len(want) > 0 {
				kept := make([]GPU, 0, len(want))
				for _, i := range want {
					k := slices.IndexFunc(gpus, func(g GPU) bool { return g.Index == i })
					if k < 0 {
						return fmt.Errorf("%w: resources.gpu_indices: GPU %d is not on this machine (nvidia-smi lists %d)", ErrInvalid, i, len(gpus))
					}
					kept = append(kept, gpus[k])
				}
				for k := range kept { // links to the GPUs kept
					if kept[k].Links != nil {
						kept[k].Links = maps.Clone(kept[k].Links)
						maps.DeleteFunc(kept[k].Links, func(j int, _ string) bool { return !slices.Contains(want, j) })
					}
				}
				gpus = kept
			}
			c.Resources.GPUs = len(gpus)
			c.Resources.GPUDevices = gpus
		}
	}
	if c.AdvertiseAddress == "" {
		if host, port, err := net.SplitHostPort(c.ListenAddress); err == nil && !unspecifiedHost(host) && port != "0" {
			c.AdvertiseAddress = c.ListenAddress
		}
	}
	if c.ID == "" && c.Host != "" {
		if _, port, err := net.SplitHostPort(c.AdvertiseAddress); err == nil {
			c.ID = c.Host + "-" + port
		}
	}
	return nil
}

func unspecifiedHost(h string) bool {
	if h == "" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsUnspecified()
}

// parseInt is strconv.Atoi with a sentence for errors.
func parseInt(v string) (int64, error) {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, errors.New("not an integer")
	}
	return n, nil
}

// TrainerName is the binary that runs ranks when trainer is not set.
const TrainerName = "switchyard"

// TrainerPath resolves the trainer setting to an absolute path: the
// configured path (a bare name is looked up on PATH), else "switchyard" in
// the directory of the running executable when it is there, else
// "switchyard" on PATH. It is resolved when the worker starts, not by Load,
// so that a config stays a plain value.
func (c Config) TrainerPath() (string, error) {
	return resolveTrainer(c.Trainer, os.Executable, exec.LookPath)
}

func resolveTrainer(set string, executable func() (string, error), lookPath func(string) (string, error)) (string, error) {
	if set != "" {
		p, err := lookPath(set)
		if err != nil {
			return "", &FieldError{Path: "trainer", Value: set, Rule: "not an executable file, nor a name found on PATH"}
		}
		return filepath.Abs(p)
	}
	var beside string
	if exe, err := executable(); err == nil {
		beside = filepath.Join(filepath.Dir(exe), TrainerName)
		if st, err := os.Stat(beside); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return beside, nil
		}
	}
	p, err := lookPath(TrainerName)
	if err != nil {
		return "", &FieldError{Path: "trainer", Value: set, Rule: fmt.Sprintf("no executable %s next to the worker (%s) nor on PATH; set trainer", TrainerName, beside)}
	}
	return filepath.Abs(p)
}
