package runconfig

import (
	"errors"
	"fmt"
	"math"
)

// ErrModel is wrapped by every model configuration error.
var ErrModel = errors.New("model: invalid config")

// Model describes a decoder-only MoE transformer. All sizes are in elements.
type Model struct {
	Vocab       int `yaml:"vocab" json:"vocab"`                   // byte-level: 256
	Dim         int `yaml:"dim" json:"dim"`                       // model width d
	Layers      int `yaml:"layers" json:"layers"`                 // transformer blocks L
	Heads       int `yaml:"heads" json:"heads"`                   // attention heads H (d % H == 0, head dim even)
	SeqLen      int `yaml:"seq_len" json:"seq_len"`               // context length S
	Experts     int `yaml:"experts" json:"experts"`               // routed experts E per MoE layer
	TopK        int `yaml:"top_k" json:"top_k"`                   // experts per token k
	Hidden      int `yaml:"hidden" json:"hidden"`                 // expert SwiGLU hidden size h
	Shared      int `yaml:"shared_experts" json:"shared_experts"` // shared experts every token uses (DeepSeekMoE)
	MoEEvery    int `yaml:"moe_every" json:"moe_every"`           // MoE FFN in layers l with l % MoEEvery == MoEEvery-1... see IsMoE; 1 = every layer
	DenseHidden int `yaml:"dense_hidden" json:"dense_hidden"`     // hidden size of dense SwiGLU layers (0: Hidden*TopK)

	Renormalize    bool    `yaml:"renormalize" json:"renormalize"`         // renormalise combine weights over the top-k
	CapacityFactor float64 `yaml:"capacity_factor" json:"capacity_factor"` // 0: dropless; else per-expert capacity ceil(cf*T*k/E)
	NormEps        float32 `yaml:"norm_eps" json:"norm_eps"`
	RopeBase       float64 `yaml:"rope_base" json:"rope_base"`
	InitStd        float64 `yaml:"init_std" json:"init_std"`
}

// ModelPresets are the named model sizes. They match ../shared/bench's reference
// model so tokens/s can be compared with PyTorch.
var ModelPresets = map[string]Model{
	"tiny":  {Vocab: 256, Dim: 256, Layers: 4, Heads: 4, SeqLen: 256, Experts: 8, TopK: 2, Hidden: 512},
	"small": {Vocab: 256, Dim: 512, Layers: 8, Heads: 8, SeqLen: 512, Experts: 16, TopK: 2, Hidden: 1024},
	// medium is GPU-sized: fine-grained experts (DeepSeekMoE-style, 64 of
	// them, top-6, narrow hidden 512), about 1.2 B parameters, 0.2 B active.
	"medium": {Vocab: 256, Dim: 1024, Layers: 12, Heads: 16, SeqLen: 1024, Experts: 64, TopK: 6, Hidden: 512},
	// science is for balancing experiments on CPUs: fine-grained experts
	// (32, top-4, hidden 128) on a narrow model, cheaper per token than
	// tiny, so that sweeps of several runs fit in an hour on two cores.
	"science": {Vocab: 256, Dim: 160, Layers: 4, Heads: 4, SeqLen: 256, Experts: 32, TopK: 4, Hidden: 128},
}

// ModelPreset returns a named preset with defaults applied.
func ModelPreset(name string) (Model, error) {
	c, ok := ModelPresets[name]
	if !ok {
		return Model{}, fmt.Errorf("%w: unknown preset %q (have tiny, small, medium, science)", ErrModel, name)
	}
	c.Defaults()
	return c, nil
}

// Defaults fills zero fields with their defaults.
func (c *Model) Defaults() {
	if c.Vocab == 0 {
		c.Vocab = 256
	}
	if c.MoEEvery == 0 {
		c.MoEEvery = 1
	}
	if c.NormEps == 0 {
		c.NormEps = 1e-5
	}
	if c.RopeBase == 0 {
		c.RopeBase = 10000
	}
	if c.InitStd == 0 {
		c.InitStd = 0.02
	}
	if c.DenseHidden == 0 {
		c.DenseHidden = c.Hidden * max(c.TopK, 1)
	}
}

// Validate reports the first broken rule, naming the field.
func (c Model) Validate() error {
	bad := func(field, rule string, v any) error {
		return &fieldError{sentinel: ErrModel, msg: fmt.Sprintf("model.%s = %v: %s", field, v, rule)}
	}
	switch {
	case c.Vocab < 2:
		return bad("vocab", "must be >= 2", c.Vocab)
	case c.Dim < 2:
		return bad("dim", "must be >= 2", c.Dim)
	case c.Layers < 1:
		return bad("layers", "must be >= 1", c.Layers)
	case c.Heads < 1 || c.Dim%c.Heads != 0:
		return bad("heads", "must be >= 1 and divide dim", c.Heads)
	case (c.Dim/c.Heads)%2 != 0:
		return bad("heads", "head dimension dim/heads must be even (RoPE)", c.Heads)
	case c.SeqLen < 1:
		return bad("seq_len", "must be >= 1", c.SeqLen)
	case c.Experts < 1:
		return bad("experts", "must be >= 1", c.Experts)
	case c.TopK < 1 || c.TopK > c.Experts:
		return bad("top_k", fmt.Sprintf("must be in [1, experts=%d]", c.Experts), c.TopK)
	case c.Hidden < 1:
		return bad("hidden", "must be >= 1", c.Hidden)
	case c.Shared < 0:
		return bad("shared_experts", "must be >= 0", c.Shared)
	case c.MoEEvery < 1:
		return bad("moe_every", "must be >= 1", c.MoEEvery)
	case c.DenseHidden < 1:
		return bad("dense_hidden", "must be >= 1", c.DenseHidden)
	case !finiteNonNeg(c.CapacityFactor):
		return bad("capacity_factor", "must be a finite number >= 0 (0 = dropless)", c.CapacityFactor)
	case !(c.NormEps > 0) || math.IsInf(float64(c.NormEps), 0):
		return bad("norm_eps", "must be a finite number > 0", c.NormEps)
	case !(c.RopeBase > 1) || math.IsInf(c.RopeBase, 0):
		return bad("rope_base", "must be a finite number > 1", c.RopeBase)
	case !(c.InitStd > 0) || math.IsInf(c.InitStd, 0):
		return bad("init_std", "must be a finite number > 0", c.InitStd)
	}
	return nil
}

// IsMoE reports whether layer l has an MoE feed-forward (else dense SwiGLU).
// With MoEEvery = n the MoE layers are n-1, 2n-1, ...; n = 1 makes every
// layer MoE.
func (c Model) IsMoE(l int) bool { return l%c.MoEEvery == c.MoEEvery-1 }

// MoELayers is the number of MoE layers: the l in [0, Layers) with
// l % MoEEvery == MoEEvery-1, Layers/MoEEvery of them. Counted, not
// looped over: validation asks before any upper bound on Layers holds
// (0 for a MoEEvery < 1, which validation refuses).
func (c Model) MoELayers() int {
	if c.Layers < 1 || c.MoEEvery < 1 {
		return 0
	}
	return c.Layers / c.MoEEvery
}

// HeadDim is d / H.
func (c Model) HeadDim() int { return c.Dim / c.Heads }

// ParamCount returns the total and per-token active parameter counts.
func (c Model) ParamCount() (total, active int64) {
	d, h, E := int64(c.Dim), int64(c.Hidden), int64(c.Experts)
	emb := int64(c.Vocab) * d
	total = 2*emb + d // embedding, head, final norm
	active = total
	// per layer, times the layers of each kind (no loop over Layers,
	// which may be any int before validation)
	L := int64(max(c.Layers, 0))
	moe := int64(c.MoELayers())
	attn := 4*d*d + 2*d
	expert := 3 * d * h
	dense := 3 * d * int64(c.DenseHidden)
	total += L*attn + moe*(d*E+(E+int64(c.Shared))*expert) + (L-moe)*dense
	active += L*attn + moe*(d*E+(int64(c.TopK)+int64(c.Shared))*expert) + (L-moe)*dense
	return total, active
}

// FlopsPerToken is the training FLOP count per token used for GFLOP/s
// figures: 6 x (active parameters - embedding) + 12 x layers x d x seq
// (the attention score and value products, forward and backward), the
// formula of ../shared/bench so the figures compare.
func (c Model) FlopsPerToken() float64 {
	_, active := c.ParamCount()
	emb := int64(c.Vocab) * int64(c.Dim)
	return 6*float64(active-emb) + 12*float64(c.Layers)*float64(c.Dim)*float64(c.SeqLen)
}

// Overlay copies the non-zero fields of o onto c (a preset with a run's or
// job spec's overrides).
func (c *Model) Overlay(o Model) {
	m := c
	set := func(dst *int, v int) {
		if v != 0 {
			*dst = v
		}
	}
	set(&m.Vocab, o.Vocab)
	set(&m.Dim, o.Dim)
	set(&m.Layers, o.Layers)
	set(&m.Heads, o.Heads)
	set(&m.SeqLen, o.SeqLen)
	set(&m.Experts, o.Experts)
	set(&m.TopK, o.TopK)
	set(&m.Hidden, o.Hidden)
	set(&m.Shared, o.Shared)
	set(&m.MoEEvery, o.MoEEvery)
	set(&m.DenseHidden, o.DenseHidden)
	if o.Renormalize {
		m.Renormalize = true
	}
	if o.CapacityFactor != 0 {
		m.CapacityFactor = o.CapacityFactor
	}
	if o.NormEps != 0 {
		m.NormEps = o.NormEps
	}
	if o.RopeBase != 0 {
		m.RopeBase = o.RopeBase
	}
	if o.InitStd != 0 {
		m.InitStd = o.InitStd
	}
}

// MinRankBytes is a lower bound on the memory one rank of a job needs to
// train this model with microBatch sequences per micro-batch, split tp
// ways by tensor (the attention projections) and ep ways by expert
// parallelism (the routed experts): the parameters it holds times 16 bytes (fp32 weights, gradients and the two Adam
// moments), one fp32 activation of width dim per layer and token, and
// the logits with their gradient. What a rank really uses is more (the
// saved activations of attention and the experts, buffers, the corpus):
// a bound to refuse what cannot fit, not a forecast. Computed in float64,
// so no size overflows it.
func (c Model) MinRankBytes(microBatch, tp, ep int) float64 {
	d, h, dh := float64(c.Dim), float64(c.Hidden), float64(c.DenseHidden)
	E, L := float64(c.Experts), float64(c.Layers)
	moe := float64(c.MoELayers())
	replicated := 2*float64(c.Vocab)*d + d + L*2*d + // embedding, head, norms
		(L-moe)*3*d*dh + moe*(d*E+float64(c.Shared)*3*d*h) // dense FFNs, routers, shared experts
	attention := L * 4 * d * d // the one part tensor parallelism splits
	experts := moe * E * 3 * d * h
	params := replicated + attention/float64(tp) + experts/float64(ep)
	tokens := float64(microBatch) * float64(c.SeqLen)
	acts := tokens * (L*d + 2*float64(c.Vocab)) * 4
	return 16*params + acts
}

// HostRankBytes estimates the peak resident memory of one rank of the
// CPU engine training this model with microBatch sequences per
// micro-batch, split tp ways by tensor and ep ways by expert parallelism,
// saving checkpoints or not, without its corpus (CorpusHostBytes): a
// forecast to size resources.memory_mib by, not a bound. Its terms:
//   - the process (runtime, code, buffers): HostBaseBytes;
//   - the rank's parameters times 16 bytes (weights, gradients, the two
//     AdamW moments), and 12 more when it checkpoints (the snapshot of
//     weights and moments a background save writes from);
//   - the activations kept for the backward and the garbage between
//     collections: hostActFloats 4-byte floats a token and a layer for
//     each float the layer's forward writes a token (the attention
//     scores of its heads, the expert rows of its slots, with expert
//     parallelism the slots' rows it sends and receives, and eight widths
//     of the residual stream), and the logits.
//
// Fitted to the peak RSS of `switchyard train` on this engine (tiny at
// micro-batch 2 to 16, science, small, checkpointing, ep 2 and 4, tp 2,
// corpora to 96 MiB: within 8% of every one), and refitted once the layers
// came to share the MoE backward's scratch and the evaluation's forward
// buffers (tiny at micro-batch 2, 4 checkpointing and 16, science, small:
// 0.97-1.04x; ep and tp were not measured again); cmd/switchyard's
// TestHostRankBytesForecast holds it within 25% of what runs use.
func (c Model) HostRankBytes(microBatch, tp, ep int, checkpoints bool) float64 {
	d, h, dh := float64(c.Dim), float64(c.Hidden), float64(c.DenseHidden)
	E, L := float64(c.Experts), float64(c.Layers)
	moe := float64(c.MoELayers())
	ftp, fep := float64(max(tp, 1)), float64(max(ep, 1))
	replicated := 2*float64(c.Vocab)*d + d + L*2*d + (L-moe)*3*d*dh + moe*(d*E+float64(c.Shared)*3*d*h)
	params := replicated + L*4*d*d/ftp + moe*E*3*d*h/fep
	perParam := 16.0
	if checkpoints {
		perParam += 12
	}
	T := float64(microBatch) * float64(c.SeqLen)
	S, H, k := float64(c.SeqLen), float64(c.Heads), float64(c.TopK)
	expertRow := d + 3*h // a slot's input and its gate, up and product rows
	perTokenLayer := H*S/ftp + 8*d
	moeLayer := (k + float64(c.Shared)) * expertRow / ftp
	if ep > 1 {
		// expert parallelism: the slots' rows sent and received, forward
		// and backward
		moeLayer += 4 * k * d / ftp
	}
	denseLayer := (d + 3*dh) / ftp
	floats := T * (L*perTokenLayer + moe*moeLayer + (L-moe)*denseLayer)
	logits := T * float64(c.Vocab) * 4
	return HostBaseBytes + perParam*params + 4*hostActFloats*floats + 4*logits
}

// HostBaseBytes is a rank process's memory before its model and data:
// the Go runtime, the code, the transports' and kernels' buffers.
const HostBaseBytes = 80 << 20

// hostActFloats is the floats a rank holds at its peak for each float a
// layer's forward writes: the activations kept for the backward, their
// gradients and scratch, and what the garbage collector has not taken
// back yet (fitted: 1.9 to 2.2 on the presets; 3.3 while every layer kept
// its own backward scratch and evaluation buffers).
const hostActFloats = 2.1

// CorpusHostBytes is the memory a corpus of fileBytes (JSON Lines, or
// the demo corpus's text) takes in a rank: its text and tokens (measured
// 1.35x to 1.5x).
func CorpusHostBytes(fileBytes int64) float64 { return 1.5 * float64(fileBytes) }

// GPUReserveBytes is the device memory the GPU engine leaves free beyond
// its own buffers (the libraries' workspaces and context) by default.
const GPUReserveBytes = 1 << 30

// MinGPURankBytes is a lower bound on the GPU memory one rank of the GPU
// engine needs for this model with microBatch sequences per micro-batch,
// split tp ways by tensor and ep ways by expert parallelism, in bf16
// (mixed) or fp32: its parameters' fp32 values, gradients and two AdamW
// moments (and their bf16 copy), per layer the residual stream before and
// after attention, the attention probabilities and q/k/v/output of its
// heads, and in MoE layers the expert rows of its tokens (inputs,
// outputs, the two gate activations and their product; with expert
// parallelism the rows other ranks may send), the experts' gradient
// scratch, plus the GPUReserveBytes it leaves the libraries. pkg/gpu allocates more (the
// norms, the router's buffers, scratch): a bound to keep a rank off a GPU
// that cannot hold it, not a forecast (pkg/gpu's tests hold it between
// 85% and 100% of the engine's exact need). Computed in float64.
//
// With recompute (the attention probabilities recomputed in the backward)
// one layer's probabilities are kept instead of every layer's.
func (c Model) MinGPURankBytes(microBatch, tp, ep int, bf16, recompute bool) float64 {
	act := 4.0
	if bf16 {
		act = 2
	}
	d, h, E, L := float64(c.Dim), float64(c.Hidden), float64(c.Experts), float64(c.Layers)
	moe := float64(c.MoELayers())
	total, _ := c.ParamCount()
	params := float64(total) - moe*(E-E/float64(ep))*3*d*h - L*4*d*d*float64(tp-1)/float64(tp)
	perParam := 16.0
	if bf16 {
		perParam += 2
	}
	B, S := float64(microBatch), float64(c.SeqLen)
	T, Tl := B*S, B*S/float64(tp)
	dl, hl := d/float64(tp), float64(c.Heads)/float64(tp)
	probs := B * hl * S * S * act
	layer := T*d*4*2 + probs + T*dl*act*4 // x, xmid; probabilities; q, k, v, output
	if recompute {
		layer -= probs * (L - 1) / L // one buffer for every layer
	}
	// the expert rows: a rank's kept slots, and with expert parallelism
	// room for what the other ranks may send its experts (all their slots,
	// or the capacity)
	slots := Tl * float64(c.TopK)
	rows, epRows := slots, 0.0
	if ep > 1 {
		f := float64(ep)
		if c.CapacityFactor > 0 {
			f = min(f, c.CapacityFactor)
		}
		rows = f * slots
		epRows = rows * d * act * 3 // received rows per layer, two in flight
	}
	expert := slots*d*act*2 + rows*h*act*3 + epRows/3 // inputs, outputs; a, b and their product; received
	scratch := 0.0
	if moe > 0 {
		scratch = rows*d*act*2 + rows*h*act*3 + epRows*2/3 // input gradient halves; gate gradients; in flight
	}
	return perParam*params + L*layer + moe*expert + scratch + GPUReserveBytes
}

// fieldError is a section's broken rule, named by its YAML path
// ("optim.lr = -1: ..."); it is its section's sentinel (ErrModel,
// ErrOptim) for errors.Is without repeating the sentinel's text.
type fieldError struct {
	sentinel error
	msg      string
}

func (e *fieldError) Error() string { return e.msg }
func (e *fieldError) Unwrap() error { return e.sentinel }
