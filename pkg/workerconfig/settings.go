package workerconfig

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// EnvPrefix starts every environment variable the worker reads.
const EnvPrefix = "SWITCHYARD_WORKER_"

// Setting is one configuration value that flags and the environment can
// override.
type Setting struct {
	Key  string // YAML path, e.g. "tls.ca"
	Flag string // flag name without dashes, e.g. "tls-ca"
	Env  string // environment variable, e.g. "SWITCHYARD_WORKER_TLS_CA"
	Help string
	set  func(c *Config, v string) error
}

func str(p func(*Config) *string) func(*Config, string) error {
	return func(c *Config, v string) error { *p(c) = v; return nil }
}

func boolean(p func(*Config) *bool) func(*Config, string) error {
	return func(c *Config, v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return errors.New("not a boolean")
		}
		*p(c) = b
		return nil
	}
}

func list(p func(*Config) *[]string) func(*Config, string) error {
	return func(c *Config, v string) error {
		var out []string
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
		*p(c) = out
		return nil
	}
}

func integer(p func(*Config) *int) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := parseInt(v)
		if err != nil {
			return err
		}
		if n < math.MinInt32 || n > math.MaxInt32 {
			return errors.New("out of range")
		}
		*p(c) = int(n)
		return nil
	}
}

var settings = []Setting{
	{Key: "id", Help: "worker id (default <host>-<advertise port>)", set: str(func(c *Config) *string { return &c.ID })},
	{Key: "host", Help: "machine name; TP groups stay on one host (default: the host name)", set: str(func(c *Config) *string { return &c.Host })},
	{Key: "coordinators", Help: "coordinator addresses host:port, comma-separated", set: list(func(c *Config) *[]string { return &c.Coordinators })},
	{Key: "etcd_endpoints", Help: "etcd endpoints, comma-separated", set: list(func(c *Config) *[]string { return &c.EtcdEndpoints })},
	{Key: "nats_url", Help: "NATS URL (empty: no events or metrics)", set: str(func(c *Config) *string { return &c.NATSURL })},
	{Key: "advertise_address", Help: "host:port peers reach this worker on", set: str(func(c *Config) *string { return &c.AdvertiseAddress })},
	{Key: "listen_address", Help: "host:port to listen on", set: str(func(c *Config) *string { return &c.ListenAddress })},
	{Key: "metrics_address", Flag: "metrics-addr", Help: "serve Prometheus metrics on http://HOST:PORT/metrics (empty: none)", set: str(func(c *Config) *string { return &c.MetricsAddress })},
	{Key: "resources.cpu_cores", Flag: "cpu-cores", Help: "CPU cores offered (default: detected)", set: integer(func(c *Config) *int { return &c.Resources.CPUCores })},
	{Key: "resources.memory_mib", Flag: "memory-mib", Help: "memory offered in MiB (default: detected)", set: func(c *Config, v string) error {
		n, err := parseInt(v)
		c.Resources.MemoryMiB = n
		return err
	}},
	{Key: "resources.gpus", Flag: "gpus", Help: "GPUs offered (-1: detect with nvidia-smi)", set: integer(func(c *Config) *int { return &c.Resources.GPUs })},
	{Key: "slots", Help: "ranks run at once, each with an equal share of the resources and GPUs and the data-plane port listen port + slot (0: one per GPU, or 1)", set: integer(func(c *Config) *int { return &c.Slots })},
	{Key: "labels", Help: "host labels k=v, comma-separated; merged over the file's", set: func(c *Config, v string) error {
		for _, kv := range strings.Split(v, ",") {
			if kv = strings.TrimSpace(kv); kv == "" {
				continue
			}
			k, val, ok := strings.Cut(kv, "=")
			if !ok {
				return fmt.Errorf("%q is not k=v", kv)
			}
			if c.Labels == nil {
				c.Labels = map[string]string{}
			}
			c.Labels[strings.TrimSpace(k)] = strings.TrimSpace(val)
		}
		return nil
	}},
	{Key: "storage_path", Help: "absolute directory for checkpoint shards and scratch", set: str(func(c *Config) *string { return &c.StoragePath })},
	{Key: "allowed_paths", Help: "absolute directories outside storage_path that jobs may read corpora from or write checkpoints to, comma-separated", set: list(func(c *Config) *[]string { return &c.AllowedPaths })},
	{Key: "trainer", Help: "path of the switchyard binary that runs ranks (default: switchyard next to this executable, else on PATH)", set: str(func(c *Config) *string { return &c.Trainer })},
	{Key: "tls.ca", Help: "CA certificate (PEM) for mutual TLS", set: str(func(c *Config) *string { return &c.TLS.CA })},
	{Key: "tls.cert", Help: "certificate (PEM)", set: str(func(c *Config) *string { return &c.TLS.Cert })},
	{Key: "tls.key", Help: "private key (PEM)", set: str(func(c *Config) *string { return &c.TLS.Key })},
	{Key: "data_plane_tls", Help: "encrypt the ranks' connections with mutual TLS (the tls files; every worker of a job must agree)", set: boolean(func(c *Config) *bool { return &c.DataPlaneTLS })},
	{Key: "enforce_memory", Help: "kill a rank that uses more memory than its job's resources.memory_mib", set: boolean(func(c *Config) *bool { return &c.EnforceMemory })},
	{Key: "allow_commands", Help: "run jobs with runtime: command (their programs run as this worker's user, or rank_user)", set: boolean(func(c *Config) *bool { return &c.AllowCommands })},
	{Key: "rank_user", Help: "run ranks as this OS user (name, uid or uid:gid; the worker must run as root), so that they cannot read the worker's token", set: str(func(c *Config) *string { return &c.RankUser })},
	{Key: "drain_seconds", Help: "on SIGTERM, let running ranks reach their job's next checkpoint for at most this long before stopping them (0: stop at once; default 60)", set: integer(func(c *Config) *int { return &c.DrainSeconds })},
	{Key: "lease_ttl_seconds", Help: "etcd lease TTL in seconds (default 10)", set: integer(func(c *Config) *int { return &c.LeaseTTLSeconds })},
	{Key: "insecure", Help: "allow a non-loopback listener without TLS", set: boolean(func(c *Config) *bool { return &c.Insecure })},
}

func init() {
	for i := range settings {
		s := &settings[i]
		if s.Flag == "" {
			s.Flag = strings.NewReplacer(".", "-", "_", "-").Replace(s.Key)
		}
		s.Env = EnvPrefix + strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(s.Flag))
	}
}

// Settings lists every overridable setting, in documentation order, for
// registering flags and printing help.
func Settings() []Setting { return slices.Clone(settings) }

func applyFlags(c *Config, flags map[string]string) error {
	names := make([]string, 0, len(flags))
	for name := range flags {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		i := slices.IndexFunc(settings, func(s Setting) bool { return s.Flag == name })
		if i < 0 {
			return fmt.Errorf("%w: unknown flag --%s", ErrSyntax, name)
		}
		if err := settings[i].set(c, flags[name]); err != nil {
			return fmt.Errorf("%w: flag --%s = %q: %v", ErrSyntax, name, flags[name], err)
		}
	}
	return nil
}

// applyEnv applies every set, non-empty SWITCHYARD_WORKER_* variable.
func applyEnv(c *Config, env func(string) string) error {
	if env == nil {
		return nil
	}
	for _, s := range settings {
		v := env(s.Env)
		if v == "" {
			continue
		}
		if err := s.set(c, v); err != nil {
			return fmt.Errorf("%w: %s = %q: %v", ErrSyntax, s.Env, v, err)
		}
	}
	return nil
}
