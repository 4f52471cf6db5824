package model

import (
	"context"
	"time"
)

// runEnv is what every op of one model shares while one of its programs
// runs: the caller's context, which reaches every collective (so a cancelled
// step interrupts a stuck all-to-all), the first error an op hit (reported
// instead of gorgonia's wrapping of it), the gradient scale of a micro-batch
// and the model's own step profile. The tape machine runs ops one at a
// time, so plain fields suffice; each Model has its own, so ranks in one
// process neither share nor race on it.
type runEnv struct {
	ctx   context.Context
	fail  error
	scale float32 // gradient scale of one micro-batch (1 / accumulation steps)

	profiling bool
	parts     [numParts]time.Duration

	// buffers are the buffers every layer shares (see shared).
	buffers map[sharedKey][]float32
}

type sharedKey struct {
	name string
	n    int
}

// shared is the model's one buffer called name of n floats, the same for
// every op that asks: for what lives only while one op runs (a backward's
// scratch), or in a forward-only program only until the next layer's op of
// the same kind runs (the tape runs ops one at a time, in order, and each
// layer's consumers run before the next layer). On small, sharing the MoE
// backward's scratch and the evaluation graph's forward buffers between the
// layers holds about 1.3 GB less than one set per layer, at no cost in
// time.
func (e *runEnv) shared(name string, n int) []float32 {
	k := sharedKey{name, n}
	b, ok := e.buffers[k]
	if !ok {
		if e.buffers == nil {
			e.buffers = map[sharedKey][]float32{}
		}
		b = make([]float32, n)
		e.buffers[k] = b
	}
	return b
}

// part is one slice of a step's wall time.
type part int

const (
	partAttention part = iota
	partExperts
	partRouter
	partNormsLoss
	partGraph // the rest of a run (measured by run, not by the ops)
	numParts
)

// since adds the time elapsed from start to part p when profiling.
func (e *runEnv) since(p part, start time.Time) {
	if e.profiling {
		e.parts[p] += time.Since(start)
	}
}

// failed records err as the run's error and returns it.
func (e *runEnv) failed(err error) error {
	e.fail = err
	return err
}

// run executes fn (one program run) under ctx, profiling the graph's share
// of it when enabled. The error is the op's own when one failed.
func (e *runEnv) run(ctx context.Context, fn func() error) error {
	e.ctx, e.fail = ctx, nil
	defer func() { e.ctx = nil }()
	start := time.Now()
	before := e.parts
	err := fn()
	if err != nil && e.fail != nil {
		err = e.fail
	}
	if e.profiling {
		ops := time.Duration(0)
		for p := range partGraph {
			ops += e.parts[p] - before[p]
		}
		e.parts[partGraph] += max(time.Since(start)-ops, 0)
	}
	return err
}

// Profile is the wall time of the parts of the steps run since
// EnableProfile.
type Profile struct {
	Attention time.Duration // attention core (RoPE, scores, softmax, values), forward and backward
	Experts   time.Duration // expert and dense SwiGLU GEMMs, dispatch and combine
	Router    time.Duration // router matmul, softmax, top-k, plan, LBL statistics and gradients
	NormsLoss time.Duration // embedding, RMSNorms, cross-entropy
	// Graph is the rest of the runs: gorgonia's own nodes (the q/k/v,
	// output and head matmuls and their gradients, the residual adds) and
	// the tape machine.
	Graph time.Duration
}

// EnableProfile turns this model's step profile on or off and clears it.
func (m *Model) EnableProfile(on bool) {
	m.env.profiling = on
	m.env.parts = [numParts]time.Duration{}
}

// Profile returns the time of the parts of the steps since EnableProfile.
func (m *Model) Profile() Profile {
	p := m.env.parts
	return Profile{Attention: p[partAttention], Experts: p[partExperts], Router: p[partRouter],
		NormsLoss: p[partNormsLoss], Graph: p[partGraph]}
}
