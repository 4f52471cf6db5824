package model

import "fmt"

// Resharding support: every parameter of a model that holds a slice of the
// whole (its experts under expert parallelism, its attention heads under
// tensor parallelism) maps its local values to and from the whole model's
// tensor, so a checkpoint saved under one layout loads under another.

// Layout describes which part of the whole model a Params holds.
type Layout struct {
	ExpertLo, ExpertHi int // routed experts held
	TPRank, TP         int // tensor-parallel rank and degree
}

// ParamsFor lays out (and allocates) the parameters a rank with this
// layout holds, without building a model.
func ParamsFor(c Config, l Layout) (*Params, error) {
	c.Defaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if l.TP < 1 || c.Heads%l.TP != 0 || l.TPRank < 0 || l.TPRank >= l.TP {
		return nil, fmt.Errorf("%w: tensor-parallel rank %d of %d with %d heads", ErrConfig, l.TPRank, l.TP, c.Heads)
	}
	if l.ExpertLo < 0 || l.ExpertHi > c.Experts || l.ExpertLo >= l.ExpertHi {
		return nil, fmt.Errorf("%w: expert range [%d, %d) of %d", ErrConfig, l.ExpertLo, l.ExpertHi, c.Experts)
	}
	p := buildParams(c, l.ExpertLo, l.ExpertHi, l.TPRank, l.TP)
	p.layout = l
	return p, nil
}

// Layout reports which part of the whole model p holds.
func (p *Params) Layout() Layout { return p.layout }

// GlobalSize is the number of values of q's tensor in the whole model.
func (p *Params) GlobalSize(q Param) int {
	switch {
	case q.TP == TPSharded:
		n := 1
		for _, s := range q.full {
			n *= s
		}
		return n
	case q.Expert:
		E := p.layout.ExpertHi - p.layout.ExpertLo
		return q.Size / E * p.cfgExperts
	}
	return q.Size
}

// ToGlobal copies q's local values into their place in global (the whole
// model's tensor, GlobalSize(q) values).
func (p *Params) ToGlobal(q Param, local, global []float32) {
	switch {
	case q.TP == TPSharded:
		q.unslice(global, local)
	case q.Expert:
		per := q.Size / (p.layout.ExpertHi - p.layout.ExpertLo)
		copy(global[p.layout.ExpertLo*per:], local[:q.Size])
	default:
		copy(global, local[:q.Size])
	}
}

// FromGlobal fills q's local values from the whole model's tensor.
func (p *Params) FromGlobal(q Param, global, local []float32) {
	switch {
	case q.TP == TPSharded:
		q.slice(global, local)
	case q.Expert:
		per := q.Size / (p.layout.ExpertHi - p.layout.ExpertLo)
		copy(local[:q.Size], global[p.layout.ExpertLo*per:])
	default:
		copy(local[:q.Size], global)
	}
}
