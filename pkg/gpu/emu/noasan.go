//go:build cudaemu && !asan

package emu

// exactAlloc: buffers are rounded up to 256 bytes, as a GPU's allocator
// aligns them.
const exactAlloc = false
