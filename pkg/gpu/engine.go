package gpu

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/switchyard-ml/switchyard/pkg/cuda"
	"github.com/switchyard-ml/switchyard/pkg/devcomm"
	"github.com/switchyard-ml/switchyard/pkg/lbl"
	"github.com/switchyard-ml/switchyard/pkg/model"
	"github.com/switchyard-ml/switchyard/pkg/runconfig"
)

// ErrConfig is wrapped by every refusal of a configuration the GPU engine
// does not run.
var ErrConfig = errors.New("gpu: configuration not supported")

// Precision is the engine's arithmetic.
type Precision string

const (
	// FP32 keeps everything in float32 with true-fp32 GEMMs (no TF32):
	// the equivalence mode, step for step the CPU engine's numbers.
	FP32 Precision = "fp32"
	// BF16 is mixed precision: bf16 activations and GEMM operands, float32
	// accumulation, residual stream, master weights, gradients and AdamW
	// moments.
	BF16 Precision = "bf16"
)

// ParsePrecision accepts "fp32" or "bf16".
func ParsePrecision(s string) (Precision, error) {
	switch Precision(s) {
	case FP32, BF16:
		return Precision(s), nil
	}
	return "", fmt.Errorf("%w: precision %q (fp32 or bf16)", ErrConfig, s)
}

func (p Precision) act() cuda.DType {
	if p == BF16 {
		return cuda.BF16
	}
	return cuda.F32
}

// Options configure a Model.
type Options struct {
	MicroBatch int       // sequences per micro-batch
	Precision  Precision // FP32 or BF16
	// Balancer receives the routing statistics of training steps (it must
	// cover cfg.MoELayers() layers); nil allows evaluation only.
	Balancer *lbl.Balancer
	// Reserve is device memory to leave free beyond the engine's own
	// buffers (the libraries' workspaces and context); 0 means 1 GiB.
	Reserve int64
	// AttnChunk is the query chunk of the attention GEMMs: a chunk of
	// queries needs keys up to its last query only, so the masked part of
	// the score matrix beyond the chunk is neither computed nor stored
	// (with S/c chunks, (c/S+1)/2 of the full work). 0 means 128.
	AttnChunk int
	// Experts splits the routed experts over an expert-parallel group
	// (nil, or a group of one: every expert here).
	Experts *ExpertGroup
	// Tensor splits the attention heads and the MoE layer's tokens over a
	// tensor-parallel group (nil, or a group of one: none), as pkg/model
	// does on the CPU (tp.go).
	Tensor devcomm.Comm
	// RecomputeAttention keeps no layer's attention probabilities for the
	// backward: it computes them again from the kept q and k (selective
	// recomputation), so one [B][H][S][S] buffer serves every layer.
	RecomputeAttention bool
}

// tpSize is the tensor-parallel group's size in o (1 without one).
func (o Options) tpSize() int {
	if o.Tensor == nil {
		return 1
	}
	return o.Tensor.Size()
}

// Model is the MoE transformer of pkg/model on one GPU: the same
// parameters in the same flat layout (model.Params), the same forward and
// backward, run as an explicit sequence of kernels and GEMMs (llm.c
// style) that stays on the device; per micro-batch only the router's
// per-expert statistics (what the LBL synchronisation needs) and the
// per-token losses travel to the host.
type Model struct {
	Cfg     model.Config
	B, S, T int
	Prec    Precision
	// P is the host copy of the parameters in the CPU engine's layout
	// (Data only): initialise it, then Upload; Download refreshes it.
	P *model.Params

	dev   cuda.Device
	k     *kern
	act   cuda.DType
	a     *arena
	bal   *lbl.Balancer
	moeL  []int // transformer layer of each MoE layer
	nPar  int64
	buf   buffers
	host  hostState
	prof  *profiler
	steps int // optimizer steps taken (AdamW bias correction)
	// attnChunk is the attention's query chunk (<= S)
	attnChunk int
	// expertLoop runs the experts' GEMMs one by one instead of grouped
	// (SWITCHYARD_EXPERT_GEMM=loop, a performance comparison knob)
	expertLoop bool
	// ep is expert parallelism (nil: every expert on this GPU)
	ep *epState
	// tp is tensor parallelism (nil: none); tpSize, tpRank its group
	tp             devcomm.Comm
	tpSize, tpRank int
	// hl, dl are this rank's attention heads and their width (all of them
	// without tensor parallelism); the MoE layer runs on this rank's
	// token slice: mB sequences, mT tokens from token mOff
	hl, dl       int
	mB, mT, mOff int
	// recompute: the attention probabilities are computed again in the
	// backward (Options.RecomputeAttention)
	recompute bool
}

// shape sets the per-rank sizes for tensor parallelism over tp ranks
// (this one tpRank).
func (m *Model) shape(tp, tpRank int) {
	m.tpSize, m.tpRank = tp, tpRank
	m.hl, m.dl = m.Cfg.Heads/tp, m.Cfg.Dim/tp
	m.mB = m.B / tp
	m.mT, m.mOff = m.mB*m.S, tpRank*m.mB*m.S
}

// New builds the engine for cfg on dev: it checks the configuration,
// estimates the device memory and refuses a run that does not fit before
// allocating anything, then allocates every buffer once.
func New(dev cuda.Device, cfg model.Config, o Options) (*Model, error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := Supported(cfg, o); err != nil {
		return nil, err
	}
	if o.Reserve == 0 {
		o.Reserve = runconfig.GPUReserveBytes // what placement's bound counts on
	}
	epSize := 1
	if o.Experts != nil && o.Experts.Counts != nil {
		epSize = o.Experts.Counts.Size()
	}
	tp, tpRank := o.tpSize(), 0
	if tp > 1 {
		tpRank = o.Tensor.Rank()
	}
	est, err := estimate(cfg, o.MicroBatch, o.Precision, epSize, tp, o.RecomputeAttention)
	if err != nil {
		return nil, err
	}
	free, total, err := dev.MemInfo()
	if err != nil {
		return nil, fmt.Errorf("gpu: memory info: %w", err)
	}
	if need := est.Total + o.Reserve; need > free {
		me := &MemoryError{Need: need, Free: free, Total: total, Device: dev.Name(), Estimate: est}
		if !o.RecomputeAttention {
			if re, err := estimate(cfg, o.MicroBatch, o.Precision, epSize, tp, true); err == nil && re.Total+o.Reserve < need {
				me.Recomputed = re.Total + o.Reserve
			}
		}
		return nil, me
	}
	m := &Model{Cfg: cfg, B: o.MicroBatch, S: cfg.SeqLen, T: o.MicroBatch * cfg.SeqLen, Prec: o.Precision,
		dev: dev, act: o.Precision.act(), a: &arena{dev: dev}, bal: o.Balancer, attnChunk: o.AttnChunk}
	if m.attnChunk <= 0 {
		m.attnChunk = 128
	}
	m.attnChunk = min(m.attnChunk, m.S)
	m.shape(tp, tpRank)
	m.recompute = o.RecomputeAttention
	if tp > 1 {
		m.tp = o.Tensor
	}
	m.expertLoop = os.Getenv("SWITCHYARD_EXPERT_GEMM") == "loop"
	for l := 0; l < cfg.Layers; l++ {
		if cfg.IsMoE(l) {
			m.moeL = append(m.moeL, l)
		}
	}
	lo, hi := 0, cfg.Experts
	if epSize > 1 {
		if m.ep, err = newEPState(o.Experts, cfg, m.mT, len(m.moeL)); err != nil {
			return nil, err
		}
		if int64(cfg.Dim)*m.actSize()%4 != 0 {
			return nil, fmt.Errorf("%w: dim = %d: expert parallelism moves rows as 4-byte words and needs an even dim", ErrConfig, cfg.Dim)
		}
		lo, hi = m.ep.lo, m.ep.lo+m.ep.El
	}
	if m.k, err = loadKern(dev, m.act); err != nil {
		return nil, err
	}
	m.P = model.NewHostParamsTP(cfg, lo, hi, tpRank, tp)
	m.nPar = int64(len(m.P.Data))
	if err := m.layout(&sizer{a: m.a}); err != nil {
		m.a.free()
		return nil, err
	}
	if err := m.initTables(); err != nil {
		m.Close()
		return nil, err
	}
	// AdamW starts from zero moments; gradients start cleared
	for _, p := range []cuda.DevPtr{m.buf.m, m.buf.v, m.buf.g} {
		if err := dev.Memset(p, m.nPar*4); err != nil {
			m.Close()
			return nil, err
		}
	}
	m.prof = newProfiler(dev)
	return m, nil
}

// Supported reports why the GPU engine cannot run cfg with o (nil: it
// can). It needs no device.
func Supported(cfg model.Config, o Options) error {
	if _, err := ParsePrecision(string(o.Precision)); err != nil {
		return err
	}
	switch {
	case o.MicroBatch < 1:
		return fmt.Errorf("%w: micro-batch %d", ErrConfig, o.MicroBatch)
	case o.AttnChunk < 0:
		return fmt.Errorf("%w: attention chunk %d", ErrConfig, o.AttnChunk)
	case cfg.TopK > 16:
		return fmt.Errorf("%w: top_k = %d: the GPU kernels handle at most 16 experts per token", ErrConfig, cfg.TopK)
	case cfg.Dim/cfg.Heads%2 != 0:
		return fmt.Errorf("%w: head dimension %d must be even", ErrConfig, cfg.Dim/cfg.Heads)
	}
	return SupportedTP(cfg, o.MicroBatch, o.tpSize())
}

// SupportedTP reports why tensor parallelism over tp ranks cannot split
// cfg's heads and a micro-batch's sequences (pkg/model's rules). It needs
// no device.
func SupportedTP(cfg model.Config, microBatch, tp int) error {
	switch {
	case tp < 1:
		return fmt.Errorf("%w: tensor parallelism over %d ranks", ErrConfig, tp)
	case cfg.Heads%tp != 0:
		return fmt.Errorf("%w: heads = %d: tensor parallelism over %d ranks needs a multiple of %d", ErrConfig, cfg.Heads, tp, tp)
	case microBatch%tp != 0:
		return fmt.Errorf("%w: micro-batch = %d: tensor parallelism over %d ranks splits the MoE tokens by whole sequences and needs a multiple of %d", ErrConfig, microBatch, tp, tp)
	}
	return nil
}

// MemoryError is a run that does not fit on the GPU.
type MemoryError struct {
	Need, Free, Total int64
	Device            string
	Estimate          MemEstimate
	// Recomputed is what the run would need with the attention
	// probabilities recomputed (0: it recomputes them already, or that
	// would not need less).
	Recomputed int64
}

func (e *MemoryError) Error() string {
	fix := "lower micro_batch or the model size"
	switch {
	case e.Recomputed > 0 && e.Recomputed <= e.Free:
		fix = fmt.Sprintf("set recompute: attention (it would need %.1f GiB), or %s", gib(e.Recomputed), fix)
	case e.Recomputed > 0:
		fix += fmt.Sprintf(" (recompute: attention would still need %.1f GiB)", gib(e.Recomputed))
	}
	return fmt.Sprintf("gpu: the run needs %.1f GiB (%s), %s has %.1f GiB free of %.1f GiB: %s",
		gib(e.Need), e.Estimate, e.Device, gib(e.Free), gib(e.Total), fix)
}

func (e *MemoryError) Unwrap() error { return cuda.ErrOutOfMemory }

func gib(b int64) float64 { return float64(b) / (1 << 30) }

// Close frees every device buffer.
func (m *Model) Close() error { return m.a.free() }

// DeviceBytes is the device memory the engine's buffers hold.
func (m *Model) DeviceBytes() int64 { return m.a.bytes }

// Device is the GPU the engine runs on.
func (m *Model) Device() cuda.Device { return m.dev }

// ---- parameters ----

// w is the device address of parameter name's values as GEMM operands
// (the bf16 copy in the mixed mode).
func (m *Model) w(name string) cuda.DevPtr {
	q := m.param(name)
	if m.act == cuda.BF16 {
		return m.buf.wb.Add(int64(q.Offset) * 2)
	}
	return m.buf.w.Add(int64(q.Offset) * 4)
}

// wf is the float32 master copy of a parameter (norm gains, embedding).
func (m *Model) wf(name string) cuda.DevPtr { return m.buf.w.Add(int64(m.param(name).Offset) * 4) }

// g is the device address of parameter name's gradient.
func (m *Model) g(name string) cuda.DevPtr { return m.buf.g.Add(int64(m.param(name).Offset) * 4) }

func (m *Model) param(name string) model.Param {
	q, ok := m.P.Lookup(name)
	if !ok {
		panic("gpu: no parameter " + name)
	}
	return q
}

// Upload copies the host parameters (P.Data) to the device, refreshes the
// bf16 copy and clears the gradients.
func (m *Model) Upload() error {
	if err := upload(m.dev, m.buf.w, m.P.Data); err != nil {
		return fmt.Errorf("gpu: upload parameters: %w", err)
	}
	if m.act == cuda.BF16 {
		if err := m.k.castBF16(m.buf.wb, m.buf.w, m.nPar); err != nil {
			return err
		}
	}
	return m.ZeroGrad()
}

// Download copies the device parameters into P.Data.
func (m *Model) Download() error {
	if err := download(m.dev, m.P.Data, m.buf.w); err != nil {
		return fmt.Errorf("gpu: download parameters: %w", err)
	}
	return nil
}

// ZeroGrad clears every gradient.
func (m *Model) ZeroGrad() error { return m.dev.Memset(m.buf.g, m.nPar*4) }

// Grads copies the gradients to the host (tests, host-side reductions).
func (m *Model) Grads(dst []float32) error { return download(m.dev, dst[:m.nPar], m.buf.g) }

// GradBuffer is the flat fp32 gradient on the device (parameter order,
// the host layout's offsets) and its length in floats, for collectives
// that reduce it in place.
func (m *Model) GradBuffer() (cuda.DevPtr, int) { return m.buf.g, int(m.nPar) }

// SetGrads copies host gradients to the device.
func (m *Model) SetGrads(src []float32) error { return upload(m.dev, m.buf.g, src[:m.nPar]) }

// Moments copies AdamW's moments to the host.
func (m *Model) Moments(mDst, vDst []float32) error {
	if err := download(m.dev, mDst[:m.nPar], m.buf.m); err != nil {
		return err
	}
	return download(m.dev, vDst[:m.nPar], m.buf.v)
}

// SetMoments restores AdamW's moments and step count.
func (m *Model) SetMoments(mSrc, vSrc []float32, steps int) error {
	if err := upload(m.dev, m.buf.m, mSrc[:m.nPar]); err != nil {
		return err
	}
	if err := upload(m.dev, m.buf.v, vSrc[:m.nPar]); err != nil {
		return err
	}
	m.steps = steps
	return nil
}

// Steps is the number of optimizer steps taken.
func (m *Model) Steps() int { return m.steps }

// sync waits for the device and reports an asynchronous failure.
func (m *Model) sync(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return m.dev.Sync()
}
