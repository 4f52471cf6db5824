package model

// The small dense custom ops: token embedding, RMSNorm and the
// cross-entropy loss. Each is a gorgonia op whose Do runs a hand-written
// kernel over Go-owned buffers, and whose SymDiff returns a matching
// gradient op. Shapes: T tokens, d model width, V vocabulary.

import (
	"math"
	"time"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/switchyard-ml/switchyard/pkg/kernels"
)

// ---- embedding: wte [V,d] -> x [T,d] (gather by Batch.Tokens) ----

type embedOp struct {
	opBase
	batch  *Batch
	V, d   int
	outTD  []float32
	outVal *tensor.Dense
}

func newEmbedOp(base opBase, b *Batch, V, d int) *embedOp {
	T := b.T()
	o := &embedOp{opBase: base.shaped([]int{2}, tensor.Shape{T, d}), batch: b, V: V, d: d}
	o.outTD = make([]float32, T*d)
	o.outVal = dense(o.outTD, T, d)
	return o
}

func (o *embedOp) Do(in ...G.Value) (G.Value, error) {
	defer o.env.since(partNormsLoss, time.Now())
	w := f32(in[0])
	d := o.d
	for t, tok := range o.batch.Tokens {
		copy(o.outTD[t*d:(t+1)*d], w[int(tok)*d:(int(tok)+1)*d])
	}
	return o.outVal, nil
}

func (o *embedOp) DiffWRT(int) []bool { return []bool{true} }

func (o *embedOp) SymDiff(in G.Nodes, out, grad *G.Node) (G.Nodes, error) {
	g := &embedGradOp{opBase: o.derive("/grad", []int{2, 2}, tensor.Shape{o.V, o.d}), fwd: o}
	g.dwVD = make([]float32, o.V*o.d)
	g.val = dense(g.dwVD, o.V, o.d)
	n, err := G.ApplyOp(g, in[0], grad)
	return G.Nodes{n}, err
}

type embedGradOp struct {
	opBase
	fwd  *embedOp
	dwVD []float32
	val  *tensor.Dense
}

func (o *embedGradOp) Do(in ...G.Value) (G.Value, error) {
	defer o.env.since(partNormsLoss, time.Now())
	dy := f32(in[1])
	d := o.fwd.d
	clear(o.dwVD)
	for t, tok := range o.fwd.batch.Tokens {
		kernels.Axpy(1, dy[t*d:(t+1)*d], o.dwVD[int(tok)*d:(int(tok)+1)*d])
	}
	return o.val, nil
}

// ---- RMSNorm: (x [T,d], g [d]) -> y [T,d] ----

type rmsNormOp struct {
	opBase
	T, d   int
	eps    float32
	yTD    []float32
	rstdT  []float32
	yVal   *tensor.Dense
	dgD    []float32 // filled by the dx gradient op, returned by the dg one
	dgVal  *tensor.Dense
	dxTD   []float32
	dxVal  *tensor.Dense
	hasBwd bool
}

func newRMSNormOp(base opBase, T, d int, eps float32) *rmsNormOp {
	o := &rmsNormOp{opBase: base.shaped([]int{2, 1}, tensor.Shape{T, d}), T: T, d: d, eps: eps}
	o.yTD = o.fwdBuf("rmsnorm.y", T*d)
	o.rstdT = make([]float32, T)
	o.yVal = dense(o.yTD, T, d)
	return o
}

func (o *rmsNormOp) Do(in ...G.Value) (G.Value, error) {
	defer o.env.since(partNormsLoss, time.Now())
	kernels.RMSNorm(o.yTD, o.rstdT, f32(in[0]), f32(in[1]), o.T, o.d, o.eps)
	return o.yVal, nil
}

func (o *rmsNormOp) DiffWRT(int) []bool { return []bool{true, true} }

func (o *rmsNormOp) SymDiff(in G.Nodes, out, grad *G.Node) (G.Nodes, error) {
	if !o.hasBwd {
		o.hasBwd = true
		o.dxTD = make([]float32, o.T*o.d)
		o.dxVal = dense(o.dxTD, o.T, o.d)
		o.dgD = make([]float32, o.d)
		o.dgVal = dense(o.dgD, o.d)
	}
	gx := &rmsNormGradX{opBase: o.derive("/dx", []int{2, 1, 2}, tensor.Shape{o.T, o.d}), fwd: o}
	dx, err := G.ApplyOp(gx, in[0], in[1], grad)
	if err != nil {
		return nil, err
	}
	gg := &rmsNormGradG{opBase: o.derive("/dg", []int{2}, tensor.Shape{o.d}), fwd: o}
	dg, err := G.ApplyOp(gg, dx)
	if err != nil {
		return nil, err
	}
	return G.Nodes{dx, dg}, nil
}

// rmsNormGradX computes dx and, as a side effect, dg (one pass over the
// rows); rmsNormGradG depends on it and only hands dg to the graph, because a
// gorgonia op has one output.
type rmsNormGradX struct {
	opBase
	fwd *rmsNormOp
}

func (o *rmsNormGradX) Do(in ...G.Value) (G.Value, error) {
	defer o.env.since(partNormsLoss, time.Now())
	f := o.fwd
	clear(f.dgD)
	kernels.RMSNormBackward(f.dxTD, f.dgD, f32(in[2]), f32(in[0]), f32(in[1]), f.rstdT, f.T, f.d)
	return f.dxVal, nil
}

type rmsNormGradG struct {
	opBase
	fwd *rmsNormOp
}

func (o *rmsNormGradG) Do(...G.Value) (G.Value, error) { return o.fwd.dgVal, nil }

// ---- cross-entropy: logits [T,V] -> mean NLL over valid targets (scalar) ----

type xentOp struct {
	opBase
	batch  *Batch
	V      int
	probTV []float32 // softmax, kept for backward
	nllT   []float32 // per-token loss in nats (0 for padding), for per-domain eval
	nValid int
	loss   float64
	dVal   *tensor.Dense
	dTV    []float32
}

func newXentOp(base opBase, b *Batch, V int) *xentOp {
	T := b.T()
	o := &xentOp{opBase: base.shaped([]int{2}, nil), batch: b, V: V}
	o.probTV = make([]float32, T*V)
	o.nllT = make([]float32, T)
	return o
}

func (o *xentOp) Do(in ...G.Value) (G.Value, error) {
	defer o.env.since(partNormsLoss, time.Now())
	logits := f32(in[0])
	V := o.V
	copy(o.probTV, logits)
	var sum float64
	n := 0
	for t, tgt := range o.batch.Targets {
		row := o.probTV[t*V : (t+1)*V]
		if tgt < 0 {
			o.nllT[t] = 0
			continue
		}
		// log-softmax of the target with the max subtracted, in float64
		mx := row[0]
		for _, v := range row {
			mx = max(mx, v)
		}
		kernels.Softmax(row)
		var lse float64
		for _, v := range logits[t*V : (t+1)*V] {
			lse += math.Exp(float64(v - mx))
		}
		nll := math.Log(lse) - float64(logits[t*V+int(tgt)]-mx)
		o.nllT[t] = float32(nll)
		sum += nll
		n++
	}
	o.nValid = n
	o.loss = 0
	if n > 0 {
		o.loss = sum / float64(n)
	}
	v := G.F32(float32(o.loss))
	return &v, nil
}

func (o *xentOp) DiffWRT(int) []bool { return []bool{true} }

func (o *xentOp) SymDiff(in G.Nodes, out, grad *G.Node) (G.Nodes, error) {
	T := o.batch.T()
	o.dTV = make([]float32, T*o.V)
	o.dVal = dense(o.dTV, T, o.V)
	g := &xentGradOp{opBase: o.derive("/grad", []int{2, 0}, tensor.Shape{T, o.V}), fwd: o}
	n, err := G.ApplyOp(g, in[0], grad)
	return G.Nodes{n}, err
}

type xentGradOp struct {
	opBase
	fwd *xentOp
}

func (o *xentGradOp) Do(in ...G.Value) (G.Value, error) {
	defer o.env.since(partNormsLoss, time.Now())
	f := o.fwd
	V := f.V
	upstream := f32(in[1])[0]
	clear(f.dTV)
	if f.nValid == 0 {
		return f.dVal, nil
	}
	s := upstream * o.env.scale / float32(f.nValid)
	for t, tgt := range f.batch.Targets {
		if tgt < 0 {
			continue
		}
		d := f.dTV[t*V : (t+1)*V]
		for j, p := range f.probTV[t*V : (t+1)*V] {
			d[j] = s * p
		}
		d[tgt] -= s
	}
	return f.dVal, nil
}
