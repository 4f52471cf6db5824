// Package kernels owns the float32 compute primitives of the training step:
// single-precision GEMM (row-major, optional transposes, leading dimensions),
// grouped GEMM for experts with different token counts, and the fused
// element-wise kernels (SwiGLU, RMSNorm, softmax, RoPE, AdamW).
//
// Every optimised kernel has a plain reference implementation in ref.go; the
// tests check the fast path against it. The package knows nothing about
// models, graphs or parallelism.
//
// Code paths (see Name): "avx512" (12x32 SGEMM micro-kernel and AVX-512F
// element-wise kernels), "avx2" (6x16 AVX2+FMA micro-kernel, Go element-wise
// kernels) and "generic" (portable Go; also forced by the purego build tag).
// Fast is the default BLAS; it packs A and B into pooled panels, blocks for
// the caches and splits large problems over GOMAXPROCS cores with a small
// persistent worker pool. GroupedSgemm splits a list of problems as a whole
// (units of whole problems, or of row or column blocks of large ones, taken
// dynamically so that a late or busy core does not hold the call up), and
// GroupedSwiGLU does the same for the element-wise SwiGLU of many experts.
//
// The assembly is produced by the scripts in asmgen/ (Python, not needed to
// build). The openblas subpackage wraps OpenBLAS behind the openblas build
// tag for comparison only.
package kernels
