package optim

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/switchyard-ml/switchyard/pkg/kernels"
)

// ErrConfig is wrapped by every configuration error.
var ErrConfig = errors.New("optim: invalid config")

// Config holds AdamW and schedule settings.
type Config struct {
	LR          float64 `yaml:"lr" json:"lr"`
	MinLR       float64 `yaml:"min_lr" json:"min_lr"` // floor of the cosine decay
	Beta1       float64 `yaml:"beta1" json:"beta1"`
	Beta2       float64 `yaml:"beta2" json:"beta2"`
	Eps         float64 `yaml:"eps" json:"eps"`
	WeightDecay float64 `yaml:"weight_decay" json:"weight_decay"`
	WarmupSteps int     `yaml:"warmup_steps" json:"warmup_steps"`
	ClipNorm    float64 `yaml:"clip_norm" json:"clip_norm"` // 0: no clipping
}

// Defaults fills zero fields (PyTorch AdamW defaults, lr 3e-4).
func (c *Config) Defaults() {
	if c.LR == 0 {
		c.LR = 3e-4
	}
	if c.Beta1 == 0 {
		c.Beta1 = 0.9
	}
	if c.Beta2 == 0 {
		c.Beta2 = 0.999
	}
	if c.Eps == 0 {
		c.Eps = 1e-8
	}
}

// Validate names the first broken rule.
func (c Config) Validate() error {
	bad := func(f string, v any, rule string) error { return fmt.Errorf("%w: %s = %v: %s", ErrConfig, f, v, rule) }
	switch {
	case !(c.LR > 0) || math.IsInf(c.LR, 0):
		return bad("lr", c.LR, "must be a positive number")
	case c.MinLR < 0 || c.MinLR > c.LR:
		return bad("min_lr", c.MinLR, "must be in [0, lr]")
	case c.Beta1 < 0 || c.Beta1 >= 1:
		return bad("beta1", c.Beta1, "must be in [0, 1)")
	case c.Beta2 < 0 || c.Beta2 >= 1:
		return bad("beta2", c.Beta2, "must be in [0, 1)")
	case !(c.Eps > 0):
		return bad("eps", c.Eps, "must be > 0")
	case c.WeightDecay < 0:
		return bad("weight_decay", c.WeightDecay, "must be >= 0")
	case c.WarmupSteps < 0:
		return bad("warmup_steps", c.WarmupSteps, "must be >= 0")
	case c.ClipNorm < 0:
		return bad("clip_norm", c.ClipNorm, "must be >= 0 (0 = off)")
	}
	return nil
}

// LRAt is the learning rate of optimizer step t (0-based) of total steps:
// linear warmup over WarmupSteps, then cosine decay from LR to MinLR.
func (c Config) LRAt(t, total int) float64 {
	if c.WarmupSteps > 0 && t < c.WarmupSteps {
		return c.LR * float64(t+1) / float64(c.WarmupSteps)
	}
	span := total - c.WarmupSteps
	if span <= 1 {
		return c.LR
	}
	frac := float64(t-c.WarmupSteps) / float64(span-1)
	frac = min(max(frac, 0), 1)
	return c.MinLR + 0.5*(c.LR-c.MinLR)*(1+math.Cos(math.Pi*frac))
}

// Range is a slice [Off, Off+Len) of the flat buffers with its decay flag.
type Range struct {
	Off, Len int
	Decay    bool
}

// AdamW updates a flat parameter buffer in place from a flat gradient.
type AdamW struct {
	Cfg    Config
	Ranges []Range
	M, V   []float32
	T      int // optimizer steps taken
	chunks []Range
}

// NewAdamW makes an optimizer for n parameters split into ranges.
func NewAdamW(cfg Config, n int, ranges []Range) (*AdamW, error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &AdamW{Cfg: cfg, Ranges: ranges, M: make([]float32, n), V: make([]float32, n)}, nil
}

// ClipScale returns the factor that brings a gradient of L2 norm gnorm down
// to ClipNorm (1 when no clipping applies).
func (o *AdamW) ClipScale(gnorm float64) float64 {
	if o.Cfg.ClipNorm > 0 && gnorm > o.Cfg.ClipNorm {
		return o.Cfg.ClipNorm / (gnorm + 1e-6)
	}
	return 1
}

// Step applies one update with learning rate lr to params from grads.
func (o *AdamW) Step(params, grads []float32, lr float64) {
	o.T++
	b1, b2 := o.Cfg.Beta1, o.Cfg.Beta2
	bc1 := float32(1 - math.Pow(b1, float64(o.T)))
	bc2 := float32(1 - math.Pow(b2, float64(o.T)))
	if o.chunks == nil {
		o.chunks = splitRanges(o.Ranges, chunkLen)
	}
	// The update is element-wise, so chunks run on all cores with a result
	// independent of the split.
	workers := min(runtime.GOMAXPROCS(0), len(o.chunks))
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(o.chunks) {
					return
				}
				r := o.chunks[i]
				wd := float32(0)
				if r.Decay {
					wd = float32(o.Cfg.WeightDecay)
				}
				s, e := r.Off, r.Off+r.Len
				kernels.AdamW(params[s:e], grads[s:e], o.M[s:e], o.V[s:e], float32(lr), float32(b1), float32(b2), float32(o.Cfg.Eps), wd, bc1, bc2)
			}
		}()
	}
	wg.Wait()
}

// chunkLen is the largest piece of work one AdamW call gets (elements).
const chunkLen = 1 << 18

// splitRanges cuts ranges into pieces of at most n elements.
func splitRanges(rs []Range, n int) []Range {
	var out []Range
	for _, r := range rs {
		for off := 0; off < r.Len; off += n {
			out = append(out, Range{Off: r.Off + off, Len: min(n, r.Len-off), Decay: r.Decay})
		}
	}
	return out
}
