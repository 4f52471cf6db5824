//go:build cudaemu

package kernels

/*
#cgo CXXFLAGS: -std=c++20 -O1 -pthread -Wno-unused-function
#cgo LDFLAGS: -pthread
#include <stdlib.h>
int sy_emu_has(const char* name);
int sy_emu_count();
const char* sy_emu_name(int i);
int sy_emu_launch(const char* name, int gx, int gy, int gz, int bx, int by, int bz, int smem, void** params);
*/
import "C"

import "unsafe"

// The CPU emulator of the kernels (build tag cudaemu): emu.cc compiles
// kernels.h as C++ and runs every GPU thread of a block as a fiber. pkg/gpu/emu
// wraps it in a cuda.Device.

// EmuKernel is a kernel of the emulator's registry.
type EmuKernel struct{ cname *C.char }

// EmuLookup finds a kernel by name (false: not in the registry).
func EmuLookup(name string) (EmuKernel, bool) {
	cs := C.CString(name)
	if C.sy_emu_has(cs) == 0 {
		C.free(unsafe.Pointer(cs))
		return EmuKernel{}, false
	}
	return EmuKernel{cname: cs}, true
}

// EmuNames lists the emulator's registry.
func EmuNames() []string {
	n := int(C.sy_emu_count())
	out := make([]string, n)
	for i := range out {
		out[i] = C.GoString(C.sy_emu_name(C.int(i)))
	}
	return out
}

// EmuLaunch runs k on grid x block threads; params is cuLaunchKernel's
// array of pointers to the argument values (C memory). It returns 0, -1
// for an unknown kernel, -2 for a block size the emulator refuses, -3 for
// a deadlock at barriers.
func EmuLaunch(k EmuKernel, grid, block [3]int, smem int, params unsafe.Pointer) int {
	return int(C.sy_emu_launch(k.cname, C.int(grid[0]), C.int(grid[1]), C.int(grid[2]),
		C.int(block[0]), C.int(block[1]), C.int(block[2]), C.int(smem), (*unsafe.Pointer)(params)))
}
