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
	fail          *error
	outTD, dTD    []float32
	outVal, dVal  *tensor.Dense
}

func newTPCommOp(tag string, tg TensorGroup, reduceForward bool, T, d int, fail *error) *tpCommOp {
	o := &tpCommOp{opBase: opBase{tag: tag, inDims: []int{2}, out: tensor.Shape{T, d}}, tg: tg, reduceForward: reduceForward, fail: fail}
	o.outTD = make([]float32, T*d)
	o.outVal = dense(o.outTD, T, d)
	return o
}

func (o *tpCommOp) run(dst, src []float32, reduce bool) error {
	copy(dst, src)
	if !reduce {
		return nil
	}
	defer since(&prof.Attention, time.Now())
	if err := o.tg.AllReduceSum(context.Background(), dst); err != nil {
		err = fmt.Errorf("model: tensor-parallel all-reduce: %w", err)
		*o.fail = err
		return err
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
	g := &tpCommGradOp{opBase: opBase{tag: o.tag + "/grad", inDims: []int{2}, out: o.out}, fwd: o}
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
