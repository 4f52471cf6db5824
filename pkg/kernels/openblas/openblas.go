//go:build openblas && cgo

package openblas

/*
#cgo LDFLAGS: -lopenblas
#include <cblas.h>
*/
import "C"

import "unsafe"

// OpenBLAS is the BLAS interface over cblas_sgemm (row-major).
type OpenBLAS struct{}

// Sgemm implements BLAS.
func (OpenBLAS) Sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	if m <= 0 || n <= 0 {
		return
	}
	if len(c) < (m-1)*ldc+n {
		panic("openblas: sgemm: C slice too short")
	}
	ta, tb := uint32(C.CblasNoTrans), uint32(C.CblasNoTrans)
	if transA {
		ta = C.CblasTrans
	}
	if transB {
		tb = C.CblasTrans
	}
	var pa, pb *float32
	if len(a) > 0 {
		pa = &a[0]
	}
	if len(b) > 0 {
		pb = &b[0]
	}
	C.cblas_sgemm(C.CblasRowMajor, ta, tb, C.blasint(m), C.blasint(n), C.blasint(k),
		C.float(alpha), (*C.float)(unsafe.Pointer(pa)), C.blasint(max(lda, 1)),
		(*C.float)(unsafe.Pointer(pb)), C.blasint(max(ldb, 1)), C.float(beta),
		(*C.float)(unsafe.Pointer(&c[0])), C.blasint(ldc))
}

// Available reports whether this build links OpenBLAS.
const Available = true

// New returns the OpenBLAS SGEMM.
func New() OpenBLAS { return OpenBLAS{} }
