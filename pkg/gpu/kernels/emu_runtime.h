// emu_runtime.h: what the kernels see of the CPU emulator (pkg/gpu/emu)
// when they are compiled as C++ instead of for a GPU. See sycuda.h.
#pragma once

struct SyEmuThread {
  int tid[3], bid[3], ntid[3], nbid[3];
  int lin;  // linear thread index in the block
};

SyEmuThread& sy_emu_thread();
char* sy_emu_smem();
void sy_emu_syncthreads();
float sy_emu_shfl_xor(float v, int mask);
double sy_emu_shfl_xor_d(double v, int mask);
