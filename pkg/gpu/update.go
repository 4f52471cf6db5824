package gpu

import (
	"context"
	"fmt"
	"math"

	"github.com/switchyard-ml/switchyard/pkg/optim"
)

// GradNorm is the L2 norm of every gradient: float64 partial sums on the
// device, added in order on the host (the same every run).
func (m *Model) GradNorm(ctx context.Context) (float64, error) {
	s, err := m.GradSumSq(0, int(m.nPar))
	if err != nil {
		return 0, err
	}
	return math.Sqrt(s), ctx.Err()
}

// GradSumSq is the sum of the squares of the gradient's floats [off,
// off+n) (a part of the norm: with expert parallelism the experts' part
// is summed over the group).
func (m *Model) GradSumSq(off, n int) (float64, error) {
	m.prof.mark(regOptim)
	if off < 0 || n < 0 || int64(off+n) > m.nPar {
		return 0, fmt.Errorf("gpu: gradient range [%d, %d) of %d", off, off+n, m.nPar)
	}
	if n == 0 {
		return 0, nil
	}
	if err := m.k.sumsq(m.buf.normPart, m.buf.g.Add(int64(off)*4), int64(n)); err != nil {
		return 0, err
	}
	part := make([]float64, sumsqBlocks(int64(n)))
	if err := download(m.dev, part, m.buf.normPart); err != nil {
		return 0, fmt.Errorf("gpu: gradient norm: %w", err)
	}
	var s float64
	for _, v := range part {
		s += v
	}
	return s, nil
}

// Update applies one AdamW step (pkg/optim's formula, the same bias
// correction) with learning rate lr to the gradients times clipScale,
// refreshes the bf16 copy in the same pass, and clears the gradients.
func (m *Model) Update(cfg optim.Config, lr, clipScale float64) error {
	m.prof.mark(regOptim)
	m.steps++
	b1, b2 := cfg.Beta1, cfg.Beta2
	bc1 := float32(1 - math.Pow(b1, float64(m.steps)))
	bc2 := float32(1 - math.Pow(b2, float64(m.steps)))
	for _, r := range m.decayRuns() {
		wd := float32(0)
		if r.decay {
			wd = float32(cfg.WeightDecay)
		}
		off := r.off
		a := adamArgs{p: m.buf.w.Add(off * 4), g: m.buf.g.Add(off * 4), m: m.buf.m.Add(off * 4), v: m.buf.v.Add(off * 4), n: r.n,
			lr: float32(lr), b1: float32(b1), b2: float32(b2), eps: float32(cfg.Eps), wd: wd, bc1: bc1, bc2: bc2, gscale: float32(clipScale)}
		if m.buf.wb != 0 {
			a.pb = m.buf.wb.Add(off * 2)
		}
		if err := m.k.adamw(a); err != nil {
			return err
		}
	}
	return m.ZeroGrad()
}

type decayRun struct {
	off, n int64
	decay  bool
}

// decayRuns are the maximal runs of consecutive parameters with the same
// weight-decay flag.
func (m *Model) decayRuns() []decayRun {
	var runs []decayRun
	for _, q := range m.P.List {
		if n := len(runs); n > 0 && runs[n-1].decay == q.Decay && runs[n-1].off+runs[n-1].n == int64(q.Offset) {
			runs[n-1].n += int64(q.Size)
			continue
		}
		runs = append(runs, decayRun{off: int64(q.Offset), n: int64(q.Size), decay: q.Decay})
	}
	return runs
}
