package lbl

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/router"
)

// barrierReducer simulates an all-reduce over n ranks in memory: each rank's
// goroutine calls AllReduceSum; the call returns once all n have contributed,
// with the sum in every caller's vector.
type barrierReducer struct {
	n     int
	mu    sync.Mutex
	cond  *sync.Cond
	sum   []float64
	in    int // contributions to the current round
	out   int // callers of the finished round that still have to copy the sum
	round int
	calls atomic.Int64
	lens  sync.Map // vector length -> struct{}
}

func newBarrierReducer(n int) *barrierReducer {
	g := &barrierReducer{n: n}
	g.cond = sync.NewCond(&g.mu)
	return g
}

func (g *barrierReducer) AllReduceSum(_ context.Context, v []float64) error {
	g.calls.Add(1)
	g.lens.Store(len(v), struct{}{})
	g.mu.Lock()
	defer g.mu.Unlock()
	for g.out > 0 { // the previous round is still being read
		g.cond.Wait()
	}
	if g.in == 0 {
		g.sum = make([]float64, len(v))
	}
	if len(v) != len(g.sum) {
		return fmt.Errorf("barrier: vector of %d, round has %d", len(v), len(g.sum))
	}
	for i, x := range v {
		g.sum[i] += x
	}
	g.in++
	round := g.round
	if g.in == g.n {
		g.in, g.out = 0, g.n
		g.round++
		g.cond.Broadcast()
	}
	for g.round == round {
		g.cond.Wait()
	}
	copy(v, g.sum)
	g.out--
	if g.out == 0 {
		g.cond.Broadcast()
	}
	return nil
}

// countingReducer wraps a Reducer and records the length of every call.
type countingReducer struct {
	inner Reducer
	lens  []int
	fail  error
}

func (c *countingReducer) AllReduceSum(ctx context.Context, v []float64) error {
	c.lens = append(c.lens, len(v))
	if c.fail != nil {
		return c.fail
	}
	return c.inner.AllReduceSum(ctx, v)
}

// softmax32 returns float32 probabilities computed in float64 and rounded
// once, as a good float32 kernel would produce them.
func softmax32(z []float32, T, E int) []float32 {
	z64 := make([]float64, len(z))
	for i, v := range z {
		z64[i] = float64(v)
	}
	return to32(softmax64(z64, T, E))
}

// float32 tolerances of the Balancer against float64 golden values: the
// probabilities are rounded to float32 (relative error <= 6e-8) and each
// gradient element is rounded to float32 once; |P*(f - f.P)| <= 1, so the
// absolute gradient error is below ~2e-7 * E/(R*M*T). We allow 1e-6 of that
// scale for gradients and 1e-6 relative for losses (p is an average of
// float32 values accumulated in float64).
const tol32 = 1e-6

func checkGrad32(t *testing.T, what string, got []float32, want [][]float64, coef, atol float64) {
	t.Helper()
	w := flat64(want)
	E := len(want[0])
	for i := range got {
		if math.Abs(float64(got[i])-coef*w[i]) > atol {
			t.Fatalf("%s t=%d e=%d: %.9g, want %.9g (atol %g)", what, i/E, i%E, got[i], coef*w[i], atol)
		}
	}
}

// TestBalancerGoldenMicro drives one Balancer per rank (Identity reducer,
// MicroCoef only) through the micro-batches of every case.
func TestBalancerGoldenMicro(t *testing.T) {
	ctx := context.Background()
	for _, c := range loadGolden(t) {
		R, M, T, E, k := c.R, c.M, c.T, c.E, c.K
		gscale := float64(E) / float64(R*M*T)
		for r := 0; r < R; r++ {
			b, err := NewBalancer(Config{MicroCoef: 1}, 1, E, k, Identity{})
			if err != nil {
				t.Fatal(err)
			}
			for m := 0; m < M; m++ {
				z := to32(flat64(c.Logits[r][m]))
				P := softmax32(z, T, E)
				idx := make([]int32, T*k)
				router.TopK(P, T, E, k, b.Bias(0), idx)
				b.Record(0, z, P, idx, T, T, nil)
				d := make([]float32, T*E)
				if err := b.Backward(ctx, 0, 1/float64(R*M), d); err != nil {
					t.Fatal(err)
				}
				ls := b.Losses()
				if !closeRel(ls.Layers[0].Micro, c.LossMicro[r][m], tol32, 0) || !closeRel(ls.Total, c.LossMicro[r][m], tol32, 0) {
					t.Fatalf("%s r=%d m=%d: micro %v total %v, golden %v", c.Name, r, m, ls.Layers[0].Micro, ls.Total, c.LossMicro[r][m])
				}
				checkGrad32(t, c.Name+" micro", d, c.GradMicro[r][m], 1, tol32*gscale)
			}
			b.StepDone()
		}
	}
}

// runRanks runs fn(rank) on R goroutines and fails on the first error.
func runRanks(t *testing.T, R int, fn func(r int) error) {
	t.Helper()
	errs := make([]error, R)
	var wg sync.WaitGroup
	for r := 0; r < R; r++ {
		wg.Go(func() { errs[r] = fn(r) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

// TestBalancerGoldenBuffered simulates R data-parallel ranks (one goroutine
// and one Balancer each, joined by an in-memory all-reduce) running M
// micro-batches in order with GlobalCoef, and compares per-micro-batch losses
// and gradients with the buffered variant (= global when M = 1). Two MoE
// layers see the same data with LayerCoef {1, 0.5}; a second set of ranks
// runs the mix GlobalCoef = c, MicroCoef = 0.01c.
func TestBalancerGoldenBuffered(t *testing.T) {
	ctx := context.Background()
	for _, c := range loadGolden(t) {
		R, M, T, E, k := c.R, c.M, c.T, c.E, c.K
		gscale := float64(E) / float64(R*M*T)
		for _, mix := range []bool{false, true} {
			cfg := Config{GlobalCoef: 1, LayerCoef: []float64{1, 0.5}}
			if mix {
				cfg = Config{GlobalCoef: 0.3, MicroCoef: 0.003}
			}
			red := newBarrierReducer(R)
			runRanks(t, R, func(r int) error {
				b, err := NewBalancer(cfg, 2, E, k, red)
				if err != nil {
					return err
				}
				stepCounts := make([]float64, E)
				for m := 0; m < M; m++ {
					z := to32(flat64(c.Logits[r][m]))
					P := softmax32(z, T, E)
					idx := flatIdx(c.TopK[r][m])
					b.Record(0, z, P, idx, T, T, nil)
					b.Record(1, z, P, idx, T, T, nil)
					d0 := make([]float32, T*E)
					d1 := make([]float32, T*E)
					// Backward in reverse layer order; the first call synchronises.
					if err := b.Backward(ctx, 1, 1/float64(R*M), d1); err != nil {
						return err
					}
					if err := b.Backward(ctx, 0, 1/float64(R*M), d0); err != nil {
						return err
					}
					ls := b.Losses()
					for l := 0; l < 2; l++ {
						if !closeRel(ls.Layers[l].Global, c.LossBuffered[r][m], tol32, 0) ||
							!closeRel(ls.Layers[l].Micro, c.LossMicro[r][m], tol32, 0) {
							return fmt.Errorf("%s r=%d m=%d layer %d: global %v (golden %v), micro %v (golden %v)",
								c.Name, r, m, l, ls.Layers[l].Global, c.LossBuffered[r][m], ls.Layers[l].Micro, c.LossMicro[r][m])
						}
					}
					if mix {
						wantTotal := 2 * (0.3*c.LossBuffered[r][m] + 0.003*c.LossMicro[r][m])
						if !closeRel(ls.Total, wantTotal, tol32, 0) {
							return fmt.Errorf("%s mix total %v, want %v", c.Name, ls.Total, wantTotal)
						}
						gb, gm := flat64(c.GradBuffered[r][m]), flat64(c.GradMicro[r][m])
						for i := range d0 {
							want := 0.3*gb[i] + 0.003*gm[i]
							if math.Abs(float64(d0[i])-want) > tol32*gscale || d1[i] != d0[i] {
								return fmt.Errorf("%s r=%d m=%d mix grad[%d] %v / %v, want %v", c.Name, r, m, i, d0[i], d1[i], want)
							}
						}
					} else {
						if w := c.LossBuffered[r][m] * 1.5; !closeRel(ls.Total, w, tol32, 0) {
							return fmt.Errorf("%s total %v, want %v", c.Name, ls.Total, w)
						}
						gb := flat64(c.GradBuffered[r][m])
						for i := range d0 {
							if math.Abs(float64(d0[i])-gb[i]) > tol32*gscale || math.Abs(float64(d1[i])-0.5*gb[i]) > tol32*gscale {
								return fmt.Errorf("%s r=%d m=%d grad[%d] %v / %v, golden %v", c.Name, r, m, i, d0[i], d1[i], gb[i])
							}
						}
					}
					// The step's counts are the global counts of micro-batches 0..m.
					for rr := 0; rr < R; rr++ {
						for e := 0; e < E; e++ {
							stepCounts[e] += c.Counts[rr][m][e]
						}
					}
					got := b.StepCounts(0)
					for e := range got {
						if got[e] != stepCounts[e] {
							return fmt.Errorf("%s m=%d StepCounts %v, want %v", c.Name, m, got, stepCounts)
						}
					}
					if b.StepTokens() != float64(R*(m+1)*T) {
						return fmt.Errorf("StepTokens %v", b.StepTokens())
					}
				}
				b.StepDone()
				if b.StepTokens() != 0 || b.StepCounts(0)[0] != 0 {
					return fmt.Errorf("StepDone did not reset the buffer")
				}
				return nil
			})
			if got := red.calls.Load(); got != int64(R*M) {
				t.Fatalf("%s: %d reducer calls, want one per rank per micro-batch = %d", c.Name, got, R*M)
			}
			red.lens.Range(func(key, _ any) bool {
				if key.(int) != 2*E+1 {
					t.Fatalf("%s: reduce vector of %d, want L*E+1 = %d", c.Name, key, 2*E+1)
				}
				return true
			})
		}
	}
}

// TestBalancerReducerOncePerMicroBatch checks that Sync makes exactly one
// Reducer call per micro-batch, carrying every layer's counts and the
// valid-token count, and that Sync is idempotent.
func TestBalancerReducerOncePerMicroBatch(t *testing.T) {
	ctx := context.Background()
	const L, T, E, k = 3, 8, 4, 2
	cr := &countingReducer{inner: Identity{}}
	b, err := NewBalancer(Config{GlobalCoef: 1}, L, E, k, cr)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 1))
	for m := 0; m < 3; m++ {
		data := make([]*routed, L)
		for l := range data {
			data[l] = randomRouted(rng, T, E, k, 1)
			b.Record(l, data[l].z, data[l].p, data[l].idx, T, 4, nil)
		}
		if len(cr.lens) != m {
			t.Fatalf("reducer called during Record")
		}
		if err := b.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if err := b.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		for l := L - 1; l >= 0; l-- {
			if err := b.Backward(ctx, l, 1, make([]float32, T*E)); err != nil {
				t.Fatal(err)
			}
		}
		if len(cr.lens) != m+1 || cr.lens[m] != L*E+1 {
			t.Fatalf("after micro-batch %d: reducer calls %v, want %d calls of %d", m, cr.lens, m+1, L*E+1)
		}
	}
	b.StepDone()
	if err := b.Sync(ctx); !errors.Is(err, ErrNotRecorded) {
		t.Fatalf("Sync after StepDone: %v, want ErrNotRecorded", err)
	}
	if err := b.Backward(ctx, 0, 1, make([]float32, T*E)); !errors.Is(err, ErrNotRecorded) {
		t.Fatalf("Backward after StepDone: %v, want ErrNotRecorded", err)
	}
	// A missing layer is an error, not a silent zero.
	d := randomRouted(rng, T, E, k, 1)
	b.Record(0, d.z, d.p, d.idx, T, T, nil)
	if err := b.Sync(ctx); !errors.Is(err, ErrNotRecorded) {
		t.Fatalf("Sync with layers 1,2 missing: %v, want ErrNotRecorded", err)
	}
	// Layers that disagree on the valid-token count.
	valid := make([]bool, T)
	valid[0] = true
	b.Record(1, d.z, d.p, d.idx, T, T, valid)
	b.Record(2, d.z, d.p, d.idx, T, T, nil)
	if err := b.Sync(ctx); !errors.Is(err, ErrTokenMismatch) {
		t.Fatalf("Sync with mismatched tokens: %v, want ErrTokenMismatch", err)
	}
}

func TestBalancerReducerFailureLeavesStateUnchanged(t *testing.T) {
	ctx := context.Background()
	const T, E, k = 8, 4, 2
	boom := errors.New("link down")
	cr := &countingReducer{inner: Identity{}, fail: boom}
	b, err := NewBalancer(Config{GlobalCoef: 1}, 1, E, k, cr)
	if err != nil {
		t.Fatal(err)
	}
	d := randomRouted(rand.New(rand.NewPCG(2, 2)), T, E, k, 1)
	b.Record(0, d.z, d.p, d.idx, T, T, nil)
	if err := b.Sync(ctx); !errors.Is(err, boom) {
		t.Fatalf("got %v, want wrapped reducer error", err)
	}
	if b.StepTokens() != 0 {
		t.Fatal("failed Sync changed the buffer")
	}
	cr.fail = nil
	if err := b.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if b.StepTokens() != T {
		t.Fatalf("StepTokens %v after retry, want %d", b.StepTokens(), T)
	}
}

// routed is one layer's random router output for tests.
type routed struct {
	z   []float32 // [T][E] logits
	p   []float32 // [T][E] softmax
	idx []int32   // [T][k]
}

func randomRouted(rng *rand.Rand, T, E, k int, scale float64) *routed {
	z := make([]float32, T*E)
	for i := range z {
		z[i] = float32(scale * rng.NormFloat64())
	}
	p := softmax32(z, T, E)
	idx := make([]int32, T*k)
	router.TopK(z, T, E, k, nil, idx)
	return &routed{z: z, p: p, idx: idx}
}

// TestBalancerAllTermsMatchPureFunctions checks Backward and Losses with
// every coefficient set (and padding) against the pure functions evaluated
// in float64 on the same float32 inputs. Tolerance 1e-6 of the largest
// gradient element (float32 rounding of the sum of four terms).
func TestBalancerAllTermsMatchPureFunctions(t *testing.T) {
	ctx := context.Background()
	const T, S, E, k = 24, 6, 8, 2
	cfg := Config{GlobalCoef: 0.7, MicroCoef: 0.2, SeqCoef: 0.4, ZCoef: 0.05, LayerCoef: []float64{2}}
	b, err := NewBalancer(cfg, 1, E, k, Identity{})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 3))
	valid := make([]bool, T)
	for i := range valid {
		valid[i] = i%S < S-1 || i < S // last token of sequences 1.. is padding
	}
	for i := S; i < 2*S; i++ {
		valid[i] = false // sequence 1 is all padding
	}
	buf := make([]float64, E) // counts of both micro-batches
	var bufTokens float64
	for m := 0; m < 2; m++ {
		d := randomRouted(rng, T, E, k, 2)
		b.Record(0, d.z, d.p, d.idx, T, S, valid)
		got := make([]float32, T*E)
		if err := b.Backward(ctx, 0, 0.5, got); err != nil {
			t.Fatal(err)
		}
		// float64 reference
		p64, z64 := make([]float64, T*E), make([]float64, T*E)
		for i := range p64 {
			p64[i], z64[i] = float64(d.p[i]), float64(d.z[i])
		}
		countsE, pE, fMicro, fBuf := make([]float64, E), make([]float64, E), make([]float64, E), make([]float64, E)
		Counts(d.idx, T, E, k, valid, countsE)
		MeanProbs(p64, T, E, valid, pE)
		n := float64(ValidTokens(T, valid))
		micro := LossFromCounts(countsE, n, k, pE, fMicro)
		for e := range buf {
			buf[e] += countsE[e]
		}
		bufTokens += n
		global := LossFromCounts(buf, bufTokens, k, pE, fBuf)
		seq := SeqLoss(p64, d.idx, T, S, E, k, valid, make([]float64, E), make([]float64, E), make([]float64, E))
		zl := ZLoss(z64, T, E, valid)
		want := make([]float64, T*E)
		c := 0.5 * 2.0
		AddGrad(p64, T, E, valid, fBuf, c*0.7, want)
		AddGrad(p64, T, E, valid, fMicro, c*0.2, want)
		AddSeqGrad(p64, d.idx, T, S, E, k, valid, c*0.4, want, make([]float64, E), make([]float64, E))
		AddZGrad(z64, T, E, valid, c*0.05, want)
		var maxAbs float64
		for _, v := range want {
			maxAbs = math.Max(maxAbs, math.Abs(v))
		}
		for i := range got {
			if !valid[i/E] && got[i] != 0 {
				t.Fatalf("padding token %d got gradient %v", i/E, got[i])
			}
			if math.Abs(float64(got[i])-want[i]) > 1e-6*maxAbs {
				t.Fatalf("m=%d grad[%d] = %v, want %v", m, i, got[i], want[i])
			}
		}
		ls := b.Losses().Layers[0]
		for _, x := range []struct {
			name      string
			got, want float64
		}{{"global", ls.Global, global}, {"micro", ls.Micro, micro}, {"seq", ls.Seq, seq}, {"z", ls.Z, zl},
			{"weighted", ls.Weighted, 2 * (0.7*global + 0.2*micro + 0.4*seq + 0.05*zl)}} {
			if !closeRel(x.got, x.want, 1e-12, 0) {
				t.Fatalf("m=%d %s = %v, want %v", m, x.name, x.got, x.want)
			}
		}
		if b.Losses().Total != ls.Weighted {
			t.Fatal("Total != sum of Weighted")
		}
	}
}

// TestBalancerPaddingExcluded: a batch with padding tokens (garbage logits,
// garbage routing) gives the same losses and valid-token gradients as the
// same batch with the padding removed, and padding gets no gradient.
func TestBalancerPaddingExcluded(t *testing.T) {
	ctx := context.Background()
	const T, E, k = 16, 8, 2
	rng := rand.New(rand.NewPCG(4, 4))
	d := randomRouted(rng, T, E, k, 1)
	valid := make([]bool, T)
	var keep []int
	for i := range valid {
		valid[i] = rng.IntN(3) != 0
		if valid[i] {
			keep = append(keep, i)
		} else {
			for j := 0; j < k; j++ {
				d.idx[i*k+j] = 0 // padding "routed" to expert 0: must not count
			}
			for e := 0; e < E; e++ {
				d.z[i*E+e] = 50 // huge logits: must not reach z-loss
			}
		}
	}
	n := len(keep)
	cz, cp, ci := make([]float32, n*E), make([]float32, n*E), make([]int32, n*k)
	for j, i := range keep {
		copy(cz[j*E:], d.z[i*E:(i+1)*E])
		copy(cp[j*E:], d.p[i*E:(i+1)*E])
		copy(ci[j*k:], d.idx[i*k:(i+1)*k])
	}
	cfg := Config{GlobalCoef: 1, MicroCoef: 0.5, ZCoef: 0.1}
	padded, _ := NewBalancer(cfg, 1, E, k, Identity{})
	compact, _ := NewBalancer(cfg, 1, E, k, Identity{})
	padded.Record(0, d.z, d.p, d.idx, T, 0, valid)
	compact.Record(0, cz, cp, ci, n, 0, nil)
	gp, gc := make([]float32, T*E), make([]float32, n*E)
	if err := padded.Backward(ctx, 0, 1, gp); err != nil {
		t.Fatal(err)
	}
	if err := compact.Backward(ctx, 0, 1, gc); err != nil {
		t.Fatal(err)
	}
	lp, lc := padded.Losses().Layers[0], compact.Losses().Layers[0]
	if !closeRel(lp.Global, lc.Global, 1e-12, 0) || !closeRel(lp.Micro, lc.Micro, 1e-12, 0) || !closeRel(lp.Z, lc.Z, 1e-12, 0) {
		t.Fatalf("padded losses %+v, compact %+v", lp, lc)
	}
	if padded.StepTokens() != float64(n) || padded.StepCounts(0)[0] != compact.StepCounts(0)[0] {
		t.Fatalf("padding counted: tokens %v (want %d), expert 0 %v vs %v", padded.StepTokens(), n, padded.StepCounts(0)[0], compact.StepCounts(0)[0])
	}
	for i := 0; i < T; i++ {
		for e := 0; e < E; e++ {
			if !valid[i] && gp[i*E+e] != 0 {
				t.Fatalf("padding token %d has gradient", i)
			}
		}
	}
	for j, i := range keep {
		for e := 0; e < E; e++ {
			if math.Abs(float64(gp[i*E+e]-gc[j*E+e])) > 1e-7 {
				t.Fatalf("token %d expert %d: padded %v, compact %v", i, e, gp[i*E+e], gc[j*E+e])
			}
		}
	}
}

// TestBiasUpdateSignRule: after a step, under-loaded experts (count below
// the mean) gain BiasRate, over-loaded lose it, exactly-average stay; the
// counts are the step's global counts; BiasRate 0 keeps zeros.
func TestBiasUpdateSignRule(t *testing.T) {
	ctx := context.Background()
	const T, E, k, rate = 4, 4, 1, 0.125
	// Rank 0 routes tokens to experts 0,0,0,1; rank 1 to 0,2,2,1.
	// Global counts: e0=4, e1=2, e2=2, e3=0; mean 2.
	routes := [][]int32{{0, 0, 0, 1}, {0, 2, 2, 1}}
	for _, r := range []float64{rate, 0} {
		red := newBarrierReducer(2)
		bs := make([]*Balancer, 2)
		for i := range bs {
			var err error
			if bs[i], err = NewBalancer(Config{GlobalCoef: 1, BiasRate: r}, 1, E, k, red); err != nil {
				t.Fatal(err)
			}
		}
		for step := 1; step <= 2; step++ {
			runRanks(t, 2, func(rank int) error {
				p := make([]float32, T*E)
				for i := range p {
					p[i] = 0.25
				}
				bs[rank].Record(0, nil, p, routes[rank], T, 0, nil)
				if err := bs[rank].Sync(ctx); err != nil {
					return err
				}
				bs[rank].StepDone()
				return nil
			})
			want := []float32{-1, 0, 0, 1}
			for _, b := range bs {
				got := b.Bias(0)
				for e := range want {
					if got[e] != want[e]*float32(r)*float32(step) {
						t.Fatalf("rate %v step %d: bias %v, want %v * %v * step", r, step, got, want, r)
					}
				}
			}
		}
	}
}

// TestStateRoundTrip: a Balancer restored from State in the middle of a
// step continues exactly like the original.
func TestStateRoundTrip(t *testing.T) {
	ctx := context.Background()
	const T, E, k = 12, 6, 2
	cfg := Config{GlobalCoef: 1, BiasRate: 0.01}
	a, _ := NewBalancer(cfg, 2, E, k, Identity{})
	rng := rand.New(rand.NewPCG(5, 5))
	micro := func(b *Balancer, ds []*routed) ([]float32, Losses) {
		g := make([]float32, 2*T*E)
		for l, d := range ds {
			b.Record(l, d.z, d.p, d.idx, T, 0, nil)
		}
		for l := range ds {
			if err := b.Backward(ctx, l, 1, g[l*T*E:(l+1)*T*E]); err != nil {
				t.Fatal(err)
			}
		}
		return g, b.Losses()
	}
	batch := func() []*routed { return []*routed{randomRouted(rng, T, E, k, 1), randomRouted(rng, T, E, k, 1)} }
	micro(a, batch())
	a.StepDone() // non-zero bias
	micro(a, batch())
	s := a.State()
	b, _ := NewBalancer(cfg, 2, E, k, Identity{})
	if err := b.SetState(s); err != nil {
		t.Fatal(err)
	}
	next := batch()
	ga, la := micro(a, next)
	gb, lb := micro(b, next)
	for i := range ga {
		if ga[i] != gb[i] {
			t.Fatalf("grad %d differs after restore: %v vs %v", i, ga[i], gb[i])
		}
	}
	if la.Total != lb.Total {
		t.Fatalf("losses differ after restore: %v vs %v", la.Total, lb.Total)
	}
	a.StepDone()
	b.StepDone()
	for l := 0; l < 2; l++ {
		for e := 0; e < E; e++ {
			if a.Bias(l)[e] != b.Bias(l)[e] {
				t.Fatalf("bias differs after restore")
			}
		}
	}
	// Mutating the returned State must not touch the Balancer.
	s.BiasLE[0] = 99
	if a.State().BiasLE[0] == 99 {
		t.Fatal("State shares memory with the Balancer")
	}
	bad := []State{
		{Layers: 3, Experts: E, K: k},
		{Layers: 2, Experts: E, K: k, BiasLE: make([]float64, 1), BufferLE: make([]float64, 2*E)},
		{Layers: 2, Experts: E, K: k, BiasLE: make([]float64, 2*E), BufferLE: make([]float64, 2*E), BufferTokens: math.NaN()},
	}
	for i, st := range bad {
		if err := b.SetState(st); !errors.Is(err, ErrState) {
			t.Errorf("bad state %d: got %v, want ErrState", i, err)
		}
	}
}

func TestConfigValidateNamesField(t *testing.T) {
	nan := math.NaN()
	cases := []struct {
		cfg          Config
		layers, E, k int
		r            Reducer
		field        string
	}{
		{Config{GlobalCoef: -1}, 1, 4, 2, Identity{}, "GlobalCoef"},
		{Config{MicroCoef: nan}, 1, 4, 2, Identity{}, "MicroCoef"},
		{Config{SeqCoef: math.Inf(1)}, 1, 4, 2, Identity{}, "SeqCoef"},
		{Config{ZCoef: -0.1}, 1, 4, 2, Identity{}, "ZCoef"},
		{Config{BiasRate: -1}, 1, 4, 2, Identity{}, "BiasRate"},
		{Config{LayerCoef: []float64{1, -1}}, 2, 4, 2, Identity{}, "LayerCoef[1]"},
		{Config{LayerCoef: []float64{1}}, 2, 4, 2, Identity{}, "LayerCoef"},
		{Config{}, 0, 4, 2, Identity{}, "layers"},
		{Config{}, 1, 0, 1, Identity{}, "E"},
		{Config{}, 1, 4, 5, Identity{}, "k"},
		{Config{}, 1, 4, 0, Identity{}, "k"},
		{Config{}, 1, 4, 2, nil, "Reducer"},
	}
	for _, c := range cases {
		_, err := NewBalancer(c.cfg, c.layers, c.E, c.k, c.r)
		var ce *ConfigError
		if !errors.As(err, &ce) || !errors.Is(err, ErrInvalidConfig) || ce.Field != c.field {
			t.Errorf("%+v: got %v, want ConfigError on %s", c.cfg, err, c.field)
		}
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	if _, err := NewBalancer(DefaultConfig(), 2, 8, 2, Identity{}); err != nil {
		t.Fatal(err)
	}
}

func TestBalancerBiasZeroWhenOff(t *testing.T) {
	b, _ := NewBalancer(DefaultConfig(), 2, 4, 1, Identity{})
	p := []float32{0.25, 0.25, 0.25, 0.25}
	for range 3 {
		b.Record(0, nil, p, []int32{0}, 1, 0, nil)
		b.Record(1, nil, p, []int32{3}, 1, 0, nil)
		if err := b.Sync(context.Background()); err != nil {
			t.Fatal(err)
		}
		b.StepDone()
	}
	for l := 0; l < 2; l++ {
		for _, v := range b.Bias(l) {
			if v != 0 {
				t.Fatalf("bias %v with BiasRate 0", b.Bias(l))
			}
		}
	}
}

func BenchmarkBalancerMicroBatch(b *testing.B) {
	const L, T, E, k = 4, 4096, 64, 8
	rng := rand.New(rand.NewPCG(6, 6))
	bal, _ := NewBalancer(Config{GlobalCoef: 0.01, ZCoef: 1e-3}, L, E, k, Identity{})
	d := randomRouted(rng, T, E, k, 1)
	g := make([]float32, T*E)
	ctx := context.Background()
	for b.Loop() {
		for l := 0; l < L; l++ {
			bal.Record(l, d.z, d.p, d.idx, T, 1024, nil)
		}
		for l := 0; l < L; l++ {
			_ = bal.Backward(ctx, l, 1, g)
		}
	}
}

func TestBalancerNoAllocationsAfterWarmUp(t *testing.T) {
	const L, T, S, E, k = 2, 64, 16, 8, 2
	rng := rand.New(rand.NewPCG(7, 7))
	bal, _ := NewBalancer(Config{GlobalCoef: 1, MicroCoef: 0.1, SeqCoef: 0.1, ZCoef: 0.01, BiasRate: 0.001}, L, E, k, Identity{})
	d := randomRouted(rng, T, E, k, 1)
	g := make([]float32, T*E)
	ctx := context.Background()
	run := func() {
		for l := 0; l < L; l++ {
			bal.Record(l, d.z, d.p, d.idx, T, S, nil)
		}
		for l := 0; l < L; l++ {
			if err := bal.Backward(ctx, l, 1, g); err != nil {
				t.Fatal(err)
			}
		}
		bal.StepDone()
	}
	run()
	if a := testing.AllocsPerRun(20, run); a != 0 {
		t.Fatalf("%v allocations per micro-batch, want 0", a)
	}
}

// failingOnce fails its first call, then sums like Identity.
type failingOnce struct{ failed bool }

func (f *failingOnce) AllReduceSum(ctx context.Context, v []float64) error {
	if !f.failed {
		f.failed = true
		return errors.New("peer lost")
	}
	return nil
}

// TestStartSyncSameAsSync: the background sync the last layer's forward
// starts gives bitwise the losses and gradients of a plain Sync, starts
// only once every layer recorded, and a failure in the background is
// Sync's error (a retry then succeeds).
func TestStartSyncSameAsSync(t *testing.T) {
	ctx := context.Background()
	const L, T, E, k = 3, 8, 4, 2
	plain, err := NewBalancer(Config{GlobalCoef: 1, MicroCoef: 0.1}, L, E, k, Identity{})
	if err != nil {
		t.Fatal(err)
	}
	cr := &countingReducer{inner: Identity{}}
	early, err := NewBalancer(Config{GlobalCoef: 1, MicroCoef: 0.1}, L, E, k, cr)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 3))
	for m := 0; m < 3; m++ {
		for l := 0; l < L; l++ {
			d := randomRouted(rng, T, E, k, 1)
			plain.Record(l, d.z, d.p, d.idx, T, 4, nil)
			early.Record(l, d.z, d.p, d.idx, T, 4, nil)
			early.StartSync(ctx)
			if l < L-1 && len(cr.lens) != m {
				t.Fatalf("StartSync ran before the last layer recorded")
			}
		}
		early.StartSync(ctx) // a second start does nothing
		for l := L - 1; l >= 0; l-- {
			g1, g2 := make([]float32, T*E), make([]float32, T*E)
			if err := plain.Backward(ctx, l, 1, g1); err != nil {
				t.Fatal(err)
			}
			if err := early.Backward(ctx, l, 1, g2); err != nil {
				t.Fatal(err)
			}
			for i := range g1 {
				if g1[i] != g2[i] {
					t.Fatalf("micro-batch %d layer %d: gradient %d differs: %v vs %v", m, l, i, g1[i], g2[i])
				}
			}
		}
		if len(cr.lens) != m+1 {
			t.Fatalf("%d reducer calls after %d micro-batches", len(cr.lens), m+1)
		}
		if !reflect.DeepEqual(plain.Losses(), early.Losses()) {
			t.Fatalf("losses %v vs %v", plain.Losses(), early.Losses())
		}
	}
	plain.StepDone()
	early.StepDone()

	// a background failure surfaces in Sync, and Sync can be retried
	fo := &failingOnce{}
	b, err := NewBalancer(Config{GlobalCoef: 1}, 1, E, k, fo)
	if err != nil {
		t.Fatal(err)
	}
	d := randomRouted(rng, T, E, k, 1)
	b.Record(0, d.z, d.p, d.idx, T, 4, nil)
	b.StartSync(ctx)
	if err := b.Sync(ctx); err == nil || !strings.Contains(err.Error(), "peer lost") {
		t.Fatalf("background failure: %v", err)
	}
	if err := b.Sync(ctx); err != nil {
		t.Fatalf("retry: %v", err)
	}
}

// TestBalanceWindow: with Window w the global LBL of a micro-batch counts
// only the micro-batches of its window: micro-batches 3 and 4 of a step
// with Window 2 give, bit for bit, the losses and gradients of a fresh
// step of those two; a window as long as the step is Window 0; a window
// of 1 is the micro-batch LBL.
func TestBalanceWindow(t *testing.T) {
	ctx := context.Background()
	const T, E, k = 16, 8, 2
	rng := rand.New(rand.NewPCG(5, 5))
	var mbs []*routed
	for range 4 {
		mbs = append(mbs, randomRouted(rng, T, E, k, 1.5))
	}
	run := func(cfg Config, from int) (losses []float64, grads [][]float32) {
		b, err := NewBalancer(cfg, 1, E, k, Identity{})
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range mbs[from:] {
			b.Record(0, d.z, d.p, d.idx, T, 0, nil)
			g := make([]float32, T*E)
			if err := b.Backward(ctx, 0, 1, g); err != nil {
				t.Fatal(err)
			}
			losses, grads = append(losses, b.Losses().Total), append(grads, g)
		}
		return losses, grads
	}
	same := func(what string, la, lb []float64, ga, gb [][]float32) {
		t.Helper()
		if !slices.Equal(la, lb) {
			t.Errorf("%s: losses %v, want %v", what, la, lb)
		}
		for i := range ga {
			if !slices.Equal(ga[i], gb[i]) {
				t.Errorf("%s: gradients of micro-batch %d differ", what, i)
			}
		}
	}
	lw, gw := run(Config{GlobalCoef: 0.1, Window: 2}, 0)
	lf, gf := run(Config{GlobalCoef: 0.1}, 2)
	same("window 2, second window", lw[2:], lf, gw[2:], gf)
	l0, g0 := run(Config{GlobalCoef: 0.1}, 0)
	same("window 2, first window", lw[:2], l0[:2], gw[:2], g0[:2])
	if lw[3] == l0[3] {
		t.Error("the second window counted the first")
	}
	l4, g4 := run(Config{GlobalCoef: 0.1, Window: 4}, 0)
	same("window 4 of 4", l4, l0, g4, g0)
	l1, g1 := run(Config{GlobalCoef: 0.1, Window: 1}, 0)
	lm, gm := run(Config{MicroCoef: 0.1}, 0)
	same("window 1 and micro", l1, lm, g1, gm)
	if err := (Config{Window: -1}).Validate(); err == nil {
		t.Error("Window -1 accepted")
	}
	b, _ := NewBalancer(Config{GlobalCoef: 0.1, Window: 2}, 1, E, k, Identity{})
	if err := b.SetState(State{Layers: 1, Experts: E, K: k, BiasLE: make([]float64, E), BufferLE: make([]float64, E), MicroBatches: 1}); !errors.Is(err, ErrState) {
		t.Errorf("a mid-step state into a windowed balancer: %v", err)
	}
}
