package cuda

// GPU tests: they run where Open succeeds and skip, with Open's reason,
// where there is no GPU (SWITCHYARD_REQUIRE_GPU=1 makes that a failure,
// for the GPU machine). Any other Open error fails them.
//
// Tolerances (relative Frobenius error against a float64 CPU reference
// computed from the inputs as stored): f32 1e-5; bf16 inputs 1e-2 (the
// reference rounds the inputs to bf16 first).

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"
)

//go:generate clang-16 -x cuda --cuda-gpu-arch=sm_80 --cuda-device-only -nocudainc -nocudalib --cuda-feature=+ptx78 -O3 -S -o testdata/addone.ptx testdata/addone.cu

// testPTX holds the kernels of the tests (testdata/addone.cu).
//
//go:embed testdata/addone.ptx
var testPTX []byte

var (
	gpuOnce sync.Once
	gpuCtx  *Context
	gpuErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if gpuCtx != nil {
		if err := gpuCtx.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "Close:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// openGPU returns the shared test Context (with testdata/addone.ptx).
func openGPU(t *testing.T) *Context {
	t.Helper()
	gpuOnce.Do(func() { gpuCtx, gpuErr = Open(Options{Module: testPTX}) })
	if gpuErr != nil {
		if errors.Is(gpuErr, ErrNoDevice) && os.Getenv("SWITCHYARD_REQUIRE_GPU") == "" {
			t.Skip("no GPU: " + gpuErr.Error())
		}
		t.Fatalf("Open: %v", gpuErr)
	}
	return gpuCtx
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func upload(t *testing.T, c *Context, b []byte) DevPtr {
	t.Helper()
	p, err := c.Alloc(int64(len(b)))
	must(t, err)
	must(t, c.CopyHtoD(p, unsafe.Pointer(&b[0]), int64(len(b))))
	return p
}

func download(t *testing.T, c *Context, p DevPtr, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	must(t, c.CopyDtoH(unsafe.Pointer(&b[0]), p, int64(n)))
	return b
}

func f32Bytes(v []float32) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v))
}

func bytesF32(b []byte) []float32 {
	return unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), len(b)/4)
}

func TestGPUProbe(t *testing.T) {
	c := openGPU(t)
	info, err := Probe()
	must(t, err)
	t.Logf("\n%s", info)
	if info.DriverVersion < 12000 || len(info.Devices) == 0 {
		t.Errorf("driver %d, %d devices", info.DriverVersion, len(info.Devices))
	}
	d := info.Devices[c.Ordinal()]
	if maj, min := c.CC(); d.Name != c.Name() || d.CCMajor != maj || d.CCMinor != min || d.SMs <= 0 || d.TotalMem <= 0 {
		t.Errorf("device %+v vs Context %s cc %d.%d", d, c.Name(), maj, min)
	}
	if u := c.UUID(); len(u) != 40 || !strings.HasPrefix(u, "GPU-") || strings.Count(u, "-") != 5 {
		t.Errorf("UUID %q, want GPU-8-4-4-4-12 hex digits", u)
	}
	free, total, err := c.MemInfo()
	must(t, err)
	if free <= 0 || total < free {
		t.Errorf("MemInfo %d free of %d", free, total)
	}
}

func TestGPUMemory(t *testing.T) {
	c := openGPU(t)
	rng := rand.New(rand.NewPCG(3, 4))
	if p, err := c.Alloc(0); p != 0 || err != nil {
		t.Errorf("Alloc(0) = %#x, %v", p, err)
	}
	must(t, c.Free(0))

	t.Run("round trip", func(t *testing.T) {
		src := make([]byte, 1<<20+3)
		for i := range src {
			src[i] = byte(rng.Uint32())
		}
		p := upload(t, c, src)
		defer c.Free(p)
		if got := download(t, c, p, len(src)); string(got) != string(src) {
			t.Fatal("1 MiB + 3 bytes: round trip differs")
		}
		// CopyDtoD, then Memset of an unaligned and of an aligned range.
		q, err := c.Alloc(int64(len(src)))
		must(t, err)
		defer c.Free(q)
		must(t, c.CopyDtoD(q, p, int64(len(src))))
		must(t, c.Memset(q.Add(5), 1001))    // cuMemsetD8Async
		must(t, c.Memset(q.Add(4096), 8192)) // cuMemsetD32Async
		want := append([]byte(nil), src...)
		clear(want[5:1006])
		clear(want[4096 : 4096+8192])
		got := download(t, c, q, len(src))
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("after CopyDtoD and Memset: byte %d is %#x, want %#x", i, got[i], want[i])
			}
		}
	})

	t.Run("larger than the staging ring", func(t *testing.T) {
		n := stagingBytes*2 + 12345
		src := make([]byte, n)
		for i := 0; i < n; i += 8 {
			v := rng.Uint64()
			for j := 0; j < 8 && i+j < n; j++ {
				src[i+j] = byte(v >> (8 * j))
			}
		}
		p := upload(t, c, src)
		defer c.Free(p)
		got := download(t, c, p, n)
		for i := range src {
			if got[i] != src[i] {
				t.Fatalf("%d bytes: byte %d is %#x, want %#x", n, i, got[i], src[i])
			}
		}
	})

	t.Run("src reused at once", func(t *testing.T) {
		// 300 copies of 512 KiB from one buffer rewritten after each
		// call: 150 MiB, the ring wraps twice.
		const chunk, count = 512 << 10, 300
		p, err := c.Alloc(chunk * count)
		must(t, err)
		defer c.Free(p)
		src := make([]byte, chunk)
		for k := 0; k < count; k++ {
			for i := range src {
				src[i] = byte(k*7 + i%251)
			}
			must(t, c.CopyHtoD(p.Add(int64(k)*chunk), unsafe.Pointer(&src[0]), chunk))
		}
		got := download(t, c, p, chunk*count)
		for k := 0; k < count; k++ {
			for i := 0; i < chunk; i++ {
				if w := byte(k*7 + i%251); got[k*chunk+i] != w {
					t.Fatalf("copy %d, byte %d: %#x, want %#x (the staging buffer was overwritten before the device read it)", k, i, got[k*chunk+i], w)
				}
			}
		}
	})

	t.Run("from many goroutines", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				for it := 0; it < 20; it++ {
					src := make([]byte, 4096+w)
					for i := range src {
						src[i] = byte(w + it + i)
					}
					p, err := c.Alloc(int64(len(src)))
					if err != nil {
						errs <- err
						return
					}
					dst := make([]byte, len(src))
					err = errors.Join(c.CopyHtoD(p, unsafe.Pointer(&src[0]), int64(len(src))),
						c.CopyDtoH(unsafe.Pointer(&dst[0]), p, int64(len(dst))), c.Free(p))
					if err != nil {
						errs <- err
						return
					}
					if string(dst) != string(src) {
						errs <- fmt.Errorf("goroutine %d iteration %d: data differs", w, it)
						return
					}
				}
			}(w)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}

func TestGPULaunch(t *testing.T) {
	c := openGPU(t)
	const n = 1000
	x := make([]float32, n)
	y := make([]float32, n)
	for i := range x {
		x[i], y[i] = float32(i), float32(2*i)
	}
	px, py := upload(t, c, f32Bytes(x)), upload(t, c, f32Bytes(y))
	defer c.Free(px)
	defer c.Free(py)

	addone, err := c.Kernel("addone")
	must(t, err)
	if addone.Name() != "addone" {
		t.Errorf("Name %q", addone.Name())
	}
	must(t, c.Launch(addone, D1((n+255)/256), D1(256), 0, Ptr(px), Int(n)))
	axpyk, err := c.Kernel("axpyk")
	must(t, err)
	must(t, c.Launch(axpyk, Dim3{X: (n + 127) / 128}, Dim3{X: 128}, 0, Ptr(py), Ptr(px), Float(-0.5), Int(n), Int(-3)))
	gx, gy := bytesF32(download(t, c, px, 4*n)), bytesF32(download(t, c, py, 4*n))
	for i := 0; i < n; i++ {
		wx := float32(i) + 1
		wy := -0.5*wx + float32(2*i) - 3
		if gx[i] != wx || gy[i] != wy {
			t.Fatalf("element %d: addone gave %g (want %g), axpyk gave %g (want %g)", i, gx[i], wx, gy[i], wy)
		}
	}

	if _, err := c.Kernel("no_such_kernel"); !errors.Is(err, ErrLaunch) || !strings.Contains(err.Error(), "CUDA_ERROR_NOT_FOUND") {
		t.Errorf("Kernel(no_such_kernel): %v", err)
	}
}

func TestGPULaunchLargeSharedMemory(t *testing.T) {
	c := openGPU(t)
	k, err := c.Kernel("reverse_smem")
	must(t, err)
	for _, kib := range []int{64, 160, 96} {
		n := kib << 10 / 4
		x := make([]float32, n)
		for i := range x {
			x[i] = float32(i)
		}
		p := upload(t, c, f32Bytes(x))
		if err := c.Launch(k, D1(1), D1(1024), n*4, Ptr(p), Int(n)); err != nil {
			t.Fatalf("%d KiB of dynamic shared memory: %v", kib, err)
		}
		got := bytesF32(download(t, c, p, 4*n))
		for i := range got {
			if got[i] != float32(n-1-i) {
				t.Fatalf("%d KiB: element %d is %g, want %d", kib, i, got[i], n-1-i)
			}
		}
		must(t, c.Free(p))
	}
}

// hostMat is a host copy of a device matrix of type t.
type hostMat struct {
	t DType
	b []byte
}

func (h hostMat) set(i int64, v float64) {
	if h.t == BF16 {
		*(*uint16)(unsafe.Pointer(&h.b[2*i])) = F32ToBF16(float32(v))
		return
	}
	*(*float32)(unsafe.Pointer(&h.b[4*i])) = float32(v)
}

func (h hostMat) get(i int64) float64 {
	if h.t == BF16 {
		return float64(BF16ToF32(*(*uint16)(unsafe.Pointer(&h.b[2*i]))))
	}
	return float64(*(*float32)(unsafe.Pointer(&h.b[4*i])))
}

// The poison is a NaN with a recognisable payload.
func (h hostMat) poison(i int64) {
	if h.t == BF16 {
		*(*uint16)(unsafe.Pointer(&h.b[2*i])) = 0x7fa5
		return
	}
	*(*uint32)(unsafe.Pointer(&h.b[4*i])) = 0x7fa5a5a5
}

func (h hostMat) poisoned(i int64) bool {
	if h.t == BF16 {
		return *(*uint16)(unsafe.Pointer(&h.b[2*i])) == 0x7fa5
	}
	return *(*uint32)(unsafe.Pointer(&h.b[4*i])) == 0x7fa5a5a5
}

// mat is one operand: batch matrices of rows x cols, row stride ld, batch
// stride stride, starting off elements into its allocation.
type mat struct {
	rows, cols, ld int
	stride, off    int64
	batch          int
	h              hostMat
	dev            DevPtr // the allocation
	n              int64  // elements in the allocation
}

func (m *mat) at(b, i, j int) int64 { return m.off + int64(b)*m.stride + int64(i*m.ld+j) }
func (m *mat) ptr() DevPtr          { return m.dev.Add(m.off * m.h.t.Size()) }

// newMat allocates an operand; interior elements are random (or poison
// when poisonAll) and everything else is poison.
func newMat(t *testing.T, c *Context, rng *rand.Rand, typ DType, rows, cols, pad, batch int, off int64, poisonAll bool) *mat {
	t.Helper()
	m := &mat{rows: rows, cols: cols, ld: max(cols+pad, 1), batch: batch, off: off}
	m.stride = int64(rows*m.ld) + int64(pad)*8 // padded between batches too
	m.n = off + int64(batch-1)*m.stride + int64(rows*m.ld) + 16
	m.h = hostMat{t: typ, b: make([]byte, m.n*typ.Size())}
	for i := int64(0); i < m.n; i++ {
		m.h.poison(i)
	}
	if !poisonAll {
		for b := 0; b < batch; b++ {
			for i := 0; i < rows; i++ {
				for j := 0; j < cols; j++ {
					m.h.set(m.at(b, i, j), rng.Float64()*2-1)
				}
			}
		}
	}
	m.dev = upload(t, c, m.h.b)
	return m
}

func (m *mat) free(c *Context) { c.Free(m.dev) }

// interior reports whether element k of the allocation is inside a matrix.
func (m *mat) interior(k int64) bool {
	for b := 0; b < m.batch; b++ {
		r := k - m.off - int64(b)*m.stride
		if r >= 0 && r < int64(m.rows*m.ld) && int(r)%m.ld < m.cols {
			return true
		}
	}
	return false
}

// gemmCase is one product to run and check.
type gemmCase struct {
	M, N, K         int
	ta, tb          bool
	alpha, beta     float32
	ab, cd          DType
	pad, batch      int
	off             int64 // elements of offset of every operand (alignment)
	separateD, nilC bool
}

// preparedGemm is a gemmCase with its operands on the device.
type preparedGemm struct {
	tc          gemmCase
	g           Gemm
	a, b, cm, d *mat // d is nil when C is the output; cm nil when nilC
}

func prepareGemm(t *testing.T, c *Context, rng *rand.Rand, tc gemmCase) *preparedGemm {
	t.Helper()
	batch := max(tc.batch, 1)
	aRows, aCols := tc.M, tc.K
	if tc.ta {
		aRows, aCols = tc.K, tc.M
	}
	bRows, bCols := tc.K, tc.N
	if tc.tb {
		bRows, bCols = tc.N, tc.K
	}
	p := &preparedGemm{tc: tc}
	p.a = newMat(t, c, rng, tc.ab, aRows, aCols, tc.pad, batch, tc.off, false)
	p.b = newMat(t, c, rng, tc.ab, bRows, bCols, tc.pad+1, batch, tc.off, false)
	g := Gemm{TransA: tc.ta, TransB: tc.tb, M: tc.M, N: tc.N, K: tc.K, Alpha: tc.alpha, Beta: tc.beta,
		A: p.a.ptr(), Lda: p.a.ld, B: p.b.ptr(), Ldb: p.b.ld, AB: tc.ab, CD: tc.cd, Batch: tc.batch,
		StrideA: p.a.stride, StrideB: p.b.stride}
	if !tc.nilC {
		// C is unread when beta is 0: poison it all.
		p.cm = newMat(t, c, rng, tc.cd, tc.M, tc.N, tc.pad+2, batch, tc.off, tc.beta == 0)
		g.C, g.Ldc, g.StrideC = p.cm.ptr(), p.cm.ld, p.cm.stride
	}
	if tc.separateD || tc.nilC {
		p.d = newMat(t, c, rng, tc.cd, tc.M, tc.N, tc.pad+3, batch, tc.off, true)
		g.D, g.Ldd, g.StrideD = p.d.ptr(), p.d.ld, p.d.stride
	}
	p.g = g
	return p
}

func (p *preparedGemm) free(c *Context) {
	for _, m := range []*mat{p.a, p.b, p.cm, p.d} {
		if m != nil {
			m.free(c)
		}
	}
}

func (p *preparedGemm) String() string {
	s := gemmString(&p.g)
	if p.tc.off != 0 {
		s += fmt.Sprintf(" (operands offset by %d elements)", p.tc.off)
	}
	return s
}

// check compares the output with the float64 reference and checks that
// nothing outside the output matrices was written and that a separate C
// is unchanged.
func (p *preparedGemm) check(t *testing.T, c *Context, tol float64) {
	t.Helper()
	out := p.cm
	if p.d != nil {
		out = p.d
	}
	got := hostMat{t: out.h.t, b: download(t, c, out.dev, len(out.h.b))}
	var num, den, worst float64
	worstAt := ""
	tc := p.tc
	for b := 0; b < max(tc.batch, 1); b++ {
		for i := 0; i < tc.M; i++ {
			for j := 0; j < tc.N; j++ {
				var s float64
				for l := 0; l < tc.K; l++ {
					var av, bv float64
					if tc.ta {
						av = p.a.h.get(p.a.at(b, l, i))
					} else {
						av = p.a.h.get(p.a.at(b, i, l))
					}
					if tc.tb {
						bv = p.b.h.get(p.b.at(b, j, l))
					} else {
						bv = p.b.h.get(p.b.at(b, l, j))
					}
					s += av * bv
				}
				want := float64(tc.alpha) * s
				if tc.beta != 0 {
					want += float64(tc.beta) * p.cm.h.get(p.cm.at(b, i, j))
				}
				g := got.get(out.at(b, i, j))
				e := math.Abs(g - want)
				if math.IsNaN(g) || math.IsInf(g, 0) {
					e = math.Inf(1)
				}
				num += e * e
				den += want * want
				if e > worst || worstAt == "" {
					worst = e
					worstAt = fmt.Sprintf("batch %d element (%d,%d): got %g, want %g", b, i, j, g, want)
				}
			}
		}
	}
	rel := math.Sqrt(num) / math.Max(math.Sqrt(den), 1e-30)
	if !(rel < tol) {
		t.Errorf("%s: relative Frobenius error %.3g >= %g; worst %s", p, rel, tol, worstAt)
	}
	for k := int64(0); k < out.n; k++ {
		if !out.interior(k) && !got.poisoned(k) {
			t.Errorf("%s: element %d of the output allocation, outside the matrices, was written (%g)", p, k, got.get(k))
			break
		}
	}
	if p.d != nil && p.cm != nil {
		if now := download(t, c, p.cm.dev, len(p.cm.h.b)); string(now) != string(p.cm.h.b) {
			t.Errorf("%s: C changed though D is separate", p)
		}
	}
}

// gemmVariants are the operand arrangements every shape is run with.
var gemmVariants = []struct {
	name string
	edit func(*gemmCase)
}{
	{"plain", func(*gemmCase) {}},
	{"padded alpha beta D!=C", func(c *gemmCase) { c.pad, c.alpha, c.beta, c.separateD = 3, 0.75, -1.25, true }},
	{"C nil beta 0", func(c *gemmCase) { c.pad, c.alpha, c.beta, c.nilC = 1, -2, 0, true }},
	{"batched", func(c *gemmCase) { c.pad, c.batch, c.alpha, c.beta = 2, 3, 1.5, 0.5 }},
	{"batched D!=C", func(c *gemmCase) { c.batch, c.alpha, c.beta, c.separateD = 2, 1, 1, true }},
}

func runGemmCases(t *testing.T, c *Context, ab, cd DType, shapes [][3]int, offset int64, tol float64) {
	rng := rand.New(rand.NewPCG(5, uint64(ab*10+cd)))
	for _, sh := range shapes {
		for _, ta := range []bool{false, true} {
			for _, tb := range []bool{false, true} {
				for _, v := range gemmVariants {
					tc := gemmCase{M: sh[0], N: sh[1], K: sh[2], ta: ta, tb: tb, alpha: 1, ab: ab, cd: cd}
					v.edit(&tc)
					p := prepareGemm(t, c, rng, tc)
					if err := c.Gemm(&p.g); err != nil {
						t.Errorf("%s [%s]: %v", p, v.name, err)
					} else {
						p.check(t, c, tol)
					}
					p.free(c)
				}
			}
		}
	}
	if offset != 0 { // operands not 256-byte aligned
		for _, sh := range shapes {
			tc := gemmCase{M: sh[0], N: sh[1], K: sh[2], tb: true, alpha: 1, beta: 1, ab: ab, cd: cd, off: offset, pad: 1}
			p := prepareGemm(t, c, rng, tc)
			if err := c.Gemm(&p.g); err != nil {
				t.Errorf("%s: %v", p, err)
			} else {
				p.check(t, c, tol)
			}
			p.free(c)
		}
	}
}

var gemmShapes = [][3]int{{1, 1, 1}, {7, 33, 129}, {33, 7, 1}, {129, 129, 33}, {1, 129, 7}, {64, 48, 256}}

func TestGPUGemmF32(t *testing.T) {
	c := openGPU(t)
	runGemmCases(t, c, F32, F32, gemmShapes, 1, 1e-5)
	// The plan cache: a repeated shape reuses its plan.
	before := len(c.plans)
	runGemmCases(t, c, F32, F32, gemmShapes[:2], 0, 1e-5)
	if len(c.plans) != before {
		t.Errorf("repeated shapes made new plans: %d -> %d", before, len(c.plans))
	}
}

func TestGPUGemmBF16(t *testing.T) {
	c := openGPU(t)
	shapes := [][3]int{{1, 1, 1}, {7, 33, 129}, {33, 7, 1}, {64, 48, 256}}
	t.Run("bf16->f32", func(t *testing.T) { runGemmCases(t, c, BF16, F32, shapes, 8, 1e-2) })
	t.Run("bf16->bf16", func(t *testing.T) { runGemmCases(t, c, BF16, BF16, shapes, 8, 1e-2) })
}

func TestGPUGemmKZero(t *testing.T) {
	c := openGPU(t)
	rng := rand.New(rand.NewPCG(7, 8))
	for _, cd := range []DType{F32, BF16} {
		for _, tc := range []gemmCase{
			{M: 5, N: 7, alpha: 1, beta: 0, separateD: true},           // D = 0 (C poisoned, unread)
			{M: 5, N: 7, alpha: 1, beta: 0, nilC: true, pad: 2},        // D = 0, no C
			{M: 5, N: 7, alpha: 1, beta: 0.5, separateD: true, pad: 1}, // D = C/2
			{M: 300, N: 33, alpha: 1, beta: -2, pad: 3},                // C = -2C in place
			{M: 3, N: 4, alpha: 1, beta: 1, batch: 3, separateD: true}, // D = C, batched
			{M: 3, N: 4, alpha: 1, beta: 1},                            // no-op
		} {
			tc.ab, tc.cd = F32, cd
			p := prepareGemm(t, c, rng, tc)
			if err := c.Gemm(&p.g); err != nil {
				t.Errorf("%s: %v", p, err)
			} else {
				p.check(t, c, 1e-2)
			}
			p.free(c)
		}
	}
}

func TestGPUGemmGrouped(t *testing.T) {
	c := openGPU(t)
	rng := rand.New(rand.NewPCG(9, 10))
	hasGrouped := c.blas.cublasGemmGroupedBatchedEx != 0
	if !hasGrouped {
		t.Logf("cuBLAS %s has no cublasGemmGroupedBatchedEx: every case loops over Gemm", c.blas.lib.path)
	}
	Ms := []int{5, 0, 17, 64, 3}
	Ks := []int{8, 16, 33, 1, 7}
	const N = 24
	for _, tc := range []struct {
		name        string
		ab, cd      DType
		ta, tb      bool
		alpha, beta float32
		separateD   int // index of a problem with D != C, or -1
		grouped     bool
		tol         float64
	}{
		{"f32", F32, F32, false, false, 1, 0, -1, true, 1e-5},
		{"f32 B transposed, beta", F32, F32, false, true, 0.5, 1.5, -1, true, 1e-5},
		{"f32 A transposed", F32, F32, true, false, 1, 0, -1, true, 1e-5},
		{"bf16", BF16, BF16, false, true, 1, 0, -1, true, 1e-2},
		{"bf16 to f32 (loops: not a cuBLAS grouped combination)", BF16, F32, true, false, 1, 1, -1, false, 1e-2},
		{"f32 with one D != C (loops for that one)", F32, F32, false, false, 1, 1, 2, true, 1e-5},
	} {
		var ps []*preparedGemm
		var gs []Gemm
		for i := range Ms {
			gc := gemmCase{M: Ms[i], N: N, K: Ks[i], ta: tc.ta, tb: tc.tb, alpha: tc.alpha, beta: tc.beta,
				ab: tc.ab, cd: tc.cd, pad: i % 2, separateD: i == tc.separateD}
			p := prepareGemm(t, c, rng, gc)
			ps = append(ps, p)
			gs = append(gs, p.g)
		}
		before := c.groupedCalls
		if err := c.GemmGrouped(gs); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		} else {
			for _, p := range ps {
				if p.tc.M > 0 {
					p.check(t, c, tc.tol)
				}
			}
		}
		if want := tc.grouped && hasGrouped; (c.groupedCalls > before) != want {
			t.Errorf("%s: cublasGemmGroupedBatchedEx used: %v, want %v", tc.name, c.groupedCalls > before, want)
		}
		for _, p := range ps {
			p.free(c)
		}
	}
}

func TestGPUElapsed(t *testing.T) {
	c := openGPU(t)
	rng := rand.New(rand.NewPCG(11, 12))
	p := prepareGemm(t, c, rng, gemmCase{M: 1024, N: 1024, K: 1024, alpha: 1, ab: F32, cd: F32})
	defer p.free(c)
	a, err := c.NewEvent()
	must(t, err)
	b, err := c.NewEvent()
	must(t, err)
	must(t, c.Gemm(&p.g)) // warm-up: plan and kernel load
	must(t, c.Record(a))
	const reps = 10
	for i := 0; i < reps; i++ {
		must(t, c.Gemm(&p.g))
	}
	must(t, c.Record(b))
	d, err := c.Elapsed(a, b)
	must(t, err)
	if d <= 0 {
		t.Fatalf("Elapsed = %v", d)
	}
	t.Logf("%d f32 GEMMs of 1024^3: %v, %.1f TFLOP/s", reps, d, reps*2*math.Pow(1024, 3)/d.Seconds()/1e12)
	must(t, c.Sync())
}

// A fault in a kernel is reported by the next CopyDtoH. The fault makes
// the context unusable, so it runs in a child process.
func TestGPUAsyncError(t *testing.T) {
	if os.Getenv("SWITCHYARD_CUDA_FAULT_CHILD") == "1" {
		c, err := Open(Options{Module: testPTX})
		must(t, err)
		buf, err := c.Alloc(64)
		must(t, err)
		poke, err := c.Kernel("poke")
		must(t, err)
		must(t, c.Launch(poke, D1(1), D1(1), 0, Ptr(8))) // an address nothing maps
		var out [64]byte
		err = c.CopyDtoH(unsafe.Pointer(&out[0]), buf, 64)
		fmt.Printf("CHILD-RESULT %v\n", err)
		if !errors.Is(err, ErrLaunch) {
			t.Fatalf("CopyDtoH after a faulting kernel: %v, want an error wrapping ErrLaunch", err)
		}
		fmt.Printf("CHILD-CLOSE %v\n", c.Close())
		return
	}
	openGPU(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestGPUAsyncError$", "-test.v")
	cmd.Env = append(os.Environ(), "SWITCHYARD_CUDA_FAULT_CHILD=1")
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(45 * time.Second): // within gpu-check's limit for the whole binary
		cmd.Process.Kill()
		<-done
		t.Fatalf("child did not finish:\n%s", out)
	}
	t.Logf("child:\n%s", out)
	if err != nil || !strings.Contains(string(out), "CHILD-RESULT cuda: cuMemcpyDtoH_v2: CUDA_ERROR_") {
		t.Errorf("child failed (%v)", err)
	}
}

func TestGPUBadModule(t *testing.T) {
	openGPU(t)
	bad := []byte(".version 7.8\n.target sm_80\n.address_size 64\n.visible .entry broken()\n{\n\tnot_an_instruction;\n}\n")
	c, err := Open(Options{Module: bad})
	if err == nil {
		c.Close()
		t.Fatal("Open with broken PTX succeeded")
	}
	var ce *CallError
	if !errors.As(err, &ce) || ce.Call != "cuModuleLoadDataEx" || ce.Log == "" {
		t.Fatalf("want a cuModuleLoadDataEx error with the JIT log, got %v", err)
	}
	t.Logf("error: %v", err)
}

func TestGPUCloseTwice(t *testing.T) {
	openGPU(t)
	c, err := Open(Options{Module: testPTX})
	must(t, err)
	p, err := c.Alloc(1 << 20)
	must(t, err)
	_ = p
	ev, err := c.NewEvent()
	must(t, err)
	must(t, c.Record(ev))
	must(t, c.Close())
	must(t, c.Close())
	if _, err := c.Alloc(16); !errors.Is(err, ErrNoDevice) {
		t.Errorf("Alloc after Close: %v", err)
	}
	// The shared Context still works.
	s := openGPU(t)
	q, err := s.Alloc(16)
	must(t, err)
	must(t, s.Free(q))
}

// TestGPUNCCL runs the NCCL bindings on the device: world 1 on the test
// GPU, and a world over every GPU where the machine has several (one
// Context and one goroutine per GPU). Results are checked against the
// same collectives computed here.
func TestGPUNCCL(t *testing.T) {
	c := openGPU(t)
	ver, err := NCCLVersion()
	if err != nil {
		if errors.Is(err, ErrLibrary) && os.Getenv("SWITCHYARD_REQUIRE_GPU") == "" {
			t.Skip("no NCCL: " + err.Error())
		}
		t.Fatal(err)
	}
	t.Logf("NCCL %s", ver)
	ctxs := []*Context{c}
	info, err := Probe()
	must(t, err)
	for i := range info.Devices {
		if i == c.Ordinal() {
			continue
		}
		o, err := Open(Options{Ordinal: i})
		must(t, err)
		defer o.Close()
		ctxs = append(ctxs, o)
	}
	n := len(ctxs)
	t.Logf("world %d (one rank per GPU)", n)
	id, err := NewNCCLID()
	must(t, err)
	const m = 1<<20 + 5 // not a multiple of anything NCCL likes
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r, ctx := range ctxs {
		wg.Go(func() { errs[r] = ncclDeviceChecks(ctx, id, n, r, m) })
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Errorf("rank %d: %v", r, err)
		}
	}
}

func ncclDeviceChecks(c *Context, id NCCLID, n, r, m int) (err error) {
	nc, err := c.OpenNCCL(id, n, r)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, nc.Close()) }()
	put := func(v []float32) (DevPtr, error) {
		p, err := c.Alloc(int64(4 * len(v)))
		if err != nil {
			return 0, err
		}
		return p, c.CopyHtoD(p, unsafe.Pointer(&v[0]), int64(4*len(v)))
	}
	get := func(p DevPtr, k int) ([]float32, error) {
		v := make([]float32, k)
		return v, c.CopyDtoH(unsafe.Pointer(&v[0]), p, int64(4*k))
	}
	// all-reduce sum in place: rank q's element i is q + i%1000
	x := make([]float32, m)
	want := make([]float32, m)
	for i := range x {
		x[i] = float32(r + i%1000)
		want[i] = float32(n*(n-1)/2 + n*(i%1000))
	}
	p, err := put(x)
	if err != nil {
		return err
	}
	defer c.Free(p)
	if err := nc.AllReduce(p, p, m, F32, NCCLSum); err != nil {
		return err
	}
	if err := nc.Wait(context.Background()); err != nil {
		return err
	}
	got, err := get(p, m)
	if err != nil {
		return err
	}
	for i := range got {
		if got[i] != want[i] {
			return fmt.Errorf("all-reduce: element %d is %v, want %v", i, got[i], want[i])
		}
	}
	// all-to-all-v: rank q sends rank j (q+j)%3+1 values 1000q+10j+k
	var sc, rc []int
	var send, wantRecv []float32
	for j := range n {
		sc = append(sc, (r+j)%3+1)
		rc = append(rc, (j+r)%3+1)
		for k := range (r+j)%3 + 1 {
			send = append(send, float32(1000*r+10*j+k))
		}
		for k := range (j+r)%3 + 1 {
			wantRecv = append(wantRecv, float32(1000*j+10*r+k))
		}
	}
	sp, err := put(send)
	if err != nil {
		return err
	}
	defer c.Free(sp)
	rp, err := c.Alloc(int64(4 * len(wantRecv)))
	if err != nil {
		return err
	}
	defer c.Free(rp)
	if err := nc.AllToAllV(sp, sc, rp, rc, F32); err != nil {
		return err
	}
	if err := nc.Wait(context.Background()); err != nil {
		return err
	}
	gotRecv, err := get(rp, len(wantRecv))
	if err != nil {
		return err
	}
	if fmt.Sprint(gotRecv) != fmt.Sprint(wantRecv) {
		return fmt.Errorf("all-to-all-v: got %v, want %v", gotRecv, wantRecv)
	}
	return nil
}

// TestGPUNVML: NVML reads the test GPU by its UUID: its total memory is
// the card's (the driver's total, plus at most 5% that the driver keeps
// for itself and leaves out of cuMemGetInfo), the used memory covers what
// this Context allocated, the utilisation is a percentage.
func TestGPUNVML(t *testing.T) {
	c := openGPU(t)
	n, err := OpenNVML()
	if err != nil {
		if errors.Is(err, ErrLibrary) && os.Getenv("SWITCHYARD_REQUIRE_GPU") == "" {
			t.Skip("no NVML: " + err.Error())
		}
		t.Fatal(err)
	}
	defer n.Close()
	p, err := c.Alloc(1 << 30)
	must(t, err)
	defer c.Free(p)
	s, err := n.Sample(c.UUID())
	must(t, err)
	_, total, err := c.MemInfo()
	must(t, err)
	t.Logf("%+v", s)
	if s.MemTotalBytes < total || float64(s.MemTotalBytes) > 1.05*float64(total) || s.MemUsedBytes < 1<<30 || s.UtilPct < 0 || s.UtilPct > 100 {
		t.Errorf("sample %+v; the driver says %d bytes in all, and 1 GiB is allocated here", s, total)
	}
}
