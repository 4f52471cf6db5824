package jobspec

import (
	"fmt"
	"maps"
	"math"

	"github.com/switchyard-ml/switchyard/pkg/runconfig"
	"github.com/switchyard-ml/switchyard/pkg/scheduler"
)

// TrainConfig maps the spec onto the per-process training config every rank
// runs (the parallel layout, resources and policies are not part of it: the
// worker gets its rank and layout from the coordinator). OutDir is left
// empty for the worker to set (RankConfig sets it). The result is
// validated by pkg/runconfig.
func (s *Spec) TrainConfig() (runconfig.Config, error) {
	if s.Runtime == RuntimeCommand {
		return runconfig.Config{}, fmt.Errorf("%w: job %s runs a command (runtime: command), not the engine", ErrInvalid, s.Name)
	}
	corpus := s.Data.Corpus
	if corpus == DemoCorpus {
		corpus = ""
	}
	var overrides *runconfig.Model
	if o := s.Model.fields(); o != (runconfig.Model{}) {
		overrides = &o
	}
	c := runconfig.Config{
		Preset: s.Model.Preset,
		Model:  overrides,
		LBL: runconfig.LBL{
			Mode:      s.LBL.Mode,
			Coef:      s.LBL.Coef,
			MicroCoef: s.LBL.MicroCoef,
			SeqCoef:   s.LBL.SeqCoef,
			ZCoef:     s.LBL.ZCoef,
			LayerCoef: append([]float64(nil), s.LBL.LayerCoef...),
			BiasRate:  s.LBL.BiasRate,
			Window:    s.LBL.Window,
		},
		Data: runconfig.Data{
			Corpus:      corpus,
			DemoBytes:   s.Data.DemoBytes,
			ValFraction: s.Data.ValFraction,
			EvalSeqs:    s.Data.EvalSeqs,
			Order:       s.Data.Order,
		},
		MicroBatch:   s.MicroBatch,
		Accumulation: s.Accumulation,
		Steps:        s.Steps,
		Seed:         s.Seed,
		Optim: runconfig.Optim{
			LR:          s.Optim.LR,
			MinLR:       s.Optim.MinLR,
			Beta1:       s.Optim.Beta1,
			Beta2:       s.Optim.Beta2,
			Eps:         s.Optim.Eps,
			WeightDecay: s.Optim.WeightDecay,
			WarmupSteps: s.Optim.WarmupSteps,
			ClipNorm:    s.Optim.ClipNorm,
		},
		EvalEvery:   s.EvalEvery,
		Device:      s.Device,
		Precision:   s.Precision,
		Collectives: s.Collectives,
		Recompute:   s.Recompute,
	}
	if len(c.LBL.LayerCoef) == 0 {
		c.LBL.LayerCoef = nil
	}
	if err := c.Validate(); err != nil {
		return runconfig.Config{}, fmt.Errorf("%w: training config: %w", ErrInvalid, err)
	}
	return c, nil
}

// CommandsLabel is the label the coordinator gives, for placement, the
// workers that run command jobs (allow_commands: true in their config;
// whatever their own labels say): a command job needs it on every worker.
const CommandsLabel = "allow_commands"

// RankUserLabel is the label the coordinator gives, for placement, the
// workers that run their ranks as another OS user (rank_user in their
// config; whatever their own labels say): a job that asks for it in
// placement.host_labels runs only where its ranks cannot reach the
// worker's credentials.
const RankUserLabel = "rank_user"

// SettingLabels is labels (a worker's own) as placement sees them: the
// labels its settings give (CommandsLabel, RankUserLabel, "true" when
// set) replace any it claims. labels is not changed.
func SettingLabels(labels map[string]string, commands bool, rankUser string) map[string]string {
	settings := []struct {
		key string
		on  bool
	}{{CommandsLabel, commands}, {RankUserLabel, rankUser != ""}}
	changed := false
	for _, st := range settings {
		if _, claimed := labels[st.key]; claimed || st.on {
			changed = true
		}
	}
	if !changed {
		return labels
	}
	out := maps.Clone(labels)
	if out == nil {
		out = map[string]string{}
	}
	for _, st := range settings {
		delete(out, st.key)
		if st.on {
			out[st.key] = "true"
		}
	}
	return out
}

// SchedulerJob is the scheduler's view of the spec: the layout, per-rank
// resources and label constraints, under the coordinator's job id and
// submit sequence number.
func (s *Spec) SchedulerJob(id string, seq uint64) scheduler.Job {
	labels := make(map[string]string, len(s.Placement.HostLabels)+1)
	for k, v := range s.Placement.HostLabels {
		labels[k] = v
	}
	if s.Runtime == RuntimeCommand {
		labels[CommandsLabel] = "true" // only workers that run command jobs
	}
	return scheduler.Job{
		ID:       id,
		Priority: s.Priority,
		Seq:      seq,
		Layout:   scheduler.Layout{TP: s.Parallel.TP, DP: s.Parallel.DP, EP: s.Parallel.EP},
		PerRank: scheduler.Resources{
			CPUCores:  s.Resources.CPUCores,
			MemoryMiB: s.Resources.MemoryMiB,
			GPUs:      s.Resources.GPUs,
		},
		Labels:       labels,
		Paths:        s.WorkerPaths(),
		GPUMemoryMiB: s.GPUMemoryMiB(),
	}
}

// GPUMemoryMiB is the memory each of a rank's GPUs must have, for
// placement: resources.gpu_memory_mib, and for an engine job on cuda at
// least runconfig's lower bound on what the GPU engine needs (its
// parameters, gradients, AdamW moments and main activations, and the
// memory it leaves the libraries), so that a rank is not placed on a GPU
// it is sure not to fit; 0 when the job asks no GPUs.
func (s *Spec) GPUMemoryMiB() int64 {
	if s.Resources.GPUs < 1 {
		return 0
	}
	need := s.Resources.GPUMemoryMiB
	if s.Runtime == RuntimeCommand {
		return need
	}
	tc, err := s.TrainConfig()
	if err != nil {
		return need
	}
	if kind, _, _ := runconfig.ParseDevice(tc.Device); kind != "cuda" {
		return need
	}
	m, err := tc.ModelConfig()
	if err != nil || s.MicroBatch < 1 {
		return need
	}
	b := m.MinGPURankBytes(s.MicroBatch, max(s.Parallel.TP, 1), max(s.Parallel.EP, 1), tc.PrecisionOrDefault() == "bf16", tc.RecomputeAttention())
	return max(need, int64(math.Ceil(b/(1<<20))))
}

// WorkerPaths are the paths outside a worker's own storage that the job's
// ranks read or write there, for placement: the corpus of an engine job
// and the checkpoint.path of dir storage. Each worker checks them again,
// links resolved, before it starts a rank.
func (s *Spec) WorkerPaths() []string {
	var ps []string
	if s.Runtime != RuntimeCommand && s.Data.Corpus != "" && s.Data.Corpus != DemoCorpus {
		ps = append(ps, s.Data.Corpus)
	}
	if s.Checkpoint.Storage != StorageS3 && s.Checkpoint.Path != "" {
		ps = append(ps, s.Checkpoint.Path)
	}
	return ps
}
