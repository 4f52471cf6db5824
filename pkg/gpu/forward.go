package gpu

import (
	"context"
	"fmt"
	"math"

	"github.com/switchyard-ml/switchyard/pkg/cuda"
	"github.com/switchyard-ml/switchyard/pkg/lbl"
	"github.com/switchyard-ml/switchyard/pkg/model"
)

// hostState is what the host keeps between the forward and the backward
// of a micro-batch.
type hostState struct {
	valid   int       // valid tokens of the batch
	offsets [][]int32 // per MoE layer: the plan's [E+1] slot offsets
	nll     []float32 // [T]
	idx     []int32   // [T*k] (evaluation statistics)
	stats   []float32 // every MoE layer's statistics block (buffers.stats)
	bias    []float32 // [moe layers * E]
	dropped int       // choices dropped by the capacity in this micro-batch
}

// Step runs forward and backward on b (B sequences of S tokens, the
// engine's shape) and adds the gradients times gradScale (1 / micro-batches
// per optimizer step) into the device gradients. It returns the batch's
// mean cross-entropy in nats.
func (m *Model) Step(ctx context.Context, b *model.Batch, gradScale float32) (float64, error) {
	if m.bal == nil {
		return 0, fmt.Errorf("%w: training needs a balancer", ErrConfig)
	}
	m.prof.begin()
	if err := m.setBatch(b); err != nil {
		return 0, err
	}
	if err := m.uploadBias(); err != nil {
		return 0, err
	}
	scale := float32(0)
	if m.host.valid > 0 {
		scale = gradScale / float32(m.host.valid)
	}
	if err := m.forward(ctx, b, nil, true, scale); err != nil {
		return 0, err
	}
	if err := m.backward(ctx, gradScale); err != nil {
		return 0, err
	}
	loss, err := m.meanLoss(b)
	if err != nil {
		return 0, err
	}
	return loss, m.prof.end()
}

// Forward runs the forward pass on b for evaluation, recording expert
// selections per domain in stats (may be nil). It returns the per-token
// NLL in nats (0 at padding), valid until the next call.
func (m *Model) Forward(ctx context.Context, b *model.Batch, stats *model.ExpertStats) ([]float32, error) {
	if err := m.setBatch(b); err != nil {
		return nil, err
	}
	if err := m.uploadBias(); err != nil {
		return nil, err
	}
	if err := m.forward(ctx, b, stats, false, 0); err != nil {
		return nil, err
	}
	if err := download(m.dev, m.host.nll, m.buf.nll); err != nil {
		return nil, err
	}
	return m.host.nll, nil
}

// Dropped is the number of (token, choice) pairs the capacity dropped in
// the last micro-batch, over all MoE layers (of this rank's token slice
// with tensor parallelism).
func (m *Model) Dropped() int { return m.host.dropped }

func (m *Model) setBatch(b *model.Batch) error {
	if b.B != m.B || b.S != m.S {
		return fmt.Errorf("gpu: batch of %d x %d, the engine was built for %d x %d", b.B, b.S, m.B, m.S)
	}
	m.host.valid = b.SetValid()
	V := m.Cfg.Vocab
	for i, v := range b.Tokens {
		if v < 0 || int(v) >= V {
			return fmt.Errorf("gpu: token %d at %d outside the vocabulary of %d", v, i, V)
		}
	}
	for i, v := range b.Targets {
		if int(v) >= V {
			return fmt.Errorf("gpu: target %d at %d outside the vocabulary of %d", v, i, V)
		}
	}
	order, start := TokenOrder(b.Tokens, V)
	for _, c := range []struct {
		dst cuda.DevPtr
		src []int32
	}{{m.buf.tok, b.Tokens}, {m.buf.tgt, b.Targets}, {m.buf.order, order}, {m.buf.start, start}} {
		if err := upload(m.dev, c.dst, c.src); err != nil {
			return fmt.Errorf("gpu: upload batch: %w", err)
		}
	}
	if m.host.nll == nil {
		m.host.nll = make([]float32, m.T)
		m.host.offsets = make([][]int32, len(m.moeL))
		for i := range m.host.offsets {
			m.host.offsets[i] = make([]int32, m.Cfg.Experts+1)
		}
		m.host.idx = make([]int32, m.T*m.Cfg.TopK)
		m.host.stats = make([]float32, int64(len(m.moeL))*m.statsLen())
	}
	return nil
}

// uploadBias sends the balancer's selection bias (it changes only between
// optimizer steps).
func (m *Model) uploadBias() error {
	if m.bal == nil || len(m.moeL) == 0 {
		return nil
	}
	E := m.Cfg.Experts
	if m.host.bias == nil {
		m.host.bias = make([]float32, len(m.moeL)*E)
	}
	for i := range m.moeL {
		copy(m.host.bias[i*E:], m.bal.Bias(i))
	}
	return upload(m.dev, m.buf.bias, m.host.bias)
}

// meanLoss is the mean NLL over the batch's valid tokens (float64 sum).
func (m *Model) meanLoss(b *model.Batch) (float64, error) {
	if err := download(m.dev, m.host.nll, m.buf.nll); err != nil {
		return 0, err
	}
	if m.host.valid == 0 {
		return 0, nil
	}
	var s float64
	for t, v := range m.host.nll {
		if b.Valid[t] {
			s += float64(v)
		}
	}
	return s / float64(m.host.valid), nil
}

// ---- GEMM helpers (row-major, see cuda.Gemm) ----

func (m *Model) gemm(tA, tB bool, M, N, K int, alpha float32, A cuda.DevPtr, lda int, B cuda.DevPtr, ldb int,
	beta float32, C cuda.DevPtr, ldc int, D cuda.DevPtr, cd cuda.DType) error {
	g := cuda.Gemm{TransA: tA, TransB: tB, M: M, N: N, K: K, Alpha: alpha, Beta: beta, A: A, Lda: lda, B: B, Ldb: ldb,
		C: C, Ldc: ldc, D: D, Ldd: ldc, AB: m.act, CD: cd}
	if M == 0 || N == 0 {
		return nil
	}
	if err := m.dev.Gemm(&g); err != nil {
		return fmt.Errorf("gpu: gemm %dx%dx%d: %w", M, N, K, err)
	}
	return nil
}

// gemmBatched runs batch products of one shape with element strides.
func (m *Model) gemmBatched(tA, tB bool, M, N, K int, alpha float32, A cuda.DevPtr, lda int, sA int64, B cuda.DevPtr, ldb int, sB int64,
	C cuda.DevPtr, ldc int, sC int64, cd cuda.DType, batch int) error {
	g := cuda.Gemm{TransA: tA, TransB: tB, M: M, N: N, K: K, Alpha: alpha, A: A, Lda: lda, B: B, Ldb: ldb, C: C, Ldc: ldc,
		AB: m.act, CD: cd, Batch: batch, StrideA: sA, StrideB: sB, StrideC: sC, StrideD: sC}
	if err := m.dev.Gemm(&g); err != nil {
		return fmt.Errorf("gpu: batched gemm %d x %dx%dx%d: %w", batch, M, N, K, err)
	}
	return nil
}

// actSize is the act type's element size.
func (m *Model) actSize() int64 { return m.act.Size() }

// ---- forward ----

// forward runs the model on the uploaded batch. In training (train) the
// router statistics go to the balancer and the head's gradient is left in
// dlogits (scaled by lossScale); in evaluation stats (if not nil) gets the
// expert selections.
func (m *Model) forward(ctx context.Context, b *model.Batch, stats *model.ExpertStats, train bool, lossScale float32) error {
	c := m.Cfg
	T, d, V := m.T, c.Dim, c.Vocab
	m.host.dropped = 0
	x0 := m.buf.layers[0].x
	m.prof.mark(regNorms)
	if err := m.k.embedFwd(x0, m.wf("embed"), m.buf.tok, T, d); err != nil {
		return err
	}
	moeIdx := 0
	for l := 0; l < c.Layers; l++ {
		L := &m.buf.layers[l]
		next := m.buf.xL
		if l+1 < c.Layers {
			next = m.buf.layers[l+1].x
		}
		if err := m.attentionForward(ctx, l, L); err != nil {
			return err
		}
		m.prof.mark(regNorms)
		if err := m.k.rmsnormFwd(L.h2, L.rstd2, L.xmid, m.wf(pname(l, "ffn_norm")), T, d, c.NormEps); err != nil {
			return err
		}
		if c.IsMoE(l) {
			if err := m.moeForward(ctx, l, moeIdx, L, next, b, stats, train); err != nil {
				return err
			}
			moeIdx++
			continue
		}
		if err := m.denseForward(l, L, next); err != nil {
			return err
		}
	}
	m.prof.mark(regNorms)
	if err := m.k.rmsnormFwd(m.buf.hf, m.buf.rstdF, m.buf.xL, m.wf("final_norm"), T, d, c.NormEps); err != nil {
		return err
	}
	m.prof.mark(regProj)
	if err := m.gemm(false, false, T, V, d, 1, m.buf.hf, d, m.w("head"), V, 0, 0, V, m.buf.logits, cuda.F32); err != nil {
		return err
	}
	m.prof.mark(regNorms)
	dz := cuda.DevPtr(0)
	if train {
		dz = m.buf.dlogits
	}
	return m.k.xent(m.buf.nll, dz, m.buf.logits, m.buf.tgt, T, V, lossScale)
}

// attentionForward: xmid = x + attention(attn_norm(x)). With tensor
// parallelism this rank runs its heads (its column slice of wqkv, width
// dl) and the row slice of wo gives a partial output; the partials are
// summed over the group (rank 0's includes x).
func (m *Model) attentionForward(ctx context.Context, l int, L *layerBufs) error {
	c := m.Cfg
	B, S, T, d, H, dl := m.B, m.S, m.T, c.Dim, m.hl, m.dl
	hd := c.HeadDim()
	m.prof.mark(regNorms)
	if err := m.k.rmsnormFwd(L.h1, L.rstd1, L.x, m.wf(pname(l, "attn_norm")), T, d, c.NormEps); err != nil {
		return err
	}
	m.prof.mark(regProj)
	if err := m.gemm(false, false, T, 3*dl, d, 1, L.h1, d, m.w(pname(l, "wqkv")), 3*dl, 0, 0, 3*dl, m.buf.qkv, m.act); err != nil {
		return err
	}
	m.prof.mark(regAttention)
	if err := m.k.qkvSplit(L.q, L.k, L.v, m.buf.qkv, m.buf.cos, m.buf.sin, T, S, H, hd); err != nil {
		return err
	}
	SS, Shd := int64(S)*int64(S), int64(S)*int64(hd)
	as, ch := m.actSize(), m.attnChunk
	if err := m.attentionProbs(L); err != nil {
		return err
	}
	// o = P v, by chunks of c queries that need keys up to the chunk's
	// last query only
	for r0 := 0; r0 < S; r0 += ch {
		r1 := min(S, r0+ch)
		if err := m.gemmBatched(false, false, r1-r0, hd, r1, 1, L.p.Add(int64(r0)*int64(S)*as), S, SS, L.v, hd, Shd,
			m.buf.oh.Add(int64(r0*hd)*as), hd, Shd, m.act, B*H); err != nil {
			return err
		}
	}
	if err := m.k.headsMerge(L.attn, m.buf.oh, T, S, H, hd); err != nil {
		return err
	}
	m.prof.mark(regProj)
	// xmid = x + attn Wo
	beta, res := float32(1), L.x
	if m.tpRank > 0 {
		beta, res = 0, 0
	}
	if err := m.gemm(false, false, T, d, dl, 1, L.attn, dl, m.w(pname(l, "wo")), d, beta, res, d, L.xmid, cuda.F32); err != nil {
		return err
	}
	return m.tpSum(ctx, L.xmid, T*d, "attention output")
}

// attentionProbs computes layer L's attention probabilities into L.p from
// its q and k: scores = q k^T / sqrt(hd) (float), P = causal softmax, by
// chunks of c queries that need keys up to the chunk's last query only.
// The backward runs it again when the probabilities are recomputed: the
// same products of the same operands, so the same values.
func (m *Model) attentionProbs(L *layerBufs) error {
	B, S, H := m.B, m.S, m.hl
	hd := m.Cfg.HeadDim()
	SS, Shd := int64(S)*int64(S), int64(S)*int64(hd)
	scale := float32(1 / math.Sqrt(float64(hd)))
	as, ch := m.actSize(), m.attnChunk
	for r0 := 0; r0 < S; r0 += ch {
		r1 := min(S, r0+ch)
		if err := m.gemmBatched(false, true, r1-r0, r1, hd, scale, L.q.Add(int64(r0*hd)*as), hd, Shd, L.k, hd, Shd,
			m.buf.scores.Add(int64(r0)*int64(S)*4), S, SS, cuda.F32, B*H); err != nil {
			return err
		}
	}
	return m.k.softmaxCausal(L.p, m.buf.scores, B*H, S, ch)
}

// tpSum sums n floats at buf over the tensor-parallel group (nothing
// without one).
func (m *Model) tpSum(ctx context.Context, buf cuda.DevPtr, n int, what string) error {
	if m.tp == nil {
		return nil
	}
	m.prof.mark(regAttention)
	if err := m.tp.AllReduceSum(ctx, buf, n); err != nil {
		return fmt.Errorf("gpu: tensor-parallel all-reduce of the %s: %w", what, err)
	}
	return nil
}

// tpGather gives every tensor-parallel rank the whole [T][d] float buffer
// buf of which each computed its MoE token slice (nothing without one).
func (m *Model) tpGather(ctx context.Context, buf cuda.DevPtr, what string) error {
	if m.tp == nil {
		return nil
	}
	if err := m.tp.AllGather(ctx, buf, m.mT*m.Cfg.Dim); err != nil {
		return fmt.Errorf("gpu: tensor-parallel all-gather of the %s: %w", what, err)
	}
	return nil
}

// denseForward: next = xmid + swiglu(h2 W1, h2 W3) W2.
func (m *Model) denseForward(l int, L *layerBufs, next cuda.DevPtr) error {
	c := m.Cfg
	T, d, hd := m.T, c.Dim, c.DenseHidden
	m.prof.mark(regExperts)
	if err := m.gemm(false, false, T, hd, d, 1, L.h2, d, m.w(pname(l, "w1")), hd, 0, 0, hd, L.a, m.act); err != nil {
		return err
	}
	if err := m.gemm(false, false, T, hd, d, 1, L.h2, d, m.w(pname(l, "w3")), hd, 0, 0, hd, L.b, m.act); err != nil {
		return err
	}
	if err := m.k.swigluFwd(L.hh, L.a, L.b, int64(T)*int64(hd)); err != nil {
		return err
	}
	return m.gemm(false, false, T, d, hd, 1, L.hh, hd, m.w(pname(l, "w2")), d, 1, L.xmid, d, next, cuda.F32)
}

// sharedForward adds the shared experts' output on the T rows of x (act)
// into out (float).
func (m *Model) sharedForward(l int, L *layerBufs, x, out cuda.DevPtr, T int) error {
	c := m.Cfg
	d, h := c.Dim, c.Hidden
	Th := int64(T) * int64(h)
	for s := 0; s < c.Shared; s++ {
		off := int64(s) * Th * m.actSize()
		wo := int64(s) * int64(d) * int64(h) * m.actSize()
		a, b, hh := L.sa.Add(off), L.sb.Add(off), L.sh.Add(off)
		if err := m.gemm(false, false, T, h, d, 1, x, d, m.w(pname(l, "shared_w1")).Add(wo), h, 0, 0, h, a, m.act); err != nil {
			return err
		}
		if err := m.gemm(false, false, T, h, d, 1, x, d, m.w(pname(l, "shared_w3")).Add(wo), h, 0, 0, h, b, m.act); err != nil {
			return err
		}
		if err := m.k.swigluFwd(hh, a, b, Th); err != nil {
			return err
		}
		if err := m.gemm(false, false, T, d, h, 1, hh, h, m.w(pname(l, "shared_w2")).Add(wo), d, 1, out, d, out, cuda.F32); err != nil {
			return err
		}
	}
	return nil
}

// recordStats brings every MoE layer's router statistics to the host in
// one copy and records them in the balancer, which then starts the count
// all-reduce (it runs while the rest of the forward computes; the
// backward waits for it).
func (m *Model) recordStats(ctx context.Context) error {
	if err := download(m.dev, m.host.stats, m.buf.stats); err != nil {
		return fmt.Errorf("gpu: router statistics: %w", err)
	}
	n := m.statsLen()
	for i := range m.moeL {
		m.bal.RecordSummary(i, m.summary(m.host.stats[int64(i)*n:int64(i+1)*n]))
	}
	m.bal.StartSync(ctx)
	return nil
}

// summary turns one MoE layer's per-sequence statistics into the
// balancer's summary (sums over sequences in order, in float64).
func (m *Model) summary(block []float32) lbl.LayerSummary {
	hcnt, hnv, hpsum, hz := m.statsParts(block)
	c := m.Cfg
	E, k := c.Experts, c.TopK
	s := lbl.LayerSummary{CountsE: make([]float64, E), MeanProbE: make([]float64, E)}
	var z float64
	var seqSum float64
	fE, pE := make([]float64, E), make([]float64, E)
	cnt := make([]float64, E)
	for b := 0; b < m.mB; b++ {
		nv := float64(hnv[b])
		if nv == 0 {
			continue
		}
		s.Tokens += int(hnv[b])
		s.Sequences++
		z += float64(hz[b])
		for e := 0; e < E; e++ {
			s.CountsE[e] += float64(hcnt[b*E+e])
			s.MeanProbE[e] += float64(hpsum[b*E+e])
			cnt[e] = float64(hcnt[b*E+e])
			pE[e] = float64(hpsum[b*E+e]) / nv
		}
		seqSum += lbl.LossFromCounts(cnt, nv, k, pE, fE)
	}
	if s.Tokens > 0 {
		for e := range s.MeanProbE {
			s.MeanProbE[e] /= float64(s.Tokens)
		}
		s.Z = z / float64(s.Tokens)
	}
	if s.Sequences > 0 {
		s.Seq = seqSum / float64(s.Sequences)
	}
	return s
}
