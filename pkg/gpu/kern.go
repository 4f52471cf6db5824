package gpu

// The engine's kernels (pkg/gpu/kernels/kernels.cu) behind typed launchers
// that own the launch configurations. Shapes follow the kernels' legend.

import (
	"fmt"

	"github.com/switchyard-ml/switchyard/pkg/cuda"
)

// kernelNames are the kernels the engine loads; names ending in "_" get
// the act type's suffix (f32 or bf16) and are loaded in both.
var kernelNames = []string{
	"embed_fwd", "embed_bwd", "rmsnorm_fwd_", "rmsnorm_bwd_", "colsum_add", "qkv_split_", "qkv_merge_",
	"heads_merge_", "heads_split_", "softmax_causal_", "softmax_causal_bwd_", "router_fwd", "router_stats",
	"plan_hist", "plan_scan", "plan_assign", "moe_gather_", "moe_combine_", "moe_combine_bwd_", "moe_scatter_", "add_bf16_f32",
	"router_bwd_", "swiglu_fwd_", "swiglu_bwd_", "xent_", "sumsq", "adamw", "cast_bf16", "cast_f32",
}

// KernelNames lists every kernel name the engine launches (both act types).
func KernelNames() []string {
	var out []string
	for _, n := range kernelNames {
		if n[len(n)-1] == '_' {
			out = append(out, n+"f32", n+"bf16")
			continue
		}
		out = append(out, n)
	}
	return out
}

// kern launches the kernels for one act type.
type kern struct {
	dev cuda.Device
	act cuda.DType
	k   map[string]cuda.Kernel
}

func loadKern(dev cuda.Device, act cuda.DType) (*kern, error) {
	k := &kern{dev: dev, act: act, k: map[string]cuda.Kernel{}}
	for _, n := range KernelNames() {
		f, err := dev.Kernel(n)
		if err != nil {
			return nil, fmt.Errorf("gpu: kernel %s: %w", n, err)
		}
		k.k[n] = f
	}
	return k, nil
}

// typed returns the act-typed variant of name (name ends in "_").
func (k *kern) typed(name string) string {
	if k.act == cuda.BF16 {
		return name + "bf16"
	}
	return name + "f32"
}

func (k *kern) launch(name string, grid, block cuda.Dim3, smem int, args ...uint64) error {
	f, ok := k.k[name]
	if !ok {
		return fmt.Errorf("gpu: kernel %s not loaded", name)
	}
	if err := k.dev.Launch(f, grid, block, smem, args...); err != nil {
		return fmt.Errorf("gpu: %s: %w", name, err)
	}
	return nil
}

// ---- launch configurations (pure; launch_test.go checks them) ----

const maxGridStride = 8192 // blocks of a grid-stride loop

// rowBlock is the block size of a kernel with one block per row of n
// elements: enough warps to cover the row, at most 256.
func rowBlock(n int) int { return min(256, max(32, (n+31)/32*32)) }

// strideGrid is the grid of a grid-stride loop over n elements with
// blocks of block threads.
func strideGrid(n int64, block int) int {
	g := (n + int64(block) - 1) / int64(block)
	return int(max(1, min(g, maxGridStride)))
}

// normParts is the number of blocks (and partial-sum rows) of the RMSNorm
// backward over rows rows, and the rows each handles.
func normParts(rows int) (nblk, rpb int) {
	nblk = min(rows, 512)
	if nblk < 1 {
		return 0, 0
	}
	rpb = (rows + nblk - 1) / nblk
	return (rows + rpb - 1) / rpb, rpb
}

// planChunk is the pairs per block of the dispatch plan.
const planChunk = 256

func planChunks(pairs int) int { return (pairs + planChunk - 1) / planChunk }

// sumsqBlocks is the number of partial sums of a squared norm over n
// values.
func sumsqBlocks(n int64) int { return int(max(1, min((n+255)/256, 1024))) }

// ---- typed launchers ----

func (k *kern) embedFwd(x, w, tok cuda.DevPtr, T, d int) error {
	return k.launch("embed_fwd", cuda.D1(T), cuda.D1(rowBlock(d)), 0, cuda.Ptr(x), cuda.Ptr(w), cuda.Ptr(tok), cuda.Int(d))
}

func (k *kern) embedBwd(dw, dx, order, start cuda.DevPtr, V, d int) error {
	b := rowBlock(d)
	return k.launch("embed_bwd", cuda.Dim3{X: V, Y: (d + b - 1) / b, Z: 1}, cuda.D1(b), 0,
		cuda.Ptr(dw), cuda.Ptr(dx), cuda.Ptr(order), cuda.Ptr(start), cuda.Int(d))
}

func (k *kern) rmsnormFwd(y, rstd, x, g cuda.DevPtr, rows, d int, eps float32) error {
	return k.launch(k.typed("rmsnorm_fwd_"), cuda.D1(rows), cuda.D1(rowBlock(d)), 0,
		cuda.Ptr(y), cuda.Ptr(rstd), cuda.Ptr(x), cuda.Ptr(g), cuda.Int(d), cuda.Float(eps))
}

// rmsnormBwd: dx = dres + norm backward of dy (dres, dxAct may be 0); the
// gain gradient is added into dg through part ([normParts(rows)][d]).
func (k *kern) rmsnormBwd(dx, dxAct, part, dg, dy, x, g, rstd, dres cuda.DevPtr, rows, d int) error {
	nblk, rpb := normParts(rows)
	if nblk == 0 {
		return nil
	}
	if err := k.launch(k.typed("rmsnorm_bwd_"), cuda.D1(nblk), cuda.D1(rowBlock(d)), 0,
		cuda.Ptr(dx), cuda.Ptr(dxAct), cuda.Ptr(part), cuda.Ptr(dy), cuda.Ptr(x), cuda.Ptr(g), cuda.Ptr(rstd), cuda.Ptr(dres),
		cuda.Int(rows), cuda.Int(d), cuda.Int(rpb)); err != nil {
		return err
	}
	b := rowBlock(d)
	return k.launch("colsum_add", cuda.D1((d+b-1)/b), cuda.D1(b), 0, cuda.Ptr(dg), cuda.Ptr(part), cuda.Int(nblk), cuda.Int(d))
}

func (k *kern) qkvSplit(q, kk, v, qkv, cos, sin cuda.DevPtr, T, S, H, hd int) error {
	return k.launch(k.typed("qkv_split_"), cuda.D1(T), cuda.D1(rowBlock(H*hd/2)), 0,
		cuda.Ptr(q), cuda.Ptr(kk), cuda.Ptr(v), cuda.Ptr(qkv), cuda.Ptr(cos), cuda.Ptr(sin), cuda.Int(S), cuda.Int(H), cuda.Int(hd))
}

func (k *kern) qkvMerge(dqkv, dq, dk, dv, cos, sin cuda.DevPtr, T, S, H, hd int) error {
	return k.launch(k.typed("qkv_merge_"), cuda.D1(T), cuda.D1(rowBlock(H*hd/2)), 0,
		cuda.Ptr(dqkv), cuda.Ptr(dq), cuda.Ptr(dk), cuda.Ptr(dv), cuda.Ptr(cos), cuda.Ptr(sin), cuda.Int(S), cuda.Int(H), cuda.Int(hd))
}

func (k *kern) headsMerge(out, o cuda.DevPtr, T, S, H, hd int) error {
	return k.launch(k.typed("heads_merge_"), cuda.D1(T), cuda.D1(rowBlock(H*hd)), 0, cuda.Ptr(out), cuda.Ptr(o), cuda.Int(S), cuda.Int(H), cuda.Int(hd))
}

func (k *kern) headsSplit(o, in cuda.DevPtr, T, S, H, hd int) error {
	return k.launch(k.typed("heads_split_"), cuda.D1(T), cuda.D1(rowBlock(H*hd)), 0, cuda.Ptr(o), cuda.Ptr(in), cuda.Int(S), cuda.Int(H), cuda.Int(hd))
}

// softmaxCausal: p (act) from the float scores s, BH*S rows of S, query
// chunks of chunk rows (each row is written up to its chunk's last key).
func (k *kern) softmaxCausal(p, s cuda.DevPtr, BH, S, chunk int) error {
	return k.launch(k.typed("softmax_causal_"), cuda.D1(BH*S), cuda.D1(rowBlock(S)), 0, cuda.Ptr(p), cuda.Ptr(s), cuda.Int(S), cuda.Int(chunk))
}

func (k *kern) softmaxCausalBwd(ds, p, dp cuda.DevPtr, BH, S, chunk int) error {
	return k.launch(k.typed("softmax_causal_bwd_"), cuda.D1(BH*S), cuda.D1(rowBlock(S)), 0, cuda.Ptr(ds), cuda.Ptr(p), cuda.Ptr(dp), cuda.Int(S), cuda.Int(chunk))
}

const tokenBlock = 128 // one thread per token

func (k *kern) routerFwd(probs, lse, idx, w, logits, bias cuda.DevPtr, T, E, topk int, renorm bool) error {
	return k.launch("router_fwd", cuda.D1((T+tokenBlock-1)/tokenBlock), cuda.D1(tokenBlock), 0,
		cuda.Ptr(probs), cuda.Ptr(lse), cuda.Ptr(idx), cuda.Ptr(w), cuda.Ptr(logits), cuda.Ptr(bias),
		cuda.Int(T), cuda.Int(E), cuda.Int(topk), cuda.Int(b2i(renorm)))
}

func (k *kern) routerStats(cnt, psum, nv, z, probs, lse, idx, tgt cuda.DevPtr, B, S, E, topk int) error {
	return k.launch("router_stats", cuda.D1(B), cuda.D1(min(1024, max(32, (E+31)/32*32))), 0,
		cuda.Ptr(cnt), cuda.Ptr(psum), cuda.Ptr(nv), cuda.Ptr(z), cuda.Ptr(probs), cuda.Ptr(lse), cuda.Ptr(idx), cuda.Ptr(tgt),
		cuda.Int(S), cuda.Int(E), cuda.Int(topk))
}

// plan builds the dispatch plan of T tokens' topk choices: hist is
// [planChunks(T*topk)][E] scratch; demand, kept [E]; offsets [E+1];
// slotOf [T*topk]; tok, choice [T*topk] (the first offsets[E] are used).
func (k *kern) plan(slotOf, tok, choice, hist, demand, kept, offsets, idx cuda.DevPtr, T, E, topk, capacity int) error {
	n := T * topk
	C := planChunks(n)
	if C == 0 {
		return nil
	}
	if err := k.launch("plan_hist", cuda.D1(C), cuda.D1(planChunk), 4*E, cuda.Ptr(hist), cuda.Ptr(idx), cuda.Int(n), cuda.Int(E)); err != nil {
		return err
	}
	if err := k.launch("plan_scan", cuda.D1(1), cuda.D1(min(1024, max(32, (E+31)/32*32))), 0,
		cuda.Ptr(hist), cuda.Ptr(demand), cuda.Ptr(kept), cuda.Ptr(offsets), cuda.Int(C), cuda.Int(E), cuda.Int(capacity)); err != nil {
		return err
	}
	return k.launch("plan_assign", cuda.D1(C), cuda.D1(planChunk), 0,
		cuda.Ptr(slotOf), cuda.Ptr(tok), cuda.Ptr(choice), cuda.Ptr(idx), cuda.Ptr(hist), cuda.Ptr(kept), cuda.Ptr(offsets),
		cuda.Int(n), cuda.Int(E), cuda.Int(topk))
}

func (k *kern) moeGather(xe, x, tok cuda.DevPtr, slots, d int) error {
	if slots == 0 {
		return nil
	}
	return k.launch(k.typed("moe_gather_"), cuda.D1(slots), cuda.D1(rowBlock(d)), 0, cuda.Ptr(xe), cuda.Ptr(x), cuda.Ptr(tok), cuda.Int(d))
}

func (k *kern) moeCombine(out, res, ye, w, slotOf, idx cuda.DevPtr, T, d, topk int) error {
	return k.launch(k.typed("moe_combine_"), cuda.D1(T), cuda.D1(rowBlock(d)), 0,
		cuda.Ptr(out), cuda.Ptr(res), cuda.Ptr(ye), cuda.Ptr(w), cuda.Ptr(slotOf), cuda.Ptr(idx), cuda.Int(d), cuda.Int(topk))
}

func (k *kern) moeCombineBwd(dye, dw, dy, ye, w, slotOf cuda.DevPtr, T, d, topk int) error {
	return k.launch(k.typed("moe_combine_bwd_"), cuda.D1(T*topk), cuda.D1(rowBlock(d)), 0,
		cuda.Ptr(dye), cuda.Ptr(dw), cuda.Ptr(dy), cuda.Ptr(ye), cuda.Ptr(w), cuda.Ptr(slotOf), cuda.Int(d), cuda.Int(topk))
}

// moeScatter: dx[t] = sum over t's kept slots of dxa[slot] + dxb[slot].
func (k *kern) moeScatter(dx, dxa, dxb, slotOf, idx cuda.DevPtr, T, d, topk int) error {
	return k.launch(k.typed("moe_scatter_"), cuda.D1(T), cuda.D1(rowBlock(d)), 0,
		cuda.Ptr(dx), cuda.Ptr(dxa), cuda.Ptr(dxb), cuda.Ptr(slotOf), cuda.Ptr(idx), cuda.Int(d), cuda.Int(topk))
}

// addBF16: g += float(src), n elements.
func (k *kern) addBF16(g, src cuda.DevPtr, n int64) error {
	if n == 0 {
		return nil
	}
	return k.launch("add_bf16_f32", cuda.D1(strideGrid(n, eltBlock)), cuda.D1(eltBlock), 0, cuda.Ptr(g), cuda.Ptr(src), uint64(n))
}

// auxGrad is what the router backward adds for the auxiliary losses (see
// router_bwd in kernels.cu): f [E] on the device (0: no LBL term).
type auxGrad struct {
	f                cuda.DevPtr
	c, seqScale, cz  float32
	cnt, nv          cuda.DevPtr // per-sequence counts [B][E] and valid tokens [B]
	renorm           bool
	T, S, E, topk    int
	probs, lse, tgt  cuda.DevPtr
	idx, w, dw, outZ cuda.DevPtr
}

func (k *kern) routerBwd(a *auxGrad) error {
	return k.launch(k.typed("router_bwd_"), cuda.D1((a.T+tokenBlock-1)/tokenBlock), cuda.D1(tokenBlock), 0,
		cuda.Ptr(a.outZ), cuda.Ptr(a.probs), cuda.Ptr(a.lse), cuda.Ptr(a.idx), cuda.Ptr(a.w), cuda.Ptr(a.dw), cuda.Ptr(a.tgt),
		cuda.Ptr(a.f), cuda.Ptr(a.cnt), cuda.Ptr(a.nv), cuda.Int(a.T), cuda.Int(a.S), cuda.Int(a.E), cuda.Int(a.topk),
		cuda.Int(b2i(a.renorm)), cuda.Float(a.c), cuda.Float(a.seqScale), cuda.Float(a.cz))
}

const eltBlock = 256

func (k *kern) swigluFwd(hh, a, b cuda.DevPtr, n int64) error {
	if n == 0 {
		return nil
	}
	return k.launch(k.typed("swiglu_fwd_"), cuda.D1(strideGrid(n, eltBlock)), cuda.D1(eltBlock), 0,
		cuda.Ptr(hh), cuda.Ptr(a), cuda.Ptr(b), uint64(n))
}

func (k *kern) swigluBwd(da, db, dh, a, b cuda.DevPtr, n int64) error {
	if n == 0 {
		return nil
	}
	return k.launch(k.typed("swiglu_bwd_"), cuda.D1(strideGrid(n, eltBlock)), cuda.D1(eltBlock), 0,
		cuda.Ptr(da), cuda.Ptr(db), cuda.Ptr(dh), cuda.Ptr(a), cuda.Ptr(b), uint64(n))
}

// xent: nll [T]; dz (act [T][V], 0: evaluation only) = scale*(softmax-onehot).
func (k *kern) xent(nll, dz, z, tgt cuda.DevPtr, T, V int, scale float32) error {
	return k.launch(k.typed("xent_"), cuda.D1(T), cuda.D1(rowBlock(V)), 0,
		cuda.Ptr(nll), cuda.Ptr(dz), cuda.Ptr(z), cuda.Ptr(tgt), cuda.Int(V), cuda.Float(scale))
}

// sumsq writes sumsqBlocks(n) float64 partial sums of squares to part.
func (k *kern) sumsq(part, g cuda.DevPtr, n int64) error {
	return k.launch("sumsq", cuda.D1(sumsqBlocks(n)), cuda.D1(256), 0, cuda.Ptr(part), cuda.Ptr(g), uint64(n))
}

type adamArgs struct {
	p, g, m, v, pb                cuda.DevPtr
	n                             int64
	lr, b1, b2, eps, wd, bc1, bc2 float32
	gscale                        float32
}

func (k *kern) adamw(a adamArgs) error {
	if a.n == 0 {
		return nil
	}
	return k.launch("adamw", cuda.D1(strideGrid(a.n, eltBlock)), cuda.D1(eltBlock), 0,
		cuda.Ptr(a.p), cuda.Ptr(a.g), cuda.Ptr(a.m), cuda.Ptr(a.v), cuda.Ptr(a.pb), uint64(a.n),
		cuda.Float(a.lr), cuda.Float(a.b1), cuda.Float(a.b2), cuda.Float(a.eps), cuda.Float(a.wd), cuda.Float(a.bc1), cuda.Float(a.bc2), cuda.Float(a.gscale))
}

func (k *kern) castBF16(dst, src cuda.DevPtr, n int64) error {
	if n == 0 {
		return nil
	}
	return k.launch("cast_bf16", cuda.D1(strideGrid(n, eltBlock)), cuda.D1(eltBlock), 0, cuda.Ptr(dst), cuda.Ptr(src), uint64(n))
}

func (k *kern) castF32(dst, src cuda.DevPtr, n int64) error {
	if n == 0 {
		return nil
	}
	return k.launch("cast_f32", cuda.D1(strideGrid(n, eltBlock)), cuda.D1(eltBlock), 0, cuda.Ptr(dst), cuda.Ptr(src), uint64(n))
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
