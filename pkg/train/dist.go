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
// global micro-batch; tensor-parallel peers take the same one), the model's
// tensor- and expert-parallel options, the LBL count reducer (an
// all-reduce over the balance group, once per micro-batch with every MoE
// layer's counts in one message), the gradient all-reduces after the last
// micro-batch, and metric/evaluation reductions.
//
//   - TP > 1: attention is Megatron-split over the TP group and the MoE
//     layer's tokens are split over it (DeepSpeed-TED); the MoE parameters'
//     gradients are partial sums over the TP ranks' token slices and are
//     summed over the TP group first. The balance group then spans the TP
//     peers too (each holds a distinct token slice): "dp" balances over
//     every rank, "none" over the TP group (one DP rank's micro-batch).
//     Micro-batch and sequence-level LBL need a micro-batch's counts on one
//     rank and are refused with TP > 1.
//   - EP > 1: the model holds only its EP rank's experts and exchanges
//     tokens over the EP group; expert gradients are reduced over the
//     expert-data-parallel group (ranks holding the same experts), every
//     other gradient over the DP group.
type Dist struct {
	Layout parallel.Layout
	Rank   int
	// World is a communicator over every rank of the layout.
	World *parallel.Comm

	dp, balance  *parallel.Comm
	tp           *parallel.Comm // nil without tensor parallelism
	ep, expertDP *parallel.Comm // nil without expert parallelism
	dpRank       int
	runs         []gradRun
}

// gradRun is a contiguous run of the flat gradient with one treatment.
type gradRun struct {
	off, len int
	expert   bool         // reduced over the expert-DP group, not DP
	tp       model.TPKind // TPPartial: summed over the TP group first
}

// NewDist derives the trainer's groups from the layout.
func NewDist(layout parallel.Layout, rank int, world *parallel.Comm) (*Dist, error) {
	d := &Dist{Layout: layout, Rank: rank, World: world}
	var err error
	if d.dp, err = world.Sub("dp", layout.DPGroup(rank)); err != nil {
		return nil, fmt.Errorf("train: dp group: %w", err)
	}
	balance := layout.BalanceGroup(rank)
	if layout.TP() > 1 {
		if d.tp, err = world.Sub("tp", layout.TPGroup(rank)); err != nil {
			return nil, fmt.Errorf("train: tp group: %w", err)
		}
		switch layout.Balance() {
		case parallel.BalanceDP:
			balance = world.Ranks()
		case parallel.BalanceNone:
			balance = layout.TPGroup(rank)
		default:
			return nil, fmt.Errorf("%w: balance group %q with tensor parallelism is not supported (use dp or none)", ErrConfig, layout.Balance())
		}
	}
	if d.balance, err = world.Sub("balance", balance); err != nil {
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

// check refuses run settings this layout cannot honour.
func (d *Dist) check(cfg Config) error {
	if d == nil || d.tp == nil {
		return nil
	}
	bc := balancerConfig(cfg)
	if bc.MicroCoef != 0 || bc.SeqCoef != 0 {
		return fmt.Errorf("%w: lbl: micro-batch and sequence-level LBL need a whole micro-batch on one rank; with tensor parallelism (tp = %d) use lbl.mode global without micro_coef/seq_coef (with lbl.window 1 and balance none it balances each micro-batch over its tensor-parallel ranks)", ErrConfig, d.Layout.TP())
	}
	return nil
}

// tensorGroup adapts a communicator to the model's TensorGroup.
type tensorGroup struct{ c *parallel.Comm }

func (g tensorGroup) Rank() int { return g.c.Rank() }
func (g tensorGroup) Size() int { return g.c.Size() }
func (g tensorGroup) AllReduceSum(ctx context.Context, buf []float32) error {
	return g.c.AllReduce(ctx, buf, parallel.Sum)
}
func (g tensorGroup) AllGatherEqual(ctx context.Context, buf []float32) error {
	n := g.c.Size()
	counts := make([]int, n)
	for i := range counts {
		counts[i] = len(buf) / n
	}
	return g.c.AllGather(ctx, buf, counts)
}

// modelOptions are the model options this rank's place in the layout needs.
func (d *Dist) modelOptions() []model.Option {
	if d == nil {
		return nil
	}
	var o []model.Option
	if d.ep != nil {
		o = append(o, model.WithExpertParallel(d.ep))
	}
	if d.tp != nil {
		o = append(o, model.WithTensorParallel(tensorGroup{d.tp}))
	}
	return o
}

func (d *Dist) planRuns(p *model.Params) {
	d.runs = d.runs[:0]
	for _, q := range p.List {
		ex := q.Expert && d.ep != nil
		kind := q.TP
		if n := len(d.runs); n > 0 && d.runs[n-1].expert == ex && d.runs[n-1].tp == kind && d.runs[n-1].off+d.runs[n-1].len == q.Offset {
			d.runs[n-1].len += q.Size
			continue
		}
		d.runs = append(d.runs, gradRun{off: q.Offset, len: q.Size, expert: ex, tp: kind})
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
	if d == nil || (d.dp.Size() == 1 && d.tp == nil) {
		return nil
	}
	if d.runs == nil {
		d.planRuns(p)
	}
	g := p.Grad
	for _, r := range d.runs {
		if r.tp != model.TPPartial || d.tp == nil {
			continue
		}
		for off := r.off; off < r.off+r.len; off += gradBucket {
			if err := d.tp.AllReduce(ctx, g[off:min(off+gradBucket, r.off+r.len)], parallel.Sum); err != nil {
				return fmt.Errorf("train: tensor-parallel gradient all-reduce: %w", err)
			}
		}
	}
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

// meanAll averages float64 values over every rank in place (tensor-
// parallel peers hold the same loss and complementary LBL slices).
func (d *Dist) meanAll(ctx context.Context, v []float64) error {
	if d == nil || d.World.Size() == 1 {
		return nil
	}
	if err := d.World.AllReduceF64(ctx, v, parallel.Sum); err != nil {
		return fmt.Errorf("train: metrics all-reduce: %w", err)
	}
	for i := range v {
		v[i] /= float64(d.World.Size())
	}
	return nil
}

// sumAll sums float64 values over every rank in place.
func (d *Dist) sumAll(ctx context.Context, v []float64) error {
	if d == nil || d.World.Size() == 1 {
		return nil
	}
	if err := d.World.AllReduceF64(ctx, v, parallel.Sum); err != nil {
		return fmt.Errorf("train: metrics all-reduce: %w", err)
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
	if d == nil || (d.ep == nil && d.tp == nil) {
		return p.GradNorm(), nil
	}
	if d.runs == nil {
		d.planRuns(p)
	}
	// replicated (counted once), expert slices (summed over EP), TP slices
	// (summed over TP)
	var rep float64
	var exp, shard [1]float64
	for _, r := range d.runs {
		b := p.Grad[r.off : r.off+r.len]
		var v float64
		for i := 0; i < len(b); i += 1024 {
			c := b[i:min(i+1024, len(b))]
			v += float64(kernels.Dot(c, c))
		}
		switch {
		case r.expert:
			exp[0] += v
		case r.tp == model.TPSharded:
			shard[0] += v
		default:
			rep += v
		}
	}
	if d.ep != nil {
		if err := d.ep.AllReduceF64(ctx, exp[:], parallel.Sum); err != nil {
			return 0, fmt.Errorf("train: gradient norm: %w", err)
		}
	}
	if d.tp != nil {
		if err := d.tp.AllReduceF64(ctx, shard[:], parallel.Sum); err != nil {
			return 0, fmt.Errorf("train: gradient norm: %w", err)
		}
	}
	return math.Sqrt(rep + exp[0] + shard[0]), nil
}
