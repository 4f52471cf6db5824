//go:build cudaemu

// The CPU emulator of the engine's kernels: every GPU thread of a block is
// a fiber (ucontext) with its own stack, run by a scheduler on the
// launching OS thread. __syncthreads parks a fiber until every live thread
// of its block has reached a barrier; a warp shuffle parks it until the
// live lanes of its warp have stored their values (and again until they
// have read them). A deadlock (some threads at a barrier, the others
// stuck at another kind) fails the launch. Blocks run one after another
// (so SY_SHARED arrays, plain statics here, hold one block's data at a
// time), alternating the order in which threads are scheduled so that a
// missing barrier shows up whichever thread writes first; launches are
// serialised.
#include <ucontext.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <utility>
#include <vector>

#include "kernels.h"

namespace {

enum State { Ready, AtBlock, AtWarp, Done };

struct Fiber {
  ucontext_t ctx;
  SyEmuThread th;
  State state;
};

struct Launch {
  std::vector<Fiber> fibers;
  std::vector<char> stacks;
  std::vector<double> warpBuf;  // [warps][32]
  ucontext_t sched;
  Fiber* cur;
  char* smem;
  void (*fn)(void**);
  void** params;
};

Launch* g_launch;  // the launch in progress (launches are serialised)
std::mutex launch_mu;
constexpr size_t kStack = 64 << 10;

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

void fiber_main() {
  Launch* l = g_launch;
  l->fn(l->params);
  l->cur->state = Done;
  // returning resumes uc_link: the scheduler
}

// park suspends the current fiber in state s and returns when the
// scheduler resumes it.
void park(State s) {
  Launch* l = g_launch;
  Fiber* f = l->cur;
  f->state = s;
  swapcontext(&f->ctx, &l->sched);
}

// release makes the fibers waiting at a barrier that is complete ready
// again; it reports whether any was released.
bool release(Launch* l, int n) {
  bool any = false;
  bool allBlock = true;
  int live = 0;
  for (int i = 0; i < n; i++) {
    State s = l->fibers[i].state;
    if (s == Done) continue;
    live++;
    if (s != AtBlock) allBlock = false;
  }
  if (live > 0 && allBlock) {
    for (int i = 0; i < n; i++)
      if (l->fibers[i].state == AtBlock) l->fibers[i].state = Ready;
    return true;
  }
  for (int w = 0; w * 32 < n; w++) {
    bool all = true;
    int wl = 0;
    for (int i = w * 32; i < n && i < w * 32 + 32; i++) {
      State s = l->fibers[i].state;
      if (s == Done) continue;
      wl++;
      if (s != AtWarp) all = false;
    }
    if (wl > 0 && all) {
      for (int i = w * 32; i < n && i < w * 32 + 32; i++)
        if (l->fibers[i].state == AtWarp) l->fibers[i].state = Ready;
      any = true;
    }
  }
  return any;
}

// run_block runs every thread of the current block to completion; false
// means a deadlock.
bool run_block(Launch* l, int n, bool reverse) {
  for (int i = 0; i < n; i++) {
    Fiber& f = l->fibers[i];
    f.state = Ready;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = l->stacks.data() + (size_t)i * kStack;
    f.ctx.uc_stack.ss_size = kStack;
    f.ctx.uc_link = &l->sched;
    makecontext(&f.ctx, fiber_main, 0);
  }
  for (;;) {
    bool ran = false;
    for (int k = 0; k < n; k++) {
      int i = reverse ? n - 1 - k : k;
      Fiber& f = l->fibers[i];
      if (f.state != Ready) continue;
      l->cur = &f;
      swapcontext(&l->sched, &f.ctx);
      ran = true;
    }
    bool done = true;
    for (int i = 0; i < n; i++)
      if (l->fibers[i].state != Done) done = false;
    if (done) return true;
    if (!release(l, n) && !ran) return false;
  }
}

}  // namespace

SyEmuThread& sy_emu_thread() { return g_launch->cur->th; }
char* sy_emu_smem() { return g_launch->smem; }
void sy_emu_syncthreads() { park(AtBlock); }

template <typename V>
static V shfl(V v, int mask) {
  Launch* l = g_launch;
  int lin = l->cur->th.lin;
  double* buf = l->warpBuf.data() + (lin >> 5) * 32;
  buf[lin & 31] = (double)v;
  park(AtWarp);
  double r = buf[(lin & 31) ^ mask];
  park(AtWarp);
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
// the argument values. It returns 0, or -1 for an unknown kernel, -2 for a
// block size the emulator refuses (not a multiple of 32, or > 1024) and
// -3 for a deadlock (threads of a block waiting at different barriers).
int sy_emu_launch(const char* name, int gx, int gy, int gz, int bx, int by, int bz, int smem, void** params) {
  const Entry* e = find(name);
  if (!e) return -1;
  int n = bx * by * bz;
  if (n <= 0 || n > 1024 || n % 32 != 0) return -2;
  std::lock_guard<std::mutex> lock(launch_mu);
  static Launch l;
  l.fibers.resize(n);
  if (l.stacks.size() < (size_t)n * kStack) l.stacks.resize((size_t)n * kStack);
  l.warpBuf.assign((size_t)(n / 32) * 32, 0.0);
  std::vector<char> shared((size_t)smem + 16);
  l.smem = shared.data();
  l.fn = e->fn;
  l.params = params;
  g_launch = &l;
  for (int i = 0; i < n; i++) {
    SyEmuThread& th = l.fibers[i].th;
    th.lin = i;
    th.tid[0] = i % bx;
    th.tid[1] = (i / bx) % by;
    th.tid[2] = i / (bx * by);
    th.ntid[0] = bx, th.ntid[1] = by, th.ntid[2] = bz;
    th.nbid[0] = gx, th.nbid[1] = gy, th.nbid[2] = gz;
  }
  int rc = 0;
  long blk = 0;
  for (int z = 0; z < gz && rc == 0; z++)
    for (int y = 0; y < gy && rc == 0; y++)
      for (int x = 0; x < gx && rc == 0; x++, blk++) {
        for (int i = 0; i < n; i++) {
          SyEmuThread& th = l.fibers[i].th;
          th.bid[0] = x, th.bid[1] = y, th.bid[2] = z;
        }
        if (!run_block(&l, n, blk % 2 == 1)) rc = -3;
      }
  g_launch = nullptr;
  return rc;
}

}  // extern "C"
