//go:build cudaemu

// The CPU emulator of the engine's kernels: every GPU thread of a block is
// an OS thread, __syncthreads is a barrier of the block, warp shuffles go
// through a per-warp exchange with a barrier of the warp. Blocks of a
// launch run one after another (so SY_SHARED arrays, which are plain
// statics here, hold one block's data at a time); launches are serialised.
#include <barrier>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "kernels.h"

namespace {

struct Warp {
  std::barrier<>* bar;
  double buf[32];
};

struct Launch {
  std::barrier<>* block;
  std::vector<Warp>* warps;
  char* smem;
};

thread_local SyEmuThread t_thread;
thread_local Launch* t_launch;
std::mutex launch_mu;

template <typename... A, std::size_t... I>
void call_impl(void (*f)(A...), void** p, std::index_sequence<I...>) {
  f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(p[I])...);
}
template <typename... A>
void call(void (*f)(A...), void** p) {
  call_impl(f, p, std::index_sequence_for<A...>{});
}
template <auto F>
void thunk(void** p) {
  call(F, p);
}

struct Entry {
  const char* name;
  void (*fn)(void**);
};

#define SY_EMU_ENTRY(n) {#n, &thunk<&n>},
const Entry registry[] = {SY_KERNEL_LIST(SY_EMU_ENTRY)};

const Entry* find(const char* name) {
  for (const Entry& e : registry)
    if (std::strcmp(e.name, name) == 0) return &e;
  return nullptr;
}

}  // namespace

SyEmuThread& sy_emu_thread() { return t_thread; }
char* sy_emu_smem() { return t_launch->smem; }
void sy_emu_syncthreads() { t_launch->block->arrive_and_wait(); }

template <typename V>
static V shfl(V v, int mask) {
  int lane = t_thread.lin & 31;
  Warp& w = (*t_launch->warps)[t_thread.lin >> 5];
  w.buf[lane] = (double)v;
  w.bar->arrive_and_wait();
  double r = w.buf[lane ^ mask];
  w.bar->arrive_and_wait();
  return (V)r;
}
float sy_emu_shfl_xor(float v, int mask) { return shfl<float>(v, mask); }
double sy_emu_shfl_xor_d(double v, int mask) { return shfl<double>(v, mask); }

extern "C" {

// sy_emu_has reports whether the registry holds a kernel of that name.
int sy_emu_has(const char* name) { return find(name) != nullptr; }

// sy_emu_count and sy_emu_name list the registry (for the PTX comparison).
int sy_emu_count() { return (int)(sizeof(registry) / sizeof(registry[0])); }
const char* sy_emu_name(int i) { return registry[i].name; }

// sy_emu_launch runs kernel name on grid x block threads with smem bytes of
// dynamic shared memory; params is cuLaunchKernel's array of pointers to
// the argument values. It returns 0, or -1 for an unknown kernel and -2
// for a block size the emulator refuses (not a multiple of 32, or > 1024).
int sy_emu_launch(const char* name, int gx, int gy, int gz, int bx, int by, int bz, int smem, void** params) {
  const Entry* e = find(name);
  if (!e) return -1;
  int n = bx * by * bz;
  if (n <= 0 || n > 1024 || n % 32 != 0) return -2;
  std::lock_guard<std::mutex> lock(launch_mu);
  std::barrier<> block(n);
  std::vector<std::barrier<>*> wbars;
  std::vector<Warp> warps(n / 32);
  for (auto& w : warps) {
    w.bar = new std::barrier<>(32);
    wbars.push_back(w.bar);
  }
  std::vector<char> shared((size_t)smem + 16);
  Launch l{&block, &warps, shared.data()};
  std::vector<std::thread> threads;
  threads.reserve(n);
  for (int i = 0; i < n; i++) {
    threads.emplace_back([&, i] {
      t_launch = &l;
      SyEmuThread& th = t_thread;
      th.lin = i;
      th.tid[0] = i % bx;
      th.tid[1] = (i / bx) % by;
      th.tid[2] = i / (bx * by);
      th.ntid[0] = bx, th.ntid[1] = by, th.ntid[2] = bz;
      th.nbid[0] = gx, th.nbid[1] = gy, th.nbid[2] = gz;
      for (int z = 0; z < gz; z++)
        for (int y = 0; y < gy; y++)
          for (int x = 0; x < gx; x++) {
            th.bid[0] = x, th.bid[1] = y, th.bid[2] = z;
            e->fn(params);
            block.arrive_and_wait();
          }
    });
  }
  for (auto& t : threads) t.join();
  for (auto* b : wbars) delete b;
  return 0;
}

}  // extern "C"
