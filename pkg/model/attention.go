package model

// Causal multi-head self-attention with rotary position embeddings, as one
// gorgonia op: qkv [T,3d] (the output of the fused q/k/v projection, a graph
// matmul) -> out [T,d] (fed to the output projection, a graph matmul).
//
// Shapes: B sequences of S tokens (T = B*S), H heads of hd = d/H.
//
//	qkvT3D   [T][q(d) | k(d) | v(d)], head h at columns h*hd..(h+1)*hd of each part
//	qrTD,krTD [T,d] q and k after RoPE (kept for backward)
//	probBHSS [B,H,S,S] causal softmax of q k^T / sqrt(hd) (kept for backward)

import (
	"math"
	"runtime"
	"time"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/switchyard-ml/switchyard/pkg/kernels"
)

// attnBlock is the causal block size: score rows of a block of queries are
// computed only up to the block's last key, which skips most of the upper
// triangle (half the attention FLOPs at long sequences).
var attnBlock = 64

type attentionOp struct {
	opBase
	B, S, H, hd, d int
	cos, sin       []float32 // [S][hd/2]
	qrTD, krTD     []float32
	probBHSS       []float32
	outTD          []float32
	outVal         *tensor.Dense
	// backward
	dqkvT3D []float32
	dVal    *tensor.Dense
	dpW     [][]float32 // per-worker [S,S] scratch
}

// RopeTables are the rotary embedding's cos and sin tables [S][hd/2]
// (position p, pair i: angle p / base^(2i/hd)), shared by every backend.
func RopeTables(S, hd int, base float64) (cos, sin []float32) { return ropeTables(S, hd, base) }

func ropeTables(S, hd int, base float64) (cos, sin []float32) {
	half := hd / 2
	cos = make([]float32, S*half)
	sin = make([]float32, S*half)
	for p := 0; p < S; p++ {
		for i := 0; i < half; i++ {
			theta := float64(p) / math.Pow(base, float64(2*i)/float64(hd))
			cos[p*half+i] = float32(math.Cos(theta))
			sin[p*half+i] = float32(math.Sin(theta))
		}
	}
	return cos, sin
}

func newAttentionOp(base opBase, B, S, H, d int, ropeBase float64) *attentionOp {
	T := B * S
	hd := d / H
	o := &attentionOp{opBase: base.shaped([]int{2}, tensor.Shape{T, d}), B: B, S: S, H: H, hd: hd, d: d}
	o.cos, o.sin = ropeTables(S, hd, ropeBase)
	o.qrTD = o.fwdBuf("attention.q", T*d)
	o.krTD = o.fwdBuf("attention.k", T*d)
	o.probBHSS = o.fwdBuf("attention.probs", B*H*S*S)
	o.outTD = o.fwdBuf("attention.out", T*d)
	o.outVal = dense(o.outTD, T, d)
	return o
}

func (o *attentionOp) rope(row []float32, pos int, inverse bool) {
	half := o.hd / 2
	kernels.RoPERow(row, o.H, o.hd, o.cos[pos*half:(pos+1)*half], o.sin[pos*half:(pos+1)*half], inverse)
}

func (o *attentionOp) Do(in ...G.Value) (G.Value, error) {
	defer o.env.since(partAttention, time.Now())
	qkv := f32(in[0])
	B, S, H, hd, d := o.B, o.S, o.H, o.hd, o.d
	T := B * S
	for t := 0; t < T; t++ {
		copy(o.qrTD[t*d:(t+1)*d], qkv[t*3*d:t*3*d+d])
		copy(o.krTD[t*d:(t+1)*d], qkv[t*3*d+d:t*3*d+2*d])
		o.rope(o.qrTD[t*d:(t+1)*d], t%S, false)
		o.rope(o.krTD[t*d:(t+1)*d], t%S, false)
	}
	scale := float32(1 / math.Sqrt(float64(hd)))
	blas := kernels.Default()
	parallelFor(B*H, func(_, bh int) {
		b, h := bh/H, bh%H
		q := o.qrTD[b*S*d+h*hd:]
		k := o.krTD[b*S*d+h*hd:]
		v := qkv[b*S*3*d+2*d+h*hd:]
		p := o.probBHSS[bh*S*S : (bh+1)*S*S]
		out := o.outTD[b*S*d+h*hd:]
		// causal blocks: query rows [i0,i1) only need keys [0,i1)
		for i0 := 0; i0 < S; i0 += attnBlock {
			i1 := min(i0+attnBlock, S)
			blas.Sgemm(false, true, i1-i0, i1, hd, scale, q[i0*d:], d, k, d, 0, p[i0*S:], S)
			for i := i0; i < i1; i++ {
				row := p[i*S : i*S+i1]
				kernels.Softmax(row[:i+1])
				clear(row[i+1:])
			}
			blas.Sgemm(false, false, i1-i0, hd, i1, 1, p[i0*S:], S, v, 3*d, 0, out[i0*d:], d)
		}
	})
	return o.outVal, nil
}

func (o *attentionOp) DiffWRT(int) []bool { return []bool{true} }

func (o *attentionOp) SymDiff(in G.Nodes, out, grad *G.Node) (G.Nodes, error) {
	T := o.B * o.S
	o.dqkvT3D = make([]float32, T*3*o.d)
	o.dVal = dense(o.dqkvT3D, T, 3*o.d)
	g := &attentionGradOp{opBase: o.derive("/grad", []int{2, 2}, tensor.Shape{T, 3 * o.d}), fwd: o}
	n, err := G.ApplyOp(g, in[0], grad)
	return G.Nodes{n}, err
}

type attentionGradOp struct {
	opBase
	fwd *attentionOp
}

func (g *attentionGradOp) Do(in ...G.Value) (G.Value, error) {
	defer g.env.since(partAttention, time.Now())
	o := g.fwd
	qkv, dout := f32(in[0]), f32(in[1])
	B, S, H, hd, d := o.B, o.S, o.H, o.hd, o.d
	T := B * S
	scale := float32(1 / math.Sqrt(float64(hd)))
	blas := kernels.Default()
	dq := o.dqkvT3D
	if o.dpW == nil {
		o.dpW = make([][]float32, runtime.GOMAXPROCS(0))
	}
	parallelFor(B*H, func(w, bh int) {
		if o.dpW[w] == nil {
			o.dpW[w] = make([]float32, S*S)
		}
		dp := o.dpW[w]
		b, h := bh/H, bh%H
		p := o.probBHSS[bh*S*S : (bh+1)*S*S]
		v := qkv[b*S*3*d+2*d+h*hd:]
		do := dout[b*S*d+h*hd:]
		base := b * S * 3 * d
		kr, qr := o.krTD[b*S*d+h*hd:], o.qrTD[b*S*d+h*hd:]
		// Causal blocks of attnBlock rows. Within query block [i0,i1) only
		// keys [0,i1) are computed; entries above the diagonal inside the
		// diagonal block are zero, and nothing outside is ever read.
		for i0 := 0; i0 < S; i0 += attnBlock {
			i1 := min(i0+attnBlock, S)
			// dP = dout v^T ; dS = P * (dP - rowsum(P*dP)) ; dq = dS k * scale
			blas.Sgemm(false, true, i1-i0, i1, hd, 1, do[i0*d:], d, v, 3*d, 0, dp[i0*S:], S)
			for i := i0; i < i1; i++ {
				pr, dr := p[i*S:i*S+i+1], dp[i*S:i*S+i1]
				dot := kernels.Dot(pr, dr[:i+1])
				for j := range pr {
					dr[j] = pr[j] * (dr[j] - dot)
				}
				clear(dr[i+1:])
			}
			blas.Sgemm(false, false, i1-i0, hd, i1, scale, dp[i0*S:], S, kr, d, 0, dq[base+i0*3*d+h*hd:], 3*d)
		}
		// per key block [j0,j1): only queries [j0,S) see it
		// dv = P^T dout ; dk = dS^T q * scale
		for j0 := 0; j0 < S; j0 += attnBlock {
			j1 := min(j0+attnBlock, S)
			blas.Sgemm(true, false, j1-j0, hd, S-j0, 1, p[j0*S+j0:], S, do[j0*d:], d, 0, dq[base+j0*3*d+2*d+h*hd:], 3*d)
			blas.Sgemm(true, false, j1-j0, hd, S-j0, scale, dp[j0*S+j0:], S, qr[j0*d:], d, 0, dq[base+j0*3*d+d+h*hd:], 3*d)
		}
	})
	for t := 0; t < T; t++ {
		o.rope(dq[t*3*d:t*3*d+d], t%S, true)
		o.rope(dq[t*3*d+d:t*3*d+2*d], t%S, true)
	}
	return o.dVal, nil
}
