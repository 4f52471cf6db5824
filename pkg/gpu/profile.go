package gpu

import (
	"time"

	"github.com/switchyard-ml/switchyard/pkg/cuda"
)

// The parts of a step the profile splits time into.
const (
	regAttention = iota // RoPE, scores, softmax, P V and their backward
	regExperts          // expert / dense / shared SwiGLU GEMMs, dispatch, combine
	regRouter           // router GEMM, softmax, top-k, plan, statistics, router backward
	regProj             // q/k/v and output projections, head
	regNorms            // embedding, RMSNorms, cross-entropy
	regOptim            // gradient norm, AdamW
	nRegions
)

// RegionNames name the profile's parts (the bench's split keys).
var RegionNames = [nRegions]string{"attention", "experts", "router_lbl", "projections_head", "norms_embed_loss", "optimizer"}

// profiler times regions of the step with device events: mark(r) starts
// region r (ending the previous one); the time between consecutive marks
// goes to the earlier mark's region. Disabled, it costs nothing.
type profiler struct {
	dev     cuda.Device
	on      bool
	events  []cuda.Event
	regions []int
	n       int
	Total   [nRegions]time.Duration
	err     error
}

func newProfiler(dev cuda.Device) *profiler { return &profiler{dev: dev} }

// EnableProfile turns the step profile on or off and clears it.
func (m *Model) EnableProfile(on bool) {
	m.prof.on = on
	m.prof.Total = [nRegions]time.Duration{}
	m.prof.n = 0
}

// Profile returns the accumulated time per region (RegionNames order).
func (m *Model) Profile() [nRegions]time.Duration { return m.prof.Total }

func (p *profiler) begin() { p.n = 0 }

func (p *profiler) mark(r int) {
	if !p.on || p.err != nil {
		return
	}
	if p.n == len(p.events) {
		e, err := p.dev.NewEvent()
		if err != nil {
			p.err = err
			return
		}
		p.events = append(p.events, e)
		p.regions = append(p.regions, 0)
	}
	if err := p.dev.Record(p.events[p.n]); err != nil {
		p.err = err
		return
	}
	p.regions[p.n] = r
	p.n++
}

// end closes the step's timeline (call after the last device work of the
// step that is to be timed) and adds it to Total.
func (p *profiler) end() error {
	if !p.on || p.n == 0 {
		return p.err
	}
	p.mark(regNorms) // closes the last region
	for i := 0; i+1 < p.n; i++ {
		d, err := p.dev.Elapsed(p.events[i], p.events[i+1])
		if err != nil {
			return err
		}
		p.Total[p.regions[i]] += d
	}
	p.n = 0
	return p.err
}

// EndUpdate closes the timeline after Update (the optimizer region).
func (m *Model) EndUpdate() error { return m.prof.end() }
