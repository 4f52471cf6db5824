package train

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/kernels"
	"github.com/switchyard-ml/switchyard/pkg/lbl"
	"github.com/switchyard-ml/switchyard/pkg/model"
	"github.com/switchyard-ml/switchyard/pkg/parallel"
)

// Dist places a Trainer in a parallel run. The model definition knows
// nothing about it; parallelism is applied by the trainer in this order:
// data sharding (each DP rank takes a disjoint contiguous slice of every
// global micro-batch), the LBL count reducer (an all-reduce over the
// balance group, once per micro-batch with every MoE layer's counts in one
// message), the gradient all-reduce over the DP group after the last
// micro-batch, and metric/evaluation reductions.
//
// Supported today: data and expert parallelism (TP = 1). With EP > 1 the
// model holds only its EP rank's experts and exchanges tokens over the EP
// group (pkg/model's ExpertExchange); expert gradients are reduced over
// the expert-data-parallel group (ranks holding the same experts), every
// other gradient over the DP group. Tensor parallelism is refused with an
// error naming it.
type Dist struct {
	Layout parallel.Layout
	Rank   int
	// World is a communicator over every rank of the layout.
	World *parallel.Comm

	dp, balance  *parallel.Comm
	ep, expertDP *parallel.Comm // nil without expert parallelism
	dpRank       int
	runs         []gradRun
}

// gradRun is a contiguous run of the flat gradient reduced over one group.
type gradRun struct {
	off, len int
	expert   bool
}

// NewDist derives the trainer's groups from the layout.
func NewDist(layout parallel.Layout, rank int, world *parallel.Comm) (*Dist, error) {
	if layout.TP() != 1 {
		return nil, fmt.Errorf("%w: layout %s: tensor parallelism is not supported yet (tp must be 1)", ErrConfig, layout)
	}
	d := &Dist{Layout: layout, Rank: rank, World: world}
	var err error
	if d.dp, err = world.Sub("dp", layout.DPGroup(rank)); err != nil {
		return nil, fmt.Errorf("train: dp group: %w", err)
	}
	if d.balance, err = world.Sub("balance", layout.BalanceGroup(rank)); err != nil {
		return nil, fmt.Errorf("train: balance group: %w", err)
	}
	d.dpRank = layout.Coord(rank).DP
	if layout.EP() > 1 {
		if d.ep, err = world.Sub("ep", layout.EPGroup(rank)); err != nil {
			return nil, fmt.Errorf("train: ep group: %w", err)
		}
		if d.expertDP, err = world.Sub("expert-dp", layout.ExpertDPGroup(rank)); err != nil {
			return nil, fmt.Errorf("train: expert-dp group: %w", err)
		}
	}
	return d, nil
}

// modelOptions are the model options this rank's place in the layout needs.
func (d *Dist) modelOptions() []model.Option {
	if d == nil || d.ep == nil {
		return nil
	}
	return []model.Option{model.WithExpertParallel(d.ep)}
}

func (d *Dist) planRuns(p *model.Params) {
	d.runs = d.runs[:0]
	for _, q := range p.List {
		ex := q.Expert && d.ep != nil
		if n := len(d.runs); n > 0 && d.runs[n-1].expert == ex && d.runs[n-1].off+d.runs[n-1].len == q.Offset {
			d.runs[n-1].len += q.Size
			continue
		}
		d.runs = append(d.runs, gradRun{off: q.Offset, len: q.Size, expert: ex})
	}
}

// Leader reports whether this rank prints progress and writes files.
func (d *Dist) Leader() bool { return d == nil || d.Rank == 0 }

func (d *Dist) dpSize() int {
	if d == nil {
		return 1
	}
	return d.Layout.DP()
}

// reducer is the LBL count reducer: an all-reduce over the balance group.
func (d *Dist) reducer() lbl.Reducer {
	if d == nil || d.balance.Size() == 1 {
		return lbl.Identity{}
	}
	return commReducer{d.balance}
}

type commReducer struct{ c *parallel.Comm }

func (r commReducer) AllReduceSum(ctx context.Context, v []float64) error {
	return r.c.AllReduceF64(ctx, v, parallel.Sum)
}

// timedReducer measures the time the LBL count synchronisation takes.
type timedReducer struct {
	r     lbl.Reducer
	spent *time.Duration
}

func (t timedReducer) AllReduceSum(ctx context.Context, v []float64) error {
	start := time.Now()
	err := t.r.AllReduceSum(ctx, v)
	*t.spent += time.Since(start)
	return err
}

// gradBucket is the all-reduce granularity of the flat gradient (floats):
// 4 Mi floats, 16 MiB, bounds the transport's buffers.
const gradBucket = 4 << 20

// reduceGrads sums the gradients over the DP group (expert gradients over
// the expert-DP group: the owner already summed every DP rank's tokens) and
// divides by the DP size (every rank's loss is a mean over its own tokens).
func (d *Dist) reduceGrads(ctx context.Context, p *model.Params) error {
	if d == nil || d.dp.Size() == 1 {
		return nil
	}
	if d.runs == nil {
		d.planRuns(p)
	}
	g := p.Grad
	for _, r := range d.runs {
		c := d.dp
		if r.expert {
			c = d.expertDP
		}
		if c.Size() == 1 {
			continue
		}
		for off := r.off; off < r.off+r.len; off += gradBucket {
			b := g[off:min(off+gradBucket, r.off+r.len)]
			if err := c.AllReduce(ctx, b, parallel.Sum); err != nil {
				return fmt.Errorf("train: gradient all-reduce: %w", err)
			}
		}
	}
	inv := 1 / float32(d.dp.Size())
	for i := range g {
		g[i] *= inv
	}
	return nil
}

// meanDP averages float64 values over the DP group in place.
func (d *Dist) meanDP(ctx context.Context, v []float64) error {
	if err := d.sumDP(ctx, v); err != nil {
		return err
	}
	for i := range v {
		v[i] /= float64(d.dpSize())
	}
	return nil
}

// sumDP sums float64 values over the DP group in place.
func (d *Dist) sumDP(ctx context.Context, v []float64) error {
	if d == nil || d.dp.Size() == 1 {
		return nil
	}
	if err := d.dp.AllReduceF64(ctx, v, parallel.Sum); err != nil {
		return fmt.Errorf("train: metrics all-reduce: %w", err)
	}
	return nil
}

// gradNorm is the L2 norm of the whole model's gradient after reduction:
// with expert parallelism each rank holds only its experts' part, so those
// squares are summed over the EP group.
func (d *Dist) gradNorm(ctx context.Context, p *model.Params) (float64, error) {
	if d == nil || d.ep == nil {
		return p.GradNorm(), nil
	}
	if d.runs == nil {
		d.planRuns(p)
	}
	var sq [2]float64 // dense, expert
	for _, r := range d.runs {
		b := p.Grad[r.off : r.off+r.len]
		for i := 0; i < len(b); i += 1024 {
			c := b[i:min(i+1024, len(b))]
			v := float64(kernels.Dot(c, c))
			if r.expert {
				sq[1] += v
			} else {
				sq[0] += v
			}
		}
	}
	e := sq[1:]
	if err := d.ep.AllReduceF64(ctx, e, parallel.Sum); err != nil {
		return 0, fmt.Errorf("train: gradient norm: %w", err)
	}
	return math.Sqrt(sq[0] + e[0]), nil
}
