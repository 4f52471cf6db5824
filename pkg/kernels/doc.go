// Package kernels owns the float32 compute primitives of the training step:
// single-precision GEMM (row-major, optional transposes, leading dimensions),
// grouped GEMM for experts with different token counts, and the fused
// element-wise kernels (SwiGLU, RMSNorm, softmax, RoPE, AdamW).
//
// Every optimised kernel has a plain reference implementation in ref.go; the
// tests check the fast path against it. The package knows nothing about
// models, graphs or parallelism.
package kernels
