package lbl

// Golden vectors: testdata/lbl.json (copied from the shared golden set; the
// product never reads it). Its "spec" field defines every quantity checked
// here. Shapes of the file: logits/grad_* [R][M][T][E], topk_indices
// [R][M][T][k], counts/f_micro/p [R][M][E], f_global [E], f_buffered [M][E],
// loss_*_per_mb [R][M].

import (
	"encoding/json"
	"math"
	"os"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/router"
)

type goldenCase struct {
	Name         string          `json:"name"`
	R            int             `json:"dp_ranks"`
	M            int             `json:"micro_batches"`
	T            int             `json:"tokens"`
	E            int             `json:"experts"`
	K            int             `json:"k"`
	LblMicro     float64         `json:"lbl_micro"`
	LblGlobal    float64         `json:"lbl_global"`
	LblBuffered  float64         `json:"lbl_buffered"`
	Logits       [][][][]float64 `json:"logits"`
	TopK         [][][][]int32   `json:"topk_indices"`
	Counts       [][][]float64   `json:"counts"`
	FMicro       [][][]float64   `json:"f_micro"`
	FGlobal      []float64       `json:"f_global"`
	FBuffered    [][]float64     `json:"f_buffered"`
	P            [][][]float64   `json:"p"`
	LossMicro    [][]float64     `json:"loss_micro_per_mb"`
	LossGlobal   [][]float64     `json:"loss_global_per_mb"`
	LossBuffered [][]float64     `json:"loss_buffered_per_mb"`
	GradMicro    [][][][]float64 `json:"grad_micro"`
	GradGlobal   [][][][]float64 `json:"grad_global"`
	GradBuffered [][][][]float64 `json:"grad_buffered"`
}

func loadGolden(t *testing.T) []goldenCase {
	t.Helper()
	raw, err := os.ReadFile("testdata/lbl.json")
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Cases []goldenCase `json:"cases"`
	}
	if err := json.Unmarshal(raw, &f); err != nil {
		t.Fatal(err)
	}
	if len(f.Cases) == 0 {
		t.Fatal("no golden cases")
	}
	return f.Cases
}

// flat helpers: [T][E] -> []F row-major.
func flat64(rows [][]float64) []float64 {
	var out []float64
	for _, r := range rows {
		out = append(out, r...)
	}
	return out
}

func flatIdx(rows [][]int32) []int32 {
	var out []int32
	for _, r := range rows {
		out = append(out, r...)
	}
	return out
}

// softmax64 is the float64 reference softmax of the spec.
func softmax64(zTE []float64, T, E int) []float64 {
	p := make([]float64, T*E)
	for t := 0; t < T; t++ {
		row := zTE[t*E : (t+1)*E]
		m := math.Inf(-1)
		for _, z := range row {
			m = math.Max(m, z)
		}
		var s float64
		for e, z := range row {
			p[t*E+e] = math.Exp(z - m)
			s += p[t*E+e]
		}
		for e := range row {
			p[t*E+e] /= s
		}
	}
	return p
}

func to32(x []float64) []float32 {
	out := make([]float32, len(x))
	for i, v := range x {
		out[i] = float32(v)
	}
	return out
}

// closeRel reports |got-want| <= tol*max(|want|, floor).
func closeRel(got, want, tol, floor float64) bool {
	return math.Abs(got-want) <= tol*math.Max(math.Abs(want), floor)
}

// TestGoldenPureFloat64 checks every golden quantity through the pure
// functions instantiated at float64. Tolerances: counts and f exact
// (integers and k*T*R*M are small powers of two times small integers, and
// both are computed the same way); p and losses 1e-12 relative; gradients
// 1e-12 relative to the gradient scale E/(R*M*T), the bound on |grad|
// (different summation orders of a float64 softmax differ by ~1e-16).
func TestGoldenPureFloat64(t *testing.T) {
	const tol = 1e-12
	for _, c := range loadGolden(t) {
		t.Run(c.Name, func(t *testing.T) {
			R, M, T, E, k := c.R, c.M, c.T, c.E, c.K
			gscale := float64(E) / float64(R*M*T)
			countsE := make([]float64, E)
			pE := make([]float64, E)
			fE := make([]float64, E)
			globalE := make([]float64, E)
			bufE := make([][]float64, M) // counts of all ranks, micro-batches 0..m
			probs := make([][][]float64, R)
			var lblMicro, lblGlobal, lblBuf float64
			for r := 0; r < R; r++ {
				probs[r] = make([][]float64, M)
				for m := 0; m < M; m++ {
					z := flat64(c.Logits[r][m])
					// The golden top-k must be what router.TopK picks from the float32 logits.
					idx := make([]int32, T*k)
					router.TopK(to32(z), T, E, k, nil, idx)
					wantIdx := flatIdx(c.TopK[r][m])
					for i := range idx {
						if idx[i] != wantIdx[i] {
							t.Fatalf("r=%d m=%d: router.TopK %v, golden %v", r, m, idx, wantIdx)
						}
					}
					P := softmax64(z, T, E)
					probs[r][m] = P
					Counts(idx, T, E, k, nil, countsE)
					MeanProbs(P, T, E, nil, pE)
					loss := LossFromCounts(countsE, float64(T), k, pE, fE)
					for e := 0; e < E; e++ {
						if countsE[e] != c.Counts[r][m][e] {
							t.Fatalf("r=%d m=%d counts %v, golden %v", r, m, countsE, c.Counts[r][m])
						}
						if fE[e] != c.FMicro[r][m][e] {
							t.Fatalf("r=%d m=%d f_micro %v, golden %v", r, m, fE, c.FMicro[r][m])
						}
						if !closeRel(pE[e], c.P[r][m][e], tol, 0) {
							t.Fatalf("r=%d m=%d p[%d] = %.17g, golden %.17g", r, m, e, pE[e], c.P[r][m][e])
						}
						globalE[e] += countsE[e]
						for mm := m; mm < M; mm++ {
							if bufE[mm] == nil {
								bufE[mm] = make([]float64, E)
							}
							bufE[mm][e] += countsE[e]
						}
					}
					if !closeRel(loss, c.LossMicro[r][m], tol, 0) {
						t.Fatalf("r=%d m=%d L_micro %.17g, golden %.17g", r, m, loss, c.LossMicro[r][m])
					}
					lblMicro += loss / float64(R*M)
					// Micro gradient.
					checkGrad(t, "micro", r, m, P, T, E, fE, 1/float64(R*M), c.GradMicro[r][m], tol*gscale)
				}
			}
			// Global and buffered f, losses and gradients.
			fGlobal := make([]float64, E)
			for r := 0; r < R; r++ {
				for m := 0; m < M; m++ {
					MeanProbs(probs[r][m], T, E, nil, pE)
					lg := LossFromCounts(globalE, float64(R*M*T), k, pE, fGlobal)
					lb := LossFromCounts(bufE[m], float64(R*(m+1)*T), k, pE, fE)
					if !closeRel(lg, c.LossGlobal[r][m], tol, 0) || !closeRel(lb, c.LossBuffered[r][m], tol, 0) {
						t.Fatalf("r=%d m=%d L_global %.17g (golden %.17g), L_buf %.17g (golden %.17g)",
							r, m, lg, c.LossGlobal[r][m], lb, c.LossBuffered[r][m])
					}
					for e := 0; e < E; e++ {
						if fGlobal[e] != c.FGlobal[e] || !closeRel(fE[e], c.FBuffered[m][e], 1e-15, 0) {
							t.Fatalf("m=%d f_global %v (golden %v), f_buf %v (golden %v)", m, fGlobal, c.FGlobal, fE, c.FBuffered[m])
						}
					}
					lblGlobal += lg / float64(R*M)
					lblBuf += lb / float64(R*M)
					checkGrad(t, "global", r, m, probs[r][m], T, E, fGlobal, 1/float64(R*M), c.GradGlobal[r][m], tol*gscale)
					checkGrad(t, "buffered", r, m, probs[r][m], T, E, fE, 1/float64(R*M), c.GradBuffered[r][m], tol*gscale)
				}
			}
			for _, x := range []struct {
				name      string
				got, want float64
			}{{"lbl_micro", lblMicro, c.LblMicro}, {"lbl_global", lblGlobal, c.LblGlobal}, {"lbl_buffered", lblBuf, c.LblBuffered}} {
				if !closeRel(x.got, x.want, tol, 0) {
					t.Fatalf("%s = %.17g, golden %.17g", x.name, x.got, x.want)
				}
			}
		})
	}
}

func checkGrad(t *testing.T, variant string, r, m int, P []float64, T, E int, fE []float64, scale float64, want [][]float64, atol float64) {
	t.Helper()
	d := make([]float64, T*E)
	AddGrad(P, T, E, nil, fE, scale, d)
	w := flat64(want)
	for i := range d {
		if math.Abs(d[i]-w[i]) > atol {
			t.Fatalf("grad_%s r=%d m=%d t=%d e=%d: %.17g, golden %.17g (atol %g)", variant, r, m, i/E, i%E, d[i], w[i], atol)
		}
	}
}

// TestGoldenConsistencyFacts checks the facts the spec lists on the golden
// data itself and on our results: f sums to 1, the gradient of every token
// sums to 0, the variants coincide when R*M = 1, and k = E gives loss 1.
func TestGoldenConsistencyFacts(t *testing.T) {
	for _, c := range loadGolden(t) {
		R, M, T, E, k := c.R, c.M, c.T, c.E, c.K
		sum := func(x []float64) float64 {
			var s float64
			for _, v := range x {
				s += v
			}
			return s
		}
		if math.Abs(sum(c.FGlobal)-1) > 1e-14 {
			t.Errorf("%s: f_global sums to %v", c.Name, sum(c.FGlobal))
		}
		fE := make([]float64, E)
		countsE := make([]float64, E)
		pE := make([]float64, E)
		for r := 0; r < R; r++ {
			for m := 0; m < M; m++ {
				P := softmax64(flat64(c.Logits[r][m]), T, E)
				Counts(flatIdx(c.TopK[r][m]), T, E, k, nil, countsE)
				MeanProbs(P, T, E, nil, pE)
				loss := LossFromCounts(countsE, float64(T), k, pE, fE)
				if math.Abs(sum(fE)-1) > 1e-14 || math.Abs(sum(c.FMicro[r][m])-1) > 1e-14 {
					t.Errorf("%s r=%d m=%d: f_micro sums to %v (golden %v)", c.Name, r, m, sum(fE), sum(c.FMicro[r][m]))
				}
				d := make([]float64, T*E)
				AddGrad(P, T, E, nil, fE, 1, d)
				for tok := 0; tok < T; tok++ {
					if s := sum(d[tok*E : (tok+1)*E]); math.Abs(s) > 1e-15 {
						t.Errorf("%s: token %d gradient sums to %g", c.Name, tok, s)
					}
					for _, g := range [][][]float64{c.GradMicro[r][m], c.GradGlobal[r][m], c.GradBuffered[r][m]} {
						if s := sum(g[tok]); math.Abs(s) > 1e-15 {
							t.Errorf("%s: golden token %d gradient sums to %g", c.Name, tok, s)
						}
					}
				}
				if k == E && math.Abs(loss-1) > 1e-14 {
					t.Errorf("%s: k=E but loss %v", c.Name, loss)
				}
				if R*M == 1 && (loss != c.LossGlobal[r][m] && !closeRel(loss, c.LossGlobal[r][m], 1e-12, 0)) {
					t.Errorf("%s: R*M=1 but micro %v != global %v", c.Name, loss, c.LossGlobal[r][m])
				}
			}
		}
		if R*M == 1 && c.LblMicro != c.LblGlobal {
			t.Errorf("%s: R*M=1 but lbl_micro %v != lbl_global %v", c.Name, c.LblMicro, c.LblGlobal)
		}
		if M == 1 && c.LblBuffered != c.LblGlobal {
			t.Errorf("%s: M=1 but lbl_buffered %v != lbl_global %v", c.Name, c.LblBuffered, c.LblGlobal)
		}
	}
}
