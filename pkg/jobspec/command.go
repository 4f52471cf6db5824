package jobspec

import (
	"bytes"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/switchyard-ml/switchyard/internal/yamlcheck"

	"github.com/switchyard-ml/switchyard/pkg/runconfig"
	"github.com/switchyard-ml/switchyard/pkg/security"
)

// The runtimes: what each rank of a job runs.
const (
	RuntimeEngine  = "engine"  // Switchyard's own MoE trainer (also when empty)
	RuntimeCommand = "command" // any program, one process per rank
)

// engineOnlyKeys are the spec's top-level keys that configure the engine;
// a command job may not set them (its trainer has its own flags). ranks
// replaces parallel.
var engineOnlyKeys = []string{"model", "parallel", "lbl", "data", "optim", "micro_batch", "accumulation", "seed", "eval_every", "device", "precision", "collectives", "recompute"}

// commandOnlyKeys are the command runtime's fields, refused for the engine.
var commandOnlyKeys = []string{"command", "args", "env", "working_dir", "ranks"}

// ReservedEnv are the variables Switchyard sets for every rank of a command
// job (see package agent); env may not set them.
var ReservedEnv = []string{
	"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "NODE_RANK", "ROLE_RANK", "ROLE_WORLD_SIZE",
	"MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_RUN_ID",
	"CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER",
}

// ReservedEnvPrefix: every SWITCHYARD_ variable is Switchyard's.
const ReservedEnvPrefix = "SWITCHYARD_"

var envKeyRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)

// commandDefaults: one rank per process, the layout dp = ranks.
func (s *Spec) commandDefaults() {
	if s.Ranks == 0 {
		s.Ranks = 1
	}
	s.Parallel = Parallel{TP: 1, DP: s.Ranks, EP: 1, Balance: "none"}
}

// validateCommand checks the runtime and, for a command job, its fields;
// for the engine it refuses the command runtime's.
func (s *Spec) validateCommand(bad func(path string, v any, rule string, args ...any)) {
	switch s.Runtime {
	case "", RuntimeEngine:
		set := map[string]bool{"command": s.Command != "", "args": len(s.Args) > 0, "env": len(s.Env) > 0, "working_dir": s.WorkingDir != "", "ranks": s.Ranks != 0}
		for _, k := range commandOnlyKeys {
			if set[k] {
				bad(k, "", "only with runtime: command (the engine's ranks are parallel.tp x parallel.dp)")
			}
		}
		return
	case RuntimeCommand:
	default:
		bad("runtime", s.Runtime, `must be "engine" (the default) or "command"`)
		return
	}
	noNUL := func(path, v string) bool {
		if strings.ContainsRune(v, 0) {
			bad(path, v, "must not contain NUL")
			return false
		}
		return true
	}
	switch c := s.Command; {
	case c == "":
		bad("command", c, "is required with runtime: command (a program on the worker's PATH, or a path)")
	case !noNUL("command", c):
	case filepath.IsAbs(c) && filepath.Clean(c) != c:
		bad("command", c, "must be a clean path (it reads as %s)", filepath.Clean(c))
	case !filepath.IsAbs(c) && strings.ContainsRune(c, '/') && s.WorkingDir == "":
		bad("command", c, "a relative path needs working_dir (or give a program name on the worker's PATH, or an absolute path)")
	}
	for i, a := range s.Args {
		noNUL(fmt.Sprintf("args[%d]", i), a)
	}
	for _, k := range sortedKeys(s.Env) {
		switch {
		case !envKeyRE.MatchString(k):
			bad("env", k, "variable names must be 1-128 of A-Z, a-z, 0-9 and '_', not starting with a digit")
		case slices.Contains(ReservedEnv, k) || strings.HasPrefix(k, ReservedEnvPrefix):
			bad("env."+k, s.Env[k], "is set by Switchyard for every rank (see the command runtime's environment)")
		default:
			noNUL("env."+k, s.Env[k])
		}
	}
	if d := s.WorkingDir; d != "" && (!filepath.IsAbs(d) || filepath.Clean(d) != d) {
		bad("working_dir", d, "must be a clean absolute path on the workers (empty: the rank's run directory)")
	}
	if s.Ranks < 1 || s.Ranks > maxWorld {
		bad("ranks", s.Ranks, "must be in [1, %d]", maxWorld)
	}
	if s.Steps < 0 {
		bad("steps", s.Steps, "must be >= 0 (the trainer's last step, for progress and checks; 0: not known)")
	}
	if s.Checkpoint.Storage != StorageDir {
		bad("checkpoint.storage", s.Checkpoint.Storage, `must be "dir" with runtime: command (the trainer reads and writes files; a shared filesystem for several workers)`)
	}
}

// engineKeys reports the engine's top-level keys that raw (a command job)
// sets.
func engineKeys(raw []byte) []error {
	var doc yaml.Node
	if yaml.Unmarshal(raw, &doc) != nil || len(doc.Content) == 0 {
		return nil // the strict decode reported it
	}
	var errs []error
	for _, k := range engineOnlyKeys {
		if v := mappingValue(doc.Content[0], k); v != nil {
			rule := "configures the built-in engine; with runtime: command, pass the trainer its settings in args"
			if k == "parallel" {
				rule = "is the engine's layout; a command job has ranks (one process each) instead"
			}
			var value any = v.Value // a scalar as written
			switch v.Kind {
			case yaml.MappingNode:
				value = "{...}"
			case yaml.SequenceNode:
				value = "[...]"
			}
			errs = append(errs, &FieldError{Path: k, Value: value, Rule: rule})
		}
	}
	return errs
}

// dropKeys removes keys from the mapping that n (a document or a mapping)
// holds.
func dropKeys(n *yaml.Node, keys []string) {
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	if n.Kind != yaml.MappingNode {
		return
	}
	kept := n.Content[:0]
	for i := 0; i+1 < len(n.Content); i += 2 {
		if !slices.Contains(keys, n.Content[i].Value) {
			kept = append(kept, n.Content[i], n.Content[i+1])
		}
	}
	n.Content = kept
}

// MaxCommandConfig is the largest run.yaml of a command rank.
const MaxCommandConfig = 2 * MaxSize

// CommandConfig is one rank of a command job as its worker starts it: the
// program, the rank's place in the job, where checkpoints go and how they
// are committed. The worker writes it as the rank's run.yaml; `switchyard
// exec` reads it, finds the checkpoint to resume from and executes the
// program with the rank's environment, and `switchyard checkpoints commit`
// (run by the trainer) reads it to commit.
type CommandConfig struct {
	Command    string            `yaml:"command"`
	Args       []string          `yaml:"args"`
	Env        map[string]string `yaml:"env"`
	WorkingDir string            `yaml:"working_dir"` // absolute
	RunDir     string            `yaml:"run_dir"`     // the rank's stdout.log, stderr.log, metrics.jsonl

	Job     string `yaml:"job"`
	Attempt int    `yaml:"attempt"`
	Rank    int    `yaml:"rank"`
	World   int    `yaml:"world"`
	Node    Node   `yaml:"node"`  // the rank's worker among the job's, and its place there
	Steps   int    `yaml:"steps"` // the spec's (0: not known)
	// MasterAddr and MasterPort are where rank 0's process group
	// rendezvous listens: rank 0's worker and the data-plane port it
	// keeps for its rank.
	MasterAddr string `yaml:"master_addr"`
	MasterPort int    `yaml:"master_port"`
	// CUDAVisibleDevices are the GPUs the rank may use ("" : none).
	CUDAVisibleDevices string `yaml:"cuda_visible_devices"`
	MaxRestarts        int    `yaml:"max_restarts"`

	// Checkpoint: Dir is the storage root (the job's files are under
	// Dir/Job), the catalogue read and committed to through CommitVia
	// with Attempt's fence, KeepLast and KeepBest (by the validation loss
	// the trainer gives `checkpoints commit --val-loss`), and ResumeStep when the coordinator
	// names one.
	Checkpoint runconfig.Checkpoint `yaml:"checkpoint"`
	// Coordinators and CoordinatorTLS reach the cluster's API (for the
	// trainer's own CLI calls).
	Coordinators   []string          `yaml:"coordinators"`
	CoordinatorTLS security.TLSFiles `yaml:"coordinator_tls"`
}

// SearchPath is the PATH the rank's program is looked up in and runs
// with: the spec's env PATH, else the worker's (inherited), then the
// directory of the switchyard binary bin (for the trainer's `switchyard
// checkpoints commit`).
func (c *CommandConfig) SearchPath(inherited, bin string) string {
	path := inherited
	if p, ok := c.Env["PATH"]; ok {
		path = p
	}
	return path + string(filepath.ListSeparator) + filepath.Dir(bin)
}

// JobCheckpointDir is the directory of the job's checkpoints.
func (c *CommandConfig) JobCheckpointDir() string { return filepath.Join(c.Checkpoint.Dir, c.Job) }

// StagingDir is where the attempt's trainer writes a checkpoint before it
// commits it ($SWITCHYARD_CHECKPOINT_DIR): under the job's checkpoint
// directory, so that the commit moves it into place without a copy.
func (c *CommandConfig) StagingDir() string {
	return filepath.Join(c.JobCheckpointDir(), StagingName, fmt.Sprintf("attempt-%d", c.Attempt))
}

// StagingName is the directory of the job's staged checkpoints.
const StagingName = "staging"

// ParseCommandConfig decodes a rank's run.yaml strictly (an unknown key
// is named by its path) and validates it. A worker writes it from a spec
// with its aliases expanded (up to maxExpanded) and adds its own fields:
// it may be up to MaxCommandConfig bytes.
func ParseCommandConfig(raw []byte) (*CommandConfig, error) {
	if len(raw) > MaxCommandConfig {
		return nil, fmt.Errorf("%w: run config is %d bytes, the limit is %d", ErrSyntax, len(raw), MaxCommandConfig)
	}
	if _, err := checkExpanded(raw, "run config", 2*MaxCommandConfig); err != nil {
		return nil, err
	}
	var c CommandConfig
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := yamlcheck.Decode(dec, &c); err != nil {
		if u := yamlcheck.UnknownKey(raw, &c); u != nil {
			err = u // the key's path, not yaml.v3's Go type
		}
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Validate checks what a worker wrote.
func (c *CommandConfig) Validate() error {
	switch {
	case ValidJobID(c.Job) != nil:
		return ValidJobID(c.Job)
	case c.Command == "":
		return fmt.Errorf("command config of job %s: no command", c.Job)
	case c.World < 1 || c.Rank < 0 || c.Rank >= c.World || c.Attempt < 0:
		return fmt.Errorf("command config of job %s: rank %d of world %d, attempt %d: out of range", c.Job, c.Rank, c.World, c.Attempt)
	case c.Node.Rank < 0 || c.Node.Rank >= max(c.Node.Nodes, 1) || c.Node.LocalRank < 0 || c.Node.LocalRank >= max(c.Node.LocalWorld, 1):
		return fmt.Errorf("command config of job %s: node %d of %d, local rank %d of %d: out of range", c.Job, c.Node.Rank, c.Node.Nodes, c.Node.LocalRank, c.Node.LocalWorld)
	case c.MasterAddr == "" || c.MasterPort < 1 || c.MasterPort > 65535:
		return fmt.Errorf("command config of job %s: master %s:%d: want a host and a port in [1, 65535]", c.Job, c.MasterAddr, c.MasterPort)
	case !filepath.IsAbs(c.WorkingDir) || !filepath.IsAbs(c.RunDir):
		return fmt.Errorf("command config of job %s: working_dir %q and run_dir %q must be absolute", c.Job, c.WorkingDir, c.RunDir)
	case c.Checkpoint.Dir == "" || !filepath.IsAbs(c.Checkpoint.Dir):
		return fmt.Errorf("command config of job %s: checkpoint.dir %q must be an absolute directory", c.Job, c.Checkpoint.Dir)
	case c.Checkpoint.Job != c.Job:
		return fmt.Errorf("command config of job %s: checkpoint.job %q differs", c.Job, c.Checkpoint.Job)
	}
	return nil
}

// CommandRank is the configuration of rank of task t of a command job on
// host h (the worker's storage, catalogue and coordinators) with its
// process group's master at master (host:port).
func (s *Spec) CommandRank(t Task, rank int, master string, h Host) (CommandConfig, error) {
	if s.Runtime != RuntimeCommand {
		return CommandConfig{}, fmt.Errorf("job %s: runtime %q is not %q", t.JobID, s.Runtime, RuntimeCommand)
	}
	if t.ResumeStep < 0 {
		return CommandConfig{}, fmt.Errorf("job %s: resume step %d: must be >= 0", t.JobID, t.ResumeStep)
	}
	host, port, err := splitHostPort(master)
	if err != nil {
		return CommandConfig{}, fmt.Errorf("job %s: master address %q: %w", t.JobID, master, err)
	}
	wd := s.WorkingDir
	if wd == "" {
		wd = h.RunDir
	}
	c := CommandConfig{
		Command: s.Command, Args: s.Args, Env: s.Env, WorkingDir: wd, RunDir: h.RunDir,
		Job: t.JobID, Attempt: t.Attempt, Rank: rank, World: t.Layout.World(), Steps: s.Steps, Node: t.Node,
		MasterAddr: host, MasterPort: port, MaxRestarts: *s.Restart.MaxRestarts,
		Checkpoint: runconfig.Checkpoint{
			Dir: s.CheckpointRoot(h.CheckpointRoot), Job: t.JobID, KeepLast: s.Checkpoint.KeepLast, KeepBest: s.Checkpoint.KeepBest,
			ResumeStep: t.ResumeStep, CommitVia: h.CommitVia, Attempt: t.Attempt, CommitTLS: h.CommitTLS,
		},
		Coordinators: h.CommitVia, CoordinatorTLS: h.CommitTLS,
	}
	return c, c.Validate()
}

func splitHostPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("port %q: want 1-65535", p)
	}
	if host == "" {
		host = "127.0.0.1"
	}
	return host, port, nil
}
