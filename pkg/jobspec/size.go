package jobspec

import (
	"fmt"

	"github.com/switchyard-ml/switchyard/pkg/data"
	"github.com/switchyard-ml/switchyard/pkg/fsutil"
	"github.com/switchyard-ml/switchyard/pkg/runconfig"
)

// Upper bounds on sizes. Far above anything this engine trains, they keep
// the products of sizes (tokens x width, experts x hidden) inside int and
// a hostile spec from reaching a rank as "makeslice: len out of range".
var sizeLimits = []struct {
	path string
	get  func(*Spec, runconfig.Model) int64
	max  int64
}{
	{"model.vocab", func(_ *Spec, m runconfig.Model) int64 { return int64(m.Vocab) }, 1 << 24},
	{"model.dim", func(_ *Spec, m runconfig.Model) int64 { return int64(m.Dim) }, 1 << 17},
	{"model.layers", func(_ *Spec, m runconfig.Model) int64 { return int64(m.Layers) }, 1 << 12},
	{"model.seq_len", func(_ *Spec, m runconfig.Model) int64 { return int64(m.SeqLen) }, 1 << 20},
	{"model.experts", func(_ *Spec, m runconfig.Model) int64 { return int64(m.Experts) }, 1 << 14},
	{"model.hidden", func(_ *Spec, m runconfig.Model) int64 { return int64(m.Hidden) }, 1 << 20},
	{"model.shared_experts", func(_ *Spec, m runconfig.Model) int64 { return int64(m.Shared) }, 1 << 10},
	{"model.dense_hidden", func(_ *Spec, m runconfig.Model) int64 { return int64(m.DenseHidden) }, 1 << 22},
	{"micro_batch", func(s *Spec, _ runconfig.Model) int64 { return int64(s.MicroBatch) }, 1 << 16},
	{"accumulation", func(s *Spec, _ runconfig.Model) int64 { return int64(s.Accumulation) }, 1 << 16},
	{"steps", func(s *Spec, _ runconfig.Model) int64 { return int64(s.Steps) }, 1 << 40},
	{"data.demo_bytes", func(s *Spec, _ runconfig.Model) int64 { return int64(s.Data.DemoBytes) }, 1 << 32},
	{"data.eval_seqs", func(s *Spec, _ runconfig.Model) int64 { return int64(s.Data.EvalSeqs) }, 1 << 24},
	{"resources.cpu_cores", func(s *Spec, _ runconfig.Model) int64 { return int64(s.Resources.CPUCores) }, 1 << 12},
	{"resources.memory_mib", func(s *Spec, _ runconfig.Model) int64 { return s.Resources.MemoryMiB }, 1 << 30},
	{"resources.gpus", func(s *Spec, _ runconfig.Model) int64 { return int64(s.Resources.GPUs) }, 64},
}

// maxRankBytes is more memory than one rank is ever given: a job whose
// lower bound exceeds it is refused even without resources.memory_mib.
const maxRankBytes = 1 << 40

// validateSizes checks the upper bounds and, for a sound model and
// layout, that a rank's lower bound on memory (runconfig.MinRankBytes,
// plus the demo corpus it generates) fits in resources.memory_mib, or in
// maxRankBytes when that is not set. It reports whether the sizes are
// within their bounds.
func (s *Spec) validateSizes(m runconfig.Model, modelOK, layoutOK bool, bad func(path string, v any, rule string, args ...any)) {
	within := true
	for _, l := range sizeLimits {
		if v := l.get(s, m); v > l.max {
			bad(l.path, v, "must be <= %d", l.max)
			within = false
		}
	}
	if !within || !modelOK || !layoutOK || s.MicroBatch < 1 || s.Runtime == RuntimeCommand {
		return // a command's memory is its own
	}
	need := m.MinRankBytes(s.MicroBatch, s.Parallel.TP, s.Parallel.EP)
	if s.Data.Corpus == DemoCorpus {
		need += float64(s.Data.DemoBytes) * float64(len(data.DemoDomains()))
	}
	why := func() string {
		return fmt.Sprintf("a rank needs at least %s (parameters x 16 bytes for weights, gradients and Adam moments, one activation per layer and token, the logits, the demo corpus)", fsutil.Size(int64(min(need, 1<<62))))
	}
	switch mib := s.Resources.MemoryMiB; {
	case mib > 0 && need > float64(mib)*(1<<20):
		bad("resources.memory_mib", mib, "%s: more than requested", why())
	case need > maxRankBytes:
		bad("resources.memory_mib", mib, "%s: more than the %s any rank is given", why(), fsutil.Size(maxRankBytes))
	}
}
