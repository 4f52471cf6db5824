package cuda

import (
	"fmt"
	"math"
	"unsafe"
)

// Bindings of cuBLASLt (libcublasLt.so.13 or .12) and Gemm. Signatures and
// values are from cublasLt.h, cublas_api.h and library_types.h of CUDA 12.6
// (cuBLAS 12.6); the enum values are part of the ABI and the same in 13.x.

// Values.
const (
	// cublasComputeType_t (cublas_api.h): CUBLAS_COMPUTE_32F, float
	// accumulation without TF32 (TF32 is CUBLAS_COMPUTE_32F_FAST_TF32 = 77).
	cublasCompute32F = 68
	// cudaDataType_t (library_types.h).
	cudaR32F  = 0  // CUDA_R_32F
	cudaR16BF = 14 // CUDA_R_16BF
	// cublasOperation_t (cublas_api.h).
	cublasOpN = 0 // CUBLAS_OP_N
	cublasOpT = 1 // CUBLAS_OP_T

	// cublasLtMatmulDescAttributes_t (cublasLt.h).
	ltDescTransA = 3 // CUBLASLT_MATMUL_DESC_TRANSA, int32_t (cublasOperation_t)
	ltDescTransB = 4 // CUBLASLT_MATMUL_DESC_TRANSB, int32_t
	// cublasLtMatrixLayoutAttribute_t (cublasLt.h).
	ltLayoutBatchCount         = 5 // CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, int32_t
	ltLayoutStridedBatchOffset = 6 // CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, int64_t (elements)
	// cublasLtMatmulPreferenceAttributes_t (cublasLt.h).
	ltPrefMaxWorkspaceBytes = 1 // CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, uint64_t
	ltPrefMinAlignmentA     = 5 // CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, uint32_t, default 256
	ltPrefMinAlignmentB     = 6 // CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES
	ltPrefMinAlignmentC     = 7 // CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES
	ltPrefMinAlignmentD     = 8 // CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES

	// ltWorkspaceBytes is the workspace of cublasLtMatmul, allocated at Open.
	ltWorkspaceBytes = 32 << 20
	// ltMaxPlans bounds the plan cache; past it the cache is emptied.
	ltMaxPlans = 4096
)

// ltAlgo is cublasLtMatmulAlgo_t: typedef struct { uint64_t data[8]; }.
type ltAlgo [8]uint64

// ltHeuristicResult is cublasLtMatmulHeuristicResult_t (cublasLt.h):
//
//	typedef struct {
//	  cublasLtMatmulAlgo_t algo;   // 64 bytes, offset 0
//	  size_t workspaceSize;        // offset 64
//	  cublasStatus_t state;        // offset 72
//	  float wavesCount;            // offset 76
//	  int reserved[4];             // offset 80
//	} cublasLtMatmulHeuristicResult_t;  // 96 bytes
type ltHeuristicResult struct {
	algo          ltAlgo
	workspaceSize uint64
	state         int32
	wavesCount    float32
	reserved      [4]int32
}

// ltAPI holds cuBLASLt's function addresses.
type ltAPI struct {
	lib *library

	cublasLtCreate                       uintptr
	cublasLtDestroy                      uintptr
	cublasLtGetVersion                   uintptr
	cublasLtMatmulDescCreate             uintptr
	cublasLtMatmulDescDestroy            uintptr
	cublasLtMatmulDescSetAttribute       uintptr
	cublasLtMatrixLayoutCreate           uintptr
	cublasLtMatrixLayoutDestroy          uintptr
	cublasLtMatrixLayoutSetAttribute     uintptr
	cublasLtMatmulPreferenceCreate       uintptr
	cublasLtMatmulPreferenceDestroy      uintptr
	cublasLtMatmulPreferenceSetAttribute uintptr
	cublasLtMatmulAlgoGetHeuristic       uintptr
	cublasLtMatmul                       uintptr
}

func bindLt(l *library) (*ltAPI, error) {
	a := &ltAPI{lib: l}
	err := l.bind([]symbol{
		// cublasStatus_t cublasLtCreate(cublasLtHandle_t* lightHandle);
		{addr: &a.cublasLtCreate, name: "cublasLtCreate"},
		// cublasStatus_t cublasLtDestroy(cublasLtHandle_t lightHandle);
		{addr: &a.cublasLtDestroy, name: "cublasLtDestroy"},
		// size_t cublasLtGetVersion(void);
		{addr: &a.cublasLtGetVersion, name: "cublasLtGetVersion"},
		// cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* matmulDesc,
		//     cublasComputeType_t computeType, cudaDataType_t scaleType);
		{addr: &a.cublasLtMatmulDescCreate, name: "cublasLtMatmulDescCreate"},
		// cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t matmulDesc);
		{addr: &a.cublasLtMatmulDescDestroy, name: "cublasLtMatmulDescDestroy"},
		// cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t matmulDesc,
		//     cublasLtMatmulDescAttributes_t attr, const void* buf, size_t sizeInBytes);
		{addr: &a.cublasLtMatmulDescSetAttribute, name: "cublasLtMatmulDescSetAttribute"},
		// cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* matLayout,
		//     cudaDataType type, uint64_t rows, uint64_t cols, int64_t ld);
		{addr: &a.cublasLtMatrixLayoutCreate, name: "cublasLtMatrixLayoutCreate"},
		// cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t matLayout);
		{addr: &a.cublasLtMatrixLayoutDestroy, name: "cublasLtMatrixLayoutDestroy"},
		// cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t matLayout,
		//     cublasLtMatrixLayoutAttribute_t attr, const void* buf, size_t sizeInBytes);
		{addr: &a.cublasLtMatrixLayoutSetAttribute, name: "cublasLtMatrixLayoutSetAttribute"},
		// cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref);
		{addr: &a.cublasLtMatmulPreferenceCreate, name: "cublasLtMatmulPreferenceCreate"},
		// cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref);
		{addr: &a.cublasLtMatmulPreferenceDestroy, name: "cublasLtMatmulPreferenceDestroy"},
		// cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
		//     cublasLtMatmulPreferenceAttributes_t attr, const void* buf, size_t sizeInBytes);
		{addr: &a.cublasLtMatmulPreferenceSetAttribute, name: "cublasLtMatmulPreferenceSetAttribute"},
		// cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t lightHandle,
		//     cublasLtMatmulDesc_t operationDesc, cublasLtMatrixLayout_t Adesc,
		//     cublasLtMatrixLayout_t Bdesc, cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
		//     cublasLtMatmulPreference_t preference, int requestedAlgoCount,
		//     cublasLtMatmulHeuristicResult_t heuristicResultsArray[], int* returnAlgoCount);
		{addr: &a.cublasLtMatmulAlgoGetHeuristic, name: "cublasLtMatmulAlgoGetHeuristic"},
		// cublasStatus_t cublasLtMatmul(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t computeDesc,
		//     const void* alpha, const void* A, cublasLtMatrixLayout_t Adesc,
		//     const void* B, cublasLtMatrixLayout_t Bdesc, const void* beta,
		//     const void* C, cublasLtMatrixLayout_t Cdesc, void* D, cublasLtMatrixLayout_t Ddesc,
		//     const cublasLtMatmulAlgo_t* algo, void* workspace, size_t workspaceSizeInBytes,
		//     cudaStream_t stream);
		{addr: &a.cublasLtMatmul, name: "cublasLtMatmul"},
	})
	if err != nil {
		return nil, err
	}
	return a, nil
}

func (a *ltAPI) version() int { return int(ccall(a.cublasLtGetVersion)) }

func (a *ltAPI) create() (uintptr, error) {
	var h uintptr
	err := blasCheck("cublasLtCreate", "", ccall(a.cublasLtCreate, uintptr(unsafe.Pointer(&h))))
	return h, err
}

func (a *ltAPI) destroy(h uintptr) error {
	return blasCheck("cublasLtDestroy", "", ccall(a.cublasLtDestroy, h))
}

func (a *ltAPI) prefCreate(workspace uint64) (uintptr, error) {
	var p uintptr
	if err := blasCheck("cublasLtMatmulPreferenceCreate", "", ccall(a.cublasLtMatmulPreferenceCreate, uintptr(unsafe.Pointer(&p)))); err != nil {
		return 0, err
	}
	if err := blasCheck("cublasLtMatmulPreferenceSetAttribute", "MAX_WORKSPACE_BYTES",
		ccall(a.cublasLtMatmulPreferenceSetAttribute, p, ltPrefMaxWorkspaceBytes, uintptr(unsafe.Pointer(&workspace)), 8)); err != nil {
		ccall(a.cublasLtMatmulPreferenceDestroy, p)
		return 0, err
	}
	return p, nil
}

func (a *ltAPI) prefDestroy(p uintptr) error {
	return blasCheck("cublasLtMatmulPreferenceDestroy", "", ccall(a.cublasLtMatmulPreferenceDestroy, p))
}

// colMajor is a row-major Gemm restated for a column-major library.
//
// A row-major matrix with row stride ld is, read column-major with the same
// ld, its transpose. So D = op(A) op(B) (row-major, M x N) is computed as
// D^T = op(B)^T op(A)^T (column-major, N x M): the library's A is our B
// and its B is our A, M and N swap, each operand keeps its own transpose
// flag, and the leading dimensions are the row strides.
type colMajor struct {
	M, N, K        int  // the library's problem: op(A) is M x K, op(B) K x N, D M x N
	TransA, TransB bool // op of the library's A (our B) and B (our A)

	A, B, C, D                         DevPtr
	Lda, Ldb, Ldc, Ldd                 int
	StrideA, StrideB, StrideC, StrideD int64

	// Stored (column-major) shapes of the library's A and B: rows x cols
	// with rows <= ld.
	ARows, ACols, BRows, BCols int

	AB, CD      DType
	Batch       int
	Alpha, Beta float32
}

// ltProblem translates g (row-major) for cuBLASLt / cuBLAS. D resolves to
// C when g.D is 0; with Beta == 0 the library's C is D (C is not read, and
// g.C may be 0). Batch < 1 counts as 1.
func ltProblem(g *Gemm) colMajor {
	p := colMajor{
		M: g.N, N: g.M, K: g.K,
		TransA: g.TransB, TransB: g.TransA,
		A: g.B, Lda: g.Ldb, StrideA: g.StrideB,
		B: g.A, Ldb: g.Lda, StrideB: g.StrideA,
		C: g.C, Ldc: g.Ldc, StrideC: g.StrideC,
		D: g.D, Ldd: g.Ldd, StrideD: g.StrideD,
		AB: g.AB, CD: g.CD, Batch: max(g.Batch, 1),
		Alpha: g.Alpha, Beta: g.Beta,
	}
	if p.D == 0 {
		p.D, p.Ldd, p.StrideD = g.C, g.Ldc, g.StrideC
	}
	if p.Beta == 0 {
		p.C, p.Ldc, p.StrideC = p.D, p.Ldd, p.StrideD
	}
	// The library's op(A) is M x K: stored M x K, or K x M when transposed.
	p.ARows, p.ACols = p.M, p.K
	if p.TransA {
		p.ARows, p.ACols = p.K, p.M
	}
	p.BRows, p.BCols = p.K, p.N
	if p.TransB {
		p.BRows, p.BCols = p.N, p.K
	}
	return p
}

// gemmString names the problem in row-major terms, for errors.
func gemmString(g *Gemm) string {
	t := func(b bool) string {
		if b {
			return "T"
		}
		return "N"
	}
	s := fmt.Sprintf("gemm M=%d N=%d K=%d A%s/B%s %s->%s lda=%d ldb=%d ldc=%d ldd=%d alpha=%g beta=%g",
		g.M, g.N, g.K, t(g.TransA), t(g.TransB), g.AB, g.CD, g.Lda, g.Ldb, g.Ldc, g.Ldd, g.Alpha, g.Beta)
	if g.Batch > 1 {
		s += fmt.Sprintf(" batch=%d strides=%d/%d/%d/%d", g.Batch, g.StrideA, g.StrideB, g.StrideC, g.StrideD)
	}
	return s
}

// checkGemm validates g (row-major terms); the error wraps ErrLaunch.
func checkGemm(g *Gemm) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrLaunch, gemmString(g), fmt.Sprintf(format, args...))
	}
	if g.M < 0 || g.N < 0 || g.K < 0 || g.Batch < 0 {
		return bad("negative size")
	}
	if g.Batch > 1 && (g.StrideA < 0 || g.StrideB < 0 || g.StrideC < 0 || g.StrideD < 0) {
		return bad("negative batch stride")
	}
	if g.AB != F32 && g.AB != BF16 {
		return bad("A and B must be f32 or bf16")
	}
	if g.CD != F32 && g.CD != BF16 {
		return bad("C and D must be f32 or bf16")
	}
	if g.M == 0 || g.N == 0 {
		return nil
	}
	if g.D == 0 && g.C == 0 {
		return bad("no output (C and D are 0)")
	}
	if g.Beta != 0 && g.C == 0 {
		return bad("beta is not 0 but C is 0")
	}
	if g.K > 0 && (g.A == 0 || g.B == 0) {
		return bad("A or B is 0")
	}
	aCols, bCols := g.K, g.N // row-major stored widths
	if g.TransA {
		aCols = g.M
	}
	if g.TransB {
		bCols = g.K
	}
	if g.K > 0 && g.Lda < max(aCols, 1) {
		return bad("lda %d < %d", g.Lda, aCols)
	}
	if g.K > 0 && g.Ldb < max(bCols, 1) {
		return bad("ldb %d < %d", g.Ldb, bCols)
	}
	if (g.C != 0 && (g.Beta != 0 || g.D == 0)) && g.Ldc < g.N {
		return bad("ldc %d < N", g.Ldc)
	}
	if g.D != 0 && g.Ldd < g.N {
		return bad("ldd %d < N", g.Ldd)
	}
	for _, v := range []int{g.M, g.N, g.K, g.Lda, g.Ldb, g.Ldc, g.Ldd, g.Batch} {
		if v > math.MaxInt32 {
			return bad("a size or leading dimension exceeds 2^31-1")
		}
	}
	return nil
}

// ltKey identifies a cached plan: everything the descriptors, layouts and
// the heuristic's choice depend on (the alignments of the pointers
// included: an algorithm chosen for 256-byte-aligned operands may need
// vector loads that a smaller alignment does not allow).
type ltKey struct {
	M, N, K                            int
	TransA, TransB                     bool
	Lda, Ldb, Ldc, Ldd                 int
	AB, CD                             DType
	Batch                              int
	StrideA, StrideB, StrideC, StrideD int64
	AlignA, AlignB, AlignC, AlignD     uint32
}

// ltPlan is a matmul descriptor, the four layouts and the chosen algorithm.
type ltPlan struct {
	desc, a, b, c, d uintptr
	algo             ltAlgo
}

// alignment is the largest power of two, up to 256, dividing the address
// of every batch of an operand.
func alignment(p DevPtr, strideElems int64, elemSize int64, batch int) uint32 {
	a := uint64(256)
	for a > 1 && uint64(p)%a != 0 {
		a /= 2
	}
	if batch > 1 {
		s := uint64(strideElems * elemSize)
		for a > 1 && s%a != 0 {
			a /= 2
		}
	}
	return uint32(a)
}

func cudaType(t DType) uintptr {
	if t == BF16 {
		return cudaR16BF
	}
	return cudaR32F
}

func cublasOp(trans bool) int32 {
	if trans {
		return cublasOpT
	}
	return cublasOpN
}

func (p *colMajor) key() ltKey {
	ab, cd := p.AB.Size(), p.CD.Size()
	return ltKey{
		M: p.M, N: p.N, K: p.K, TransA: p.TransA, TransB: p.TransB,
		Lda: p.Lda, Ldb: p.Ldb, Ldc: p.Ldc, Ldd: p.Ldd, AB: p.AB, CD: p.CD, Batch: p.Batch,
		StrideA: p.StrideA, StrideB: p.StrideB, StrideC: p.StrideC, StrideD: p.StrideD,
		AlignA: alignment(p.A, p.StrideA, ab, p.Batch),
		AlignB: alignment(p.B, p.StrideB, ab, p.Batch),
		AlignC: alignment(p.C, p.StrideC, cd, p.Batch),
		AlignD: alignment(p.D, p.StrideD, cd, p.Batch),
	}
}

// layout creates a column-major layout with the batch attributes.
func (a *ltAPI) layout(t DType, rows, cols, ld, batch int, stride int64, what string) (uintptr, error) {
	var l uintptr
	if err := blasCheck("cublasLtMatrixLayoutCreate", what, ccall(a.cublasLtMatrixLayoutCreate, uintptr(unsafe.Pointer(&l)),
		cudaType(t), uintptr(rows), uintptr(cols), uintptr(int64(ld)))); err != nil {
		return 0, err
	}
	if batch > 1 {
		n := int32(batch)
		if err := blasCheck("cublasLtMatrixLayoutSetAttribute", what+" BATCH_COUNT",
			ccall(a.cublasLtMatrixLayoutSetAttribute, l, ltLayoutBatchCount, uintptr(unsafe.Pointer(&n)), 4)); err != nil {
			ccall(a.cublasLtMatrixLayoutDestroy, l)
			return 0, err
		}
		if err := blasCheck("cublasLtMatrixLayoutSetAttribute", what+" STRIDED_BATCH_OFFSET",
			ccall(a.cublasLtMatrixLayoutSetAttribute, l, ltLayoutStridedBatchOffset, uintptr(unsafe.Pointer(&stride)), 8)); err != nil {
			ccall(a.cublasLtMatrixLayoutDestroy, l)
			return 0, err
		}
	}
	return l, nil
}

// destroyPlan releases what a plan holds (0 handles are skipped).
func (a *ltAPI) destroyPlan(p *ltPlan) error {
	var first error
	keep := func(err error) {
		if first == nil {
			first = err
		}
	}
	for _, l := range []uintptr{p.a, p.b, p.c, p.d} {
		if l != 0 {
			keep(blasCheck("cublasLtMatrixLayoutDestroy", "", ccall(a.cublasLtMatrixLayoutDestroy, l)))
		}
	}
	if p.desc != 0 {
		keep(blasCheck("cublasLtMatmulDescDestroy", "", ccall(a.cublasLtMatmulDescDestroy, p.desc)))
	}
	*p = ltPlan{}
	return first
}

// newPlan builds the descriptors for p and asks the heuristic for one
// algorithm.
func (c *Context) newPlan(p *colMajor, k ltKey, g *Gemm) (*ltPlan, error) {
	a := c.lt
	pl := &ltPlan{}
	fail := func(err error) (*ltPlan, error) {
		a.destroyPlan(pl)
		return nil, err
	}
	detail := gemmString(g)
	if err := blasCheck("cublasLtMatmulDescCreate", detail, ccall(a.cublasLtMatmulDescCreate, uintptr(unsafe.Pointer(&pl.desc)), cublasCompute32F, cudaR32F)); err != nil {
		return fail(err)
	}
	ta, tb := cublasOp(p.TransA), cublasOp(p.TransB)
	if err := blasCheck("cublasLtMatmulDescSetAttribute", "TRANSA", ccall(a.cublasLtMatmulDescSetAttribute, pl.desc, ltDescTransA, uintptr(unsafe.Pointer(&ta)), 4)); err != nil {
		return fail(err)
	}
	if err := blasCheck("cublasLtMatmulDescSetAttribute", "TRANSB", ccall(a.cublasLtMatmulDescSetAttribute, pl.desc, ltDescTransB, uintptr(unsafe.Pointer(&tb)), 4)); err != nil {
		return fail(err)
	}
	var err error
	if pl.a, err = a.layout(p.AB, p.ARows, p.ACols, p.Lda, p.Batch, p.StrideA, "A of "+detail); err != nil {
		return fail(err)
	}
	if pl.b, err = a.layout(p.AB, p.BRows, p.BCols, p.Ldb, p.Batch, p.StrideB, "B of "+detail); err != nil {
		return fail(err)
	}
	if pl.c, err = a.layout(p.CD, p.M, p.N, p.Ldc, p.Batch, p.StrideC, "C of "+detail); err != nil {
		return fail(err)
	}
	if pl.d, err = a.layout(p.CD, p.M, p.N, p.Ldd, p.Batch, p.StrideD, "D of "+detail); err != nil {
		return fail(err)
	}
	for _, al := range []struct {
		attr uintptr
		v    uint32
	}{{ltPrefMinAlignmentA, k.AlignA}, {ltPrefMinAlignmentB, k.AlignB}, {ltPrefMinAlignmentC, k.AlignC}, {ltPrefMinAlignmentD, k.AlignD}} {
		v := al.v
		if err := blasCheck("cublasLtMatmulPreferenceSetAttribute", "MIN_ALIGNMENT", ccall(a.cublasLtMatmulPreferenceSetAttribute, c.ltPref, al.attr, uintptr(unsafe.Pointer(&v)), 4)); err != nil {
			return fail(err)
		}
	}
	var res [1]ltHeuristicResult
	var n int32
	if err := blasCheck("cublasLtMatmulAlgoGetHeuristic", detail, ccall(a.cublasLtMatmulAlgoGetHeuristic, c.ltHandle, pl.desc,
		pl.a, pl.b, pl.c, pl.d, c.ltPref, 1, uintptr(unsafe.Pointer(&res[0])), uintptr(unsafe.Pointer(&n)))); err != nil {
		return fail(err)
	}
	if n < 1 || res[0].state != 0 {
		// In row-major terms our A is the library's B.
		return fail(fmt.Errorf("%w: cuBLASLt has no algorithm for %s (alignments A/B/C/D %d/%d/%d/%d bytes, workspace %d bytes)",
			ErrLaunch, detail, k.AlignB, k.AlignA, k.AlignC, k.AlignD, ltWorkspaceBytes))
	}
	pl.algo = res[0].algo
	return pl, nil
}

// plan returns the cached plan for p, building it on first use.
func (c *Context) plan(p *colMajor, g *Gemm) (*ltPlan, error) {
	k := p.key()
	if pl, ok := c.plans[k]; ok {
		return pl, nil
	}
	if len(c.plans) >= ltMaxPlans {
		for key, pl := range c.plans {
			c.lt.destroyPlan(pl)
			delete(c.plans, key)
		}
	}
	pl, err := c.newPlan(p, k, g)
	if err != nil {
		return nil, err
	}
	c.plans[k] = pl
	return pl, nil
}

// Gemm runs one (possibly strided-batched) product through cuBLASLt,
// CUBLAS_COMPUTE_32F (float accumulation, no TF32), float alpha and beta.
//
// Types: A/B f32 or bf16, C/D f32 or bf16 (bf16 inputs with f32 C/D is the
// weight-gradient case). M == 0 or N == 0 is a no-op. K == 0 makes
// D = Beta*C (zero when Beta == 0, C unread) with the package's own
// kernel, since BLAS libraries differ on an empty inner dimension.
func (c *Context) Gemm(g *Gemm) error {
	if err := checkGemm(g); err != nil {
		return err
	}
	if g.M == 0 || g.N == 0 {
		return nil
	}
	if err := c.lock(); err != nil {
		return err
	}
	defer c.unlock()
	return c.gemmLocked(g)
}

// gemmLocked runs a checked, non-empty g.
func (c *Context) gemmLocked(g *Gemm) error {
	if g.K == 0 {
		return c.scaleLocked(g)
	}
	p := ltProblem(g)
	pl, err := c.plan(&p, g)
	if err != nil {
		return err
	}
	c.scalars[0], c.scalars[1] = p.Alpha, p.Beta
	return blasCheck("cublasLtMatmul", gemmString(g), ccall(c.lt.cublasLtMatmul, c.ltHandle, pl.desc,
		uintptr(unsafe.Pointer(&c.scalars[0])), uintptr(p.A), pl.a, uintptr(p.B), pl.b,
		uintptr(unsafe.Pointer(&c.scalars[1])), uintptr(p.C), pl.c, uintptr(p.D), pl.d,
		uintptr(unsafe.Pointer(&pl.algo)), uintptr(c.workspace), ltWorkspaceBytes, cuStreamNull))
}
