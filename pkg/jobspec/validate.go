package jobspec

import (
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/switchyard-ml/switchyard/pkg/runconfig"
)

// FieldError is one broken rule: the field's YAML path, its value and the
// rule, printed as "jobspec: parallel.ep = 3: must divide parallel.dp = 4".
type FieldError struct {
	Path  string
	Value any
	Rule  string
}

func (e *FieldError) Error() string {
	v := e.Value
	switch x := v.(type) {
	case string:
		v = fmt.Sprintf("%q", x)
	case *int:
		if x != nil {
			v = *x
		}
	}
	return fmt.Sprintf("jobspec: %s = %v: %s", e.Path, v, e.Rule)
}

// Unwrap makes errors.Is(err, ErrInvalid) true.
func (e *FieldError) Unwrap() error { return ErrInvalid }

// Bounds on values that would otherwise be accepted but make no sense.
const (
	maxWorld    = 1 << 16
	maxPriority = 1000
	maxRestarts = 1000
	maxBackoff  = 86400
)

var (
	labelKeyRE   = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._/-]{0,62})$`)
	labelValueRE = regexp.MustCompile(`^[A-Za-z0-9._/-]{0,63}$`)
	bucketRE     = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)
)

// Validate reports every broken rule of a spec whose defaults are applied
// (Parse applies them). The error joins one *FieldError per rule.
func (s *Spec) Validate() error {
	var errs []error
	bad := func(path string, v any, rule string, args ...any) {
		errs = append(errs, &FieldError{Path: path, Value: v, Rule: fmt.Sprintf(rule, args...)})
	}
	nonNeg := func(path string, v float64) {
		if !(v >= 0) || math.IsInf(v, 0) {
			bad(path, v, "must be a finite number >= 0")
		}
	}

	if s.Version != 0 && s.Version != Version1 {
		bad("version", s.Version, "must be %d (the only spec format so far) or absent", Version1)
	}
	if !jobIDRE.MatchString(s.Name) {
		bad("name", s.Name, "must be 1-63 of a-z, 0-9 and '-', starting and ending with a letter or digit")
	}
	if s.Priority < -maxPriority || s.Priority > maxPriority {
		bad("priority", s.Priority, "must be in [%d, %d]", -maxPriority, maxPriority)
	}

	s.validateCommand(bad)
	m, modelOK := s.validateModel(bad)

	// Parallel layout.
	p := s.Parallel
	degreesOK := true
	for _, d := range []struct {
		name string
		v    int
	}{{"tp", p.TP}, {"dp", p.DP}, {"ep", p.EP}} {
		if d.v < 1 || d.v > maxWorld {
			bad("parallel."+d.name, d.v, "must be in [1, %d]", maxWorld)
			degreesOK = false
		}
	}
	if degreesOK {
		switch {
		case p.TP*p.DP > maxWorld:
			bad("parallel.dp", p.DP, "world size parallel.tp*parallel.dp = %d must be <= %d", p.TP*p.DP, maxWorld)
		case p.DP%p.EP != 0:
			bad("parallel.ep", p.EP, "must divide parallel.dp = %d", p.DP)
		}
		if modelOK {
			if m.Experts%p.EP != 0 {
				bad("parallel.ep", p.EP, "must divide model.experts = %d (each EP rank holds experts/ep experts)", m.Experts)
			}
			if m.Heads%p.TP != 0 {
				bad("parallel.tp", p.TP, "must divide model.heads = %d", m.Heads)
			}
		}
	}
	switch p.Balance {
	case "dp", "node", "none":
	default:
		bad("parallel.balance", p.Balance, `must be "dp", "node" or "none"`)
	}

	// Load-balancing losses.
	l := s.LBL
	if l.Mode != "global" && l.Mode != "micro" {
		bad("lbl.mode", l.Mode, `must be "global" or "micro"`)
	}
	nonNeg("lbl.coef", l.Coef)
	nonNeg("lbl.micro_coef", l.MicroCoef)
	nonNeg("lbl.seq_coef", l.SeqCoef)
	nonNeg("lbl.z_coef", l.ZCoef)
	nonNeg("lbl.bias_rate", l.BiasRate)
	switch {
	case l.Window < 0:
		bad("lbl.window", l.Window, "must be >= 0")
	case l.Window > 0 && l.Mode != "global":
		bad("lbl.window", l.Window, "needs lbl.mode global (the micro-batch LBL balances each micro-batch alone)")
	}
	for i, c := range l.LayerCoef {
		nonNeg(fmt.Sprintf("lbl.layer_coef[%d]", i), c)
	}
	if modelOK && len(l.LayerCoef) != 0 && len(l.LayerCoef) != m.MoELayers() {
		bad("lbl.layer_coef", l.LayerCoef, "needs one value per MoE layer (%d)", m.MoELayers())
	}

	// Data.
	d := s.Data
	if d.Corpus != DemoCorpus && !filepath.IsAbs(d.Corpus) {
		bad("data.corpus", d.Corpus, `must be "demo" or an absolute path (workers read it on their own machines)`)
	} else if d.Corpus != DemoCorpus && filepath.Clean(d.Corpus) != d.Corpus {
		bad("data.corpus", d.Corpus, "must be a clean path (no '..', '.' or '//'; it reads as %s)", filepath.Clean(d.Corpus))
	}
	if d.DemoBytes < 1 {
		bad("data.demo_bytes", d.DemoBytes, "must be >= 1")
	}
	if !(d.ValFraction > 0 && d.ValFraction <= 0.5) {
		bad("data.val_fraction", d.ValFraction, "must be in (0, 0.5]")
	}
	if d.EvalSeqs < 0 {
		bad("data.eval_seqs", d.EvalSeqs, "must be >= 0 (0 = all)")
	}
	if d.Order == "" || !runconfig.ValidOrder(d.Order) {
		bad("data.order", d.Order, "must be "+runconfig.OrderNames)
	}

	// Optimizer.
	o := s.Optim
	lrOK := o.LR > 0 && !math.IsInf(o.LR, 0)
	if !lrOK {
		bad("optim.lr", o.LR, "must be a finite number > 0")
	}
	switch {
	case lrOK && !(o.MinLR >= 0 && o.MinLR <= o.LR):
		bad("optim.min_lr", o.MinLR, "must be in [0, optim.lr = %v]", o.LR)
	case !lrOK && !(o.MinLR >= 0): // not against a bad lr: one error, not two
		bad("optim.min_lr", o.MinLR, "must be >= 0")
	}
	if o.WarmupSteps < 0 || (s.Steps >= 1 && o.WarmupSteps > s.Steps) {
		bad("optim.warmup_steps", o.WarmupSteps, "must be in [0, steps = %d]", s.Steps)
	}
	nonNeg("optim.weight_decay", o.WeightDecay)
	nonNeg("optim.clip_norm", o.ClipNorm)
	if !(o.Beta1 >= 0 && o.Beta1 < 1) {
		bad("optim.beta1", o.Beta1, "must be in [0, 1)")
	}
	if !(o.Beta2 >= 0 && o.Beta2 < 1) {
		bad("optim.beta2", o.Beta2, "must be in [0, 1)")
	}
	if !(o.Eps > 0) || math.IsInf(o.Eps, 0) {
		bad("optim.eps", o.Eps, "must be a finite number > 0")
	}

	// Schedule.
	if s.MicroBatch < 1 {
		rule := "must be >= 1"
		if s.MicroBatch == 0 && s.Model.Preset == "" {
			rule += " (required when the model has no preset)"
		}
		bad("micro_batch", s.MicroBatch, "%s", rule)
	}
	if s.Accumulation < 1 {
		bad("accumulation", s.Accumulation, "must be >= 1")
	}
	if tp := p.TP; tp > 1 && s.Runtime != RuntimeCommand {
		// tensor parallelism splits each micro-batch's sequences over the
		// TP ranks for the MoE layers, so no rank sees a whole micro-batch
		if s.MicroBatch >= 1 && s.MicroBatch%tp != 0 {
			bad("micro_batch", s.MicroBatch, "must be a multiple of parallel.tp = %d (the MoE layers split each micro-batch's sequences over the tensor-parallel ranks)", tp)
		}
		switch {
		case l.Mode == "micro" || l.MicroCoef > 0:
			bad("lbl.mode", l.Mode, "micro-batch LBL needs a whole micro-batch on one rank: with parallel.tp = %d use lbl.mode global without lbl.micro_coef (with lbl.window 1 and parallel.balance none it balances each micro-batch over its tensor-parallel ranks)", tp)
		case l.SeqCoef > 0:
			bad("lbl.seq_coef", l.SeqCoef, "sequence-level LBL is not supported with parallel.tp = %d", tp)
		}
		if p.Balance == "node" {
			bad("parallel.balance", p.Balance, `with parallel.tp = %d the balance group is "dp" (every rank) or "none" (the tensor-parallel group)`, tp)
		}
	}
	if s.Steps < 1 && s.Runtime != RuntimeCommand { // validateCommand checks a command's
		bad("steps", s.Steps, "must be >= 1")
	}
	if s.EvalEvery < 0 {
		bad("eval_every", s.EvalEvery, "must be >= 0 (0 = only at the end)")
	}

	// Resources and placement.
	r := s.Resources
	if r.CPUCores < 0 {
		bad("resources.cpu_cores", r.CPUCores, "must be >= 0")
	}
	if r.MemoryMiB < 0 {
		bad("resources.memory_mib", r.MemoryMiB, "must be >= 0")
	}
	if r.GPUs < 0 {
		bad("resources.gpus", r.GPUs, "must be >= 0")
	}
	switch {
	case r.GPUMemoryMiB < 0:
		bad("resources.gpu_memory_mib", r.GPUMemoryMiB, "must be >= 0")
	case r.GPUMemoryMiB > 0 && r.GPUs < 1:
		bad("resources.gpu_memory_mib", r.GPUMemoryMiB, "needs resources.gpus >= 1")
	case r.GPUMemoryMiB > 1<<30:
		bad("resources.gpu_memory_mib", r.GPUMemoryMiB, "must be <= %d", 1<<30)
	}
	// Device.
	if kind, _, err := runconfig.ParseDevice(s.Device); err != nil {
		bad("device", s.Device, "must be cpu or cuda")
	} else if kind == "cuda" {
		if r.GPUs < 1 {
			bad("resources.gpus", r.GPUs, "must be >= 1 with device cuda")
		}
	}
	switch kind, _, _ := runconfig.ParseDevice(s.Device); {
	case s.Precision != "" && s.Precision != "fp32" && s.Precision != "bf16":
		bad("precision", s.Precision, `must be "fp32" or "bf16"`)
	case s.Precision == "bf16" && kind != "cuda":
		bad("precision", s.Precision, "bf16 needs device cuda (the CPU engine is fp32)")
	}
	switch kind, _, _ := runconfig.ParseDevice(s.Device); {
	case !runconfig.ValidCollectives(s.Collectives):
		bad("collectives", s.Collectives, "must be "+runconfig.CollectivesNames)
	case kind != "cuda" && s.Collectives != "" && s.Collectives != "auto":
		bad("collectives", s.Collectives, "chooses the GPU ranks' collectives: needs device cuda")
	case !runconfig.ValidRecompute(s.Recompute):
		bad("recompute", s.Recompute, "must be "+runconfig.RecomputeNames)
	case kind != "cuda" && s.Recompute == "attention":
		bad("recompute", s.Recompute, "is the GPU engine's (device cuda)")
	}
	for _, k := range sortedKeys(s.Placement.HostLabels) {
		v := s.Placement.HostLabels[k]
		switch {
		case !labelKeyRE.MatchString(k):
			bad("placement.host_labels", k, "label keys must be 1-63 of A-Z, a-z, 0-9, '.', '_', '/' and '-', starting with a letter or digit")
		case !labelValueRE.MatchString(v):
			bad("placement.host_labels."+k, v, "label values must be 0-63 of A-Z, a-z, 0-9, '.', '_', '/' and '-'")
		}
	}

	// Checkpoints.
	c := s.Checkpoint
	if c.IntervalSteps < 0 {
		bad("checkpoint.interval_steps", c.IntervalSteps, "must be >= 0 (0 = not by steps)")
	}
	if c.IntervalMinutes < 0 {
		bad("checkpoint.interval_minutes", c.IntervalMinutes, "must be >= 0 (0 = not by time)")
	}
	if c.KeepLast < 1 {
		bad("checkpoint.keep_last", c.KeepLast, "must be >= 1")
	}
	if c.KeepBest < 0 {
		bad("checkpoint.keep_best", c.KeepBest, "must be >= 0")
	} else if c.KeepBest > 0 && s.EvalEvery < 1 && s.Runtime != RuntimeCommand { // a command's trainer gives its loss to checkpoints commit
		bad("checkpoint.keep_best", c.KeepBest, "needs eval_every > 0 (the best checkpoints are chosen by validation loss)")
	}
	switch c.Storage {
	case StorageDir:
		if c.Path != "" && !filepath.IsAbs(c.Path) {
			bad("checkpoint.path", c.Path, `must be empty (the worker's storage path) or an absolute path for storage "dir"`)
		} else if c.Path != "" && filepath.Clean(c.Path) != c.Path {
			bad("checkpoint.path", c.Path, "must be a clean path (no '..', '.' or '//'; it reads as %s)", filepath.Clean(c.Path))
		}
	case StorageS3:
		bucket, prefix, _ := strings.Cut(strings.TrimPrefix(c.Path, "s3://"), "/")
		if !strings.HasPrefix(c.Path, "s3://") || !bucketRE.MatchString(bucket) {
			bad("checkpoint.path", c.Path, `must be s3://bucket[/prefix] for storage "s3" (bucket: 3-63 of a-z, 0-9, '.' and '-')`)
		} else if prefix != "" && slices.ContainsFunc(strings.Split(strings.TrimSuffix(prefix, "/"), "/"), func(seg string) bool { return seg == "" || seg == "." || seg == ".." }) {
			bad("checkpoint.path", c.Path, "the prefix must not have '.', '..' or empty segments")
		}
	default:
		bad("checkpoint.storage", c.Storage, `must be "dir" or "s3"`)
	}

	// Restart policy.
	if mr := s.Restart.MaxRestarts; mr == nil || *mr < 0 || *mr > maxRestarts {
		bad("restart.max_restarts", mr, "must be in [0, %d]", maxRestarts)
	}
	if b := s.Restart.BackoffSeconds; b == nil || *b < 0 || *b > maxBackoff {
		bad("restart.backoff_seconds", b, "must be in [0, %d]", maxBackoff)
	}

	// Elasticity (at parallel.dp, which they default to, what is wrong
	// with dp was said of it already)
	e := s.Elastic
	if degreesOK {
		switch {
		case e.MinDP < 1 || e.MinDP > p.DP:
			bad("elastic.min_dp", e.MinDP, "must be in [1, parallel.dp = %d]", p.DP)
		case e.MinDP%p.EP != 0 && e.MinDP != p.DP:
			bad("elastic.min_dp", e.MinDP, "must be a multiple of parallel.ep = %d", p.EP)
		}
		switch {
		case e.MaxDP < p.DP || e.MaxDP > maxWorld/p.TP:
			bad("elastic.max_dp", e.MaxDP, "must be in [parallel.dp = %d, %d]", p.DP, maxWorld/p.TP)
		case e.MaxDP%p.EP != 0 && e.MaxDP != p.DP:
			bad("elastic.max_dp", e.MaxDP, "must be a multiple of parallel.ep = %d", p.EP)
		}
	}
	s.validateSizes(m, modelOK, degreesOK, bad)
	return errors.Join(errs...)
}

// validateModel checks the resolved model; ok reports whether the model is
// sound enough for the layout checks.
func (s *Spec) validateModel(bad func(path string, v any, rule string, args ...any)) (runconfig.Model, bool) {
	m, err := s.ModelConfig()
	if err != nil {
		bad("model.preset", s.Model.Preset, `must be "tiny", "small", "medium" or "science" (or empty, with explicit model fields)`)
		return m, false
	}
	ok := true
	check := func(cond bool, field string, v any, rule string, args ...any) {
		if !cond {
			bad("model."+field, v, rule, args...)
			ok = false
		}
	}
	finite := func(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }
	check(m.Vocab >= 2, "vocab", m.Vocab, "must be >= 2")
	check(m.Dim >= 2, "dim", m.Dim, "must be >= 2")
	check(m.Layers >= 1, "layers", m.Layers, "must be >= 1")
	if m.Heads < 1 || m.Dim < 1 || m.Dim%m.Heads != 0 {
		check(false, "heads", m.Heads, "must be >= 1 and divide model.dim = %d", m.Dim)
	} else {
		check(m.Dim/m.Heads%2 == 0, "heads", m.Heads, "head dimension model.dim/model.heads = %d must be even (RoPE)", m.Dim/m.Heads)
	}
	check(m.SeqLen >= 1, "seq_len", m.SeqLen, "must be >= 1")
	check(m.Experts >= 1, "experts", m.Experts, "must be >= 1")
	check(m.TopK >= 1 && m.TopK <= max(m.Experts, 1), "top_k", m.TopK, "must be in [1, model.experts = %d]", m.Experts)
	check(m.Hidden >= 1, "hidden", m.Hidden, "must be >= 1")
	check(m.Shared >= 0, "shared_experts", m.Shared, "must be >= 0")
	check(m.MoEEvery >= 1, "moe_every", m.MoEEvery, "must be >= 1")
	check(m.DenseHidden >= 1, "dense_hidden", m.DenseHidden, "must be >= 1")
	check(m.CapacityFactor >= 0 && finite(m.CapacityFactor), "capacity_factor", m.CapacityFactor, "must be a finite number >= 0 (0 = dropless)")
	check(m.NormEps > 0 && finite(float64(m.NormEps)), "norm_eps", m.NormEps, "must be a finite number > 0")
	check(m.RopeBase > 1 && finite(m.RopeBase), "rope_base", m.RopeBase, "must be a finite number > 1")
	check(m.InitStd > 0 && finite(m.InitStd), "init_std", m.InitStd, "must be a finite number > 0")
	if ok {
		// pkg/model is the authority; anything it refuses that the checks
		// above missed is still reported.
		if err := m.Validate(); err != nil {
			bad("model", s.Model.Preset, "%v", err)
			ok = false
		}
	}
	return m, ok
}

// ModelConfig resolves the model: the preset (if any) with every non-zero
// explicit field laid over it, then pkg/model's defaults. It fails only for
// an unknown preset; the result is not validated.
func (s *Spec) ModelConfig() (runconfig.Model, error) {
	var m runconfig.Model
	if s.Model.Preset != "" {
		p, ok := runconfig.ModelPresets[s.Model.Preset]
		if !ok {
			return m, &FieldError{Path: "model.preset", Value: s.Model.Preset, Rule: `must be "tiny", "small", "medium" or "science"`}
		}
		m = p
	}
	m.Overlay(s.Model.fields())
	m.Defaults()
	return m, nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
