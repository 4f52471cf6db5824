// gemmscale.cu: the K == 0 case of cuda.Context.Gemm, D = beta * C.
//
// Compiled to PTX without the CUDA headers by Debian's clang-16 (see
// gen.go); the PTX is committed and embedded.
//
// Row-major, batched: for b < gridDim.y, i < rows, j < cols
//   d[b*sd + i*ldd + j] = beta * c[b*sc + i*ldc + j]
// and 0 when beta == 0 (c is not read then, as in BLAS). Grid-stride over
// rows*cols in x.

#define SY_KERNEL extern "C" __attribute__((global))
#define SY_DEV static __attribute__((device)) inline __attribute__((always_inline))

SY_DEV float bf16_to_f32(unsigned short b) { return __builtin_bit_cast(float, (unsigned)b << 16); }

// Round to nearest even; NaN stays a (quiet) NaN.
SY_DEV unsigned short f32_to_bf16(float f) {
  unsigned u = __builtin_bit_cast(unsigned, f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (unsigned short)(u >> 16);
}

SY_KERNEL void sy_gemm_scale_f32(float* d, long long ldd, long long sd, const float* c, long long ldc,
                                 long long sc, int rows, int cols, float beta) {
  long long n = (long long)rows * cols;
  long long b = __nvvm_read_ptx_sreg_ctaid_y();
  long long step = (long long)__nvvm_read_ptx_sreg_nctaid_x() * __nvvm_read_ptx_sreg_ntid_x();
  for (long long t = (long long)__nvvm_read_ptx_sreg_ctaid_x() * __nvvm_read_ptx_sreg_ntid_x() + __nvvm_read_ptx_sreg_tid_x();
       t < n; t += step) {
    long long i = t / cols, j = t % cols;
    float v = 0.0f;
    if (beta != 0.0f) v = beta * c[b * sc + i * ldc + j];
    d[b * sd + i * ldd + j] = v;
  }
}

SY_KERNEL void sy_gemm_scale_bf16(unsigned short* d, long long ldd, long long sd, const unsigned short* c,
                                  long long ldc, long long sc, int rows, int cols, float beta) {
  long long n = (long long)rows * cols;
  long long b = __nvvm_read_ptx_sreg_ctaid_y();
  long long step = (long long)__nvvm_read_ptx_sreg_nctaid_x() * __nvvm_read_ptx_sreg_ntid_x();
  for (long long t = (long long)__nvvm_read_ptx_sreg_ctaid_x() * __nvvm_read_ptx_sreg_ntid_x() + __nvvm_read_ptx_sreg_tid_x();
       t < n; t += step) {
    long long i = t / cols, j = t % cols;
    float v = 0.0f;
    if (beta != 0.0f) v = beta * bf16_to_f32(c[b * sc + i * ldc + j]);
    d[b * sd + i * ldd + j] = f32_to_bf16(v);
  }
}
