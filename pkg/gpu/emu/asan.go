//go:build cudaemu && asan

package emu

// exactAlloc: under AddressSanitizer a buffer is exactly its size, so an
// overrun of a kernel is reported (not hidden by the 256-byte rounding).
const exactAlloc = true
