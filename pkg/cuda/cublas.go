package cuda

import (
	"fmt"
	"unsafe"
)

// Bindings of cuBLAS (libcublas.so.13 or .12, the same major version as
// the cuBLASLt it loads) for GemmGrouped. Signatures and values are from
// cublas_api.h of cuBLAS 12.6; cublasGemmGroupedBatchedEx appeared in
// cuBLAS 12.5 and is optional (GemmGrouped loops over Gemm without it).

// cublasMath_t (cublas_api.h): CUBLAS_DEFAULT_MATH, no TF32 for FP32
// (CUBLAS_TF32_TENSOR_OP_MATH = 3 would allow it).
const cublasDefaultMath = 0

// blasAPI holds cuBLAS's function addresses.
type blasAPI struct {
	lib *library

	cublasCreate               uintptr
	cublasDestroy              uintptr
	cublasSetStream            uintptr
	cublasSetMathMode          uintptr
	cublasGemmGroupedBatchedEx uintptr // 0 before cuBLAS 12.5
}

func bindBLAS(l *library) (*blasAPI, error) {
	b := &blasAPI{lib: l}
	err := l.bind([]symbol{
		// cublasStatus_t cublasCreate_v2(cublasHandle_t* handle);
		{addr: &b.cublasCreate, name: "cublasCreate_v2"},
		// cublasStatus_t cublasDestroy_v2(cublasHandle_t handle);
		{addr: &b.cublasDestroy, name: "cublasDestroy_v2"},
		// cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t streamId);
		{addr: &b.cublasSetStream, name: "cublasSetStream_v2"},
		// cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode);
		{addr: &b.cublasSetMathMode, name: "cublasSetMathMode"},
		// cublasStatus_t cublasGemmGroupedBatchedEx(cublasHandle_t handle,
		//     const cublasOperation_t transa_array[], const cublasOperation_t transb_array[],
		//     const int m_array[], const int n_array[], const int k_array[],
		//     const void* alpha_array,
		//     const void* const Aarray[], cudaDataType_t Atype, const int lda_array[],
		//     const void* const Barray[], cudaDataType_t Btype, const int ldb_array[],
		//     const void* beta_array,
		//     void* const Carray[], cudaDataType_t Ctype, const int ldc_array[],
		//     int group_count, const int group_size[], cublasComputeType_t computeType);
		//
		// cuBLAS documentation: transa/transb/m/n/k/lda/ldb/ldc/alpha/beta
		// and group_size are HOST arrays of group_count entries (alpha and
		// beta of the scale type, host pointer mode; device pointer mode is
		// CUBLAS_STATUS_NOT_SUPPORTED); Aarray, Barray, Carray are DEVICE
		// arrays of problem_count device pointers. Supported with
		// CUBLAS_COMPUTE_32F: A/B/C all CUDA_R_32F, or A/B/C all
		// CUDA_R_16BF (not bf16 A/B with f32 C). With 16-bit types the
		// matrix pointers must be aligned (16 bytes is always enough).
		{addr: &b.cublasGemmGroupedBatchedEx, name: "cublasGemmGroupedBatchedEx", optional: true},
	})
	if err != nil {
		return nil, err
	}
	return b, nil
}

func (b *blasAPI) create() (uintptr, error) {
	var h uintptr
	err := blasCheck("cublasCreate_v2", "", ccall(b.cublasCreate, uintptr(unsafe.Pointer(&h))))
	return h, err
}

func (b *blasAPI) destroy(h uintptr) error {
	return blasCheck("cublasDestroy_v2", "", ccall(b.cublasDestroy, h))
}

func (b *blasAPI) setStream(h, stream uintptr) error {
	return blasCheck("cublasSetStream_v2", "", ccall(b.cublasSetStream, h, stream))
}

func (b *blasAPI) setMathMode(h uintptr, mode int) error {
	return blasCheck("cublasSetMathMode", "", ccall(b.cublasSetMathMode, h, uintptr(mode)))
}

// groupedScratch is the host side of a grouped call, reused between calls.
type groupedScratch struct {
	sel                          []int
	transa, transb               []int32 // cublasOperation_t
	m, n, k, lda, ldb, ldc, size []int32
	alpha, beta                  []float32
	ptrs                         []uint64 // A' pointers, B' pointers, C pointers
	dev                          DevPtr   // the device copy of ptrs
	devBytes                     int64
}

func resize[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}

// groupable says whether g may join a cublasGemmGroupedBatchedEx call
// whose first problem is first (nil: g would be the first).
func (c *Context) groupable(g, first *Gemm) bool {
	if c.blas.cublasGemmGroupedBatchedEx == 0 || g.Batch > 1 || g.K == 0 {
		return false
	}
	if !(g.AB == F32 && g.CD == F32) && !(g.AB == BF16 && g.CD == BF16) {
		return false // bf16 A/B with f32 C is not a supported combination
	}
	if first != nil && (first.AB != g.AB || first.CD != g.CD) {
		return false
	}
	// cuBLAS computes C in place: D must be C (or C unread).
	if g.Beta != 0 && g.D != 0 && (g.D != g.C || g.Ldd != g.Ldc) {
		return false
	}
	if g.AB == BF16 {
		out, _ := g.Out()
		if g.A%16 != 0 || g.B%16 != 0 || out%16 != 0 {
			return false
		}
	}
	return true
}

// GemmGrouped runs products of different sizes. Problems with M or N of 0
// are skipped; the others go to one cublasGemmGroupedBatchedEx call (one
// group per problem, group_size 1) when the library has it and they
// allow it (not batched, D == C or Beta == 0, A/B/C all f32 or all bf16,
// K > 0); the rest go through Gemm one by one.
func (c *Context) GemmGrouped(gs []Gemm) error {
	for i := range gs {
		if err := checkGemm(&gs[i]); err != nil {
			return fmt.Errorf("%w (problem %d of %d of a grouped gemm)", err, i, len(gs))
		}
	}
	if err := c.lock(); err != nil {
		return err
	}
	defer c.unlock()
	s := &c.grouped
	s.sel = s.sel[:0]
	var first *Gemm
	for i := range gs {
		g := &gs[i]
		if g.M == 0 || g.N == 0 {
			continue
		}
		if !c.groupable(g, first) {
			if err := c.gemmLocked(g); err != nil {
				return fmt.Errorf("%w (problem %d of %d of a grouped gemm)", err, i, len(gs))
			}
			continue
		}
		if first == nil {
			first = g
		}
		s.sel = append(s.sel, i)
	}
	switch len(s.sel) {
	case 0:
		return nil
	case 1:
		return c.gemmLocked(&gs[s.sel[0]])
	}
	return c.groupedLocked(gs, s.sel)
}

// groupedLocked makes one cublasGemmGroupedBatchedEx call for gs[sel].
func (c *Context) groupedLocked(gs []Gemm, sel []int) error {
	s := &c.grouped
	n := len(sel)
	s.transa, s.transb = resize(s.transa, n), resize(s.transb, n)
	s.m, s.n, s.k = resize(s.m, n), resize(s.n, n), resize(s.k, n)
	s.lda, s.ldb, s.ldc, s.size = resize(s.lda, n), resize(s.ldb, n), resize(s.ldc, n), resize(s.size, n)
	s.alpha, s.beta = resize(s.alpha, n), resize(s.beta, n)
	s.ptrs = resize(s.ptrs, 3*n)
	for j, i := range sel {
		p := ltProblem(&gs[i]) // row-major -> column-major, as for cuBLASLt
		s.transa[j], s.transb[j] = cublasOp(p.TransA), cublasOp(p.TransB)
		s.m[j], s.n[j], s.k[j] = int32(p.M), int32(p.N), int32(p.K)
		// In place: p.C is p.D (Beta == 0) or equal to it (groupable).
		s.lda[j], s.ldb[j], s.ldc[j] = int32(p.Lda), int32(p.Ldb), int32(p.Ldd)
		s.alpha[j], s.beta[j] = p.Alpha, p.Beta
		s.size[j] = 1
		s.ptrs[j], s.ptrs[n+j], s.ptrs[2*n+j] = uint64(p.A), uint64(p.B), uint64(p.D)
	}
	need := int64(3 * 8 * n)
	if s.devBytes < need {
		if s.dev != 0 {
			// Earlier grouped calls may still read the old array.
			if err := c.drv.ctxSynchronize(); err != nil {
				return err
			}
			if err := c.drv.memFree(s.dev); err != nil {
				return err
			}
			s.dev, s.devBytes = 0, 0
		}
		size := int64(4096)
		for size < need {
			size *= 2
		}
		dev, err := c.drv.memAlloc(size)
		if err != nil {
			return err
		}
		s.dev, s.devBytes = dev, size
	}
	// Stream-ordered: the previous call using s.dev comes before this copy.
	if err := c.copyHtoDLocked(s.dev, unsafe.Pointer(&s.ptrs[0]), need); err != nil {
		return err
	}
	t := cudaType(gs[sel[0]].AB)
	ct := cudaType(gs[sel[0]].CD)
	r := ccall(c.blas.cublasGemmGroupedBatchedEx, c.blasHandle,
		uintptr(unsafe.Pointer(&s.transa[0])), uintptr(unsafe.Pointer(&s.transb[0])),
		uintptr(unsafe.Pointer(&s.m[0])), uintptr(unsafe.Pointer(&s.n[0])), uintptr(unsafe.Pointer(&s.k[0])),
		uintptr(unsafe.Pointer(&s.alpha[0])),
		uintptr(s.dev), t, uintptr(unsafe.Pointer(&s.lda[0])),
		uintptr(s.dev)+uintptr(8*n), t, uintptr(unsafe.Pointer(&s.ldb[0])),
		uintptr(unsafe.Pointer(&s.beta[0])),
		uintptr(s.dev)+uintptr(16*n), ct, uintptr(unsafe.Pointer(&s.ldc[0])),
		uintptr(n), uintptr(unsafe.Pointer(&s.size[0])), cublasCompute32F)
	if err := blasCheck("cublasGemmGroupedBatchedEx", fmt.Sprintf("%d problems, first %s", n, gemmString(&gs[sel[0]])), r); err != nil {
		return err
	}
	c.groupedCalls++
	return nil
}
