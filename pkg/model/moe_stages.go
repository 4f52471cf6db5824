package model

// The four stages of an MoE layer, each a forward/backward pair over
// explicit buffers (no op state), in the order they run:
//
//	router:   x [T,d], Wr [d,E] -> logitsTE, probsTE [T,E] -> idxTK, wTK [T,k], plan
//	dispatch: x [T,d], plan -> xeSD [S,d]   kept slots, grouped by expert
//	experts:  xeSD [S,d] -> yeSD [S,d]      one SwiGLU block per expert (ffn.go),
//	                                        local or over the expert-parallel group (ep.go)
//	combine:  yeSD [S,d], wTK [T,k], plan -> yTD [T,d]
//
// T tokens routed by this rank, E experts, top-k choices per token, S <= T*k
// kept slots (the capacity may drop some). plan.Token[s] and plan.Choice[s]
// name the (token, choice) of slot s. Backward runs the stages in reverse:
// combine (dy -> dyeSD, dwTK), experts (dyeSD -> dxeSD, expert weight
// gradients), dispatch (dxeSD -> dx), router (dwTK -> dlogitsTE, plus the
// auxiliary losses' gradient -> dWr, dx).

import (
	"github.com/switchyard-ml/switchyard/pkg/kernels"
	"github.com/switchyard-ml/switchyard/pkg/router"
)

// moeShape is one MoE layer's sizes on this rank.
type moeShape struct {
	T, d, h, E, k int // tokens routed here, width, expert hidden, experts, top-k
	// with tensor parallelism the op sees tFull tokens and routes
	// [off, off+T) of them; otherwise off = 0 and T = tFull
	off, tFull int
	capacity   int // slots per expert; 0: dropless
}

// routerState is the router's weights and what its forward keeps for the
// backward.
type routerState struct {
	wDE, gwDE         []float32 // [d,E] router weights and their gradient
	logitsTE, probsTE []float32 // [T,E]
	idxTK             []int32   // [T,k] selected experts
	wTK               []float32 // [T,k] combine weights
	plan              router.Plan
	renormalize       bool      // combine weights renormalised over the k choices
	dwTK              []float32 // [T,k]
	dProbsTE, dLogits []float32 // [T,E]
}

func newRouterState(s moeShape, w, gw []float32, renormalize bool) routerState {
	return routerState{wDE: w, gwDE: gw, renormalize: renormalize,
		logitsTE: make([]float32, s.T*s.E), probsTE: make([]float32, s.T*s.E),
		idxTK: make([]int32, s.T*s.k), wTK: make([]float32, s.T*s.k)}
}

func (r *routerState) allocBackward(s moeShape) {
	r.dwTK = make([]float32, s.T*s.k)
	r.dProbsTE = make([]float32, s.T*s.E)
	r.dLogits = make([]float32, s.T*s.E)
}

// routerForward: logits = x Wr, probs = softmax(logits), the top-k of probs
// (selected with biasE added when non-nil), their combine weights and the
// dispatch plan of the kept choices.
func routerForward(r *routerState, s moeShape, xTD, biasE []float32) error {
	T, d, E, k := s.T, s.d, s.E, s.k
	kernels.Default().Sgemm(false, false, T, E, d, 1, xTD, d, r.wDE, E, 0, r.logitsTE, E)
	copy(r.probsTE, r.logitsTE)
	for t := 0; t < T; t++ {
		kernels.Softmax(r.probsTE[t*E : (t+1)*E])
	}
	router.TopK(r.probsTE, T, E, k, biasE, r.idxTK)
	router.Weights(r.probsTE, T, E, k, r.idxTK, r.renormalize, r.wTK)
	return r.plan.Build(r.idxTK, T, E, k, s.capacity)
}

// routerBackward takes r.dwTK (from combineBackward) through the weights
// and the softmax to r.dLogits, lets aux add the auxiliary losses'
// gradient there, then accumulates gwDE += x^T dLogits and
// dxTD += dLogits Wr^T.
func routerBackward(r *routerState, s moeShape, xTD, dxTD []float32, aux func(dLogitsTE []float32) error) error {
	T, d, E, k := s.T, s.d, s.E, s.k
	clear(r.dProbsTE)
	router.WeightsBackward(r.probsTE, T, E, k, r.idxTK, r.wTK, r.dwTK, r.renormalize, r.dProbsTE)
	for t := 0; t < T; t++ {
		p, dp, dz := r.probsTE[t*E:(t+1)*E], r.dProbsTE[t*E:(t+1)*E], r.dLogits[t*E:(t+1)*E]
		dot := kernels.Dot(p, dp)
		for j := range p {
			dz[j] = p[j] * (dp[j] - dot)
		}
	}
	if err := aux(r.dLogits); err != nil {
		return err
	}
	blas := kernels.Default()
	blas.Sgemm(true, false, d, E, T, 1, xTD, d, r.dLogits, E, 1, r.gwDE, E)
	blas.Sgemm(false, true, T, d, E, 1, r.dLogits, E, r.wDE, E, 1, dxTD, d)
	return nil
}

// dispatchForward gathers the token of every kept slot: xeSD[s] = x[token(s)].
func dispatchForward(p *router.Plan, xTD, xeSD []float32, d int) {
	for s := range p.Slots() {
		t := int(p.Token[s])
		copy(xeSD[s*d:(s+1)*d], xTD[t*d:(t+1)*d])
	}
}

// dispatchBackward scatters the slots' input gradients back to their
// tokens: dx[token(s)] += dxeSD[s].
func dispatchBackward(p *router.Plan, dxeSD, dxTD []float32, d int) {
	for s := range p.Slots() {
		t := int(p.Token[s])
		kernels.Axpy(1, dxeSD[s*d:(s+1)*d], dxTD[t*d:(t+1)*d])
	}
}

// combineForward sets y[t] = sum over t's kept choices c of
// w[t,c] * ye[slot(t,c)].
func combineForward(p *router.Plan, wTK, yeSD, yTD []float32, d, k int) {
	clear(yTD)
	for s := range p.Slots() {
		t, c := int(p.Token[s]), int(p.Choice[s])
		kernels.Axpy(wTK[t*k+c], yeSD[s*d:(s+1)*d], yTD[t*d:(t+1)*d])
	}
}

// combineBackward sets dye[s] = w[t,c] * dy[t] and dw[t,c] = <dy[t], ye[s]>
// for every kept slot s of (t, c); dropped choices get dw = 0.
func combineBackward(p *router.Plan, wTK, yeSD, dyTD, dyeSD, dwTK []float32, d, k int) {
	clear(dwTK)
	for s := range p.Slots() {
		t, c := int(p.Token[s]), int(p.Choice[s])
		dyt := dyTD[t*d : (t+1)*d]
		dwTK[t*k+c] = kernels.Dot(dyt, yeSD[s*d:(s+1)*d])
		dst := dyeSD[s*d : (s+1)*d]
		w := wTK[t*k+c]
		for i, v := range dyt {
			dst[i] = w * v
		}
	}
}
