package model

import "time"

// Profile accumulates wall time per part of the step when enabled. The tape
// machine runs ops one at a time, so plain fields suffice.
type Profile struct {
	Enabled   bool
	Attention time.Duration // attention core (RoPE, scores, softmax, values), forward and backward
	Experts   time.Duration // expert and dense SwiGLU GEMMs, dispatch and combine
	Router    time.Duration // router matmul, softmax, top-k, plan, LBL statistics and gradients
	GraphGEMM time.Duration // gorgonia's matmuls: q/k/v and output projections, head (forward and backward)
	NormsLoss time.Duration // embedding, RMSNorms, cross-entropy
}

var prof Profile

// EnableProfile turns the process-wide step profile on or off and clears it.
func EnableProfile(on bool) { prof = Profile{Enabled: on} }

// ReadProfile returns the accumulated profile.
func ReadProfile() Profile { return prof }

// since adds the time elapsed from start to *d when profiling.
func since(d *time.Duration, start time.Time) {
	if prof.Enabled {
		*d += time.Since(start)
	}
}
