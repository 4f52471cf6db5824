package optim

import (
	"math"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/switchyard-ml/switchyard/pkg/kernels"
	"github.com/switchyard-ml/switchyard/pkg/runconfig"
)

// ErrConfig is wrapped by every configuration error.
var ErrConfig = runconfig.ErrOptim

// Config holds AdamW and schedule settings (runconfig.Optim).
type Config = runconfig.Optim

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
