package model

import (
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"

	"github.com/switchyard-ml/switchyard/pkg/kernels"
)

// Param is one named parameter tensor: a view of Shape at Offset into the
// flat Params.Data / Params.Grad buffers.
type Param struct {
	Name   string
	Shape  []int
	Offset int
	Size   int
	Decay  bool // weight decay applies (matrices); norms' gains are exempt
	// Expert marks routed-expert weights: with expert parallelism a rank
	// holds only its experts' slices, and their gradients are reduced over
	// the expert-data-parallel group instead of the data-parallel one.
	Expert bool
	// TP says how tensor parallelism treats the tensor: TPReplicated (the
	// same on every tensor-parallel rank, with the same gradient),
	// TPSharded (each rank holds a slice: full is the whole shape and
	// slice picks this rank's values from it) or TPPartial (replicated
	// values whose gradients are partial sums over the ranks' token
	// slices: summed over the tensor-parallel group).
	TP      TPKind
	full    []int
	slice   func(fullW, w []float32)
	unslice func(fullW, w []float32) // the inverse of slice: w into its place in fullW
}

// TPKind is how tensor parallelism splits a parameter.
type TPKind int

// The ways a parameter lives under tensor parallelism.
const (
	TPReplicated TPKind = iota
	TPSharded
	TPPartial
)

// Params owns every parameter and gradient of a model in two flat float32
// buffers. Tensors (gorgonia or hand-written kernels) are views of them, so
// the optimizer, the gradient all-reduce and checkpoints see one buffer.
type Params struct {
	// ExpertLo is the global index of the first routed expert this model
	// holds (0 without expert parallelism).
	ExpertLo   int
	layout     Layout
	cfgExperts int
	List       []Param
	Data       []float32
	Grad       []float32
	index      map[string]int
}

func newParams() *Params { return &Params{index: map[string]int{}} }

// shard marks the last parameter as a tensor-parallel slice of full.
func (p *Params) shard(full []int, slice, unslice func(fullW, w []float32)) {
	q := &p.List[len(p.List)-1]
	q.TP, q.full, q.slice, q.unslice = TPSharded, full, slice, unslice
}

// partial marks the last parameter's gradient as a partial sum over the
// tensor-parallel ranks' token slices (the MoE layer's parameters, whose
// tokens are split over the tensor-parallel group).
func (p *Params) partial(tp int) {
	if tp > 1 {
		p.List[len(p.List)-1].TP = TPPartial
	}
}

func (p *Params) addExpert(name string, shape ...int) {
	p.add(name, true, shape...)
	p.List[len(p.List)-1].Expert = true
}

func (p *Params) add(name string, decay bool, shape ...int) {
	if _, dup := p.index[name]; dup {
		panic("model: duplicate parameter " + name)
	}
	size := 1
	for _, s := range shape {
		size *= s
	}
	off := 0
	if n := len(p.List); n > 0 {
		off = p.List[n-1].Offset + p.List[n-1].Size
	}
	p.index[name] = len(p.List)
	p.List = append(p.List, Param{Name: name, Shape: shape, Offset: off, Size: size, Decay: decay})
}

func (p *Params) alloc() {
	p.Data = make([]float32, p.size())
	p.Grad = make([]float32, p.size())
}

// size is the number of parameters of the layout.
func (p *Params) size() int {
	if len(p.List) == 0 {
		return 0
	}
	last := p.List[len(p.List)-1]
	return last.Offset + last.Size
}

// NewHostParams lays out the parameters of the whole model (every expert,
// no tensor parallelism) with a host data buffer and no host gradient:
// what a backend that keeps its gradients elsewhere (the GPU engine)
// needs to initialise the parameters and to checkpoint them in the same
// layout as the CPU engine.
func NewHostParams(c Config) *Params { return NewHostParamsExperts(c, 0, c.Experts) }

// NewHostParamsExperts is NewHostParams for a model that holds routed
// experts [lo, hi) of every MoE layer (an expert-parallel rank's share, in
// the layout the CPU engine's rank with the same experts has).
func NewHostParamsExperts(c Config, lo, hi int) *Params {
	p := layoutParams(c, lo, hi, 0, 1)
	p.Data = make([]float32, p.size())
	return p
}

// NewHostParamsTP is NewHostParamsExperts for tensor-parallel rank tpRank
// of tp: its slices of the attention projections (the CPU engine's rank's
// layout), each initialised from the whole tensor's stream by Init.
func NewHostParamsTP(c Config, lo, hi, tpRank, tp int) *Params {
	p := layoutParams(c, lo, hi, tpRank, tp)
	p.Data = make([]float32, p.size())
	return p
}

// CountParams is the number of parameters a rank holding routed experts
// [lo, hi) of every MoE layer and 1/tp of the attention projections has
// (nothing allocated).
func CountParams(c Config, lo, hi, tp int) int { return layoutParams(c, lo, hi, 0, tp).size() }

// Lookup returns the parameter called name.
func (p *Params) Lookup(name string) (Param, bool) {
	i, ok := p.index[name]
	if !ok {
		return Param{}, false
	}
	return p.List[i], true
}

func (p *Params) must(name string) Param {
	q, ok := p.Lookup(name)
	if !ok {
		panic(fmt.Sprintf("model: no parameter %q", name))
	}
	return q
}

// W returns the data view of a parameter.
func (p *Params) W(name string) []float32 {
	q := p.must(name)
	return p.Data[q.Offset : q.Offset+q.Size : q.Offset+q.Size]
}

// G returns the gradient view of a parameter.
func (p *Params) G(name string) []float32 {
	q := p.must(name)
	return p.Grad[q.Offset : q.Offset+q.Size : q.Offset+q.Size]
}

// Len is the total number of parameters.
func (p *Params) Len() int { return len(p.Data) }

// ZeroGrad clears every gradient.
func (p *Params) ZeroGrad() { clear(p.Grad) }

// layer parameter names
func pname(l int, what string) string { return fmt.Sprintf("layers.%d.%s", l, what) }

// buildParams lays out the parameters of a model that holds routed experts
// [lo, hi) of every MoE layer (all of them: 0, E).
//
// With tensor parallelism over tp ranks (this one tpRank) the attention
// projections are Megatron-split: wqkv column-parallel (this rank's heads
// of q, k and v: [d, 3*d/tp]) and wo row-parallel ([d/tp, d]).
func buildParams(c Config, lo, hi, tpRank, tp int) *Params {
	p := layoutParams(c, lo, hi, tpRank, tp)
	p.alloc()
	return p
}

// layoutParams is buildParams without the buffers.
func layoutParams(c Config, lo, hi, tpRank, tp int) *Params {
	p := newParams()
	p.ExpertLo = lo
	p.layout = Layout{ExpertLo: lo, ExpertHi: hi, TPRank: tpRank, TP: tp}
	p.cfgExperts = c.Experts
	d, h, E, V := c.Dim, c.Hidden, c.Experts, c.Vocab
	El := hi - lo
	dl := d / tp
	p.add("embed", true, V, d)
	for l := 0; l < c.Layers; l++ {
		p.add(pname(l, "attn_norm"), false, d)
		p.add(pname(l, "wqkv"), true, d, 3*dl)
		if tp > 1 {
			p.shard([]int{d, 3 * d}, func(full, w []float32) {
				for i := 0; i < d; i++ {
					for part := 0; part < 3; part++ {
						copy(w[i*3*dl+part*dl:i*3*dl+(part+1)*dl], full[i*3*d+part*d+tpRank*dl:])
					}
				}
			}, func(full, w []float32) {
				for i := 0; i < d; i++ {
					for part := 0; part < 3; part++ {
						copy(full[i*3*d+part*d+tpRank*dl:i*3*d+part*d+(tpRank+1)*dl], w[i*3*dl+part*dl:])
					}
				}
			})
		}
		p.add(pname(l, "wo"), true, dl, d)
		if tp > 1 {
			p.shard([]int{d, d}, func(full, w []float32) { copy(w, full[tpRank*dl*d:(tpRank+1)*dl*d]) },
				func(full, w []float32) { copy(full[tpRank*dl*d:(tpRank+1)*dl*d], w) })
		}
		p.add(pname(l, "ffn_norm"), false, d)
		if c.IsMoE(l) {
			p.add(pname(l, "router"), true, d, E)
			p.partial(tp)
			p.addExpert(pname(l, "w1"), El, d, h)
			p.partial(tp)
			p.addExpert(pname(l, "w3"), El, d, h)
			p.partial(tp)
			p.addExpert(pname(l, "w2"), El, h, d)
			p.partial(tp)
			if c.Shared > 0 {
				p.add(pname(l, "shared_w1"), true, c.Shared, d, h)
				p.partial(tp)
				p.add(pname(l, "shared_w3"), true, c.Shared, d, h)
				p.partial(tp)
				p.add(pname(l, "shared_w2"), true, c.Shared, h, d)
				p.partial(tp)
			}
		} else {
			hd := c.DenseHidden
			p.add(pname(l, "w1"), true, 1, d, hd)
			p.add(pname(l, "w3"), true, 1, d, hd)
			p.add(pname(l, "w2"), true, 1, hd, d)
		}
	}
	p.add("final_norm", false, d)
	p.add("head", true, d, V)
	return p
}

// Init fills the parameters deterministically from seed: N(0, InitStd) for
// matrices, 1 for norm gains. Every tensor, and every expert of a routed
// expert tensor, draws from its own stream keyed by (seed, name, global
// expert index), so a model holding a subset of the experts gets exactly
// the values the whole model has for them.
//
// The streams are independent, so they are drawn on all cores (the
// result does not depend on how many).
func (p *Params) Init(c Config, seed uint64) {
	var jobs []func()
	for _, q := range p.List {
		w := p.Data[q.Offset : q.Offset+q.Size]
		if !q.Decay {
			for i := range w {
				w[i] = 1
			}
			continue
		}
		h := fnv.New64a()
		h.Write([]byte(q.Name))
		key := h.Sum64()
		if q.TP == TPSharded {
			jobs = append(jobs, func() {
				n := 1
				for _, s := range q.full {
					n *= s
				}
				full := make([]float32, n)
				fillNormal(full, seed, key, c.InitStd)
				q.slice(full, w)
			})
			continue
		}
		parts, per := 1, q.Size
		if q.Expert {
			parts, per = q.Shape[0], q.Size/q.Shape[0]
		}
		for e := 0; e < parts; e++ {
			stream := key
			if q.Expert {
				stream = key ^ uint64(p.ExpertLo+e+1)*0x9e3779b97f4a7c15
			}
			jobs = append(jobs, func() { fillNormal(w[e*per:(e+1)*per], seed, stream, c.InitStd) })
		}
	}
	parallelFor(len(jobs), func(_, i int) { jobs[i]() })
	clear(p.Grad)
}

// fillNormal draws w from N(0, std) with the PCG stream (seed, stream).
func fillNormal(w []float32, seed, stream uint64, std float64) {
	rng := rand.New(rand.NewPCG(seed, stream))
	for i := range w {
		w[i] = float32(rng.NormFloat64() * std)
	}
}

// GradNorm returns the L2 norm of all gradients: vectorised float32 dot
// products over blocks of 1024, summed in float64.
func (p *Params) GradNorm() float64 {
	const block = 1024
	g := p.Grad
	var s float64
	for i := 0; i < len(g); i += block {
		b := g[i:min(i+block, len(g))]
		s += float64(kernels.Dot(b, b))
	}
	return math.Sqrt(s)
}
