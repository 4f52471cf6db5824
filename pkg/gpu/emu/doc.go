// Package emu is a cuda.Device that runs the GPU engine's kernels on the
// CPU, for tests on machines without a GPU (build tag cudaemu; it needs
// cgo and a C++20 compiler). The kernels are the same CUDA C source the
// GPU runs (pkg/gpu/kernels/kernels.cu), compiled as C++ against the
// emulation half of sycuda.h: every GPU thread of a block is a fiber with
// its own stack, __syncthreads waits for every live thread of the block,
// warp shuffles exchange values between the lanes of a warp, and the
// threads of consecutive blocks are scheduled in opposite orders, so a
// kernel that forgets a barrier or indexes out of its block's range
// misbehaves here as it would on a GPU (a deadlock at barriers is
// reported as an error). Device memory is host memory from the C heap; GEMMs are
// a plain float64-accumulating loop in Go (the obviously-correct
// reference for cuBLAS). It is slow: tests use small shapes.
package emu
