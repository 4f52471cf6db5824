package kernels

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/kernels/openblas"
)

// Tolerance of every SGEMM comparison: the worst-case float32 summation
// bound |got - want| <= (k+2) * u * (|alpha| |A||B| + |beta| |C|), u = 2^-24,
// against the float64-accumulating reference.

type gemmCase struct {
	tA, tB        bool
	m, n, k       int
	lda, ldb, ldc int
	alpha, beta   float32
	nanC          bool
}

func (tc gemmCase) String() string {
	return fmt.Sprintf("tA=%v tB=%v m=%d n=%d k=%d ld=%d,%d,%d alpha=%g beta=%g", tc.tA, tc.tB, tc.m, tc.n, tc.k, tc.lda, tc.ldb, tc.ldc, tc.alpha, tc.beta)
}

func randSlice(r *rand.Rand, n int) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(r.NormFloat64())
	}
	return s
}

func absSlice(s []float32) []float32 {
	o := make([]float32, len(s))
	for i, v := range s {
		o[i] = float32(math.Abs(float64(v)))
	}
	return o
}

// checkGemm runs b and the reference on the same random inputs.
func checkGemm(t testing.TB, b BLAS, r *rand.Rand, tc gemmCase) {
	t.Helper()
	ar, ac := tc.m, tc.k
	if tc.tA {
		ar, ac = tc.k, tc.m
	}
	br, bc := tc.k, tc.n
	if tc.tB {
		br, bc = tc.n, tc.k
	}
	if tc.lda < ac {
		tc.lda = ac
	}
	if tc.ldb < bc {
		tc.ldb = bc
	}
	if tc.ldc < tc.n {
		tc.ldc = tc.n
	}
	a := randSlice(r, max(ar*tc.lda, 1))
	bb := randSlice(r, max(br*tc.ldb, 1))
	c0 := randSlice(r, max(tc.m*tc.ldc, 1))
	if tc.nanC {
		for i := range c0 {
			c0[i] = float32(math.NaN())
		}
	}
	want := append([]float32(nil), c0...)
	got := append([]float32(nil), c0...)
	RefSgemm(tc.tA, tc.tB, tc.m, tc.n, tc.k, tc.alpha, a, tc.lda, bb, tc.ldb, tc.beta, want, tc.ldc)
	b.Sgemm(tc.tA, tc.tB, tc.m, tc.n, tc.k, tc.alpha, a, tc.lda, bb, tc.ldb, tc.beta, got, tc.ldc)
	bound := absSlice(c0)
	if tc.nanC {
		clear(bound)
	}
	RefSgemm(tc.tA, tc.tB, tc.m, tc.n, tc.k, abs32(tc.alpha), absSlice(a), tc.lda, absSlice(bb), tc.ldb, abs32(tc.beta), bound, tc.ldc)
	u := float64(tc.k+2) * math.Ldexp(1, -24)
	for i := 0; i < tc.m; i++ {
		for j := 0; j < tc.ldc; j++ {
			idx := i*tc.ldc + j
			if j >= tc.n {
				// Padding between rows must be untouched.
				if math.Float32bits(got[idx]) != math.Float32bits(c0[idx]) {
					t.Fatalf("%v: wrote padding C[%d,%d]", tc, i, j)
				}
				continue
			}
			d := math.Abs(float64(got[idx] - want[idx]))
			if !(d <= u*float64(bound[idx])+1e-30) {
				t.Fatalf("%v: C[%d,%d] = %g, want %g (bound %g)", tc, i, j, got[idx], want[idx], u*float64(bound[idx]))
			}
		}
	}
}

func abs32(x float32) float32 { return float32(math.Abs(float64(x))) }

func TestSgemmEdges(t *testing.T) {
	f := NewFast()
	r := rand.New(rand.NewPCG(1, 2))
	dims := []int{1, 2, 3, 5, 7, 11, 12, 13, 16, 17, 31, 32, 33, 47, 65}
	if raceEnabled {
		dims = []int{1, 3, 12, 13, 33}
	}
	for _, tA := range []bool{false, true} {
		for _, tB := range []bool{false, true} {
			for _, m := range dims {
				for _, n := range dims {
					k := dims[(m+n)%len(dims)]
					tc := gemmCase{tA: tA, tB: tB, m: m, n: n, k: k, alpha: 1, beta: 0, nanC: true}
					checkGemm(t, f, r, tc)
					tc = gemmCase{tA: tA, tB: tB, m: m, n: n, k: k + 1, lda: k + 5, ldb: n + 3, ldc: n + 2, alpha: -0.5, beta: 0.75}
					checkGemm(t, f, r, tc)
				}
			}
		}
	}
}

func TestSgemmBlocked(t *testing.T) {
	// Shapes crossing every blocking boundary (kc, mc, nc, parallel split).
	f := NewFast()
	r := rand.New(rand.NewPCG(3, 4))
	shapes := [][3]int{{193, 77, 300}, {400, 130, 513}, {37, 600, 260}, {256, 256, 256}, {130, 4200, 20}, {40, 50, 2100}}
	if raceEnabled {
		shapes = [][3]int{{100, 70, 270}, {30, 200, 40}}
	}
	for _, s := range shapes {
		for _, tA := range []bool{false, true} {
			for _, tB := range []bool{false, true} {
				for _, ab := range [][2]float32{{1, 0}, {2, 1}, {0.5, -1.5}, {0, 2}, {1, 1}} {
					checkGemm(t, f, r, gemmCase{tA: tA, tB: tB, m: s[0], n: s[1], k: s[2], lda: s[2] + 2*s[0] + 1, ldb: s[1] + s[2] + 3, ldc: s[1] + 1, alpha: ab[0], beta: ab[1], nanC: ab[1] == 0})
				}
			}
		}
	}
}

func TestSgemmEveryPath(t *testing.T) {
	// The generic and AVX2 kernels are exercised too when the CPU has them.
	r := rand.New(rand.NewPCG(5, 6))
	paths := []int{pathGeneric}
	if path >= pathAVX2 {
		paths = append(paths, pathAVX2)
	}
	if path >= pathAVX512 {
		paths = append(paths, pathAVX512)
	}
	for _, p := range paths {
		f := &Fast{t: tuningFor(p), minParallel: 1}
		for _, s := range [][3]int{{1, 1, 1}, {13, 35, 9}, {70, 45, 300}, {9, 100, 3}} {
			for _, tA := range []bool{false, true} {
				for _, tB := range []bool{false, true} {
					checkGemm(t, f, r, gemmCase{tA: tA, tB: tB, m: s[0], n: s[1], k: s[2], alpha: 1.5, beta: 0, nanC: true})
					checkGemm(t, f, r, gemmCase{tA: tA, tB: tB, m: s[0], n: s[1], k: s[2], ldc: s[1] + 7, alpha: 1, beta: -1})
				}
			}
		}
	}
}

func TestSgemmZeroK(t *testing.T) {
	f := NewFast()
	c := []float32{float32(math.NaN()), 2, 3, 4}
	f.Sgemm(false, false, 2, 2, 0, 1, nil, 1, nil, 2, 0, c, 2)
	for _, v := range c {
		if v != 0 {
			t.Fatalf("k=0 beta=0: %v", c)
		}
	}
	c = []float32{1, 2, 3, 4}
	f.Sgemm(false, false, 2, 2, 3, 0, nil, 3, nil, 2, 2, c, 2)
	if c[3] != 8 {
		t.Fatalf("alpha=0 beta=2: %v", c)
	}
}

func TestSgemmConcurrent(t *testing.T) {
	// Concurrent callers, each call itself split over the pool.
	f := &Fast{t: tuningFor(path), minParallel: 1}
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, 9))
			for i := 0; i < 3; i++ {
				checkGemm(t, f, r, gemmCase{m: 90 + i, n: 70, k: 50, alpha: 1, beta: 0.5})
			}
		}(uint64(g))
	}
	wg.Wait()
}

func TestSgemmAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts differ under -race")
	}
	f := NewFast()
	m, n, k := 300, 200, 300
	a, b, c := make([]float32, m*k), make([]float32, k*n), make([]float32, m*n)
	f.Sgemm(false, false, m, n, k, 1, a, k, b, n, 0, c, n)
	allocs := testing.AllocsPerRun(20, func() {
		f.Sgemm(false, true, m, n, k, 1, a, k, b, k, 0, c, n)
		f.Sgemm(true, false, 5, 7, 3, 1, a, 5, b, 7, 1, c, 7)
	})
	if allocs != 0 {
		t.Fatalf("Sgemm allocates %v times per call", allocs)
	}
	groups := makeGroups(rand.New(rand.NewPCG(1, 1)), []int{40, 0, 100, 7}, 64, 48)
	f.GroupedSgemm(groups)
	allocs = testing.AllocsPerRun(20, func() { f.GroupedSgemm(groups) })
	if allocs != 0 {
		t.Fatalf("GroupedSgemm allocates %v times per call", allocs)
	}
}

func TestSgemmPanicsOnShortSlices(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("no panic for a short C")
		}
	}()
	NewFast().Sgemm(false, false, 4, 4, 4, 1, make([]float32, 16), 4, make([]float32, 16), 4, 0, make([]float32, 15), 4)
}

func makeGroups(r *rand.Rand, ms []int, n, k int) []Gemm {
	gs := make([]Gemm, len(ms))
	for i, m := range ms {
		gs[i] = Gemm{M: m, N: n, K: k, Alpha: 1, A: randSlice(r, m*k), Lda: k, B: randSlice(r, k*n), Ldb: n, C: randSlice(r, m*n), Ldc: n}
	}
	return gs
}

func TestGroupedSgemm(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	f := &Fast{t: tuningFor(path), minParallel: 1}
	ms := []int{0, 1, 13, 130, 5, 64, 300, 2}
	if raceEnabled {
		ms = []int{0, 1, 13, 30, 5}
	}
	for _, trans := range [][2]bool{{false, false}, {true, false}, {false, true}, {true, true}} {
		gs := makeGroups(r, ms, 40, 33)
		want := make([][]float32, len(gs))
		for i := range gs {
			g := &gs[i]
			g.TransA, g.TransB = trans[0], trans[1]
			if g.TransA {
				g.Lda = g.M
			}
			if g.TransB {
				g.Ldb = g.K
			}
			g.Beta = float32(i%2) * 0.5
			want[i] = append([]float32(nil), g.C...)
			RefSgemm(g.TransA, g.TransB, g.M, g.N, g.K, g.Alpha, g.A, g.Lda, g.B, g.Ldb, g.Beta, want[i], g.Ldc)
		}
		f.GroupedSgemm(gs)
		for i := range gs {
			for j := range want[i] {
				if d := math.Abs(float64(gs[i].C[j] - want[i][j])); d > 1e-4 {
					t.Fatalf("trans %v group %d elem %d: %g want %g", trans, i, j, gs[i].C[j], want[i][j])
				}
			}
		}
	}
}

func FuzzSgemm(f *testing.F) {
	f.Add(uint8(1), uint8(1), uint8(1), uint8(0), uint8(0), uint8(0))
	f.Add(uint8(13), uint8(33), uint8(7), uint8(3), uint8(1), uint8(2))
	f.Add(uint8(40), uint8(65), uint8(200), uint8(2), uint8(3), uint8(0))
	fast := &Fast{t: tuningFor(path), minParallel: 1}
	f.Fuzz(func(t *testing.T, m, n, k, flags, pad, ab uint8) {
		r := rand.New(rand.NewPCG(uint64(m)<<16|uint64(n)<<8|uint64(k), uint64(flags)))
		alphas := []float32{1, -2, 0.5, 0}
		betas := []float32{0, 1, -0.5, 3}
		tc := gemmCase{
			tA: flags&1 != 0, tB: flags&2 != 0,
			m: int(m)%80 + 1, n: int(n)%80 + 1, k: int(k) % 300,
			alpha: alphas[ab%4], beta: betas[(ab/4)%4],
		}
		tc.nanC = tc.beta == 0
		p := int(pad % 5)
		tc.lda, tc.ldb, tc.ldc = max(tc.m, tc.k)+p, max(tc.n, tc.k)+p, tc.n+p
		checkGemm(t, fast, r, tc)
	})
}

// TestBLASContract runs the same cases against every BLAS implementation
// in this build (OpenBLAS too with -tags openblas).
func TestBLASContract(t *testing.T) {
	impls := map[string]BLAS{"reference": Reference{}, "fast": NewFast(), "default": Default()}
	if openblas.Available {
		impls["openblas"] = openblas.New()
	}
	for name, b := range impls {
		t.Run(name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(13, 14))
			for _, s := range [][3]int{{1, 1, 1}, {7, 5, 3}, {33, 65, 17}, {100, 40, 130}} {
				for _, tA := range []bool{false, true} {
					for _, tB := range []bool{false, true} {
						checkGemm(t, b, r, gemmCase{tA: tA, tB: tB, m: s[0], n: s[1], k: s[2], alpha: 1, beta: 0, nanC: true})
						checkGemm(t, b, r, gemmCase{tA: tA, tB: tB, m: s[0], n: s[1], k: s[2], lda: s[0] + s[2], ldb: s[1] + s[2], ldc: s[1] + 3, alpha: -2, beta: 0.5})
					}
				}
			}
		})
	}
}

// TestGroupedSgemmUnits covers the unit cuts of the grouped scheduler: one
// dominant problem split by rows (m >= n) or by columns (m < n), every
// transpose, beta != 0, k == 0, and concurrent grouped callers.
func TestGroupedSgemmUnits(t *testing.T) {
	f := &Fast{t: tuningFor(path), minParallel: 1}
	type shape struct{ m, n, k int }
	cases := [][]shape{
		{{300, 40, 33}},
		{{20, 300, 33}},
		{{7, 300, 0}, {100, 37, 12}},
		{{130, 130, 40}, {1, 1, 1}, {0, 5, 5}, {13, 260, 9}},
	}
	if raceEnabled {
		cases = cases[:3]
	}
	check := func(t *testing.T, r *rand.Rand, ss []shape, tA, tB bool) {
		gs := make([]Gemm, len(ss))
		want := make([][]float32, len(ss))
		for i, s := range ss {
			g := Gemm{TransA: tA, TransB: tB, M: s.m, N: s.n, K: s.k, Alpha: 1.5, Lda: s.k, Ldb: s.n, Beta: float32(i%2) * 0.5, Ldc: s.n + 3}
			if tA {
				g.Lda = s.m + 1
			}
			if tB {
				g.Ldb = s.k + 2
			}
			rowsA, rowsB := s.m, s.k
			if tA {
				rowsA = s.k
			}
			if tB {
				rowsB = s.n
			}
			g.A, g.B, g.C = randSlice(r, rowsA*g.Lda+1), randSlice(r, rowsB*g.Ldb+1), randSlice(r, s.m*g.Ldc)
			want[i] = append([]float32(nil), g.C...)
			RefSgemm(tA, tB, g.M, g.N, g.K, g.Alpha, g.A, g.Lda, g.B, g.Ldb, g.Beta, want[i], g.Ldc)
			if i%2 == 0 {
				// A second product into the same C.
				g.K2 = s.k/2 + 3
				g.Lda2, g.Ldb2 = g.K2, s.n+1
				rowsA, rowsB := s.m, g.K2
				if tA {
					g.Lda2, rowsA = s.m, g.K2
				}
				if tB {
					g.Ldb2, rowsB = g.K2, s.n
				}
				g.A2, g.B2 = randSlice(r, rowsA*g.Lda2), randSlice(r, rowsB*g.Ldb2)
				RefSgemm(tA, tB, g.M, g.N, g.K2, g.Alpha, g.A2, g.Lda2, g.B2, g.Ldb2, 1, want[i], g.Ldc)
			}
			gs[i] = g
		}
		f.GroupedSgemm(gs)
		for i := range gs {
			for e := range want[i] {
				if d := math.Abs(float64(gs[i].C[e] - want[i][e])); d > 1e-4 {
					t.Errorf("%v tA %v tB %v group %d elem %d: %g want %g", ss, tA, tB, i, e, gs[i].C[e], want[i][e])
					return
				}
			}
		}
	}
	r := rand.New(rand.NewPCG(3, 4))
	for _, ss := range cases {
		for _, tr := range [][2]bool{{false, false}, {true, false}, {false, true}, {true, true}} {
			check(t, r, ss, tr[0], tr[1])
		}
	}
	// The same small cases on the caller alone (under minParallel).
	f = NewFast()
	for _, ss := range cases {
		check(t, r, ss, true, false)
	}
	f = &Fast{t: tuningFor(path), minParallel: 1}
	var wg sync.WaitGroup
	for c := 0; c < 3; c++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, 5))
			for _, ss := range cases[:2] {
				check(t, r, ss, seed%2 == 0, false)
			}
		}(uint64(c))
	}
	wg.Wait()
}

// TestGroupedSwiGLU checks the parallel grouped SwiGLU (both directions,
// several ops of uneven length, chunk edges) against the one-call kernels.
func TestGroupedSwiGLU(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	lens := []int{0, 3, swigluChunk + 17, 2*swigluChunk + 5, 1000}
	ops := make([]SwiGLUOp, 0, 2*len(lens))
	type want struct{ h, da, db []float32 }
	var wants []want
	for _, bwd := range []bool{false, true} {
		for _, n := range lens {
			o := SwiGLUOp{Backward: bwd, A: randSlice(r, n), B: randSlice(r, n)}
			var w want
			if bwd {
				o.DH, o.DA, o.DB = randSlice(r, n), make([]float32, n), make([]float32, n)
				w.da, w.db = make([]float32, n), make([]float32, n)
				SwiGLUBackward(w.da, w.db, o.DH, o.A, o.B)
			} else {
				o.H = make([]float32, n)
				w.h = make([]float32, n)
				SwiGLU(w.h, o.A, o.B)
			}
			ops = append(ops, o)
			wants = append(wants, w)
		}
	}
	GroupedSwiGLU(ops)
	eq := func(what string, i int, got, want []float32) {
		for e := range want {
			if got[e] != want[e] {
				t.Fatalf("op %d %s[%d] = %g want %g", i, what, e, got[e], want[e])
			}
		}
	}
	for i, o := range ops {
		if o.Backward {
			eq("da", i, o.DA, wants[i].da)
			eq("db", i, o.DB, wants[i].db)
		} else {
			eq("h", i, o.H, wants[i].h)
		}
	}
	if !raceEnabled {
		if a := testing.AllocsPerRun(10, func() { GroupedSwiGLU(ops) }); a != 0 {
			t.Fatalf("GroupedSwiGLU allocates %v times per call", a)
		}
	}
}

// TestGroupedSgemmPrePost checks the per-block SwiGLUs of a grouped call:
// Pre produces the rows of A (H = silu(a)*b, width K) before each block,
// Post consumes the rows of C (DH = C, width N) after it. Problems large
// enough to be cut into several row blocks, and one under minParallel.
func TestGroupedSgemmPrePost(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	for _, f := range []*Fast{{t: tuningFor(path), minParallel: 1}, NewFast()} {
		ms := []int{300, 7, 130}
		n, k := 40, 24
		gs := make([]Gemm, len(ms))
		pre, post := make([]SwiGLUOp, len(ms)), make([]SwiGLUOp, len(ms))
		type want struct{ h, c, da, db []float32 }
		ws := make([]want, len(ms))
		for i, m := range ms {
			pre[i] = SwiGLUOp{H: randSlice(r, m*k), A: randSlice(r, m*k), B: randSlice(r, m*k), Row: k}
			post[i] = SwiGLUOp{Backward: true, A: randSlice(r, m*n), B: randSlice(r, m*n), DA: make([]float32, m*n), DB: make([]float32, m*n), Row: n}
			g := Gemm{M: m, N: n, K: k, Alpha: 1, A: pre[i].H, Lda: k, B: randSlice(r, k*n), Ldb: n, Beta: 0.5, C: randSlice(r, m*n), Ldc: n, Pre: &pre[i], Post: &post[i]}
			post[i].DH = g.C
			w := want{h: make([]float32, m*k), c: append([]float32(nil), g.C...), da: make([]float32, m*n), db: make([]float32, m*n)}
			SwiGLU(w.h, pre[i].A, pre[i].B)
			RefSgemm(false, false, m, n, k, 1, w.h, k, g.B, n, 0.5, w.c, n)
			SwiGLUBackward(w.da, w.db, w.c, post[i].A, post[i].B)
			gs[i], ws[i] = g, w
		}
		f.GroupedSgemm(gs)
		for i := range gs {
			for _, c := range []struct {
				name      string
				got, want []float32
				tol       float64
			}{{"h", pre[i].H, ws[i].h, 0}, {"c", gs[i].C, ws[i].c, 1e-4}, {"da", post[i].DA, ws[i].da, 1e-4}, {"db", post[i].DB, ws[i].db, 1e-4}} {
				for e := range c.want {
					if d := math.Abs(float64(c.got[e] - c.want[e])); d > c.tol {
						t.Fatalf("minParallel %d group %d %s[%d] = %g want %g", f.minParallel, i, c.name, e, c.got[e], c.want[e])
					}
				}
			}
		}
	}
}
