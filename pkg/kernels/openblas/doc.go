// Package openblas wraps OpenBLAS's cblas_sgemm as a kernels.BLAS, for
// comparison in benchmarks and tests only. It is compiled only with
// `-tags openblas` and cgo (Debian's libopenblas-dev); the default build has
// no cgo dependency and Available is false.
//
// It lives outside package kernels because the Go toolchain does not allow
// Go assembly and cgo in one package.
package openblas
