// sycuda.h: the portability layer of the engine's CUDA C kernels.
//
// The kernels are compiled two ways from the same source:
//   * for NVIDIA GPUs by Debian's clang-16 to PTX (gen.sh), without the CUDA
//     headers: this file declares the attributes and uses NVVM builtins;
//   * for the CPU, as C++20, by pkg/gpu/emu (build tag cudaemu), which runs
//     every GPU thread of a block as a fiber with real barriers, so the
//     kernels are tested here, thread for thread, without a GPU.
//
// Kernels use only what is declared here: sy_tid(), sy_bid(), sy_ntid(),
// sy_nbid() (x dimension; the y/z forms where named), sy_sync(),
// sy_shfl_xor(), sy_atomic_add(), sy_exp(), sy_log(), sy_sqrt(), the bf16
// conversions, SY_SHARED arrays and SY_SMEM (dynamic shared memory).
#pragma once

typedef unsigned short bf16_bits;

// bf16 is a bfloat16 stored as its bits (a struct, so it never converts
// silently to or from an integer).
struct bf16 {
  bf16_bits x;
};

#if defined(__CUDA_ARCH__)
// ---------------------------------------------------------------- device
#define SY_KERNEL extern "C" __attribute__((global))
#define SY_DEV static __attribute__((device)) inline __attribute__((always_inline))
#define SY_SHARED __attribute__((shared))
extern __attribute__((shared)) __attribute__((aligned(16))) char sy_smem_base[];
#define SY_SMEM (sy_smem_base)

SY_DEV int sy_tid() { return __nvvm_read_ptx_sreg_tid_x(); }
SY_DEV int sy_tid_y() { return __nvvm_read_ptx_sreg_tid_y(); }
SY_DEV int sy_bid() { return __nvvm_read_ptx_sreg_ctaid_x(); }
SY_DEV int sy_bid_y() { return __nvvm_read_ptx_sreg_ctaid_y(); }
SY_DEV int sy_bid_z() { return __nvvm_read_ptx_sreg_ctaid_z(); }
SY_DEV int sy_ntid() { return __nvvm_read_ptx_sreg_ntid_x(); }
SY_DEV int sy_ntid_y() { return __nvvm_read_ptx_sreg_ntid_y(); }
SY_DEV int sy_nbid() { return __nvvm_read_ptx_sreg_nctaid_x(); }
SY_DEV int sy_nbid_y() { return __nvvm_read_ptx_sreg_nctaid_y(); }
SY_DEV void sy_sync() { __syncthreads(); }
SY_DEV float sy_shfl_xor(float v, int mask) { return __nvvm_shfl_sync_bfly_f32(0xffffffffu, v, mask, 31); }
SY_DEV double sy_shfl_xor_d(double v, int mask) {
  long long b = __builtin_bit_cast(long long, v);
  int lo = __nvvm_shfl_sync_bfly_i32(0xffffffffu, (int)b, mask, 31);
  int hi = __nvvm_shfl_sync_bfly_i32(0xffffffffu, (int)(b >> 32), mask, 31);
  return __builtin_bit_cast(double, ((long long)hi << 32) | (unsigned)lo);
}
SY_DEV int sy_atomic_add(int* p, int v) { return __nvvm_atom_add_gen_i(p, v); }
// exp and log through the hardware's base-2 approximations (relative error
// about 2^-22); sqrt and division are IEEE-rounded.
SY_DEV float sy_exp(float x) { return __nvvm_ex2_approx_f(x * 1.4426950408889634f); }
SY_DEV float sy_log(float x) { return __nvvm_lg2_approx_f(x) * 0.6931471805599453f; }
SY_DEV float sy_sqrt(float x) { return __builtin_sqrtf(x); }
SY_DEV double sy_sqrt_d(double x) { return __builtin_sqrt(x); }
SY_DEV float sy_inf() { return __builtin_inff(); }
#else
// ---------------------------------------------------------------- CPU emulation
#include <cmath>
#include "emu_runtime.h"
#define SY_KERNEL extern "C"
#define SY_DEV static inline
#define SY_SHARED static
#define SY_SMEM (sy_emu_smem())
SY_DEV int sy_tid() { return sy_emu_thread().tid[0]; }
SY_DEV int sy_tid_y() { return sy_emu_thread().tid[1]; }
SY_DEV int sy_bid() { return sy_emu_thread().bid[0]; }
SY_DEV int sy_bid_y() { return sy_emu_thread().bid[1]; }
SY_DEV int sy_bid_z() { return sy_emu_thread().bid[2]; }
SY_DEV int sy_ntid() { return sy_emu_thread().ntid[0]; }
SY_DEV int sy_ntid_y() { return sy_emu_thread().ntid[1]; }
SY_DEV int sy_nbid() { return sy_emu_thread().nbid[0]; }
SY_DEV int sy_nbid_y() { return sy_emu_thread().nbid[1]; }
SY_DEV void sy_sync() { sy_emu_syncthreads(); }
SY_DEV float sy_shfl_xor(float v, int mask) { return sy_emu_shfl_xor(v, mask); }
SY_DEV double sy_shfl_xor_d(double v, int mask) { return sy_emu_shfl_xor_d(v, mask); }
SY_DEV int sy_atomic_add(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
SY_DEV float sy_exp(float x) { return std::exp2(x * 1.4426950408889634f); }
SY_DEV float sy_log(float x) { return std::log2(x) * 0.6931471805599453f; }
SY_DEV float sy_sqrt(float x) { return std::sqrt(x); }
SY_DEV double sy_sqrt_d(double x) { return std::sqrt(x); }
SY_DEV float sy_inf() { return __builtin_inff(); }
#endif

// ---------------------------------------------------------------- shared helpers

SY_DEV float sy_bits_f(unsigned u) { return __builtin_bit_cast(float, u); }
SY_DEV unsigned sy_f_bits(float f) { return __builtin_bit_cast(unsigned, f); }

// bf16 <-> f32: widening is exact; narrowing rounds to nearest even and
// keeps NaN a (quiet) NaN. pkg/gpu/bf16.go is the Go reference.
SY_DEV float bf2f(bf16 h) { return sy_bits_f(((unsigned)h.x) << 16); }
SY_DEV bf16 f2bf(float f) {
  unsigned u = sy_f_bits(f);
  bf16 r;
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    r.x = (bf16_bits)((u >> 16) | 0x40u);
    return r;
  }
  u += 0x7fffu + ((u >> 16) & 1u);
  r.x = (bf16_bits)(u >> 16);
  return r;
}

// ld/st convert between the storage type T (float or bf16) and float.
SY_DEV float ld(const float* p, long i) { return p[i]; }
SY_DEV float ld(const bf16* p, long i) { return bf2f(p[i]); }
SY_DEV void st(float* p, long i, float v) { p[i] = v; }
SY_DEV void st(bf16* p, long i, float v) { p[i] = f2bf(v); }

SY_DEV float fmax_(float a, float b) { return a > b ? a : b; }

SY_DEV float warp_sum(float v) {
  for (int m = 16; m > 0; m >>= 1) v += sy_shfl_xor(v, m);
  return v;
}
SY_DEV double warp_sum_d(double v) {
  for (int m = 16; m > 0; m >>= 1) v += sy_shfl_xor_d(v, m);
  return v;
}
SY_DEV float warp_max(float v) {
  for (int m = 16; m > 0; m >>= 1) v = fmax_(v, sy_shfl_xor(v, m));
  return v;
}

// block_sum returns the sum of v over the block to every thread, in a fixed
// order (deterministic). sh is a shared array of at least 32 floats; the
// block size is a multiple of 32.
SY_DEV float block_sum(float v, float* sh) {
  int lane = sy_tid() & 31, w = sy_tid() >> 5, nw = sy_ntid() >> 5;
  v = warp_sum(v);
  sy_sync();
  if (lane == 0) sh[w] = v;
  sy_sync();
  v = lane < nw ? sh[lane] : 0.f;
  return warp_sum(v);
}
SY_DEV double block_sum_d(double v, double* sh) {
  int lane = sy_tid() & 31, w = sy_tid() >> 5, nw = sy_ntid() >> 5;
  v = warp_sum_d(v);
  sy_sync();
  if (lane == 0) sh[w] = v;
  sy_sync();
  v = lane < nw ? sh[lane] : 0.0;
  return warp_sum_d(v);
}
SY_DEV float block_max(float v, float* sh) {
  int lane = sy_tid() & 31, w = sy_tid() >> 5, nw = sy_ntid() >> 5;
  v = warp_max(v);
  sy_sync();
  if (lane == 0) sh[w] = v;
  sy_sync();
  v = lane < nw ? sh[lane] : -sy_inf();
  return warp_max(v);
}
