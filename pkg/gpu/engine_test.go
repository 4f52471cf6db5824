package gpu

// The GPU engine against the CPU engine (pkg/model on gorgonia), the
// definition of correct: same parameters, same batches, fp32 mode, so
// losses, auxiliary losses, every parameter tensor's gradient and the
// AdamW trajectory must agree to float32 rounding (relative 1e-4 here;
// the CPU sums in other orders and the GPU's exp is the hardware
// approximation).

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/cuda"
	"github.com/switchyard-ml/switchyard/pkg/devcomm"
	"github.com/switchyard-ml/switchyard/pkg/gpu/kernels"
	"github.com/switchyard-ml/switchyard/pkg/lbl"
	"github.com/switchyard-ml/switchyard/pkg/model"
	"github.com/switchyard-ml/switchyard/pkg/optim"
)

func smallConfig() model.Config {
	c := model.Config{Vocab: 64, Dim: 16, Layers: 2, Heads: 2, SeqLen: 8, Experts: 4, TopK: 2, Hidden: 12}
	c.Defaults()
	return c
}

type engineCase struct {
	name  string
	cfg   model.Config
	lbl   lbl.Config
	B     int
	accum int
}

func engineCases() []engineCase {
	base := smallConfig()
	dense := base
	dense.MoEEvery, dense.Layers = 2, 3
	shared := base
	shared.Shared, shared.Renormalize = 1, true
	capped := base
	capped.CapacityFactor = 1.0
	wide := base
	wide.Experts, wide.TopK, wide.Hidden = 8, 3, 8
	return []engineCase{
		{"global", base, lbl.Config{GlobalCoef: 0.01}, 2, 2},
		{"all-aux-terms", base, lbl.Config{GlobalCoef: 0.05, MicroCoef: 0.02, SeqCoef: 0.03, ZCoef: 0.01, LayerCoef: []float64{1, 0.5}, BiasRate: 0.01}, 3, 2},
		{"dense-layers", dense, lbl.Config{MicroCoef: 0.02}, 2, 1},
		{"shared-renorm", shared, lbl.Config{GlobalCoef: 0.02}, 2, 1},
		{"capacity", capped, lbl.Config{GlobalCoef: 0.01}, 2, 1},
		{"k3-of-8", wide, lbl.Config{GlobalCoef: 0.01, ZCoef: 0.001}, 2, 1},
	}
}

// randomBatch fills b with random tokens and targets; a few targets are
// padding (-1), and the last sequence of an odd batch is all padding.
func randomBatch(rng *rand.Rand, b *model.Batch, V int) {
	for i := range b.Tokens {
		b.Tokens[i] = int32(rng.IntN(V))
		b.Targets[i] = int32(rng.IntN(V))
		if rng.IntN(6) == 0 {
			b.Targets[i] = -1
		}
	}
	for i := range b.Domain {
		b.Domain[i] = i % 2
	}
	if b.B%2 == 1 {
		for i := (b.B - 1) * b.S; i < b.B*b.S; i++ {
			b.Targets[i] = -1
		}
	}
	b.SetValid()
}

func copyBatch(dst, src *model.Batch) {
	copy(dst.Tokens, src.Tokens)
	copy(dst.Targets, src.Targets)
	copy(dst.Domain, src.Domain)
	dst.SetValid()
}

func TestEngineMatchesCPU(t *testing.T) {
	dev := testDevice(t)
	ctx := context.Background()
	for _, ec := range engineCases() {
		t.Run(ec.name, func(t *testing.T) {
			c := ec.cfg
			E, k := c.Experts, c.TopK
			cbal, err := lbl.NewBalancer(ec.lbl, c.MoELayers(), E, k, lbl.Identity{})
			if err != nil {
				t.Fatal(err)
			}
			gbal, _ := lbl.NewBalancer(ec.lbl, c.MoELayers(), E, k, lbl.Identity{})
			cpu, err := model.New(c, ec.B, cbal, 2)
			if err != nil {
				t.Fatal(err)
			}
			defer cpu.Close()
			cpu.P.Init(c, 5)
			scale := 1 / float32(ec.accum)
			cpu.SetGradScale(scale)
			// query chunks of 3 of the 8 positions: uneven chunks, every GEMM
			// of the chunked attention
			g, err := New(dev, c, Options{MicroBatch: ec.B, Precision: FP32, Balancer: gbal, Reserve: 1, AttnChunk: 3})
			if err != nil {
				t.Fatal(err)
			}
			defer g.Close()
			copy(g.P.Data, cpu.P.Data)
			if err := g.Upload(); err != nil {
				t.Fatal(err)
			}
			ocfg := optim.Config{LR: 3e-2, WeightDecay: 0.1, ClipNorm: 0.5}
			ocfg.Defaults()
			var ranges []optim.Range
			for _, q := range cpu.P.List {
				ranges = append(ranges, optim.Range{Off: q.Offset, Len: q.Size, Decay: q.Decay})
			}
			opt, _ := optim.NewAdamW(ocfg, cpu.P.Len(), ranges)
			rng := rand.New(rand.NewPCG(9, 9))
			gb := model.NewBatch(ec.B, c.SeqLen)
			n := cpu.P.Len()
			grads := make([]float32, n)
			for step := 0; step < 3; step++ {
				for mb := 0; mb < ec.accum; mb++ {
					randomBatch(rng, cpu.Train.Batch, c.Vocab)
					copyBatch(gb, cpu.Train.Batch)
					cl, err := cpu.Step(context.Background())
					if err != nil {
						t.Fatal(err)
					}
					gl, err := g.Step(ctx, gb, scale)
					if err != nil {
						t.Fatal(err)
					}
					where := fmt.Sprintf("step %d micro-batch %d", step, mb)
					if !closeRel(gl, cl, 1e-5) {
						t.Fatalf("%s: loss GPU %.9g CPU %.9g", where, gl, cl)
					}
					ca, ga := cbal.Losses(), gbal.Losses()
					if !closeRel(ga.Total, ca.Total, 1e-5) {
						t.Fatalf("%s: aux loss GPU %.9g CPU %.9g (%+v vs %+v)", where, ga.Total, ca.Total, ga.Layers, ca.Layers)
					}
				}
				// gradients, tensor by tensor
				if err := g.Grads(grads); err != nil {
					t.Fatal(err)
				}
				for _, q := range cpu.P.List {
					got, want := grads[q.Offset:q.Offset+q.Size], cpu.P.Grad[q.Offset:q.Offset+q.Size]
					if e, i := relErr(got, want); e > 1e-4 {
						t.Fatalf("step %d: gradient of %s: relative error %.3g; worst at %d: GPU %v CPU %v", step, q.Name, e, i, got[i], want[i])
					}
				}
				gn, err := g.GradNorm(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if cn := cpu.P.GradNorm(); !closeRel(gn, cn, 1e-5) {
					t.Fatalf("step %d: grad norm GPU %v CPU %v", step, gn, cn)
				}
				clip := opt.ClipScale(cpu.P.GradNorm())
				if clip < 1 {
					for i := range cpu.P.Grad {
						cpu.P.Grad[i] *= float32(clip)
					}
				}
				lr := ocfg.LRAt(step, 3)
				opt.Step(cpu.P.Data, cpu.P.Grad, lr)
				cpu.P.ZeroGrad()
				if err := g.Update(ocfg, lr, clip); err != nil {
					t.Fatal(err)
				}
				cbal.StepDone()
				gbal.StepDone()
				if err := g.Download(); err != nil {
					t.Fatal(err)
				}
				if e, i := relErr(g.P.Data, cpu.P.Data); e > 1e-5 {
					t.Fatalf("step %d: parameters after AdamW: relative error %.3g at %d", step, e, i)
				}
			}
			// evaluation: per-token NLL and expert statistics
			randomBatch(rng, cpu.Eval.Batch, c.Vocab)
			copyBatch(gb, cpu.Eval.Batch)
			cpu.Eval.Stats.Reset()
			want, err := cpu.Forward(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			stats := model.NewExpertStats(c.MoELayers(), 2, E)
			got, err := g.Forward(ctx, gb, stats)
			if err != nil {
				t.Fatal(err)
			}
			checkClose(t, "eval nll", got, want, 1e-5)
			for l := range stats.Counts {
				for dom := range stats.Counts[l] {
					for e, v := range stats.Counts[l][dom] {
						if w := cpu.Eval.Stats.Counts[l][dom][e]; v != w {
							t.Fatalf("eval stats layer %d domain %d expert %d: GPU %v CPU %v", l, dom, e, v, w)
						}
					}
				}
			}
		})
	}
}

func closeRel(a, b, tol float64) bool {
	return math.Abs(a-b) <= tol*math.Max(1e-6, math.Abs(b))
}

// TestEngineMemoryEstimate: the estimate is what New allocates, and a run
// that does not fit is refused up front with the estimate in the message.
func TestEngineMemoryEstimate(t *testing.T) {
	dev := testDevice(t)
	c := smallConfig()
	bal, _ := lbl.NewBalancer(lbl.DefaultConfig(), c.MoELayers(), c.Experts, c.TopK, lbl.Identity{})
	for _, p := range []Precision{FP32, BF16} {
		for _, par := range []struct{ ep, tp int }{{1, 1}, {2, 1}, {1, 2}, {2, 2}} {
			ep, tp := par.ep, par.tp
			est, err := EstimateParallel(c, 4, p, ep, tp)
			if err != nil {
				t.Fatal(err)
			}
			o := Options{MicroBatch: 4, Precision: p, Balancer: bal, Reserve: 1}
			if ep > 1 {
				o.Experts = &ExpertGroup{Counts: stubGroup{ep}, Rows: stubGroup{ep}}
			}
			if tp > 1 {
				o.Tensor = stubGroup{tp}
			}
			g, err := New(dev, c, o)
			if err != nil {
				t.Fatal(err)
			}
			if g.DeviceBytes() != est.Total || g.nPar != int64(len(g.P.Data)) {
				t.Errorf("%s, ep %d, tp %d: allocated %d bytes, estimate %d (%d parameters, layout %d)", p, ep, tp, g.DeviceBytes(), est.Total, g.nPar, len(g.P.Data))
			}
			g.Close()
		}
	}
	_, total, _ := dev.MemInfo()
	big := c
	big.SeqLen = 1 << 14
	_, err := New(dev, big, Options{MicroBatch: 64, Precision: FP32, Balancer: bal})
	var me *MemoryError
	if !errorAs(err, &me) || me.Need <= total {
		t.Fatalf("oversized run: %v", err)
	}
	t.Logf("refused: %v", err)
}

func errorAs(err error, target **MemoryError) bool {
	if e, ok := err.(*MemoryError); ok {
		*target = e
		return true
	}
	return false
}

var _ = cuda.F32

// stubGroup is rank 0 of a group of n that exchanges nothing (New only
// lays the buffers out).
type stubGroup struct{ n int }

var errStub = errors.New("stub group: no exchange")

func (g stubGroup) Rank() int                { return 0 }
func (g stubGroup) Size() int                { return g.n }
func (g stubGroup) Backend() devcomm.Backend { return devcomm.Host }
func (g stubGroup) Describe() string         { return "stub" }
func (g stubGroup) Close() error             { return nil }
func (g stubGroup) AllToAllVF32(context.Context, []float32, []int, []float32, []int) error {
	return errStub
}
func (g stubGroup) AllReduceSum(context.Context, cuda.DevPtr, int) error     { return errStub }
func (g stubGroup) ReduceScatterSum(context.Context, cuda.DevPtr, int) error { return errStub }
func (g stubGroup) AllGather(context.Context, cuda.DevPtr, int) error        { return errStub }
func (g stubGroup) AllToAllV(context.Context, cuda.DevPtr, []int, cuda.DevPtr, []int) error {
	return errStub
}

// TestEngineBF16NearFP32: the mixed-precision engine computes the same
// step within bf16 rounding: loss within 1e-2 relative, every tensor's
// gradient within 5e-2 (relative Frobenius), and not bit-identical (the
// precision switch is in effect).
func TestEngineBF16NearFP32(t *testing.T) {
	dev := testDevice(t)
	ctx := context.Background()
	for _, ec := range engineCases()[:4] {
		t.Run(ec.name, func(t *testing.T) {
			c := ec.cfg
			var losses [2]float64
			var grads [2][]float32
			var params *model.Params
			for i, p := range []Precision{FP32, BF16} {
				bal, _ := lbl.NewBalancer(ec.lbl, c.MoELayers(), c.Experts, c.TopK, lbl.Identity{})
				g, err := New(dev, c, Options{MicroBatch: ec.B, Precision: p, Balancer: bal, Reserve: 1, AttnChunk: 5})
				if err != nil {
					t.Fatal(err)
				}
				defer g.Close()
				g.P.Init(c, 11)
				params = g.P
				if err := g.Upload(); err != nil {
					t.Fatal(err)
				}
				b := model.NewBatch(ec.B, c.SeqLen)
				randomBatch(rand.New(rand.NewPCG(3, 3)), b, c.Vocab)
				if losses[i], err = g.Step(ctx, b, 1); err != nil {
					t.Fatal(err)
				}
				grads[i] = make([]float32, len(g.P.Data))
				if err := g.Grads(grads[i]); err != nil {
					t.Fatal(err)
				}
			}
			if !closeRel(losses[1], losses[0], 1e-2) || losses[0] == losses[1] {
				t.Fatalf("loss bf16 %.9g fp32 %.9g", losses[1], losses[0])
			}
			for _, q := range params.List {
				got, want := grads[1][q.Offset:q.Offset+q.Size], grads[0][q.Offset:q.Offset+q.Size]
				if e, i := relErr(got, want); e > 5e-2 {
					t.Fatalf("gradient of %s: bf16 vs fp32 relative error %.3g; worst at %d: %v vs %v", q.Name, e, i, got[i], want[i])
				}
			}
		})
	}
}

// TestEngineRecomputeAttention: recomputing the attention probabilities
// in the backward (one buffer of them instead of one a layer) changes
// nothing computed: two steps give the same losses and the same gradients
// bit for bit, in fp32 and bf16, and the engine holds layers-1 fewer
// probability buffers, as its estimate says.
func TestEngineRecomputeAttention(t *testing.T) {
	dev := testDevice(t)
	ctx := context.Background()
	for _, ec := range engineCases()[:3] {
		for _, p := range []Precision{FP32, BF16} {
			t.Run(fmt.Sprintf("%s/%s", ec.name, p), func(t *testing.T) {
				c := ec.cfg
				var losses [2][2]float64
				var grads [2][]float32
				var bytes [2]int64
				for i, re := range []bool{false, true} {
					bal, _ := lbl.NewBalancer(ec.lbl, c.MoELayers(), c.Experts, c.TopK, lbl.Identity{})
					o := Options{MicroBatch: ec.B, Precision: p, Balancer: bal, Reserve: 1, AttnChunk: 5, RecomputeAttention: re}
					g, err := New(dev, c, o)
					if err != nil {
						t.Fatal(err)
					}
					defer g.Close()
					g.P.Init(c, 11)
					if err := g.Upload(); err != nil {
						t.Fatal(err)
					}
					r := rand.New(rand.NewPCG(3, 3))
					for s := range 2 {
						b := model.NewBatch(ec.B, c.SeqLen)
						randomBatch(r, b, c.Vocab)
						if losses[i][s], err = g.Step(ctx, b, 0.5); err != nil {
							t.Fatal(err)
						}
					}
					grads[i] = make([]float32, len(g.P.Data))
					if err := g.Grads(grads[i]); err != nil {
						t.Fatal(err)
					}
					bytes[i] = g.DeviceBytes()
					est, err := estimate(c, ec.B, p, 1, 1, re)
					if err != nil || est.Total != bytes[i] {
						t.Fatalf("recompute %v: allocated %d, estimate %d (%v)", re, bytes[i], est.Total, err)
					}
				}
				if losses[0] != losses[1] {
					t.Fatalf("losses %v kept, %v recomputed", losses[0], losses[1])
				}
				for j := range grads[0] {
					if grads[0][j] != grads[1][j] {
						t.Fatalf("gradient %d: %v kept, %v recomputed", j, grads[0][j], grads[1][j])
					}
				}
				S := int64(c.SeqLen)
				want := int64(c.Layers-1) * int64(ec.B*c.Heads) * S * S * p.act().Size()
				if saved := bytes[0] - bytes[1]; saved != want {
					t.Errorf("recomputing saves %d bytes, want %d", saved, want)
				}
			})
		}
	}
}

// TestKernelListsAgree: the emulator's registry, the PTX's entries
// and the engine's kernel list name the same kernels.
func TestKernelListsAgree(t *testing.T) {
	ptx, _, err := kernels.PTX(9, 0)
	if err != nil {
		t.Fatal(err)
	}
	entries := map[string]bool{}
	for _, n := range kernels.Entries(ptx) {
		entries[n] = true
	}
	for _, n := range KernelNames() {
		if !entries[n] {
			t.Errorf("the engine launches %s, which the PTX lacks (run pkg/gpu/kernels/gen.sh)", n)
		}
	}
	if len(entries) != len(KernelNames()) {
		t.Errorf("the PTX has %d kernels, the engine loads %d", len(entries), len(KernelNames()))
	}
	if emuNames != nil {
		names := emuNames()
		for _, n := range names {
			if !entries[n] {
				t.Errorf("the emulator registers %s, which the PTX lacks", n)
			}
		}
		if len(names) != len(entries) {
			t.Errorf("the emulator registers %d kernels, the PTX has %d", len(names), len(entries))
		}
	}
}
