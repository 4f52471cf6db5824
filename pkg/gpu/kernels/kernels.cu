// The translation unit gen.sh compiles to PTX. The kernels live in
// kernels.h so that the CPU emulator (emu.cc, build tag cudaemu) compiles
// the same source and Go's build cache sees every change to it.
#include "kernels.h"
