package model

// Tensor parallelism (Megatron style) for attention, and the DeepSpeed-TED
// token split for the MoE layer. The tensor-parallel ranks of a group see
// the same tokens:
//
//   - attention: the input goes through tpCopy (identity forward, gradient
//     all-reduced backward) into this rank's column slice of wqkv (its
//     heads), the attention core runs on those heads, the row slice of wo
//     gives a partial output that tpReduce all-reduces (identity backward);
//   - MoE: each rank takes its 1/tp of the tokens (whole sequences), so the
//     duplicates never reach the router, the LBL statistics or the expert
//     all-to-all, and an all-gather restores every token's output (and, in
//     backward, every token's input gradient).
//
//	xTD [T,d] replicated activations; dl = d/tp; Tl = T/tp

import (
	"context"
	"fmt"
	"time"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// TensorGroup is what tensor parallelism needs from the parallel runtime.
type TensorGroup interface {
	Rank() int
	Size() int
	// AllReduceSum sums buf over the group in place.
	AllReduceSum(ctx context.Context, buf []float32) error
	// AllGatherEqual fills buf, made of Size() equal blocks in rank order,
	// with every rank's own block.
	AllGatherEqual(ctx context.Context, buf []float32) error
}

// WithTensorParallel splits attention heads and MoE tokens over tg.
func WithTensorParallel(tg TensorGroup) Option { return func(o *options) { o.tp = tg } }

// tpCommOp is tpCopy (reduceForward false) or tpReduce (true): [T,d] ->
// [T,d], an all-reduce in one direction and the identity in the other.
type tpCommOp struct {
	opBase
	tg            TensorGroup
	reduceForward bool
	outTD, dTD    []float32
	outVal, dVal  *tensor.Dense
}

func newTPCommOp(base opBase, tg TensorGroup, reduceForward bool, T, d int) *tpCommOp {
	o := &tpCommOp{opBase: base.shaped([]int{2}, tensor.Shape{T, d}), tg: tg, reduceForward: reduceForward}
	o.outTD = make([]float32, T*d)
	o.outVal = dense(o.outTD, T, d)
	return o
}

func (o *tpCommOp) run(dst, src []float32, reduce bool) error {
	copy(dst, src)
	if !reduce {
		return nil
	}
	defer o.env.since(partAttention, time.Now())
	if err := o.tg.AllReduceSum(o.env.ctx, dst); err != nil {
		return o.env.failed(fmt.Errorf("model: tensor-parallel all-reduce: %w", err))
	}
	return nil
}

func (o *tpCommOp) Do(in ...G.Value) (G.Value, error) {
	if err := o.run(o.outTD, f32(in[0]), o.reduceForward); err != nil {
		return nil, err
	}
	return o.outVal, nil
}

func (o *tpCommOp) DiffWRT(int) []bool { return []bool{true} }

func (o *tpCommOp) SymDiff(in G.Nodes, out, grad *G.Node) (G.Nodes, error) {
	o.dTD = make([]float32, len(o.outTD))
	o.dVal = dense(o.dTD, o.out[0], o.out[1])
	g := &tpCommGradOp{opBase: o.derive("/grad", []int{2}, o.out), fwd: o}
	n, err := G.ApplyOp(g, grad)
	return G.Nodes{n}, err
}

type tpCommGradOp struct {
	opBase
	fwd *tpCommOp
}

func (g *tpCommGradOp) Do(in ...G.Value) (G.Value, error) {
	o := g.fwd
	if err := o.run(o.dTD, f32(in[0]), !o.reduceForward); err != nil {
		return nil, err
	}
	return o.dVal, nil
}
