package train

import (
	"context"
	"fmt"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/lbl"
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
// Supported today: data parallelism (TP = 1, EP = 1). Expert and tensor
// parallelism are refused with an error naming them.
type Dist struct {
	Layout parallel.Layout
	Rank   int
	// World is a communicator over every rank of the layout.
	World *parallel.Comm

	dp, balance *parallel.Comm
	dpRank      int
}

// NewDist derives the trainer's groups from the layout.
func NewDist(layout parallel.Layout, rank int, world *parallel.Comm) (*Dist, error) {
	if layout.TP() != 1 || layout.EP() != 1 {
		return nil, fmt.Errorf("%w: layout %s: tensor and expert parallelism are not supported yet (tp and ep must be 1)", ErrConfig, layout)
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
	return d, nil
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

// reduceGrads sums the gradients over the DP group and divides by its size
// (every rank's loss is a mean over its own tokens).
func (d *Dist) reduceGrads(ctx context.Context, g []float32) error {
	if d == nil || d.dp.Size() == 1 {
		return nil
	}
	for off := 0; off < len(g); off += gradBucket {
		b := g[off:min(off+gradBucket, len(g))]
		if err := d.dp.AllReduce(ctx, b, parallel.Sum); err != nil {
			return fmt.Errorf("train: gradient all-reduce: %w", err)
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
