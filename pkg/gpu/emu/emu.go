//go:build cudaemu

package emu

/*
#include <stdlib.h>
#include <string.h>
*/
import "C"

import (
	"fmt"
	"sync"
	"time"
	"unsafe"

	"github.com/switchyard-ml/switchyard/pkg/cuda"
	"github.com/switchyard-ml/switchyard/pkg/gpu/kernels"
)

const maxArgs = 32

// Device is the emulated GPU.
type Device struct {
	mu     sync.Mutex
	total  int64
	used   int64
	allocs map[cuda.DevPtr]int64
	slots  *[maxArgs]uint64         // C memory: argument values
	ptrs   *[maxArgs]unsafe.Pointer // C memory: pointers to them
	closed bool
	// Launches counts kernel launches and Gemms GEMM calls (grouped calls
	// count once), for tests of the engine's launch plan.
	Launches, Gemms int
}

var _ cuda.Device = (*Device)(nil)

// New returns an emulated device with total bytes of memory.
func New(total int64) *Device {
	d := &Device{total: total, allocs: map[cuda.DevPtr]int64{}}
	d.slots = (*[maxArgs]uint64)(C.calloc(maxArgs, 8))
	d.ptrs = (*[maxArgs]unsafe.Pointer)(C.calloc(maxArgs, C.size_t(unsafe.Sizeof(unsafe.Pointer(nil)))))
	for i := range d.ptrs {
		d.ptrs[i] = unsafe.Pointer(&d.slots[i])
	}
	return d
}

// Name implements cuda.Device.
func (d *Device) Name() string { return "CPU emulator" }

// MemInfo implements cuda.Device.
func (d *Device) MemInfo() (free, total int64, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.total - d.used, d.total, nil
}

// Alloc implements cuda.Device.
func (d *Device) Alloc(bytes int64) (cuda.DevPtr, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if bytes <= 0 {
		bytes = 1
	}
	size := (bytes + 255) &^ 255
	if d.used+size > d.total {
		return 0, fmt.Errorf("%w: %d bytes asked, %d of %d free", cuda.ErrOutOfMemory, bytes, d.total-d.used, d.total)
	}
	// the block as the device would round it; exactly what was asked for
	// under AddressSanitizer (go test -asan), which then reports a kernel
	// reading or writing past its buffer
	alloc := size
	if exactAlloc {
		alloc = bytes
	}
	var p unsafe.Pointer
	if C.posix_memalign(&p, 256, C.size_t(alloc)) != 0 || p == nil {
		return 0, fmt.Errorf("%w: host allocation of %d bytes", cuda.ErrOutOfMemory, alloc)
	}
	// poison: a kernel reading memory nobody wrote sees NaN-like garbage
	C.memset(p, 0x7f, C.size_t(alloc))
	ptr := cuda.DevPtr(uintptr(p))
	d.allocs[ptr] = size
	d.used += size
	return ptr, nil
}

// Free implements cuda.Device.
func (d *Device) Free(p cuda.DevPtr) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	size, ok := d.allocs[p]
	if !ok {
		return fmt.Errorf("cuda: emu: free of %#x, which is not an allocation", uint64(p))
	}
	delete(d.allocs, p)
	d.used -= size
	C.free(ptrOf(p))
	return nil
}

// ptrOf turns a device address (a C heap address here) into a pointer.
func ptrOf(p cuda.DevPtr) unsafe.Pointer {
	return unsafe.Add(unsafe.Pointer(nil), uintptr(p)) //nolint:govet // C heap memory, never Go memory
}

// check panics when [p, p+bytes) is not inside one allocation: a bad
// address in the engine is a bug that must surface at its source.
func (d *Device) check(p cuda.DevPtr, bytes int64, what string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for base, size := range d.allocs {
		if p >= base && p+cuda.DevPtr(bytes) <= base+cuda.DevPtr(size) {
			return
		}
	}
	panic(fmt.Sprintf("cuda: emu: %s of %d bytes at %#x is outside every allocation", what, bytes, uint64(p)))
}

// Memset implements cuda.Device.
func (d *Device) Memset(p cuda.DevPtr, bytes int64) error {
	if bytes == 0 {
		return nil
	}
	d.check(p, bytes, "memset")
	C.memset(ptrOf(p), 0, C.size_t(bytes))
	return nil
}

// CopyHtoD implements cuda.Device.
func (d *Device) CopyHtoD(dst cuda.DevPtr, src unsafe.Pointer, bytes int64) error {
	if bytes == 0 {
		return nil
	}
	d.check(dst, bytes, "copy to device")
	C.memmove(ptrOf(dst), src, C.size_t(bytes))
	return nil
}

// CopyDtoH implements cuda.Device.
func (d *Device) CopyDtoH(dst unsafe.Pointer, src cuda.DevPtr, bytes int64) error {
	if bytes == 0 {
		return nil
	}
	d.check(src, bytes, "copy from device")
	C.memmove(dst, ptrOf(src), C.size_t(bytes))
	return nil
}

// CopyDtoD implements cuda.Device.
func (d *Device) CopyDtoD(dst, src cuda.DevPtr, bytes int64) error {
	if bytes == 0 {
		return nil
	}
	d.check(dst, bytes, "copy within device (destination)")
	d.check(src, bytes, "copy within device (source)")
	C.memmove(ptrOf(dst), ptrOf(src), C.size_t(bytes))
	return nil
}

type kernel struct {
	name string
	k    kernels.EmuKernel
}

func (k *kernel) Name() string { return k.name }

// Kernel implements cuda.Device.
func (d *Device) Kernel(name string) (cuda.Kernel, error) {
	k, ok := kernels.EmuLookup(name)
	if !ok {
		return nil, fmt.Errorf("%w: emu: no kernel %q", cuda.ErrLaunch, name)
	}
	return &kernel{name: name, k: k}, nil
}

// Names lists every kernel the emulator holds.
func Names() []string { return kernels.EmuNames() }

// Launch implements cuda.Device.
func (d *Device) Launch(k cuda.Kernel, grid, block cuda.Dim3, sharedBytes int, args ...uint64) error {
	kk, ok := k.(*kernel)
	if !ok {
		return fmt.Errorf("%w: emu: foreign kernel %T", cuda.ErrLaunch, k)
	}
	if len(args) > maxArgs {
		return fmt.Errorf("%w: %s: %d arguments", cuda.ErrLaunch, kk.name, len(args))
	}
	g, b := grid.Norm(), block.Norm()
	if err := cuda.CheckLaunch(g, b, sharedBytes); err != nil {
		return fmt.Errorf("%w: %s: %w", cuda.ErrLaunch, kk.name, err) // as a GPU would refuse it
	}
	d.mu.Lock()
	d.Launches++
	d.mu.Unlock()
	copy(d.slots[:], args)
	rc := kernels.EmuLaunch(kk.k, [3]int{g.X, g.Y, g.Z}, [3]int{b.X, b.Y, b.Z}, sharedBytes, unsafe.Pointer(&d.ptrs[0]))
	switch rc {
	case 0:
		return nil
	case -2:
		return fmt.Errorf("%w: %s: block %+v (the emulator needs a multiple of 32 threads, at most 1024)", cuda.ErrLaunch, kk.name, b)
	case -3:
		return fmt.Errorf("%w: %s: deadlock: the threads of a block wait at different barriers", cuda.ErrLaunch, kk.name)
	}
	return fmt.Errorf("%w: %s: emulator error %d", cuda.ErrLaunch, kk.name, int(rc))
}

// Sync implements cuda.Device (the emulator runs everything at once).
func (d *Device) Sync() error { return nil }

type event struct{ at time.Time }

// NewEvent implements cuda.Device.
func (d *Device) NewEvent() (cuda.Event, error) { return &event{}, nil }

// Record implements cuda.Device.
func (d *Device) Record(e cuda.Event) error {
	e.(*event).at = time.Now()
	return nil
}

// Elapsed implements cuda.Device.
func (d *Device) Elapsed(a, b cuda.Event) (time.Duration, error) {
	return b.(*event).at.Sub(a.(*event).at), nil
}

// Close implements cuda.Device.
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	for p := range d.allocs {
		C.free(ptrOf(p))
	}
	d.allocs = nil
	C.free(unsafe.Pointer(d.slots))
	C.free(unsafe.Pointer(d.ptrs))
	return nil
}

// ---- GEMM: the reference ----

func (d *Device) load(p cuda.DevPtr, t cuda.DType, i int64) float64 {
	switch t {
	case cuda.BF16:
		return float64(cuda.BF16ToF32(*(*uint16)(unsafe.Add(ptrOf(p), i*2))))
	default:
		return float64(*(*float32)(unsafe.Add(ptrOf(p), i*4)))
	}
}

func (d *Device) store(p cuda.DevPtr, t cuda.DType, i int64, v float64) {
	switch t {
	case cuda.BF16:
		*(*uint16)(unsafe.Add(ptrOf(p), i*2)) = cuda.F32ToBF16(float32(v))
	default:
		*(*float32)(unsafe.Add(ptrOf(p), i*4)) = float32(v)
	}
}

// Gemm implements cuda.Device.
func (d *Device) Gemm(g *cuda.Gemm) error {
	if err := validGemm(g); err != nil {
		return err
	}
	d.mu.Lock()
	d.Gemms++
	d.mu.Unlock()
	batch := max(g.Batch, 1)
	out, ldd := g.Out()
	for bi := 0; bi < batch; bi++ {
		ob := int64(bi)
		a, b := g.A.Add(ob*g.StrideA*g.AB.Size()), g.B.Add(ob*g.StrideB*g.AB.Size())
		c, o := g.C, out.Add(ob*g.StrideD*g.CD.Size())
		if g.C != 0 {
			c = g.C.Add(ob * g.StrideC * g.CD.Size())
		}
		if g.D == 0 {
			o = c
		}
		d.gemm1(g, a, b, c, o, ldd)
	}
	return nil
}

func validGemm(g *cuda.Gemm) error {
	if g.M < 0 || g.N < 0 || g.K < 0 || (g.Beta != 0 && g.C == 0) || (g.C == 0 && g.D == 0) {
		return fmt.Errorf("%w: gemm %dx%dx%d beta %v C %#x D %#x", cuda.ErrLaunch, g.M, g.N, g.K, g.Beta, uint64(g.C), uint64(g.D))
	}
	return nil
}

func (d *Device) gemm1(g *cuda.Gemm, a, b, c, o cuda.DevPtr, ldd int) {
	if g.M == 0 || g.N == 0 {
		return
	}
	rowsA, colsA := g.M, g.K
	if g.TransA {
		rowsA, colsA = colsA, rowsA
	}
	rowsB, colsB := g.K, g.N
	if g.TransB {
		rowsB, colsB = colsB, rowsB
	}
	d.check(a, int64((rowsA-1)*g.Lda+colsA)*g.AB.Size(), "gemm A")
	d.check(b, int64((rowsB-1)*g.Ldb+colsB)*g.AB.Size(), "gemm B")
	d.check(o, int64((g.M-1)*ldd+g.N)*g.CD.Size(), "gemm D")
	if g.Beta != 0 {
		d.check(c, int64((g.M-1)*g.Ldc+g.N)*g.CD.Size(), "gemm C")
	}
	res := make([]float64, g.N)
	for i := 0; i < g.M; i++ {
		for j := 0; j < g.N; j++ {
			var s float64
			for l := 0; l < g.K; l++ {
				var av, bv float64
				if g.TransA {
					av = d.load(a, g.AB, int64(l*g.Lda+i))
				} else {
					av = d.load(a, g.AB, int64(i*g.Lda+l))
				}
				if g.TransB {
					bv = d.load(b, g.AB, int64(j*g.Ldb+l))
				} else {
					bv = d.load(b, g.AB, int64(l*g.Ldb+j))
				}
				s += av * bv
			}
			v := float64(g.Alpha) * s
			if g.Beta != 0 {
				v += float64(g.Beta) * d.load(c, g.CD, int64(i*g.Ldc+j))
			}
			res[j] = v
		}
		for j := 0; j < g.N; j++ {
			d.store(o, g.CD, int64(i*ldd+j), res[j])
		}
	}
}

// GemmGrouped implements cuda.Device (one call, counted once).
func (d *Device) GemmGrouped(gs []cuda.Gemm) error {
	d.mu.Lock()
	d.Gemms++
	d.mu.Unlock()
	for i := range gs {
		g := &gs[i]
		if g.Batch > 1 {
			return fmt.Errorf("%w: grouped gemm %d is batched", cuda.ErrLaunch, i)
		}
		if err := validGemm(g); err != nil {
			return err
		}
		out, ldd := g.Out()
		d.gemm1(g, g.A, g.B, g.C, out, ldd)
	}
	return nil
}
