package gpu

import (
	"context"
	"math"

	"github.com/switchyard-ml/switchyard/pkg/cuda"
)

// backward runs after forward(train): from the head's logit gradient
// (m.buf.dlogits) to every parameter's gradient, accumulated (beta 1)
// into m.buf.g. The residual-stream gradient lives in m.buf.dx (float)
// with its act copy in m.buf.dxAct.
func (m *Model) backward(ctx context.Context, gradScale float32) error {
	c := m.Cfg
	T, d, V := m.T, c.Dim, c.Vocab
	m.prof.mark(regProj)
	if err := m.gemm(true, false, d, V, T, 1, m.buf.hf, d, m.buf.dlogits, V, 1, m.g("head"), V, 0, cuda.F32); err != nil {
		return err
	}
	if err := m.gemm(false, true, T, d, V, 1, m.buf.dlogits, V, m.w("head"), V, 0, 0, d, m.buf.dh, cuda.F32); err != nil {
		return err
	}
	m.prof.mark(regNorms)
	if err := m.k.rmsnormBwd(m.buf.dx, m.buf.dxAct, m.buf.part, m.g("final_norm"), m.buf.dh, m.buf.xL, m.wf("final_norm"),
		m.buf.rstdF, 0, T, d); err != nil {
		return err
	}
	for l := c.Layers - 1; l >= 0; l-- {
		L := &m.buf.layers[l]
		if c.IsMoE(l) {
			mi := 0
			for i, ml := range m.moeL {
				if ml == l {
					mi = i
				}
			}
			if err := m.moeBackward(ctx, l, mi, L, gradScale); err != nil {
				return err
			}
		} else {
			m.prof.mark(regExperts)
			if err := m.swigluBackward(T, d, c.DenseHidden, L.h2, m.buf.dxAct, m.buf.dh, L.a, L.b, L.hh,
				m.w(pname(l, "w1")), m.w(pname(l, "w3")), m.w(pname(l, "w2")),
				m.g(pname(l, "w1")), m.g(pname(l, "w3")), m.g(pname(l, "w2")), 0); err != nil {
				return err
			}
		}
		m.prof.mark(regNorms)
		// dx (now the gradient of xmid) = dx + ffn norm backward of dh
		if err := m.k.rmsnormBwd(m.buf.dx, m.buf.dxAct, m.buf.part, m.g(pname(l, "ffn_norm")), m.buf.dh, L.xmid,
			m.wf(pname(l, "ffn_norm")), L.rstd2, m.buf.dx, T, d); err != nil {
			return err
		}
		if err := m.attentionBackward(ctx, l, L); err != nil {
			return err
		}
		m.prof.mark(regNorms)
		if err := m.k.rmsnormBwd(m.buf.dx, m.buf.dxAct, m.buf.part, m.g(pname(l, "attn_norm")), m.buf.dh, L.x,
			m.wf(pname(l, "attn_norm")), L.rstd1, m.buf.dx, T, d); err != nil {
			return err
		}
	}
	return m.k.embedBwd(m.g("embed"), m.buf.dx, m.buf.order, m.buf.start, V, d)
}

// attentionBackward: from dxmid (m.buf.dxAct) to the gradient of the
// attention norm's output (float, m.buf.dh), accumulating wqkv's and wo's
// gradients. With tensor parallelism this rank's heads give a partial
// input gradient, summed over the group.
func (m *Model) attentionBackward(ctx context.Context, l int, L *layerBufs) error {
	c := m.Cfg
	B, S, T, d, H, dl := m.B, m.S, m.T, c.Dim, m.hl, m.dl
	hd := c.HeadDim()
	BH := B * H
	SS, Shd := int64(S)*int64(S), int64(S)*int64(hd)
	scale := float32(1 / math.Sqrt(float64(hd)))
	m.prof.mark(regProj)
	if err := m.gemm(true, false, dl, d, T, 1, L.attn, dl, m.buf.dxAct, d, 1, m.g(pname(l, "wo")), d, 0, cuda.F32); err != nil {
		return err
	}
	if err := m.gemm(false, true, T, dl, d, 1, m.buf.dxAct, d, m.w(pname(l, "wo")), d, 0, 0, dl, m.buf.dAttn, m.act); err != nil {
		return err
	}
	m.prof.mark(regAttention)
	if m.recompute {
		if err := m.attentionProbs(L); err != nil {
			return err
		}
	}
	if err := m.k.headsSplit(m.buf.oh, m.buf.dAttn, T, S, H, hd); err != nil {
		return err
	}
	as, ch := m.actSize(), m.attnChunk
	// by query chunks: dP = dO v^T (float), dS = softmax backward,
	// dq = dS k / sqrt(hd)
	for r0 := 0; r0 < S; r0 += ch {
		r1 := min(S, r0+ch)
		if err := m.gemmBatched(false, true, r1-r0, r1, hd, 1, m.buf.oh.Add(int64(r0*hd)*as), hd, Shd, L.v, hd, Shd,
			m.buf.scores.Add(int64(r0)*int64(S)*4), S, SS, cuda.F32, BH); err != nil {
			return err
		}
	}
	if err := m.k.softmaxCausalBwd(m.buf.ds, L.p, m.buf.scores, BH, S, ch); err != nil {
		return err
	}
	for r0 := 0; r0 < S; r0 += ch {
		r1 := min(S, r0+ch)
		if err := m.gemmBatched(false, false, r1-r0, hd, r1, scale, m.buf.ds.Add(int64(r0)*int64(S)*as), S, SS, L.k, hd, Shd,
			m.buf.dq.Add(int64(r0*hd)*as), hd, Shd, m.act, BH); err != nil {
			return err
		}
	}
	// by key chunks (only queries from the chunk on see its keys):
	// dv = P^T dO, dk = dS^T q / sqrt(hd)
	for k0 := 0; k0 < S; k0 += ch {
		k1 := min(S, k0+ch)
		diag := (int64(k0)*int64(S) + int64(k0)) * as
		if err := m.gemmBatched(true, false, k1-k0, hd, S-k0, 1, L.p.Add(diag), S, SS, m.buf.oh.Add(int64(k0*hd)*as), hd, Shd,
			m.buf.dv.Add(int64(k0*hd)*as), hd, Shd, m.act, BH); err != nil {
			return err
		}
		if err := m.gemmBatched(true, false, k1-k0, hd, S-k0, scale, m.buf.ds.Add(diag), S, SS, L.q.Add(int64(k0*hd)*as), hd, Shd,
			m.buf.dk.Add(int64(k0*hd)*as), hd, Shd, m.act, BH); err != nil {
			return err
		}
	}
	if err := m.k.qkvMerge(m.buf.dqkv, m.buf.dq, m.buf.dk, m.buf.dv, m.buf.cos, m.buf.sin, T, S, H, hd); err != nil {
		return err
	}
	m.prof.mark(regProj)
	if err := m.gemm(true, false, d, 3*dl, T, 1, L.h1, d, m.buf.dqkv, 3*dl, 1, m.g(pname(l, "wqkv")), 3*dl, 0, cuda.F32); err != nil {
		return err
	}
	if err := m.gemm(false, true, T, d, 3*dl, 1, m.buf.dqkv, 3*dl, m.w(pname(l, "wqkv")), 3*dl, 0, 0, d, m.buf.dh, cuda.F32); err != nil {
		return err
	}
	return m.tpSum(ctx, m.buf.dh, T*d, "attention input gradient")
}
