//go:build !openblas || !cgo

package openblas

// Available reports whether this build links OpenBLAS.
const Available = false

// OpenBLAS is absent from this build; New returns a value that panics.
type OpenBLAS struct{}

// New returns the stub.
func New() OpenBLAS { return OpenBLAS{} }

// Sgemm panics: build with -tags openblas.
func (OpenBLAS) Sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	panic("openblas: not built (use -tags openblas)")
}
