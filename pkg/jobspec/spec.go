package jobspec

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/switchyard-ml/switchyard/internal/yamlcheck"

	"github.com/switchyard-ml/switchyard/pkg/fsutil"
	"github.com/switchyard-ml/switchyard/pkg/runconfig"
)

var (
	// ErrInvalid is wrapped by every validation error (see FieldError).
	ErrInvalid = errors.New("jobspec: invalid spec")
	// ErrSyntax is wrapped by errors decoding the YAML document.
	ErrSyntax = errors.New("jobspec: malformed spec")
)

// MaxSize is the largest spec Parse accepts, in bytes.
const MaxSize = 1 << 20

// Spec is a job as the user submits it.
type Spec struct {
	// Version is the spec format (0 or absent: Version1, the only one so
	// far). A later format gets a new number and a conversion, so that
	// jobs stored in the coordinator's log keep parsing.
	Version      int        `yaml:"version,omitempty" json:"version,omitempty"`
	Name         string     `yaml:"name" json:"name"`
	Priority     int        `yaml:"priority" json:"priority"`
	Model        Model      `yaml:"model" json:"model"`
	Parallel     Parallel   `yaml:"parallel" json:"parallel"`
	LBL          LBL        `yaml:"lbl" json:"lbl"`
	Data         Data       `yaml:"data" json:"data"`
	Optim        Optim      `yaml:"optim" json:"optim"`
	MicroBatch   int        `yaml:"micro_batch" json:"micro_batch"`   // sequences per micro-batch per DP rank
	Accumulation int        `yaml:"accumulation" json:"accumulation"` // micro-batches per optimizer step
	Steps        int        `yaml:"steps" json:"steps"`               // optimizer steps
	Seed         int64      `yaml:"seed" json:"seed"`
	EvalEvery    int        `yaml:"eval_every" json:"eval_every"` // steps between evaluations (0: only at the end)
	Resources    Resources  `yaml:"resources" json:"resources"`
	Placement    Placement  `yaml:"placement" json:"placement"`
	Checkpoint   Checkpoint `yaml:"checkpoint" json:"checkpoint"`
	Restart      Restart    `yaml:"restart" json:"restart"`
	Elastic      Elastic    `yaml:"elastic" json:"elastic"`
	// Device is "cpu" (default, also when empty) or "cuda": each rank
	// trains on a GPU of its worker (resources.gpus then defaults to 1).
	// Precision is the GPU's arithmetic, "bf16" (default on cuda) or
	// "fp32".
	// Collectives is how GPU ranks all-reduce their gradients: "auto"
	// (default: NCCL when every rank has a GPU of its own, host-staged
	// otherwise), "nccl" or "host".
	// Recompute is what a GPU rank computes again in the backward:
	// "none" (default) or "attention" (the attention probabilities).
	Device      string `yaml:"device,omitempty" json:"device,omitempty"`
	Precision   string `yaml:"precision,omitempty" json:"precision,omitempty"`
	Collectives string `yaml:"collectives,omitempty" json:"collectives,omitempty"`
	Recompute   string `yaml:"recompute,omitempty" json:"recompute,omitempty"`

	// Runtime is what each rank runs: RuntimeEngine (the default, also
	// when empty: Switchyard's own MoE trainer, configured by the fields
	// above) or RuntimeCommand (any program, one process per rank, with a
	// torchrun-compatible environment: see command.go). The fields below
	// are the command runtime's.
	Runtime    string            `yaml:"runtime,omitempty" json:"runtime,omitempty"`
	Command    string            `yaml:"command,omitempty" json:"command,omitempty"`         // a program on the worker's PATH, or a path (relative paths: to working_dir)
	Args       []string          `yaml:"args,omitempty" json:"args,omitempty"`               // its arguments
	Env        map[string]string `yaml:"env,omitempty" json:"env,omitempty"`                 // added to the rank's environment
	WorkingDir string            `yaml:"working_dir,omitempty" json:"working_dir,omitempty"` // absolute; default: the rank's run directory
	Ranks      int               `yaml:"ranks,omitempty" json:"ranks,omitempty"`             // processes (default 1), one per worker
}

// Model is a preset, explicit model fields, or a preset with overrides.
// The fields are the spec's own (version 1), not the engine's struct: a
// field renamed in runconfig.Model changes the mapping in ModelConfig, not
// what stored specs say. Zero means "the preset's" (or the default).
type Model struct {
	Preset         string  `yaml:"preset,omitempty" json:"preset,omitempty"`
	Vocab          int     `yaml:"vocab,omitempty" json:"vocab,omitempty"`
	Dim            int     `yaml:"dim,omitempty" json:"dim,omitempty"`
	Layers         int     `yaml:"layers,omitempty" json:"layers,omitempty"`
	Heads          int     `yaml:"heads,omitempty" json:"heads,omitempty"`
	SeqLen         int     `yaml:"seq_len,omitempty" json:"seq_len,omitempty"`
	Experts        int     `yaml:"experts,omitempty" json:"experts,omitempty"`
	TopK           int     `yaml:"top_k,omitempty" json:"top_k,omitempty"`
	Hidden         int     `yaml:"hidden,omitempty" json:"hidden,omitempty"`
	SharedExperts  int     `yaml:"shared_experts,omitempty" json:"shared_experts,omitempty"`
	MoEEvery       int     `yaml:"moe_every,omitempty" json:"moe_every,omitempty"`
	DenseHidden    int     `yaml:"dense_hidden,omitempty" json:"dense_hidden,omitempty"`
	Renormalize    bool    `yaml:"renormalize,omitempty" json:"renormalize,omitempty"`
	CapacityFactor float64 `yaml:"capacity_factor,omitempty" json:"capacity_factor,omitempty"`
	NormEps        float32 `yaml:"norm_eps,omitempty" json:"norm_eps,omitempty"`
	RopeBase       float64 `yaml:"rope_base,omitempty" json:"rope_base,omitempty"`
	InitStd        float64 `yaml:"init_std,omitempty" json:"init_std,omitempty"`
}

// fields is the model section as the engine's model config: the explicit
// fields only (zero where the spec gives none).
func (m Model) fields() runconfig.Model {
	return runconfig.Model{
		Vocab: m.Vocab, Dim: m.Dim, Layers: m.Layers, Heads: m.Heads, SeqLen: m.SeqLen,
		Experts: m.Experts, TopK: m.TopK, Hidden: m.Hidden, Shared: m.SharedExperts,
		MoEEvery: m.MoEEvery, DenseHidden: m.DenseHidden, Renormalize: m.Renormalize,
		CapacityFactor: m.CapacityFactor, NormEps: m.NormEps, RopeBase: m.RopeBase, InitStd: m.InitStd,
	}
}

// Version1 is the spec format this package reads and writes.
const Version1 = 1

// Parallel is the parallel layout and the LBL balance group.
type Parallel struct {
	TP      int    `yaml:"tp" json:"tp"`
	DP      int    `yaml:"dp" json:"dp"`
	EP      int    `yaml:"ep" json:"ep"`
	Balance string `yaml:"balance" json:"balance"` // "dp", "node" or "none"
}

// LBL selects the load-balancing losses.
type LBL struct {
	Mode      string    `yaml:"mode" json:"mode"` // "global" or "micro"
	Coef      float64   `yaml:"coef" json:"coef"`
	MicroCoef float64   `yaml:"micro_coef" json:"micro_coef"`
	SeqCoef   float64   `yaml:"seq_coef" json:"seq_coef"`
	ZCoef     float64   `yaml:"z_coef" json:"z_coef"`
	LayerCoef []float64 `yaml:"layer_coef,omitempty" json:"layer_coef,omitempty"`
	BiasRate  float64   `yaml:"bias_rate" json:"bias_rate"`
	Window    int       `yaml:"window,omitempty" json:"window,omitempty"` // micro-batches the global LBL covers (0: the step)
}

// DemoCorpus is the data.corpus value naming the built-in corpus.
const DemoCorpus = "demo"

// Data says where the corpus comes from.
type Data struct {
	Corpus      string  `yaml:"corpus" json:"corpus"` // "demo" or an absolute path
	DemoBytes   int     `yaml:"demo_bytes" json:"demo_bytes"`
	ValFraction float64 `yaml:"val_fraction" json:"val_fraction"`
	EvalSeqs    int     `yaml:"eval_seqs" json:"eval_seqs"`
	Order       string  `yaml:"order,omitempty" json:"order,omitempty"` // "shuffled" (default), "domain" or "domain_mixed"
}

// Optim is the AdamW optimizer and its schedule.
type Optim struct {
	LR          float64 `yaml:"lr" json:"lr"`
	MinLR       float64 `yaml:"min_lr" json:"min_lr"`
	WarmupSteps int     `yaml:"warmup_steps" json:"warmup_steps"`
	WeightDecay float64 `yaml:"weight_decay" json:"weight_decay"`
	ClipNorm    float64 `yaml:"clip_norm" json:"clip_norm"`
	Beta1       float64 `yaml:"beta1" json:"beta1"`
	Beta2       float64 `yaml:"beta2" json:"beta2"`
	Eps         float64 `yaml:"eps" json:"eps"`
}

// Resources is what each rank needs from its worker.
// DefaultMemoryMiB is a rank's resources.memory_mib when the section is
// empty: the tiny preset at its micro-batch of 8 peaks at about 1.1 GiB.
const DefaultMemoryMiB = 2048

type Resources struct {
	CPUCores  int   `yaml:"cpu_cores" json:"cpu_cores"`
	MemoryMiB int64 `yaml:"memory_mib" json:"memory_mib"`
	GPUs      int   `yaml:"gpus" json:"gpus"`
	// GPUMemoryMiB is the memory each of a rank's GPUs must have, for
	// placement (0: any). An engine job on cuda needs at least the
	// engine's bound (GPUMemoryMiB), whatever is set here.
	GPUMemoryMiB int64 `yaml:"gpu_memory_mib,omitempty" json:"gpu_memory_mib,omitempty"`
}

// Placement constrains which workers may run the job.
type Placement struct {
	HostLabels map[string]string `yaml:"host_labels,omitempty" json:"host_labels,omitempty"`
}

// Storage backends for checkpoints.
const (
	StorageDir = "dir"
	StorageS3  = "s3"
)

// Checkpoint is the checkpoint and retention policy.
type Checkpoint struct {
	IntervalSteps   int    `yaml:"interval_steps" json:"interval_steps"`     // 0: not by steps
	IntervalMinutes int    `yaml:"interval_minutes" json:"interval_minutes"` // 0: not by time
	KeepLast        int    `yaml:"keep_last" json:"keep_last"`
	KeepBest        int    `yaml:"keep_best" json:"keep_best"` // by validation loss; needs eval_every > 0 (a command job: checkpoints commit --val-loss)
	Storage         string `yaml:"storage" json:"storage"`     // "dir" or "s3"
	Path            string `yaml:"path" json:"path"`           // dir: "" or absolute; s3: s3://bucket[/prefix]
}

// Restart is the restart policy after a rank or worker fails.
type Restart struct {
	MaxRestarts    *int `yaml:"max_restarts" json:"max_restarts"`       // nil: 3
	BackoffSeconds *int `yaml:"backoff_seconds" json:"backoff_seconds"` // nil: 10
}

// Elastic is the data-parallel range a restarted job may shrink or grow to.
type Elastic struct {
	MinDP int `yaml:"min_dp" json:"min_dp"`
	MaxDP int `yaml:"max_dp" json:"max_dp"`
}

// Load reads and parses a spec file.
func Load(path string) (*Spec, error) {
	raw, err := fsutil.ReadFile(path, MaxSize)
	if err != nil {
		return nil, fmt.Errorf("jobspec: read spec: %w", err)
	}
	return Parse(raw)
}

// Parse decodes a YAML spec strictly, applies the defaults and validates
// it. Errors wrap ErrSyntax or ErrInvalid; an unknown key is named by its
// path and line (a yamlcheck.UnknownKeyError wrapping ErrSyntax).
func Parse(raw []byte) (*Spec, error) {
	if len(raw) > MaxSize {
		return nil, fmt.Errorf("%w: spec is %d bytes, the limit is %d", ErrSyntax, len(raw), MaxSize)
	}
	doc, err := checkExpanded(raw, "spec", maxExpanded)
	if err != nil {
		return nil, err
	}
	// Fields whose zero is a value of its own start at their defaults, so
	// that "lbl.coef: 0" (no balancing loss: an aux-loss-free run with
	// lbl.bias_rate) stays 0 while an absent key means the default.
	s := Spec{LBL: LBL{Coef: DefaultLBLCoef}, Optim: Optim{Beta1: DefaultBeta1, Beta2: DefaultBeta2}}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := yamlcheck.Decode(dec, &s); err != nil && !errors.Is(err, io.EOF) {
		if u := yamlcheck.UnknownKey(raw, &s); u != nil {
			return nil, fmt.Errorf("%w: %w", ErrSyntax, u)
		}
		return nil, fmt.Errorf("%w: %v", ErrSyntax, yamlcheck.TypeErrors(raw, &s, err))
	}
	var extra yaml.Node
	if err := yamlcheck.Decode(dec, &extra); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: a spec is one YAML document", ErrSyntax)
	}
	zeroable := [...]float64{s.LBL.Coef, s.Optim.Beta1, s.Optim.Beta2}
	s.Defaults()
	s.LBL.Coef, s.Optim.Beta1, s.Optim.Beta2 = zeroable[0], zeroable[1], zeroable[2]
	errs := append(explicitZeros(doc), s.Validate())
	for _, f := range yamlcheck.Fractional(raw, &s) {
		errs = append(errs, &FieldError{Path: f.Path, Value: f.Value, Rule: "must be a whole number"})
	}
	if s.Runtime == RuntimeCommand {
		errs = append(errs, engineKeys(raw)...)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &s, nil
}

// maxExpanded bounds a spec's or an experiment's size with its aliases
// expanded (yamlcheck.ExpandedSize): twice MaxSize, which no document of
// MaxSize bytes without aliases reaches. Without it 800 KiB of "args:
// [&a <4000 bytes>, *a, *a, ...]" decoded into 200000 arguments, 800 MB
// in the rank's run.yaml.
const maxExpanded = 2 * MaxSize

// checkExpanded refuses a document whose aliases expand it past limit
// (maxExpanded for a spec; what names it in the error: "spec"). It
// returns the parsed document (nil where it does not parse: the strict
// decode reports that).
func checkExpanded(raw []byte, what string, limit int) (*yaml.Node, error) {
	var doc yaml.Node
	if yaml.Unmarshal(raw, &doc) != nil {
		return nil, nil
	}
	if yamlcheck.ExpandedSize(&doc, limit) > limit {
		return nil, fmt.Errorf("%w: %s: more than %s with its aliases expanded, the limit", ErrSyntax, what, fsutil.Size(int64(limit)))
	}
	return &doc, nil
}

// countFields must be >= 1, and an absent one takes its default: an
// explicit 0 would silently mean the default, so it is refused instead.
var countFields = [][]string{
	{"parallel", "tp"}, {"parallel", "dp"}, {"parallel", "ep"},
	{"micro_batch"}, {"accumulation"}, {"steps"}, {"checkpoint", "keep_last"}, {"ranks"},
}

// explicitZeros reports the countFields that the parsed spec doc sets to 0.
func explicitZeros(doc *yaml.Node) []error {
	if doc == nil || len(doc.Content) == 0 {
		return nil // the strict decode reported it
	}
	var errs []error
	for _, path := range countFields {
		n := doc.Content[0]
		for _, key := range path {
			n = mappingValue(n, key)
		}
		if n != nil && n.Kind == yaml.ScalarNode && n.Tag == "!!int" && strings.TrimLeft(n.Value, "+-0") == "" {
			errs = append(errs, &FieldError{Path: strings.Join(path, "."), Value: 0, Rule: "must be >= 1 (omit the field for its default)"})
		}
	}
	return errs
}

// mappingValue is the value of key in mapping node n, or nil.
func mappingValue(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

// Marshal encodes the spec as YAML that Parse accepts.
func (s *Spec) Marshal() ([]byte, error) {
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	var doc any = s
	if s.Runtime == RuntimeCommand {
		// without the engine's sections, which a command job may not
		// set (Parse gives them their defaults again)
		var n yaml.Node
		if err := n.Encode(s); err != nil {
			return nil, fmt.Errorf("jobspec: encode: %w", err)
		}
		drop := engineOnlyKeys
		if s.Steps == 0 {
			drop = append(slices.Clone(drop), "steps") // not known: absent (an explicit 0 is refused)
		}
		dropKeys(&n, drop)
		doc = &n
	}
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("jobspec: encode: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("jobspec: encode: %w", err)
	}
	return b.Bytes(), nil
}

// Defaults whose zero is a value of its own (see Parse).
const (
	DefaultLBLCoef = runconfig.DefaultLBLCoef
	DefaultBeta1   = runconfig.DefaultBeta1
	DefaultBeta2   = runconfig.DefaultBeta2
)

// Defaults fills the unset fields with the documented defaults. A
// command job's engine fields hold the engine's defaults, unused.
func (s *Spec) Defaults() {
	s.engineDefaults()
	if s.Runtime == RuntimeCommand {
		s.commandDefaults()
	}
	if len(s.Args) == 0 {
		s.Args = nil // "args: []" is no args, as absent
	}
	if len(s.Env) == 0 {
		s.Env = nil
	}
	if s.Resources == (Resources{}) {
		s.Resources = Resources{CPUCores: 1, MemoryMiB: DefaultMemoryMiB}
	}
	c := &s.Checkpoint
	if c.KeepLast == 0 {
		c.KeepLast = 3
	}
	if c.Storage == "" {
		c.Storage = StorageDir
	}
	if s.Restart.MaxRestarts == nil {
		s.Restart.MaxRestarts = ptr(3)
	}
	if s.Restart.BackoffSeconds == nil {
		s.Restart.BackoffSeconds = ptr(10)
	}
	if s.Elastic.MinDP == 0 {
		s.Elastic.MinDP = s.Parallel.DP
	}
	if s.Elastic.MaxDP == 0 {
		s.Elastic.MaxDP = s.Parallel.DP
	}
}

// engineDefaults are the defaults of the engine's own fields.
func (s *Spec) engineDefaults() {
	if s.Model == (Model{}) {
		s.Model.Preset = "tiny"
	}
	p := &s.Parallel
	for _, d := range []*int{&p.TP, &p.DP, &p.EP} {
		if *d == 0 {
			*d = 1
		}
	}
	if p.Balance == "" {
		p.Balance = "dp"
	}
	if len(s.LBL.LayerCoef) == 0 {
		s.LBL.LayerCoef = nil
	}
	if len(s.Placement.HostLabels) == 0 {
		s.Placement.HostLabels = nil
	}
	if s.LBL.Mode == "" {
		s.LBL.Mode = "global"
	}
	if s.LBL.Coef == 0 {
		s.LBL.Coef = DefaultLBLCoef // Parse keeps an explicit 0
	}
	if s.Data.Corpus == "" {
		s.Data.Corpus = DemoCorpus
	}
	if s.Data.DemoBytes == 0 {
		s.Data.DemoBytes = 1 << 20
	}
	if s.Data.Order == "" {
		s.Data.Order = runconfig.OrderShuffled
	}
	if s.Data.ValFraction == 0 {
		s.Data.ValFraction = 0.05
	}
	o := &s.Optim
	if o.LR == 0 {
		o.LR = 3e-4
	}
	if o.Beta1 == 0 {
		o.Beta1 = DefaultBeta1 // Parse keeps an explicit 0
	}
	if o.Beta2 == 0 {
		o.Beta2 = DefaultBeta2
	}
	if o.Eps == 0 {
		o.Eps = 1e-8
	}
	if s.MicroBatch == 0 {
		s.MicroBatch = runconfig.PresetMicroBatch[s.Model.Preset]
	}
	// device and precision stay empty when unset (cpu; the trainer's
	// default precision); a GPU rank needs a GPU
	if kind, _, err := runconfig.ParseDevice(s.Device); err == nil && kind == "cuda" && s.Resources.GPUs == 0 {
		s.Resources.GPUs = 1
	}
	if s.Accumulation == 0 {
		s.Accumulation = 1
	}
	if s.Steps == 0 && s.Runtime != RuntimeCommand {
		s.Steps = 100 // a command's trainer decides (0: not known)
	}
	if s.Seed == 0 {
		s.Seed = 1
	}
}

func ptr[T any](v T) *T { return &v }

// World is the number of ranks, parallel.tp * parallel.dp.
func (s *Spec) World() int { return s.Parallel.TP * s.Parallel.DP }

// GlobalBatch is the sequences per optimizer step: micro_batch *
// accumulation * parallel.dp.
func (s *Spec) GlobalBatch() int64 {
	return int64(s.MicroBatch) * int64(s.Accumulation) * int64(s.Parallel.DP)
}

// NewJobID returns a fresh job ID: the name plus a random suffix. The CLI
// picks it before submitting, so that a retried submit (a fail-over in
// between) finds the job it already created instead of making a second one.
func NewJobID(name string) string {
	var b [4]byte
	rand.Read(b[:]) //nolint:errcheck // crypto/rand does not fail on supported platforms
	if len(name) > 54 {
		name = strings.TrimRight(name[:54], "-")
	}
	return name + "-" + hex.EncodeToString(b[:])
}
