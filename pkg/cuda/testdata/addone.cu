// addone.cu: kernels of the GPU tests of package cuda (gpu_test.go).
//
// Compiled here, without the CUDA headers, by Debian's clang-16:
//   clang-16 -x cuda --cuda-gpu-arch=sm_80 --cuda-device-only -nocudainc -nocudalib \
//     --cuda-feature=+ptx78 -O3 -S -o testdata/addone.ptx testdata/addone.cu
// (go generate ./pkg/cuda runs it); addone.ptx is committed and embedded.

#define __global__ __attribute__((global))
#define KERNEL extern "C" __global__

static __attribute__((device)) inline int gtid() {
  return __nvvm_read_ptx_sreg_ctaid_x() * __nvvm_read_ptx_sreg_ntid_x() + __nvvm_read_ptx_sreg_tid_x();
}

// x[i] += 1 for i < n.
KERNEL void addone(float* x, int n) {
  int i = gtid();
  if (i < n) x[i] += 1.0f;
}

// y[i] = a*x[i] + y[i] + k for i < n: pointer, float and int parameters mixed.
KERNEL void axpyk(float* y, const float* x, float a, int n, int k) {
  int i = gtid();
  if (i < n) y[i] = a * x[i] + y[i] + (float)k;
}

// Reverses x[0:n] through dynamic shared memory (n floats of it), one block.
extern __attribute__((shared)) __attribute__((aligned(16))) float smem[];
KERNEL void reverse_smem(float* x, int n) {
  int t = __nvvm_read_ptx_sreg_tid_x(), nt = __nvvm_read_ptx_sreg_ntid_x();
  for (int i = t; i < n; i += nt) smem[i] = x[i];
  __syncthreads();
  for (int i = t; i < n; i += nt) x[i] = smem[n - 1 - i];
}

// Writes through p: with a bad address, an asynchronous fault.
KERNEL void poke(int* p) { *p = 1; }
