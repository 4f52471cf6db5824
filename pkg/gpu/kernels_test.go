package gpu

// Every kernel against the CPU engine's kernels (pkg/kernels, pkg/router,
// pkg/lbl) or a plain float64 loop, on random shapes including 1, odd and
// block-edge sizes, in both act types. Tolerances (relative Frobenius
// error): fp32 1e-5 (the GPU's exp/log are the hardware approximations,
// relative error ~2^-22), bf16 outputs 1e-2 against a reference fed the
// same bf16-rounded inputs. Outputs start poisoned (NaN) so an element a
// kernel forgets to write fails the comparison.

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/cuda"
	"github.com/switchyard-ml/switchyard/pkg/kernels"
	"github.com/switchyard-ml/switchyard/pkg/lbl"
	"github.com/switchyard-ml/switchyard/pkg/router"
)

type ktest struct {
	t   *testing.T
	dev cuda.Device
	k   *kern
	a   *arena
	rng *rand.Rand
	act cuda.DType
}

func newKT(t *testing.T, dev cuda.Device, act cuda.DType, seed uint64) *ktest {
	t.Helper()
	k, err := loadKern(dev, act)
	if err != nil {
		t.Fatal(err)
	}
	kt := &ktest{t: t, dev: dev, k: k, a: &arena{dev: dev}, rng: rand.New(rand.NewPCG(seed, 7)), act: act}
	t.Cleanup(func() { kt.a.free() })
	return kt
}

func (kt *ktest) must(err error) {
	kt.t.Helper()
	if err != nil {
		kt.t.Fatal(err)
	}
}

func (kt *ktest) buf(n int, t cuda.DType) cuda.DevPtr {
	kt.t.Helper()
	p, err := kt.a.alloc(int64(n), t, "test")
	kt.must(err)
	return p
}

// nanBuf is a buffer of n values of type t, every one NaN (or -1 for int).
func (kt *ktest) nanBuf(n int, t cuda.DType) cuda.DevPtr {
	kt.t.Helper()
	p := kt.buf(n, t)
	switch t {
	case cuda.F32:
		kt.must(upload(kt.dev, p, fill(n, float32(math.NaN()))))
	case cuda.BF16:
		kt.must(upload(kt.dev, p, fill(n, uint16(0x7fc0))))
	case cuda.I32:
		kt.must(upload(kt.dev, p, fill(n, int32(-1))))
	}
	return p
}

func fill[E any](n int, v E) []E {
	s := make([]E, n)
	for i := range s {
		s[i] = v
	}
	return s
}

func (kt *ktest) f32(v []float32) cuda.DevPtr {
	kt.t.Helper()
	p := kt.buf(len(v), cuda.F32)
	kt.must(upload(kt.dev, p, v))
	return p
}

func (kt *ktest) i32(v []int32) cuda.DevPtr {
	kt.t.Helper()
	p := kt.buf(len(v), cuda.I32)
	kt.must(upload(kt.dev, p, v))
	return p
}

// actIn uploads v in the act type and returns the values the kernel sees.
func (kt *ktest) actIn(v []float32) (cuda.DevPtr, []float32) {
	kt.t.Helper()
	p := kt.buf(len(v), kt.act)
	kt.must(uploadAct(kt.dev, kt.act, p, v))
	return p, kt.rounded(v)
}

func (kt *ktest) rounded(v []float32) []float32 {
	if kt.act == cuda.F32 {
		return v
	}
	out := make([]float32, len(v))
	for i, x := range v {
		out[i] = RoundBF16(x)
	}
	return out
}

func (kt *ktest) getF32(p cuda.DevPtr, n int) []float32 {
	kt.t.Helper()
	out := make([]float32, n)
	kt.must(download(kt.dev, out, p))
	return out
}

func (kt *ktest) getI32(p cuda.DevPtr, n int) []int32 {
	kt.t.Helper()
	out := make([]int32, n)
	kt.must(download(kt.dev, out, p))
	return out
}

func (kt *ktest) getAct(p cuda.DevPtr, n int) []float32 {
	kt.t.Helper()
	out, err := downloadAct(kt.dev, kt.act, p, n)
	kt.must(err)
	return out
}

// tol is the relative tolerance of an output in the act type.
func (kt *ktest) tol() float64 {
	if kt.act == cuda.BF16 {
		return 1e-2
	}
	return 1e-5
}

func randn(rng *rand.Rand, n int, scale float64) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.NormFloat64() * scale)
	}
	return v
}

// relErr is ||got-want|| / ||want|| (NaN anywhere is +Inf) and the worst
// element.
func relErr(got, want []float32) (float64, int) {
	var num, den, worst float64
	wi := -1
	for i := range want {
		g, w := float64(got[i]), float64(want[i])
		if math.IsNaN(g) || math.IsInf(g, 0) {
			return math.Inf(1), i
		}
		d := (g - w) * (g - w)
		num += d
		den += w * w
		if d > worst || wi < 0 {
			worst, wi = d, i
		}
	}
	if den == 0 {
		if num == 0 {
			return 0, wi
		}
		return math.Sqrt(num), wi
	}
	return math.Sqrt(num / den), wi
}

func checkClose(t *testing.T, what string, got, want []float32, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	if e, i := relErr(got, want); e > tol {
		t.Fatalf("%s: relative error %.3g > %.3g; worst at %d: got %v want %v", what, e, tol, i, got[i], want[i])
	}
}

// sized drops the largest case under the CPU emulator (slow: every GPU
// thread is an OS thread); a GPU runs them all.
func sized[E any](cases []E) []E {
	if emuDevice != nil {
		return cases[:len(cases)-1]
	}
	return cases
}

func eachAct(t *testing.T, f func(t *testing.T, act cuda.DType)) {
	for _, act := range []cuda.DType{cuda.F32, cuda.BF16} {
		t.Run(act.String(), func(t *testing.T) { f(t, act) })
	}
}

func TestKernelEmbedding(t *testing.T) {
	dev := testDevice(t)
	for _, sh := range []struct{ T, V, d int }{{1, 1, 1}, {7, 5, 33}, {64, 256, 130}, {300, 13, 257}} {
		kt := newKT(t, dev, cuda.F32, uint64(sh.T))
		tok := make([]int32, sh.T)
		for i := range tok {
			tok[i] = int32(kt.rng.IntN(sh.V))
		}
		w := randn(kt.rng, sh.V*sh.d, 1)
		x := kt.nanBuf(sh.T*sh.d, cuda.F32)
		kt.must(kt.k.embedFwd(x, kt.f32(w), kt.i32(tok), sh.T, sh.d))
		want := make([]float32, sh.T*sh.d)
		for t2, v := range tok {
			copy(want[t2*sh.d:(t2+1)*sh.d], w[int(v)*sh.d:])
		}
		checkClose(t, fmt.Sprintf("embed fwd %+v", sh), kt.getF32(x, sh.T*sh.d), want, 0)
		// backward: dw += scatter of dx by token, in position order
		dx := randn(kt.rng, sh.T*sh.d, 1)
		dw0 := randn(kt.rng, sh.V*sh.d, 1)
		order, start := TokenOrder(tok, sh.V)
		dw := kt.f32(dw0)
		kt.must(kt.k.embedBwd(dw, kt.f32(dx), kt.i32(order), kt.i32(start), sh.V, sh.d))
		want = append([]float32(nil), dw0...)
		acc := make([]float32, sh.V*sh.d)
		for t2, v := range tok {
			kernels.Axpy(1, dx[t2*sh.d:(t2+1)*sh.d], acc[int(v)*sh.d:(int(v)+1)*sh.d])
		}
		for i := range want {
			want[i] += acc[i]
		}
		checkClose(t, fmt.Sprintf("embed bwd %+v", sh), kt.getF32(dw, sh.V*sh.d), want, 1e-6)
	}
}

func TestKernelRMSNorm(t *testing.T) {
	dev := testDevice(t)
	eachAct(t, func(t *testing.T, act cuda.DType) {
		for _, sh := range sized([]struct{ rows, d int }{{1, 1}, {3, 17}, {33, 64}, {700, 257}}) {
			kt := newKT(t, dev, act, uint64(sh.rows*sh.d))
			R, d := sh.rows, sh.d
			x := randn(kt.rng, R*d, 1)
			g := randn(kt.rng, d, 1)
			y := kt.nanBuf(R*d, act)
			rstd := kt.nanBuf(R, cuda.F32)
			xd, gd := kt.f32(x), kt.f32(g)
			kt.must(kt.k.rmsnormFwd(y, rstd, xd, gd, R, d, 1e-5))
			wy, wr := make([]float32, R*d), make([]float32, R)
			kernels.RefRMSNorm(wy, wr, x, g, R, d, 1e-5)
			checkClose(t, fmt.Sprintf("rmsnorm fwd y %+v", sh), kt.getAct(y, R*d), wy, kt.tol())
			checkClose(t, fmt.Sprintf("rmsnorm fwd rstd %+v", sh), kt.getF32(rstd, R), wr, 1e-6)
			// backward with a residual gradient and an act copy
			dy := randn(kt.rng, R*d, 1)
			dres := randn(kt.rng, R*d, 1)
			dg0 := randn(kt.rng, d, 1)
			dx, dxAct := kt.nanBuf(R*d, cuda.F32), kt.nanBuf(R*d, act)
			nblk, _ := normParts(R)
			part := kt.nanBuf(nblk*d, cuda.F32)
			dg := kt.f32(dg0)
			kt.must(kt.k.rmsnormBwd(dx, dxAct, part, dg, kt.f32(dy), xd, gd, rstd, kt.f32(dres), R, d))
			wdx, wdg := make([]float32, R*d), append([]float32(nil), dg0...)
			kernels.RefRMSNormBackward(wdx, wdg, dy, x, g, wr, R, d)
			for i := range wdx {
				wdx[i] += dres[i]
			}
			checkClose(t, fmt.Sprintf("rmsnorm bwd dx %+v", sh), kt.getF32(dx, R*d), wdx, 1e-5)
			checkClose(t, fmt.Sprintf("rmsnorm bwd dx act %+v", sh), kt.getAct(dxAct, R*d), wdx, kt.tol())
			checkClose(t, fmt.Sprintf("rmsnorm bwd dg %+v", sh), kt.getF32(dg, d), wdg, 1e-5)
			// without a residual and without the act copy (d = 1 is all
			// cancellation: dx is rounding noise around 0)
			if d > 1 {
				kt.must(kt.k.rmsnormBwd(dx, 0, part, dg, kt.f32(dy), xd, gd, rstd, 0, R, d))
				wdx := make([]float32, R*d)
				kernels.RefRMSNormBackward(wdx, make([]float32, d), dy, x, g, wr, R, d)
				checkClose(t, fmt.Sprintf("rmsnorm bwd dx (no residual) %+v", sh), kt.getF32(dx, R*d), wdx, 1e-5)
			}
		}
	})
}

func TestKernelAttentionParts(t *testing.T) {
	dev := testDevice(t)
	eachAct(t, func(t *testing.T, act cuda.DType) {
		for _, sh := range []struct{ B, S, H, hd int }{{1, 1, 1, 2}, {2, 5, 3, 6}, {3, 33, 2, 16}} {
			kt := newKT(t, dev, act, uint64(sh.S))
			B, S, H, hd := sh.B, sh.S, sh.H, sh.hd
			T, d := B*S, H*hd
			cos, sin := ropeTables(S, hd, 10000)
			cd, sd := kt.f32(cos), kt.f32(sin)
			qkvD, qkv := kt.actIn(randn(kt.rng, T*3*d, 1))
			q, k, v := kt.nanBuf(T*d, act), kt.nanBuf(T*d, act), kt.nanBuf(T*d, act)
			kt.must(kt.k.qkvSplit(q, k, v, qkvD, cd, sd, T, S, H, hd))
			wq, wk, wv := make([]float32, T*d), make([]float32, T*d), make([]float32, T*d)
			half := hd / 2
			for tt := 0; tt < T; tt++ {
				b, s := tt/S, tt%S
				qr := append([]float32(nil), qkv[tt*3*d:tt*3*d+d]...)
				kr := append([]float32(nil), qkv[tt*3*d+d:tt*3*d+2*d]...)
				kernels.RoPERow(qr, H, hd, cos[s*half:(s+1)*half], sin[s*half:(s+1)*half], false)
				kernels.RoPERow(kr, H, hd, cos[s*half:(s+1)*half], sin[s*half:(s+1)*half], false)
				for h := 0; h < H; h++ {
					o := ((b*H+h)*S + s) * hd
					copy(wq[o:o+hd], qr[h*hd:])
					copy(wk[o:o+hd], kr[h*hd:])
					copy(wv[o:o+hd], qkv[tt*3*d+2*d+h*hd:])
				}
			}
			checkClose(t, "qkv split q", kt.getAct(q, T*d), wq, kt.tol())
			checkClose(t, "qkv split k", kt.getAct(k, T*d), wk, kt.tol())
			checkClose(t, "qkv split v", kt.getAct(v, T*d), wv, 0)
			// merge is the inverse (RoPE is a rotation)
			back := kt.nanBuf(T*3*d, act)
			kt.must(kt.k.qkvMerge(back, q, k, v, cd, sd, T, S, H, hd))
			checkClose(t, "qkv merge(split) = id", kt.getAct(back, T*3*d), qkv, 2*kt.tol())
			// heads
			outD, out := kt.actIn(randn(kt.rng, T*d, 1))
			hs := kt.nanBuf(T*d, act)
			kt.must(kt.k.headsSplit(hs, outD, T, S, H, hd))
			want := make([]float32, T*d)
			for tt := 0; tt < T; tt++ {
				b, s := tt/S, tt%S
				for h := 0; h < H; h++ {
					copy(want[((b*H+h)*S+s)*hd:][:hd], out[tt*d+h*hd:])
				}
			}
			checkClose(t, "heads split", kt.getAct(hs, T*d), want, 0)
			m := kt.nanBuf(T*d, act)
			kt.must(kt.k.headsMerge(m, hs, T, S, H, hd))
			checkClose(t, "heads merge", kt.getAct(m, T*d), out, 0)
		}
	})
}

// chunkEnd is the first key a row of query i does not need with query
// chunks of c rows (kernels.h's chunk_end).
func chunkEnd(i, S, c int) int { return min(S, (i/c+1)*c) }

// inChunks keeps the entries of each row before its chunk end and checks
// that the kernel wrote nothing after it (the NaN poison is still there).
func inChunks(t *testing.T, what string, got []float32, BH, S, c int) []float32 {
	t.Helper()
	var kept []float32
	for r := 0; r < BH*S; r++ {
		e := chunkEnd(r%S, S, c)
		kept = append(kept, got[r*S:r*S+e]...)
		for j := e; j < S; j++ {
			if !math.IsNaN(float64(got[r*S+j])) {
				t.Fatalf("%s: row %d key %d (chunk end %d) was written: %v", what, r, j, e, got[r*S+j])
			}
		}
	}
	return kept
}

func TestKernelCausalSoftmax(t *testing.T) {
	dev := testDevice(t)
	eachAct(t, func(t *testing.T, act cuda.DType) {
		for _, sh := range sized([]struct{ BH, S int }{{1, 1}, {3, 7}, {2, 64}, {2, 300}}) {
			for _, c := range []int{sh.S, max(1, sh.S/3)} {
				kt := newKT(t, dev, act, uint64(sh.S))
				BH, S := sh.BH, sh.S
				name := fmt.Sprintf("%+v chunk %d", sh, c)
				sc := randn(kt.rng, BH*S*S, 3)
				p := kt.nanBuf(BH*S*S, act)
				kt.must(kt.k.softmaxCausal(p, kt.f32(sc), BH, S, c))
				want := append([]float32(nil), sc...)
				kernels.RefSoftmaxRows(want, BH*S, S, S, func(r int) int { return r%S + 1 })
				for r := 0; r < BH*S; r++ {
					clear(want[r*S+r%S+1 : (r+1)*S])
				}
				got := kt.getAct(p, BH*S*S)
				checkClose(t, "softmax "+name, inChunks(t, "softmax "+name, got, BH, S, c), inChunks(t, "", fillChunks(want, BH, S, c), BH, S, c), kt.tol())
				// backward
				dp := randn(kt.rng, BH*S*S, 1)
				ds := kt.nanBuf(BH*S*S, act)
				kt.must(kt.k.softmaxCausalBwd(ds, p, kt.f32(dp), BH, S, c))
				wds := make([]float32, BH*S*S)
				for r := 0; r < BH*S; r++ {
					n := r%S + 1
					var dot float64
					for j := 0; j < n; j++ {
						dot += float64(got[r*S+j]) * float64(dp[r*S+j])
					}
					for j := 0; j < n; j++ {
						wds[r*S+j] = float32(float64(got[r*S+j]) * (float64(dp[r*S+j]) - dot))
					}
				}
				checkClose(t, "softmax bwd "+name, inChunks(t, "softmax bwd "+name, kt.getAct(ds, BH*S*S), BH, S, c),
					inChunks(t, "", fillChunks(wds, BH, S, c), BH, S, c), kt.tol())
			}
		}
	})
	// in place in the fp32 mode (scores and probabilities share a buffer)
	kt := newKT(t, dev, cuda.F32, 1)
	sc := randn(kt.rng, 2*9*9, 2)
	p := kt.f32(sc)
	kt.must(kt.k.softmaxCausal(p, p, 2, 9, 9))
	want := append([]float32(nil), sc...)
	kernels.RefSoftmaxRows(want, 18, 9, 9, func(r int) int { return r%9 + 1 })
	for r := 0; r < 18; r++ {
		clear(want[r*9+r%9+1 : (r+1)*9])
	}
	checkClose(t, "softmax in place", kt.getF32(p, 2*81), want, 1e-5)
}

// fillChunks is v with NaN after each row's chunk end (the shape of what
// the kernels leave untouched), for inChunks.
func fillChunks(v []float32, BH, S, c int) []float32 {
	out := append([]float32(nil), v...)
	for r := 0; r < BH*S; r++ {
		for j := chunkEnd(r%S, S, c); j < S; j++ {
			out[r*S+j] = float32(math.NaN())
		}
	}
	return out
}

// routerCase runs the router forward on random logits and returns the
// device buffers and the host copies of its outputs.
type routerCase struct {
	T, S, B, E, k         int
	logits, bias          []float32
	tgt                   []int32
	probs, lse, w         []float32
	idx                   []int32
	dProbs, dLse, dIdx    cuda.DevPtr
	dW, dTgt, dLogits     cuda.DevPtr
	renorm                bool
	valid                 []bool
	probsGotFromDeviceLen int
}

func runRouter(kt *ktest, B, S, E, k int, renorm, withBias bool, levels int) *routerCase {
	kt.t.Helper()
	T := B * S
	rc := &routerCase{T: T, S: S, B: B, E: E, k: k, renorm: renorm}
	rc.logits = randn(kt.rng, T*E, 2)
	if levels > 0 { // ties
		for i := range rc.logits {
			rc.logits[i] = float32(kt.rng.IntN(levels)) / 2
		}
	}
	if withBias {
		rc.bias = randn(kt.rng, E, 0.1)
	}
	rc.tgt = make([]int32, T)
	rc.valid = make([]bool, T)
	for i := range rc.tgt {
		rc.tgt[i] = int32(kt.rng.IntN(256))
		if kt.rng.IntN(5) == 0 {
			rc.tgt[i] = -1
		}
		rc.valid[i] = rc.tgt[i] >= 0
	}
	rc.dLogits = kt.f32(rc.logits)
	var biasD cuda.DevPtr
	if withBias {
		biasD = kt.f32(rc.bias)
	}
	rc.dProbs, rc.dLse = kt.nanBuf(T*E, cuda.F32), kt.nanBuf(T, cuda.F32)
	rc.dIdx, rc.dW = kt.nanBuf(T*k, cuda.I32), kt.nanBuf(T*k, cuda.F32)
	rc.dTgt = kt.i32(rc.tgt)
	kt.must(kt.k.routerFwd(rc.dProbs, rc.dLse, rc.dIdx, rc.dW, rc.dLogits, biasD, T, E, k, renorm))
	rc.probs, rc.lse = kt.getF32(rc.dProbs, T*E), kt.getF32(rc.dLse, T)
	rc.idx, rc.w = kt.getI32(rc.dIdx, T*k), kt.getF32(rc.dW, T*k)
	return rc
}

func TestKernelRouter(t *testing.T) {
	dev := testDevice(t)
	for _, sh := range []struct{ B, S, E, k, levels int }{{1, 1, 1, 1, 0}, {2, 7, 5, 2, 0}, {3, 33, 16, 3, 4}, {2, 100, 64, 6, 0}} {
		for _, renorm := range []bool{false, true} {
			kt := newKT(t, dev, cuda.F32, uint64(sh.S*sh.E))
			rc := runRouter(kt, sh.B, sh.S, sh.E, sh.k, renorm, sh.E > 1, sh.levels)
			T, E, k := rc.T, rc.E, rc.k
			// softmax and logsumexp against float64
			wp, wl := make([]float32, T*E), make([]float32, T)
			for tt := 0; tt < T; tt++ {
				z := rc.logits[tt*E : (tt+1)*E]
				mx := math.Inf(-1)
				for _, v := range z {
					mx = math.Max(mx, float64(v))
				}
				var s float64
				for _, v := range z {
					s += math.Exp(float64(v) - mx)
				}
				for e, v := range z {
					wp[tt*E+e] = float32(math.Exp(float64(v)-mx) / s)
				}
				wl[tt] = float32(mx + math.Log(s))
			}
			name := fmt.Sprintf("router %+v renorm=%v", sh, renorm)
			checkClose(t, name+" probs", rc.probs, wp, 1e-5)
			checkClose(t, name+" lse", rc.lse, wl, 1e-5)
			// top-k and weights: pkg/router on the device's probabilities
			// (the same values, so the same selection bit for bit)
			widx := make([]int32, T*k)
			router.TopK(rc.probs, T, E, k, rc.bias, widx)
			for i := range widx {
				if widx[i] != rc.idx[i] {
					t.Fatalf("%s: token %d experts %v, pkg/router %v", name, i/k, rc.idx[i/k*k:i/k*k+k], widx[i/k*k:i/k*k+k])
				}
			}
			ww := make([]float32, T*k)
			router.Weights(rc.probs, T, E, k, widx, renorm, ww)
			checkClose(t, name+" weights", rc.w, ww, 1e-7)
			// per-sequence statistics
			cnt, ps := kt.nanBuf(rc.B*E, cuda.F32), kt.nanBuf(rc.B*E, cuda.F32)
			nv, zz := kt.nanBuf(rc.B, cuda.F32), kt.nanBuf(rc.B, cuda.F32)
			kt.must(kt.k.routerStats(cnt, ps, nv, zz, rc.dProbs, rc.dLse, rc.dIdx, rc.dTgt, rc.B, rc.S, E, k))
			gc, gp, gn, gz := kt.getF32(cnt, rc.B*E), kt.getF32(ps, rc.B*E), kt.getF32(nv, rc.B), kt.getF32(zz, rc.B)
			for b := 0; b < rc.B; b++ {
				v := rc.valid[b*rc.S : (b+1)*rc.S]
				c := make([]float64, E)
				lbl.Counts(rc.idx[b*rc.S*k:(b+1)*rc.S*k], rc.S, E, k, v, c)
				p := make([]float64, E)
				lbl.MeanProbs(rc.probs[b*rc.S*E:(b+1)*rc.S*E], rc.S, E, v, p)
				n := lbl.ValidTokens(rc.S, v)
				if gn[b] != float32(n) {
					t.Fatalf("%s: sequence %d valid tokens %v, want %d", name, b, gn[b], n)
				}
				var z float64
				for s := 0; s < rc.S; s++ {
					if v[s] {
						z += float64(rc.lse[b*rc.S+s]) * float64(rc.lse[b*rc.S+s])
					}
				}
				checkClose(t, name+" z", gz[b:b+1], []float32{float32(z)}, 1e-5)
				for e := 0; e < E; e++ {
					if gc[b*E+e] != float32(c[e]) {
						t.Fatalf("%s: sequence %d expert %d count %v, want %v", name, b, e, gc[b*E+e], c[e])
					}
					p[e] *= float64(n)
				}
				wps := make([]float32, E)
				for e := range wps {
					wps[e] = float32(p[e])
				}
				checkClose(t, name+" prob sums", gp[b*E:(b+1)*E], wps, 1e-5)
			}
		}
	}
}

func TestKernelPlan(t *testing.T) {
	dev := testDevice(t)
	kt := newKT(t, dev, cuda.F32, 3)
	for trial := 0; trial < 12; trial++ {
		T := []int{1, 3, 97, 300, 1000}[trial%5]
		E := 1 + kt.rng.IntN(20)
		k := 1 + kt.rng.IntN(min(E, 6))
		idx := make([]int32, T*k)
		for tt := 0; tt < T; tt++ { // k distinct experts, skewed to expert 0
			perm := kt.rng.Perm(E)
			if kt.rng.IntN(2) == 0 {
				for i, e := range perm {
					if e == 0 {
						perm[0], perm[i] = perm[i], perm[0]
					}
				}
			}
			for j := 0; j < k; j++ {
				idx[tt*k+j] = int32(perm[j])
			}
		}
		capacity := []int{0, router.Capacity(T, E, k, 1.0), 1, router.Capacity(T, E, k, 1.25)}[trial%4]
		n := T * k
		C := planChunks(n)
		slotOf, tok, ch := kt.nanBuf(n, cuda.I32), kt.nanBuf(n, cuda.I32), kt.nanBuf(n, cuda.I32)
		hist, dem, kept, off := kt.nanBuf(C*E, cuda.I32), kt.nanBuf(E, cuda.I32), kt.nanBuf(E, cuda.I32), kt.nanBuf(E+1, cuda.I32)
		kt.must(kt.k.plan(slotOf, tok, ch, hist, dem, kept, off, kt.i32(idx), T, E, k, capacity))
		var p router.Plan
		if err := p.Build(idx, T, E, k, capacity); err != nil {
			t.Fatal(err)
		}
		name := fmt.Sprintf("plan T=%d E=%d k=%d cap=%d", T, E, k, capacity)
		eq := func(what string, got, want []int32) {
			t.Helper()
			for i := range want {
				if got[i] != want[i] {
					t.Fatalf("%s: %s[%d] = %d, pkg/router %d", name, what, i, got[i], want[i])
				}
			}
		}
		S := p.Slots()
		eq("offsets", kt.getI32(off, E+1), p.Offsets)
		eq("demand", kt.getI32(dem, E), p.DemandE)
		eq("slotOf", kt.getI32(slotOf, n), p.SlotOf)
		eq("token", kt.getI32(tok, S), p.Token)
		eq("choice", kt.getI32(ch, S), p.Choice)
	}
}

func TestKernelDispatchCombine(t *testing.T) {
	dev := testDevice(t)
	eachAct(t, func(t *testing.T, act cuda.DType) {
		for _, sh := range []struct{ B, S, E, k, d, capF int }{{1, 1, 1, 1, 1, 0}, {2, 9, 5, 2, 17, 0}, {2, 40, 8, 3, 64, 1}} {
			kt := newKT(t, dev, act, uint64(sh.S*sh.d))
			rc := runRouter(kt, sh.B, sh.S, sh.E, sh.k, true, false, 0)
			T, E, k, d := rc.T, rc.E, rc.k, sh.d
			capacity := 0
			if sh.capF > 0 {
				capacity = router.Capacity(T, E, k, 1.0)
			}
			var p router.Plan
			if err := p.Build(rc.idx, T, E, k, capacity); err != nil {
				t.Fatal(err)
			}
			n := T * k
			slotOf, tok, ch := kt.nanBuf(n, cuda.I32), kt.nanBuf(n, cuda.I32), kt.nanBuf(n, cuda.I32)
			C := planChunks(n)
			hist, dem, kept, off := kt.buf(C*E, cuda.I32), kt.buf(E, cuda.I32), kt.buf(E, cuda.I32), kt.buf(E+1, cuda.I32)
			kt.must(kt.k.plan(slotOf, tok, ch, hist, dem, kept, off, rc.dIdx, T, E, k, capacity))
			S := p.Slots()
			xD, x := kt.actIn(randn(kt.rng, T*d, 1))
			xe := kt.nanBuf(n*d, act)
			kt.must(kt.k.moeGather(xe, xD, tok, S, d))
			wxe := make([]float32, S*d)
			for s := 0; s < S; s++ {
				copy(wxe[s*d:(s+1)*d], x[int(p.Token[s])*d:])
			}
			checkClose(t, "gather", kt.getAct(xe, S*d), wxe, 0)
			// combine into a residual
			yeD, ye := kt.actIn(randn(kt.rng, S*d, 1))
			res := randn(kt.rng, T*d, 1)
			out := kt.nanBuf(T*d, cuda.F32)
			kt.must(kt.k.moeCombine(out, kt.f32(res), yeD, rc.dW, slotOf, rc.dIdx, T, d, k))
			comb := make([]float32, T*d)
			for s := 0; s < S; s++ {
				tt, c := int(p.Token[s]), int(p.Choice[s])
				kernels.Axpy(rc.w[tt*k+c], ye[s*d:(s+1)*d], comb[tt*d:(tt+1)*d])
			}
			want := make([]float32, T*d)
			for i := range want {
				want[i] = res[i] + comb[i]
			}
			checkClose(t, "combine", kt.getF32(out, T*d), want, 1e-6)
			// combine backward
			dy := randn(kt.rng, T*d, 1)
			dye, dw := kt.nanBuf(n*d, act), kt.nanBuf(n, cuda.F32)
			kt.must(kt.k.moeCombineBwd(dye, dw, kt.f32(dy), yeD, rc.dW, slotOf, T, d, k))
			wdye, wdw := make([]float32, S*d), make([]float32, n)
			for s := 0; s < S; s++ {
				tt, c := int(p.Token[s]), int(p.Choice[s])
				wdw[tt*k+c] = kernels.Dot(dy[tt*d:(tt+1)*d], ye[s*d:(s+1)*d])
				for i := 0; i < d; i++ {
					wdye[s*d+i] = rc.w[tt*k+c] * dy[tt*d+i]
				}
			}
			checkClose(t, "combine bwd dye", kt.getAct(dye, S*d), wdye, kt.tol())
			checkClose(t, "combine bwd dw", kt.getF32(dw, n), wdw, 1e-5)
			// scatter of the two halves of the input gradient
			dxaD, dxa := kt.actIn(randn(kt.rng, S*d+1, 1)[:max(S*d, 1)])
			dxbD, dxb := kt.actIn(randn(kt.rng, S*d+1, 1)[:max(S*d, 1)])
			dx := kt.nanBuf(T*d, cuda.F32)
			kt.must(kt.k.moeScatter(dx, dxaD, dxbD, slotOf, rc.dIdx, T, d, k))
			wdx := make([]float32, T*d)
			for s := 0; s < S; s++ {
				tt := int(p.Token[s])
				kernels.Axpy(1, dxa[s*d:(s+1)*d], wdx[tt*d:(tt+1)*d])
				kernels.Axpy(1, dxb[s*d:(s+1)*d], wdx[tt*d:(tt+1)*d])
			}
			checkClose(t, "scatter", kt.getF32(dx, T*d), wdx, 1e-6)
		}
	})
}

func TestKernelRouterBackward(t *testing.T) {
	dev := testDevice(t)
	eachAct(t, func(t *testing.T, act cuda.DType) {
		for _, sh := range []struct{ B, S, E, k int }{{1, 1, 1, 1}, {2, 9, 5, 2}, {3, 33, 16, 4}} {
			for _, renorm := range []bool{false, true} {
				kt := newKT(t, dev, act, uint64(sh.S*sh.E))
				rc := runRouter(kt, sh.B, sh.S, sh.E, sh.k, renorm, false, 0)
				T, S, E, k := rc.T, rc.S, rc.E, rc.k
				dwv := randn(kt.rng, T*k, 1)
				fE := randn(kt.rng, E, 0.1)
				const lblScale, seqScale, zScale = 0.3, 0.2, 0.1
				n := lbl.ValidTokens(T, rc.valid)
				nseq := 0
				for b := 0; b < rc.B; b++ {
					if lbl.ValidTokens(S, rc.valid[b*S:(b+1)*S]) > 0 {
						nseq++
					}
				}
				cnt, ps := kt.buf(rc.B*E, cuda.F32), kt.buf(rc.B*E, cuda.F32)
				nv, zz := kt.buf(rc.B, cuda.F32), kt.buf(rc.B, cuda.F32)
				kt.must(kt.k.routerStats(cnt, ps, nv, zz, rc.dProbs, rc.dLse, rc.dIdx, rc.dTgt, rc.B, S, E, k))
				a := &auxGrad{f: kt.f32(fE), cnt: cnt, nv: nv, renorm: renorm, T: T, S: S, E: E, topk: k,
					probs: rc.dProbs, lse: rc.dLse, tgt: rc.dTgt, idx: rc.dIdx, w: rc.dW, dw: kt.f32(dwv), outZ: kt.nanBuf(T*E, act)}
				if n > 0 {
					a.c = float32(lblScale * float64(E) / float64(n))
					a.cz = float32(2 * zScale / float64(n))
				}
				if nseq > 0 {
					a.seqScale = float32(seqScale / float64(nseq))
				}
				kt.must(kt.k.routerBwd(a))
				// reference: pkg/router and pkg/lbl in float32/float64
				dp := make([]float32, T*E)
				router.WeightsBackward(rc.probs, T, E, k, rc.idx, rc.w, dwv, renorm, dp)
				dz := make([]float32, T*E)
				for tt := 0; tt < T; tt++ {
					p, g := rc.probs[tt*E:(tt+1)*E], dp[tt*E:(tt+1)*E]
					var dot float64
					for e := range p {
						dot += float64(p[e]) * float64(g[e])
					}
					for e := range p {
						dz[tt*E+e] = float32(float64(p[e]) * (float64(g[e]) - dot))
					}
				}
				f64 := make([]float64, E)
				for e := range f64 {
					f64[e] = float64(fE[e])
				}
				lbl.AddGrad(rc.probs, T, E, rc.valid, f64, lblScale, dz)
				lbl.AddSeqGrad(rc.probs, rc.idx, T, S, E, k, rc.valid, seqScale, dz, make([]float64, E), make([]float64, E))
				lbl.AddZGrad(rc.logits, T, E, rc.valid, zScale, dz)
				checkClose(t, fmt.Sprintf("router bwd %+v renorm=%v", sh, renorm), kt.getAct(a.outZ, T*E), dz, max(kt.tol(), 2e-5))
			}
		}
	})
}

func TestKernelSwiGLU(t *testing.T) {
	dev := testDevice(t)
	eachAct(t, func(t *testing.T, act cuda.DType) {
		for _, n := range []int{1, 31, 1000, 70001} {
			kt := newKT(t, dev, act, uint64(n))
			aD, a := kt.actIn(randn(kt.rng, n, 2))
			bD, b := kt.actIn(randn(kt.rng, n, 1))
			hh := kt.nanBuf(n, act)
			kt.must(kt.k.swigluFwd(hh, aD, bD, int64(n)))
			want := make([]float32, n)
			kernels.RefSwiGLU(want, a, b)
			checkClose(t, fmt.Sprintf("swiglu fwd n=%d", n), kt.getAct(hh, n), want, kt.tol())
			dhD, dh := kt.actIn(randn(kt.rng, n, 1))
			da, db := kt.nanBuf(n, act), kt.nanBuf(n, act)
			kt.must(kt.k.swigluBwd(da, db, dhD, aD, bD, int64(n)))
			wa, wb := make([]float32, n), make([]float32, n)
			kernels.RefSwiGLUBackward(wa, wb, dh, a, b)
			checkClose(t, fmt.Sprintf("swiglu bwd da n=%d", n), kt.getAct(da, n), wa, kt.tol())
			checkClose(t, fmt.Sprintf("swiglu bwd db n=%d", n), kt.getAct(db, n), wb, kt.tol())
		}
	})
}

func TestKernelCrossEntropy(t *testing.T) {
	dev := testDevice(t)
	eachAct(t, func(t *testing.T, act cuda.DType) {
		for _, sh := range sized([]struct{ T, V int }{{1, 1}, {5, 7}, {33, 256}, {40, 300}}) {
			kt := newKT(t, dev, act, uint64(sh.T*sh.V))
			T, V := sh.T, sh.V
			z := randn(kt.rng, T*V, 3)
			tgt := make([]int32, T)
			for i := range tgt {
				tgt[i] = int32(kt.rng.IntN(V))
				if i%4 == 3 {
					tgt[i] = -1
				}
			}
			nll, dz := kt.nanBuf(T, cuda.F32), kt.nanBuf(T*V, act)
			const scale = 0.37
			kt.must(kt.k.xent(nll, dz, kt.f32(z), kt.i32(tgt), T, V, scale))
			wn, wd := make([]float32, T), make([]float32, T*V)
			for tt := 0; tt < T; tt++ {
				if tgt[tt] < 0 {
					continue
				}
				row := z[tt*V : (tt+1)*V]
				mx := math.Inf(-1)
				for _, v := range row {
					mx = math.Max(mx, float64(v))
				}
				var s float64
				for _, v := range row {
					s += math.Exp(float64(v) - mx)
				}
				wn[tt] = float32(math.Log(s) - (float64(row[tgt[tt]]) - mx))
				for j, v := range row {
					p := math.Exp(float64(v)-mx) / s
					if j == int(tgt[tt]) {
						p--
					}
					wd[tt*V+j] = float32(scale * p)
				}
			}
			checkClose(t, fmt.Sprintf("xent nll %+v", sh), kt.getF32(nll, T), wn, 1e-5)
			checkClose(t, fmt.Sprintf("xent dz %+v", sh), kt.getAct(dz, T*V), wd, max(kt.tol(), 1e-5))
			// evaluation: no gradient buffer
			kt.must(kt.k.xent(nll, 0, kt.f32(z), kt.i32(tgt), T, V, scale))
			checkClose(t, fmt.Sprintf("xent nll (eval) %+v", sh), kt.getF32(nll, T), wn, 1e-5)
		}
	})
}

func TestKernelOptimizer(t *testing.T) {
	dev := testDevice(t)
	for _, n := range sized([]int{1, 257, 100003}) {
		kt := newKT(t, dev, cuda.F32, uint64(n))
		g := randn(kt.rng, n, 1)
		// squared norm: float64 partials summed on the host
		parts := sumsqBlocks(int64(n))
		pd := kt.buf(2*parts, cuda.F32) // float64 partials: 2 floats each
		gd := kt.f32(g)
		kt.must(kt.k.sumsq(pd, gd, int64(n)))
		got := make([]float64, parts)
		kt.must(download(kt.dev, got, pd))
		var s, w float64
		for _, v := range got {
			s += v
		}
		for _, v := range g {
			w += float64(v) * float64(v)
		}
		if math.Abs(s-w) > 1e-9*w {
			t.Fatalf("sumsq n=%d: %v, want %v", n, s, w)
		}
		// AdamW with clipping and the bf16 copy
		p, m, v := randn(kt.rng, n, 1), randn(kt.rng, n, 0.01), randn(kt.rng, n, 0.01)
		for i := range v {
			v[i] = float32(math.Abs(float64(v[i])))
		}
		pD, mD, vD := kt.f32(p), kt.f32(m), kt.f32(v)
		pb := kt.nanBuf(n, cuda.BF16)
		const gs = 0.5
		kt.must(kt.k.adamw(adamArgs{p: pD, g: gd, m: mD, v: vD, pb: pb, n: int64(n), lr: 1e-3, b1: 0.9, b2: 0.999, eps: 1e-8, wd: 0.1, bc1: 0.5, bc2: 0.25, gscale: gs}))
		gsc := make([]float32, n)
		for i := range g {
			gsc[i] = g[i] * gs
		}
		kernels.RefAdamW(p, gsc, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.1, 0.5, 0.25)
		checkClose(t, "adamw p", kt.getF32(pD, n), p, 1e-6)
		checkClose(t, "adamw m", kt.getF32(mD, n), m, 1e-6)
		checkClose(t, "adamw v", kt.getF32(vD, n), v, 1e-6)
		pbh := make([]uint16, n)
		kt.must(download(kt.dev, pbh, pb))
		for i := range pbh {
			if want := F32ToBF16(kt.getF32(pD, n)[i]); pbh[i] != want {
				t.Fatalf("adamw bf16 copy [%d] = %#04x, want %#04x", i, pbh[i], want)
			}
			if i > 50 {
				break
			}
		}
	}
}

func TestKernelCasts(t *testing.T) {
	dev := testDevice(t)
	kt := newKT(t, dev, cuda.F32, 9)
	src := append(randn(kt.rng, 1000, 10), float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN()), 0, float32(math.Copysign(0, -1)),
		1.00390625, 1.01171875, 3.4028235e38, 1e-40)
	n := len(src)
	dst := kt.nanBuf(n, cuda.BF16)
	kt.must(kt.k.castBF16(dst, kt.f32(src), int64(n)))
	got := make([]uint16, n)
	kt.must(download(kt.dev, got, dst))
	for i, v := range src {
		if got[i] != F32ToBF16(v) {
			t.Fatalf("cast_bf16(%v) = %#04x, Go reference %#04x", v, got[i], F32ToBF16(v))
		}
	}
	// g += float(bf16)
	g0 := randn(kt.rng, n, 1)
	gd := kt.f32(g0)
	kt.must(kt.k.addBF16(gd, dst, int64(n)))
	for i, v := range kt.getF32(gd, n) {
		w := g0[i] + BF16ToF32(got[i])
		if math.Float32bits(v) != math.Float32bits(w) && !(math.IsNaN(float64(v)) && math.IsNaN(float64(w))) {
			t.Fatalf("add_bf16_f32 [%d] = %v, want %v", i, v, w)
		}
	}
	back := kt.nanBuf(n, cuda.F32)
	kt.must(kt.k.castF32(back, dst, int64(n)))
	for i, v := range kt.getF32(back, n) {
		if w := BF16ToF32(got[i]); math.Float32bits(v) != math.Float32bits(w) {
			t.Fatalf("cast_f32(%#04x) = %v, want %v", got[i], v, w)
		}
	}
}
