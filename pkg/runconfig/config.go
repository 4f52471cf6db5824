package runconfig

import (
	"github.com/switchyard-ml/switchyard/pkg/security"

	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"

	"github.com/switchyard-ml/switchyard/pkg/fsutil"
	"gopkg.in/yaml.v3"

	"github.com/switchyard-ml/switchyard/internal/yamlcheck"
)

// ErrConfig is wrapped by every run-configuration error.
var ErrConfig = errors.New("train: invalid config")

// DefaultLBLCoef is lbl.coef when the key is absent.
const DefaultLBLCoef = 0.01

// LBL selects the load-balancing loss.
type LBL struct {
	// Mode is "global" (global-batch LBL: f from the synchronised counts of
	// every micro-batch of the optimizer step so far, on every rank — the
	// accumulation buffer) or "micro" (f from each micro-batch alone).
	Mode      string    `yaml:"mode" json:"mode"`
	Coef      float64   `yaml:"coef" json:"coef"`                                 // coefficient of the mode's loss, per MoE layer
	MicroCoef float64   `yaml:"micro_coef" json:"micro_coef"`                     // extra micro-batch LBL mixed in (e.g. 1% of coef)
	SeqCoef   float64   `yaml:"seq_coef" json:"seq_coef"`                         // sequence-level LBL
	ZCoef     float64   `yaml:"z_coef" json:"z_coef"`                             // router z-loss
	LayerCoef []float64 `yaml:"layer_coef,omitempty" json:"layer_coef,omitempty"` // per-MoE-layer multipliers
	BiasRate  float64   `yaml:"bias_rate" json:"bias_rate"`                       // aux-loss-free expert bias update rate (0: off)
	// Window is how many micro-batches of the step the global LBL's
	// counts cover (0: all of them): the balance batch is micro_batch x
	// window x the balance group's ranks sequences.
	Window int `yaml:"window,omitempty" json:"window,omitempty"`
}

// Data says where the corpus comes from.
type Data struct {
	Corpus      string  `yaml:"corpus" json:"corpus"`             // JSON Lines file; empty: the built-in demo corpus
	DemoBytes   int     `yaml:"demo_bytes" json:"demo_bytes"`     // demo corpus bytes per domain
	ValFraction float64 `yaml:"val_fraction" json:"val_fraction"` // per-domain share held out
	EvalSeqs    int     `yaml:"eval_seqs" json:"eval_seqs"`       // validation sequences per domain per evaluation (0: all)
	// Order is how training sequences are drawn: "shuffled" (or empty: all
	// domains mixed at random) or "domain" (every micro-batch of each rank
	// holds one domain, the global batch mixes them; data.NewDomainLoader)
	// or "domain_mixed" (the global batches of "domain", each step's
	// sequences dealt at random to its micro-batches: every micro-batch a
	// random subset of the global batch, the control that tells "more
	// tokens" from "more diverse tokens" in a balance batch).
	Order string `yaml:"order,omitempty" json:"order,omitempty"`
}

// The data orders.
const (
	OrderShuffled = "shuffled"
	OrderDomain   = "domain"
	OrderMixed    = "domain_mixed"
)

// ValidOrder reports whether o is a data order ("" is the default,
// shuffled).
func ValidOrder(o string) bool {
	return o == "" || o == OrderShuffled || o == OrderDomain || o == OrderMixed
}

// OrderNames lists the data orders for error messages.
const OrderNames = `"shuffled", "domain" or "domain_mixed"`

// Config is a training run.
type Config struct {
	Preset       string     `yaml:"preset" json:"preset"`
	Model        *Model     `yaml:"model" json:"model"` // overrides the preset's fields that are set
	LBL          LBL        `yaml:"lbl" json:"lbl"`
	Data         Data       `yaml:"data" json:"data"`
	MicroBatch   int        `yaml:"micro_batch" json:"micro_batch"`   // sequences per micro-batch
	Accumulation int        `yaml:"accumulation" json:"accumulation"` // micro-batches per optimizer step
	Steps        int        `yaml:"steps" json:"steps"`               // optimizer steps
	Seed         int64      `yaml:"seed" json:"seed"`
	Optim        Optim      `yaml:"optim" json:"optim"`
	EvalEvery    int        `yaml:"eval_every" json:"eval_every"` // steps between evaluations (0: only at the end)
	OutDir       string     `yaml:"out_dir" json:"out_dir"`       // metrics.jsonl and report.json go here ("" : none)
	Checkpoint   Checkpoint `yaml:"checkpoint" json:"checkpoint"`
	// Resume continues from the newest committed checkpoint in
	// Checkpoint.Dir, if there is one.
	Resume bool `yaml:"resume" json:"resume"`
	// MaxSeconds, when > 0, ends the run at the first step boundary after
	// that many seconds of training (evaluation, the final checkpoint and
	// the report follow as at the end of Steps); the learning-rate
	// schedule still spans Steps.
	MaxSeconds float64 `yaml:"max_seconds" json:"max_seconds,omitempty"`
	// Device is "cpu" (default) or "cuda" / "cuda:N" (GPU N as CUDA counts
	// them after CUDA_VISIBLE_DEVICES).
	Device string `yaml:"device" json:"device"`
	// Dist is the rank's place in a parallel run (the worker writes it;
	// empty: one process, or the train command's flags).
	Dist Dist `yaml:"dist,omitempty" json:"dist,omitempty"`
	// Precision of a GPU run: "fp32" (true fp32, the CPU engine's numbers)
	// or "bf16" (mixed: bf16 activations and GEMMs, fp32 master weights,
	// gradients and AdamW moments). Default bf16 on cuda; the CPU engine
	// is fp32 only.
	Precision string `yaml:"precision" json:"precision"`
	// Collectives is how the GPU ranks of a data-parallel run all-reduce
	// their gradients: "auto" (default, also when empty: NCCL when every
	// rank has a GPU of its own, host-staged over the ranks' transport
	// otherwise), "nccl" (fail at start where NCCL cannot run) or "host".
	Collectives string `yaml:"collectives,omitempty" json:"collectives,omitempty"`
	// Recompute is what a GPU run computes again in the backward instead
	// of keeping it from the forward: "none" (default, also when empty)
	// or "attention" (the attention probabilities: one [B][H][S][S]
	// buffer instead of one a layer, for one more q k^T product and
	// softmax a layer in the backward).
	Recompute string `yaml:"recompute,omitempty" json:"recompute,omitempty"`
}

// Dist is the parallel layout a rank runs in; the rank's own number and
// its peers' addresses are not part of it (they come on the command
// line). World 0 or 1: one process.
type Dist struct {
	World   int    `yaml:"world,omitempty" json:"world,omitempty"`
	TP      int    `yaml:"tp,omitempty" json:"tp,omitempty"`
	DP      int    `yaml:"dp,omitempty" json:"dp,omitempty"` // 0: world/tp
	EP      int    `yaml:"ep,omitempty" json:"ep,omitempty"`
	Balance string `yaml:"balance,omitempty" json:"balance,omitempty"` // LBL balance group: dp (default), node or none
	// TLS, when its files are given, encrypts the connections between the
	// ranks (mutual TLS; the worker's files when it has data_plane_tls).
	TLS security.TLSFiles `yaml:"tls,omitempty" json:"tls,omitempty"`
}

func (d Dist) validate() error {
	bad := func(path string, v any, rule string) error {
		return fmt.Errorf("%w: dist.%s = %v: %s", ErrConfig, path, v, rule)
	}
	switch {
	case d.World < 0:
		return bad("world", d.World, "must be >= 0")
	case d.TP < 0:
		return bad("tp", d.TP, "must be >= 0")
	case d.DP < 0:
		return bad("dp", d.DP, "must be >= 0")
	case d.EP < 0:
		return bad("ep", d.EP, "must be >= 0")
	case d.Balance != "" && d.Balance != "dp" && d.Balance != "node" && d.Balance != "none":
		return bad("balance", d.Balance, `must be "dp", "node" or "none"`)
	case d.World > 0 && d.TP > 0 && d.DP > 0 && d.TP*d.DP != d.World:
		return bad("world", d.World, fmt.Sprintf("must be tp * dp = %d", d.TP*d.DP))
	case d.DP > 0 && d.EP > 0 && d.DP%d.EP != 0:
		return bad("ep", d.EP, fmt.Sprintf("must divide dp = %d", d.DP))
	}
	return nil
}

// PrecisionOrDefault is the run's precision: Precision, or when it is
// empty bf16 on cuda and fp32 on the CPU.
func (c Config) PrecisionOrDefault() string {
	if c.Precision != "" {
		return c.Precision
	}
	if kind, _, _ := ParseDevice(c.Device); kind == "cuda" {
		return "bf16"
	}
	return "fp32"
}

// ParseDevice splits a device name: "cpu" (or "") and "cuda" / "cuda:N".
func ParseDevice(s string) (kind string, ordinal int, err error) {
	switch {
	case s == "" || s == "cpu":
		return "cpu", 0, nil
	case s == "cuda":
		return "cuda", 0, nil
	case strings.HasPrefix(s, "cuda:"):
		n, err := strconv.Atoi(s[len("cuda:"):])
		if err != nil || n < 0 {
			return "", 0, fmt.Errorf("device %q: the GPU index must be a number >= 0", s)
		}
		return "cuda", n, nil
	}
	return "", 0, fmt.Errorf("device %q: must be cpu, cuda or cuda:N", s)
}

// Defaults fills unset fields.
func (c *Config) Defaults() {
	if len(c.LBL.LayerCoef) == 0 {
		c.LBL.LayerCoef = nil // "layer_coef: []" means all 1, like an absent list
	}
	if c.Preset == "" && c.Model == nil {
		c.Preset = "tiny"
	}
	if c.LBL.Mode == "" {
		c.LBL.Mode = "global"
	}
	if c.LBL.Coef == 0 {
		c.LBL.Coef = DefaultLBLCoef // Parse keeps an explicit 0
	}
	if c.Data.DemoBytes == 0 {
		c.Data.DemoBytes = 1 << 20
	}
	if c.Data.ValFraction == 0 {
		c.Data.ValFraction = 0.05
	}
	if c.Accumulation == 0 {
		c.Accumulation = 1
	}
	if c.Steps == 0 {
		c.Steps = 100
	}
	if c.Seed == 0 {
		c.Seed = 1
	}
	c.Optim.Defaults()
}

// ModelConfig resolves the preset and overrides into a model config.
func (c Config) ModelConfig() (Model, error) {
	var m Model
	if c.Preset != "" {
		p, err := ModelPreset(c.Preset)
		if err != nil {
			return m, fmt.Errorf("%w: preset: %v", ErrConfig, err)
		}
		m = p
	}
	if o := c.Model; o != nil {
		m.Overlay(*o)
	}
	m.Defaults()
	if err := m.Validate(); err != nil {
		return m, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	return m, nil
}

// Validate names the first broken rule by its YAML path.
func (c Config) Validate() error {
	bad := func(path string, v any, rule string) error {
		return fmt.Errorf("%w: %s = %v: %s", ErrConfig, path, v, rule)
	}
	if _, err := c.ModelConfig(); err != nil {
		return err
	}
	switch {
	case c.LBL.Mode != "global" && c.LBL.Mode != "micro":
		return bad("lbl.mode", c.LBL.Mode, `must be "global" or "micro"`)
	case !finiteNonNeg(c.LBL.Coef):
		return bad("lbl.coef", c.LBL.Coef, "must be a finite number >= 0")
	case !finiteNonNeg(c.LBL.MicroCoef):
		return bad("lbl.micro_coef", c.LBL.MicroCoef, "must be a finite number >= 0")
	case !finiteNonNeg(c.LBL.SeqCoef):
		return bad("lbl.seq_coef", c.LBL.SeqCoef, "must be a finite number >= 0")
	case !finiteNonNeg(c.LBL.ZCoef):
		return bad("lbl.z_coef", c.LBL.ZCoef, "must be a finite number >= 0")
	case !finiteNonNeg(c.LBL.BiasRate):
		return bad("lbl.bias_rate", c.LBL.BiasRate, "must be a finite number >= 0")
	case c.LBL.Window < 0:
		return bad("lbl.window", c.LBL.Window, "must be >= 0")
	case c.LBL.Window > 0 && c.LBL.Mode != "global":
		return bad("lbl.window", c.LBL.Window, "needs lbl.mode global (the micro-batch LBL balances each micro-batch alone)")
	case c.MicroBatch < 1:
		return bad("micro_batch", c.MicroBatch, "must be >= 1")
	case c.Accumulation < 1:
		return bad("accumulation", c.Accumulation, "must be >= 1")
	case c.Steps < 1:
		return bad("steps", c.Steps, "must be >= 1")
	case c.MaxSeconds < 0 || math.IsNaN(c.MaxSeconds) || math.IsInf(c.MaxSeconds, 0):
		return bad("max_seconds", c.MaxSeconds, "must be a finite number >= 0 (0: no limit)")
	case c.EvalEvery < 0:
		return bad("eval_every", c.EvalEvery, "must be >= 0")
	case c.Data.DemoBytes < 0:
		return bad("data.demo_bytes", c.Data.DemoBytes, "must be >= 0")
	case !(c.Data.ValFraction > 0 && c.Data.ValFraction <= 0.5):
		return bad("data.val_fraction", c.Data.ValFraction, "must be in (0, 0.5]")
	case c.Checkpoint.Every < 0:
		return bad("checkpoint.every", c.Checkpoint.Every, "must be >= 0")
	case c.Checkpoint.ResumeStep < 0:
		return bad("checkpoint.resume_step", c.Checkpoint.ResumeStep, "must be >= 0")
	case c.Checkpoint.ResumeStep > 0 && !c.Resume:
		return bad("checkpoint.resume_step", c.Checkpoint.ResumeStep, "needs resume")
	case c.Checkpoint.KeepBest < 0:
		return bad("checkpoint.keep_best", c.Checkpoint.KeepBest, "must be >= 0")
	case !finiteNonNeg(c.Checkpoint.EveryMinutes):
		return bad("checkpoint.every_minutes", c.Checkpoint.EveryMinutes, "must be a finite number >= 0")
	case c.Checkpoint.KeepLast < 0:
		return bad("checkpoint.keep_last", c.Checkpoint.KeepLast, "must be >= 0")
	case c.Resume && c.Checkpoint.Dir == "":
		return bad("resume", c.Resume, "needs checkpoint.dir")
	case c.Data.EvalSeqs < 0:
		return bad("data.eval_seqs", c.Data.EvalSeqs, "must be >= 0")
	case !ValidOrder(c.Data.Order):
		return bad("data.order", c.Data.Order, "must be "+OrderNames)
	}
	kind, _, err := ParseDevice(c.Device)
	if err != nil {
		return bad("device", c.Device, err.Error())
	}
	switch {
	case c.Precision != "" && c.Precision != "fp32" && c.Precision != "bf16":
		return bad("precision", c.Precision, `must be "fp32" or "bf16"`)
	case kind == "cpu" && c.Precision == "bf16":
		return bad("precision", c.Precision, "bf16 needs device cuda (the CPU engine is fp32)")
	case !ValidCollectives(c.Collectives):
		return bad("collectives", c.Collectives, "must be "+CollectivesNames)
	case kind == "cpu" && c.Collectives != "" && c.Collectives != "auto":
		return bad("collectives", c.Collectives, "chooses the GPU ranks' collectives: needs device cuda")
	case !ValidRecompute(c.Recompute):
		return bad("recompute", c.Recompute, "must be "+RecomputeNames)
	case kind == "cpu" && c.RecomputeAttention():
		return bad("recompute", c.Recompute, "is the GPU engine's (device cuda)")
	}
	m, _ := c.ModelConfig()
	if n := len(c.LBL.LayerCoef); n != 0 && n != m.MoELayers() {
		return bad("lbl.layer_coef", c.LBL.LayerCoef, fmt.Sprintf("needs one value per MoE layer (%d)", m.MoELayers()))
	}
	for i, v := range c.LBL.LayerCoef {
		if !finiteNonNeg(v) {
			return bad(fmt.Sprintf("lbl.layer_coef[%d]", i), v, "must be a finite number >= 0")
		}
	}
	if err := c.Dist.validate(); err != nil {
		return err
	}
	if err := c.Optim.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	return nil
}

// finiteNonNeg reports whether v is a finite number >= 0 (not NaN, which
// every comparison lets through).
func finiteNonNeg(v float64) bool { return v >= 0 && !math.IsInf(v, 0) }

// PresetMicroBatch is each preset's default micro-batch (../shared/bench's).
var PresetMicroBatch = map[string]int{"tiny": 8, "small": 4, "medium": 16, "science": 8}

// PresetConfig returns the run defaults of a named preset: the model, its
// micro-batch and a short schedule.
func PresetConfig(name string) (Config, error) {
	c := Config{Preset: name, MicroBatch: PresetMicroBatch[name]}
	if c.MicroBatch == 0 {
		return c, fmt.Errorf("%w: preset = %q: unknown (have tiny, small, medium, science)", ErrConfig, name)
	}
	c.Defaults()
	return c, nil
}

// Load reads a YAML run config; unknown fields are errors.
func Load(path string) (Config, error) {
	raw, err := fsutil.ReadFile(path, 1<<20)
	if err != nil {
		return Config{}, fmt.Errorf("train: read config: %w", err)
	}
	return Parse(raw)
}

// Parse decodes a YAML run config, applies defaults and validates it. An
// unknown key is named by its path and line (a yamlcheck.UnknownKeyError
// wrapping ErrConfig).
func Parse(raw []byte) (Config, error) {
	// Fields whose zero is a value of its own start at their defaults, so
	// that "lbl: {coef: 0}" stays 0 while an absent key means the default.
	c := Config{LBL: LBL{Coef: DefaultLBLCoef}, Optim: Optim{Beta1: DefaultBeta1, Beta2: DefaultBeta2}}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := yamlcheck.Decode(dec, &c); err != nil && !errors.Is(err, io.EOF) {
		if u := yamlcheck.UnknownKey(raw, &c); u != nil {
			return Config{}, fmt.Errorf("%w: %w", ErrConfig, u)
		}
		return Config{}, fmt.Errorf("%w: %v", ErrConfig, yamlcheck.TypeErrors(raw, &c, err))
	}
	if fr := yamlcheck.Fractional(raw, &c); len(fr) > 0 {
		return Config{}, fmt.Errorf("%w: %s = %s: must be a whole number", ErrConfig, fr[0].Path, fr[0].Value)
	}
	if c.Preset == "" && c.Model == nil {
		c.Preset = "tiny"
	}
	if c.MicroBatch == 0 {
		c.MicroBatch = PresetMicroBatch[c.Preset]
	}
	zeroable := [...]float64{c.LBL.Coef, c.Optim.Beta1, c.Optim.Beta2}
	c.Defaults()
	c.LBL.Coef, c.Optim.Beta1, c.Optim.Beta2 = zeroable[0], zeroable[1], zeroable[2]
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Checkpoint says where and how often the run saves itself.
type Checkpoint struct {
	Dir      string `yaml:"dir" json:"dir"`             // storage root: a directory, or s3://bucket[/prefix] (see checkpoint.OpenStorage); "" : no checkpoints
	Job      string `yaml:"job" json:"job"`             // catalogue name of the run (default "run")
	Every    int    `yaml:"every" json:"every"`         // save after every N optimizer steps (0: only at the end)
	KeepLast int    `yaml:"keep_last" json:"keep_last"` // retention: the newest N committed checkpoints (default 3)
	// KeepBest also keeps the N checkpoints with the lowest validation
	// loss (mean bits/byte over domains); only checkpoints taken at a step
	// with an evaluation carry one.
	KeepBest int `yaml:"keep_best" json:"keep_best"`
	// EveryMinutes also saves when this many minutes passed since the last
	// save (any rank's clock; the ranks agree by an all-reduce).
	EveryMinutes float64 `yaml:"every_minutes" json:"every_minutes"`
	// Etcd lists etcd endpoints: when set, the catalogue is the cluster's
	// (an etcd transaction per commit, under CataloguePrefix) instead of
	// a file beside the shards.
	Etcd []string `yaml:"etcd" json:"etcd"`
	// ResumeStep resumes from exactly this committed step (0: the newest
	// that verifies). Newer checkpoints are deleted first: the run branches.
	ResumeStep int64 `yaml:"resume_step" json:"resume_step"`
	// CommitVia lists coordinator API addresses: the catalogue is read
	// and written through the coordinator (ListCheckpoints,
	// CommitCheckpoint, RetireCheckpoint), which refuses commits and
	// deletions once Attempt is no longer the job's current attempt; Etcd
	// is then not used. The bearer token comes from $SWITCHYARD_TOKEN.
	CommitVia []string          `yaml:"commit_via" json:"commit_via"`
	Attempt   int               `yaml:"attempt" json:"attempt"`
	CommitTLS security.TLSFiles `yaml:"commit_tls" json:"commit_tls"`
}

// RecomputeNames lists the values of Config.Recompute.
const RecomputeNames = `"none" or "attention"`

// ValidRecompute reports whether s is a Config.Recompute value ("" is none).
func ValidRecompute(s string) bool { return s == "" || s == "none" || s == "attention" }

// RecomputeAttention says whether the run recomputes the attention
// probabilities in the backward.
func (c Config) RecomputeAttention() bool { return c.Recompute == "attention" }

// CollectivesNames lists the values of Config.Collectives.
const CollectivesNames = `"auto", "nccl" or "host"`

// ValidCollectives reports whether s is a Config.Collectives value ("" is auto).
func ValidCollectives(s string) bool { return s == "" || s == "auto" || s == "nccl" || s == "host" }
