package kernels

// BLAS is the one interface every matmul of the engine goes through. All
// matrices are row-major. C = alpha*op(A)*op(B) + beta*C where op(A) is m x k
// and op(B) is k x n; lda, ldb, ldc are the row strides of A, B, C as stored.
type BLAS interface {
	Sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int)
}

// Reference is the plain, obviously correct triple loop. It is the oracle of
// the tests, not a production path.
type Reference struct{}

// Sgemm implements BLAS.
func (Reference) Sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	RefSgemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}

var active BLAS = Reference{}

// Default returns the BLAS the engine uses unless told otherwise.
func Default() BLAS { return active }

// SetDefault replaces the process-wide BLAS (tests, benchmarks, build tags).
func SetDefault(b BLAS) { active = b }
