package cuda

import (
	"errors"
	"fmt"
	"time"
	"unsafe"
)

// DevPtr is an address in device memory (0 is no address).
type DevPtr uint64

// Add returns p advanced by bytes.
func (p DevPtr) Add(bytes int64) DevPtr { return p + DevPtr(bytes) }

// Dim3 is a grid or block size; zero fields count as 1.
type Dim3 struct{ X, Y, Z int }

// D1 is a one-dimensional Dim3.
func D1(x int) Dim3 { return Dim3{X: x, Y: 1, Z: 1} }

// Norm returns d with zero fields set to 1.
func (d Dim3) Norm() Dim3 {
	if d.X == 0 {
		d.X = 1
	}
	if d.Y == 0 {
		d.Y = 1
	}
	if d.Z == 0 {
		d.Z = 1
	}
	return d
}

// DType is the element type of a device buffer or GEMM operand.
type DType int

// The element types the engine uses.
const (
	F32 DType = iota
	BF16
	I32
)

// Size is the element size in bytes.
func (t DType) Size() int64 {
	if t == BF16 {
		return 2
	}
	return 4
}

func (t DType) String() string {
	switch t {
	case F32:
		return "f32"
	case BF16:
		return "bf16"
	case I32:
		return "i32"
	}
	return fmt.Sprintf("DType(%d)", int(t))
}

// Gemm is one matrix product in ROW-MAJOR storage (the layout of the CPU
// kernels; implementations over column-major libraries swap the operands):
//
//	D = Alpha * op(A) * op(B) + Beta * C
//
// op(A) is M x K, op(B) is K x N, C and D are M x N. A is stored M x K
// (K x M when TransA) with row stride Lda, likewise B, C and D. A and B
// have element type AB; C and D have type CD. Accumulation is in float32
// (never TF32). D == 0 means D = C (Ldd = Ldc). With Beta == 0, C is not
// read. Batch > 1 repeats the product Batch times with the operands
// advanced by the strides (in elements) each time.
type Gemm struct {
	TransA, TransB bool
	M, N, K        int
	Alpha, Beta    float32
	A              DevPtr
	Lda            int
	B              DevPtr
	Ldb            int
	C              DevPtr
	Ldc            int
	D              DevPtr
	Ldd            int
	AB, CD         DType

	Batch                              int
	StrideA, StrideB, StrideC, StrideD int64
}

// Out returns the output pointer and its row stride (D, or C when D is 0).
func (g *Gemm) Out() (DevPtr, int) {
	if g.D == 0 {
		return g.C, g.Ldc
	}
	return g.D, g.Ldd
}

// Kernel is a function of the loaded kernel module.
type Kernel interface{ Name() string }

// Event marks a point in the device's stream, for timing.
type Event interface{}

// Device is what the GPU engine needs from one GPU: memory, copies,
// kernel launches, GEMMs and timing, all ordered on one stream. The real
// implementation (Context) drives an NVIDIA GPU through the CUDA driver
// and cuBLAS; pkg/cuda/emu runs the same kernels on the CPU for tests.
//
// Ordering: every call is ordered after the calls before it. Calls that
// return data to the host (CopyDtoH, Sync, Elapsed) wait for everything
// before them; the others may return before the device has done the work.
type Device interface {
	// Name is the device's name, e.g. "NVIDIA H200".
	Name() string
	// MemInfo is the device memory free and in total, in bytes.
	MemInfo() (free, total int64, err error)

	// Alloc returns bytes of device memory (contents undefined).
	Alloc(bytes int64) (DevPtr, error)
	// Free releases memory from Alloc.
	Free(p DevPtr) error
	// Memset sets bytes at p to zero.
	Memset(p DevPtr, bytes int64) error
	// CopyHtoD copies bytes from host memory to p. src may be reused as
	// soon as the call returns.
	CopyHtoD(dst DevPtr, src unsafe.Pointer, bytes int64) error
	// CopyDtoH copies bytes from p to host memory, after all earlier work;
	// dst holds the data when the call returns.
	CopyDtoH(dst unsafe.Pointer, src DevPtr, bytes int64) error
	// CopyDtoD copies bytes between device buffers.
	CopyDtoD(dst, src DevPtr, bytes int64) error

	// Kernel looks up a kernel of the loaded module by its (extern "C") name.
	Kernel(name string) (Kernel, error)
	// Launch runs k on grid x block threads with sharedBytes of dynamic
	// shared memory. Each argument is one kernel parameter: a DevPtr, or a
	// 32-bit value (int32 / uint32 / float32 bits) in the low half.
	Launch(k Kernel, grid, block Dim3, sharedBytes int, args ...uint64) error

	// Gemm runs one (possibly strided-batched) product.
	Gemm(g *Gemm) error
	// GemmGrouped runs products of different sizes (the experts of an MoE
	// layer, each with its own token count) as one call where the library
	// allows it. All share TransA, TransB, AB and CD; none is batched.
	GemmGrouped(gs []Gemm) error

	// Sync waits for all work and reports the first asynchronous error.
	Sync() error
	// NewEvent creates an event; Record places it in the stream; Elapsed
	// waits for b and returns the time between a and b.
	NewEvent() (Event, error)
	Record(e Event) error
	Elapsed(a, b Event) (time.Duration, error)

	// Close releases everything the device holds.
	Close() error
}

// Launch limits of the GPUs this package targets (sm_80 and sm_90): a
// configuration past them fails on the device, and the CPU emulator
// refuses it too, so that tests find it without a GPU.
const (
	MaxGridX        = 1<<31 - 1
	MaxGridYZ       = 65535
	MaxBlockXY      = 1024
	MaxBlockZ       = 64
	MaxBlockThreads = 1024
	// MaxDynamicShared is the most dynamic shared memory a block may ask
	// for (sm_80's opt-in limit, 163 KiB; sm_90 allows 227).
	MaxDynamicShared = 163 << 10
)

// CheckLaunch says what is wrong with a launch configuration (grid and
// block after Norm) for the targeted GPUs; nil when nothing is.
func CheckLaunch(grid, block Dim3, sharedBytes int) error {
	switch {
	case grid.X < 1 || grid.Y < 1 || grid.Z < 1 || block.X < 1 || block.Y < 1 || block.Z < 1 || sharedBytes < 0:
		return fmt.Errorf("grid %v, block %v, shared %d: sizes must be positive", grid, block, sharedBytes)
	case grid.X > MaxGridX || grid.Y > MaxGridYZ || grid.Z > MaxGridYZ:
		return fmt.Errorf("grid %v: at most %d x %d x %d blocks", grid, MaxGridX, MaxGridYZ, MaxGridYZ)
	case block.X > MaxBlockXY || block.Y > MaxBlockXY || block.Z > MaxBlockZ || block.X*block.Y*block.Z > MaxBlockThreads:
		return fmt.Errorf("block %v: at most %d threads (%d x %d x %d)", block, MaxBlockThreads, MaxBlockXY, MaxBlockXY, MaxBlockZ)
	case sharedBytes > MaxDynamicShared:
		return fmt.Errorf("%d bytes of dynamic shared memory: at most %d", sharedBytes, MaxDynamicShared)
	}
	return nil
}

// Arg encodings for Launch.

// Int encodes an int32 kernel parameter.
func Int(v int) uint64 { return uint64(uint32(int32(v))) }

// Float encodes a float32 kernel parameter.
func Float(v float32) uint64 { return uint64(*(*uint32)(unsafe.Pointer(&v))) }

// Ptr encodes a pointer parameter.
func Ptr(p DevPtr) uint64 { return uint64(p) }

// Errors every implementation wraps.
var (
	// ErrNoDevice: no usable GPU (no driver, no device, or the index is
	// out of range). The message says what was looked for and where.
	ErrNoDevice = errors.New("cuda: no usable GPU")
	// ErrLibrary: a required library (cuBLASLt, cuBLAS, NCCL) was not
	// found or lacks a function.
	ErrLibrary = errors.New("cuda: library not found")
	// ErrOutOfMemory: an allocation did not fit.
	ErrOutOfMemory = errors.New("cuda: out of device memory")
	// ErrLaunch: a kernel launch or GEMM was refused or failed.
	ErrLaunch = errors.New("cuda: launch failed")
)
