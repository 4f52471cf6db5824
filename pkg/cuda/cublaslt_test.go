package cuda

import (
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"unsafe"
)

// rowMajorRef computes g on mem, reading pointers as element offsets:
// D = alpha op(A) op(B) + beta C, row-major, batched.
func rowMajorRef(g *Gemm, mem []float64) []float64 {
	out := append([]float64(nil), mem...)
	d, ldd := g.Out()
	sd := g.StrideD
	if g.D == 0 {
		sd = g.StrideC
	}
	for b := 0; b < max(g.Batch, 1); b++ {
		a0, b0 := int(g.A)+b*int(g.StrideA), int(g.B)+b*int(g.StrideB)
		c0, d0 := int(g.C)+b*int(g.StrideC), int(d)+b*int(sd)
		for i := 0; i < g.M; i++ {
			for j := 0; j < g.N; j++ {
				var s float64
				for l := 0; l < g.K; l++ {
					var av, bv float64
					if g.TransA {
						av = mem[a0+l*g.Lda+i]
					} else {
						av = mem[a0+i*g.Lda+l]
					}
					if g.TransB {
						bv = mem[b0+j*g.Ldb+l]
					} else {
						bv = mem[b0+l*g.Ldb+j]
					}
					s += av * bv
				}
				v := float64(g.Alpha) * s
				if g.Beta != 0 {
					v += float64(g.Beta) * mem[c0+i*g.Ldc+j]
				}
				out[d0+i*ldd+j] = v
			}
		}
	}
	return out
}

// colMajorLib computes p the way a column-major BLAS does.
func colMajorLib(p colMajor, mem []float64) []float64 {
	out := append([]float64(nil), mem...)
	for b := 0; b < p.Batch; b++ {
		a0, b0 := int(p.A)+b*int(p.StrideA), int(p.B)+b*int(p.StrideB)
		c0, d0 := int(p.C)+b*int(p.StrideC), int(p.D)+b*int(p.StrideD)
		for i := 0; i < p.M; i++ {
			for j := 0; j < p.N; j++ {
				var s float64
				for l := 0; l < p.K; l++ {
					var av, bv float64 // A(i,l) and B(l,j), column-major
					if p.TransA {
						av = mem[a0+l+i*p.Lda]
					} else {
						av = mem[a0+i+l*p.Lda]
					}
					if p.TransB {
						bv = mem[b0+j+l*p.Ldb]
					} else {
						bv = mem[b0+l+j*p.Ldb]
					}
					s += av * bv
				}
				v := float64(p.Alpha) * s
				if p.Beta != 0 {
					v += float64(p.Beta) * mem[c0+i+j*p.Ldc]
				}
				out[d0+i+j*p.Ldd] = v
			}
		}
	}
	return out
}

// The row-major -> column-major translation, checked by computing both
// sides on the CPU over the same memory.
func TestLtProblemTranslation(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	n := 0
	for _, sh := range [][3]int{{1, 1, 1}, {7, 33, 5}, {33, 7, 1}, {1, 9, 4}, {12, 1, 6}, {5, 5, 5}} {
		for _, ta := range []bool{false, true} {
			for _, tb := range []bool{false, true} {
				for _, v := range []struct {
					pad        int
					batch      int
					separateD  bool
					alpha, bet float32
				}{{0, 1, false, 1, 0}, {3, 1, true, 0.5, -1.5}, {2, 3, false, 2, 1}, {1, 2, true, -1, 0.25}} {
					M, N, K := sh[0], sh[1], sh[2]
					g := Gemm{TransA: ta, TransB: tb, M: M, N: N, K: K, Alpha: v.alpha, Beta: v.bet, AB: F32, CD: F32, Batch: v.batch}
					aRows, aCols := M, K
					if ta {
						aRows, aCols = K, M
					}
					bRows, bCols := K, N
					if tb {
						bRows, bCols = N, K
					}
					g.Lda, g.Ldb, g.Ldc, g.Ldd = aCols+v.pad, bCols+v.pad, N+v.pad, N+2*v.pad
					g.StrideA = int64(aRows*g.Lda + 3)
					g.StrideB = int64(bRows*g.Ldb + 1)
					g.StrideC = int64(M*g.Ldc + 2)
					g.StrideD = int64(M*g.Ldd + 5)
					var size int64
					alloc := func(stride int64) DevPtr {
						p := DevPtr(size + 1)
						size += stride*int64(v.batch) + 8
						return p
					}
					g.A, g.B, g.C = alloc(g.StrideA), alloc(g.StrideB), alloc(g.StrideC)
					if v.separateD {
						g.D = alloc(g.StrideD)
					} else {
						g.Ldd = 0
					}
					mem := make([]float64, size+8)
					for i := range mem {
						mem[i] = rng.Float64()*2 - 1
					}
					if err := checkGemm(&g); err != nil {
						t.Fatal(err)
					}
					p := ltProblem(&g)
					if p.ARows > p.Lda || p.BRows > p.Ldb || p.M > p.Ldc || p.M > p.Ldd {
						t.Fatalf("%s: a stored height exceeds its ld: %+v", gemmString(&g), p)
					}
					want, got := rowMajorRef(&g, mem), colMajorLib(p, mem)
					for i := range want {
						if math.Abs(want[i]-got[i]) > 1e-12 {
							t.Fatalf("%s: element %d: library %g, reference %g", gemmString(&g), i, got[i], want[i])
						}
					}
					n++
				}
			}
		}
	}
	t.Logf("%d products checked", n)
}

func TestLtProblemFields(t *testing.T) {
	g := Gemm{TransA: true, M: 7, N: 33, K: 129, A: 100, Lda: 8, B: 200, Ldb: 40, C: 300, Ldc: 35, Alpha: 1, AB: BF16, CD: F32,
		Batch: 2, StrideA: 1, StrideB: 2, StrideC: 3}
	p := ltProblem(&g)
	want := colMajor{M: 33, N: 7, K: 129, TransA: false, TransB: true,
		A: 200, Lda: 40, StrideA: 2, B: 100, Ldb: 8, StrideB: 1,
		C: 300, Ldc: 35, StrideC: 3, D: 300, Ldd: 35, StrideD: 3, // D = C; Beta 0: C = D
		ARows: 33, ACols: 129, BRows: 7, BCols: 129, AB: BF16, CD: F32, Batch: 2, Alpha: 1}
	if p != want {
		t.Errorf("got  %+v\nwant %+v", p, want)
	}
	g.Beta, g.D, g.Ldd, g.StrideD = 0.5, 400, 36, 4
	p = ltProblem(&g)
	if p.C != 300 || p.Ldc != 35 || p.D != 400 || p.Ldd != 36 || p.StrideD != 4 {
		t.Errorf("D != C: %+v", p)
	}
	g.Batch = 0
	if p = ltProblem(&g); p.Batch != 1 {
		t.Errorf("batch 0 -> %d", p.Batch)
	}
}

func TestCheckGemm(t *testing.T) {
	ok := Gemm{M: 4, N: 5, K: 6, A: 256, Lda: 6, B: 512, Ldb: 5, C: 1024, Ldc: 5, Alpha: 1}
	if err := checkGemm(&ok); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		edit func(g *Gemm)
		want string
	}{
		{func(g *Gemm) { g.M = -1 }, "negative size"},
		{func(g *Gemm) { g.AB = I32 }, "A and B must be f32 or bf16"},
		{func(g *Gemm) { g.CD = DType(9) }, "C and D must be f32 or bf16"},
		{func(g *Gemm) { g.Lda = 5 }, "lda 5 < 6"},
		{func(g *Gemm) { g.TransA, g.Lda = true, 3 }, "lda 3 < 4"},
		{func(g *Gemm) { g.Ldb = 4 }, "ldb 4 < 5"},
		{func(g *Gemm) { g.TransB, g.Ldb = true, 5 }, "ldb 5 < 6"},
		{func(g *Gemm) { g.Ldc = 4 }, "ldc 4 < N"},
		{func(g *Gemm) { g.D, g.Ldd = 2048, 4 }, "ldd 4 < N"},
		{func(g *Gemm) { g.C = 0 }, "no output"},
		{func(g *Gemm) { g.C, g.D, g.Ldd, g.Beta = 0, 2048, 5, 1 }, "beta is not 0 but C is 0"},
		{func(g *Gemm) { g.A = 0 }, "A or B is 0"},
		{func(g *Gemm) { g.Batch, g.StrideA = 2, -1 }, "negative batch stride"},
	} {
		g := ok
		tc.edit(&g)
		err := checkGemm(&g)
		if err == nil || !errors.Is(err, ErrLaunch) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want ErrLaunch with %q", gemmString(&g), err, tc.want)
		}
	}
	// Empty products need nothing else; K == 0 needs no A, B or lda.
	for _, g := range []Gemm{{M: 0, N: 5}, {M: 3, N: 0}, {M: 3, N: 4, K: 0, C: 64, Ldc: 4}} {
		if err := checkGemm(&g); err != nil {
			t.Errorf("%s: %v", gemmString(&g), err)
		}
	}
	// C may be 0 when Beta is 0 and D is given.
	g := ok
	g.C, g.Ldc, g.D, g.Ldd = 0, 0, 4096, 5
	if err := checkGemm(&g); err != nil {
		t.Error(err)
	}
}

func TestAlignment(t *testing.T) {
	for _, tc := range []struct {
		p      DevPtr
		stride int64
		size   int64
		batch  int
		want   uint32
	}{
		{0x7f0000000000, 0, 4, 1, 256},
		{0x7f0000000004, 0, 4, 1, 4},
		{0x7f0000000010, 0, 2, 1, 16},
		{0x7f0000000000, 3, 4, 2, 4},    // stride 12 bytes
		{0x7f0000000000, 64, 4, 2, 256}, // stride 256 bytes
		{0x7f0000000000, 3, 4, 1, 256},  // stride unused
		{0, 0, 4, 1, 256},
	} {
		if got := alignment(tc.p, tc.stride, tc.size, tc.batch); got != tc.want {
			t.Errorf("alignment(%#x, %d, %d, %d) = %d, want %d", tc.p, tc.stride, tc.size, tc.batch, got, tc.want)
		}
	}
}

// cublasLtMatmulHeuristicResult_t as cublasLt.h lays it out.
func TestHeuristicResultLayout(t *testing.T) {
	var r ltHeuristicResult
	if s := unsafe.Sizeof(r); s != 96 {
		t.Errorf("size %d, want 96", s)
	}
	if unsafe.Sizeof(r.algo) != 64 || unsafe.Offsetof(r.workspaceSize) != 64 || unsafe.Offsetof(r.state) != 72 ||
		unsafe.Offsetof(r.wavesCount) != 76 || unsafe.Offsetof(r.reserved) != 80 {
		t.Errorf("offsets: algo size %d, workspaceSize %d, state %d, wavesCount %d, reserved %d",
			unsafe.Sizeof(r.algo), unsafe.Offsetof(r.workspaceSize), unsafe.Offsetof(r.state),
			unsafe.Offsetof(r.wavesCount), unsafe.Offsetof(r.reserved))
	}
}
