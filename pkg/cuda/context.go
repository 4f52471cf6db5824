package cuda

//go:generate clang-16 -x cuda --cuda-gpu-arch=sm_80 --cuda-device-only -nocudainc -nocudalib --cuda-feature=+ptx78 -O3 -S -o kernels/gemmscale.ptx kernels/gemmscale.cu

import (
	_ "embed"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"
)

// gemmScalePTX holds the K == 0 kernels of Gemm (kernels/gemmscale.cu).
//
//go:embed kernels/gemmscale.ptx
var gemmScalePTX []byte

const (
	// stagingBytes is the page-locked ring CopyHtoD stages through, in
	// stagingRegions regions; a copy larger than a region goes through in
	// region-sized chunks.
	stagingBytes   = 64 << 20
	stagingRegions = 4
	// maxKernelArgs is the most parameters a launch may pass.
	maxKernelArgs = 128
	// defaultSharedLimit is the dynamic shared memory a launch gets without
	// raising the function's CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES.
	defaultSharedLimit = 48 << 10
)

// Options configures Open.
type Options struct {
	// Ordinal is the device index (as cuDeviceGet counts them, after
	// CUDA_VISIBLE_DEVICES).
	Ordinal int
	// Module is the PTX text of the engine's kernels (may be empty; a
	// terminating NUL is added when missing).
	Module []byte
}

// Context drives one NVIDIA GPU: its primary context, the legacy NULL
// stream, a cuBLASLt and a cuBLAS handle. It implements Device.
type Context struct {
	mu     sync.Mutex
	closed bool

	drv  *driverAPI
	lt   *ltAPI
	blas *blasAPI

	ordinal          int
	dev              int32
	ctx              uintptr // the primary context (retained)
	name             string
	uuid             string
	ccMajor, ccMinor int
	sms              int

	module      uintptr // Options.Module
	scaleModule uintptr // kernels/gemmscale.ptx, loaded on first use
	kernels     map[string]*kernel
	scale       [2]*kernel // sy_gemm_scale_f32, sy_gemm_scale_bf16

	// params is page-locked: maxKernelArgs 8-byte argument slots, then the
	// void* array cuLaunchKernel reads, slot i's address in entry i.
	params unsafe.Pointer

	stage      unsafe.Pointer // the page-locked staging ring
	ring       ring
	ringEvents [stagingRegions]uintptr

	events []uintptr // made by NewEvent, destroyed by Close

	nccls map[*NCCL]struct{} // communicators open on this GPU (OpenNCCL)

	ltHandle  uintptr
	ltPref    uintptr
	workspace DevPtr
	plans     map[ltKey]*ltPlan
	scalars   [2]float32 // alpha, beta of the current cublasLtMatmul

	blasHandle   uintptr
	grouped      groupedScratch
	groupedCalls int // calls of cublasGemmGroupedBatchedEx made (for tests)
}

var _ Device = (*Context)(nil)

// kernel is a function of a module loaded by a Context.
type kernel struct {
	c         *Context
	name      string
	fn        uintptr
	sharedSet int // the max dynamic shared size set on fn (0: the default)
}

func (k *kernel) Name() string { return k.name }

// event is a CUevent of a Context.
type event struct {
	c *Context
	h uintptr
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }

// Open makes device o.Ordinal's primary context current, loads the
// module and the BLAS libraries and allocates the staging ring and the
// GEMM workspace. A machine without the driver gets an error wrapping
// ErrNoDevice that says where the driver was looked for; a missing
// cuBLASLt or cuBLAS wraps ErrLibrary.
func Open(o Options) (*Context, error) {
	d, err := loadDriver()
	if err != nil {
		return nil, err
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := d.init(); err != nil {
		return nil, err
	}
	n, err := d.deviceCount()
	if err != nil {
		return nil, err
	}
	if o.Ordinal < 0 || o.Ordinal >= n {
		return nil, fmt.Errorf("%w: device %d requested, the driver (%s) sees %d", ErrNoDevice, o.Ordinal, d.lib.path, n)
	}
	c := &Context{drv: d, ordinal: o.Ordinal, kernels: map[string]*kernel{}, plans: map[ltKey]*ltPlan{}}
	if c.dev, err = d.device(o.Ordinal); err != nil {
		return nil, err
	}
	if err := c.describe(); err != nil {
		return nil, err
	}
	if c.ctx, err = d.primaryCtxRetain(c.dev); err != nil {
		return nil, err
	}
	if err := c.setup(o); err != nil {
		c.closed = true
		return nil, errors.Join(err, c.release())
	}
	return c, nil
}

// describe reads the device's name and attributes.
func (c *Context) describe() error {
	var err error
	if c.name, err = c.drv.deviceName(c.dev); err != nil {
		return err
	}
	if c.uuid, err = c.drv.uuid(c.dev); err != nil {
		return err
	}
	if c.ccMajor, err = c.drv.attribute(c.dev, cuDeviceAttributeComputeCapMajor); err != nil {
		return err
	}
	if c.ccMinor, err = c.drv.attribute(c.dev, cuDeviceAttributeComputeCapMinor); err != nil {
		return err
	}
	c.sms, err = c.drv.attribute(c.dev, cuDeviceAttributeMultiprocessorCount)
	return err
}

// setup does the rest of Open with the context retained; on error the
// caller releases what was made.
func (c *Context) setup(o Options) error {
	d := c.drv
	if err := d.ctxSetCurrent(c.ctx); err != nil {
		return err
	}
	var err error
	if c.params, err = d.memAllocHost(2 * 8 * maxKernelArgs); err != nil {
		return err
	}
	ptrs := unsafe.Slice((*uintptr)(unsafe.Add(c.params, 8*maxKernelArgs)), maxKernelArgs)
	for i := range ptrs {
		ptrs[i] = uintptr(unsafe.Add(c.params, 8*i))
	}
	if c.stage, err = d.memAllocHost(stagingBytes); err != nil {
		return err
	}
	c.ring = newRing(stagingBytes/stagingRegions, stagingRegions)
	for i := range c.ringEvents {
		if c.ringEvents[i], err = d.eventCreate(cuEventDisableTiming); err != nil {
			return err
		}
	}
	if len(o.Module) > 0 {
		if c.module, err = d.moduleLoad(nulTerminated(o.Module)); err != nil {
			return err
		}
	}

	if c.lt, err = loadLt(); err != nil {
		return err
	}
	if c.ltHandle, err = c.lt.create(); err != nil {
		return err
	}
	if c.workspace, err = d.memAlloc(ltWorkspaceBytes); err != nil {
		return err
	}
	if c.ltPref, err = c.lt.prefCreate(ltWorkspaceBytes); err != nil {
		return err
	}

	if c.blas, err = loadBLAS(c.lt.lib); err != nil {
		return err
	}
	if c.blasHandle, err = c.blas.create(); err != nil {
		return err
	}
	if err := c.blas.setStream(c.blasHandle, cuStreamNull); err != nil {
		return err
	}
	return c.blas.setMathMode(c.blasHandle, cublasDefaultMath)
}

// nulTerminated returns b with a terminating NUL (a copy when one is added).
func nulTerminated(b []byte) []byte {
	if len(b) > 0 && b[len(b)-1] == 0 {
		return b
	}
	out := make([]byte, len(b)+1)
	copy(out, b)
	return out
}

// lock takes the Context for one call: the mutex, the OS thread, and the
// context made current on it (CUDA contexts are current per thread and
// goroutines move between threads).
func (c *Context) lock() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return errClosed
	}
	runtime.LockOSThread()
	if err := c.drv.ctxSetCurrent(c.ctx); err != nil {
		c.unlock()
		return err
	}
	return nil
}

func (c *Context) unlock() {
	runtime.UnlockOSThread()
	c.mu.Unlock()
}

// Name is the device's name, e.g. "NVIDIA H200".
func (c *Context) Name() string { return c.name }

// CC is the device's compute capability.
func (c *Context) CC() (major, minor int) { return c.ccMajor, c.ccMinor }

// UUID is the GPU's UUID ("GPU-" and 32 hex digits, as nvidia-smi and
// CUDA_VISIBLE_DEVICES write it): two ranks with one UUID share a GPU.
func (c *Context) UUID() string { return c.uuid }

// Ordinal is the device index the Context was opened with.
func (c *Context) Ordinal() int { return c.ordinal }

// MemInfo is the device memory free and in total, in bytes.
func (c *Context) MemInfo() (free, total int64, err error) {
	if err := c.lock(); err != nil {
		return 0, 0, err
	}
	defer c.unlock()
	return c.drv.memGetInfo()
}

// Alloc returns bytes of device memory (contents undefined); 0 bytes is
// address 0.
func (c *Context) Alloc(bytes int64) (DevPtr, error) {
	if bytes < 0 {
		return 0, fmt.Errorf("%w: Alloc of %d bytes", ErrOutOfMemory, bytes)
	}
	if bytes == 0 {
		return 0, nil
	}
	if err := c.lock(); err != nil {
		return 0, err
	}
	defer c.unlock()
	return c.drv.memAlloc(bytes)
}

// Free releases memory from Alloc; Free(0) does nothing.
func (c *Context) Free(p DevPtr) error {
	if p == 0 {
		return nil
	}
	if err := c.lock(); err != nil {
		return err
	}
	defer c.unlock()
	return c.drv.memFree(p)
}

func badCopy(what string, dst, src uintptr, bytes int64) error {
	return fmt.Errorf("%w: %s of %d bytes from %#x to %#x", ErrLaunch, what, bytes, src, dst)
}

// Memset sets bytes at p to zero, on the stream (cuMemsetD32Async when p
// and bytes are multiples of 4, else cuMemsetD8Async).
func (c *Context) Memset(p DevPtr, bytes int64) error {
	if bytes == 0 {
		return nil
	}
	if bytes < 0 || p == 0 {
		return badCopy("Memset", uintptr(p), 0, bytes)
	}
	if err := c.lock(); err != nil {
		return err
	}
	defer c.unlock()
	if p%4 == 0 && bytes%4 == 0 {
		return c.drv.memsetD32Async(p, 0, bytes/4, cuStreamNull)
	}
	return c.drv.memsetD8Async(p, 0, bytes, cuStreamNull)
}

// CopyHtoD copies host memory to the device on the stream. src is copied
// into the page-locked staging ring before the call returns, so it may be
// reused at once; the device copy is asynchronous.
func (c *Context) CopyHtoD(dst DevPtr, src unsafe.Pointer, bytes int64) error {
	if bytes == 0 {
		return nil
	}
	if bytes < 0 || dst == 0 || src == nil {
		return badCopy("CopyHtoD", uintptr(dst), uintptr(src), bytes)
	}
	if err := c.lock(); err != nil {
		return err
	}
	defer c.unlock()
	return c.copyHtoDLocked(dst, src, bytes)
}

func (c *Context) copyHtoDLocked(dst DevPtr, src unsafe.Pointer, bytes int64) error {
	for off := int64(0); off < bytes; {
		n := min(bytes-off, c.ring.regionBytes)
		o, err := c.ring.take(n, c)
		if err != nil {
			return err
		}
		st := unsafe.Add(c.stage, o)
		copy(unsafe.Slice((*byte)(st), n), unsafe.Slice((*byte)(unsafe.Add(src, off)), n))
		if err := c.drv.memcpyHtoDAsync(dst.Add(off), st, n, cuStreamNull); err != nil {
			return err
		}
		off += n
	}
	return nil
}

// leave records region i's event after the copies staged in it.
func (c *Context) leave(i int) error { return c.drv.eventRecord(c.ringEvents[i], cuStreamNull) }

// enter waits until the copies staged in region i before have been done.
func (c *Context) enter(i int) error { return c.drv.eventSynchronize(c.ringEvents[i]) }

// CopyDtoH copies device memory to the host after all earlier work
// (cuMemcpyDtoH_v2, synchronous); it reports an earlier asynchronous error.
func (c *Context) CopyDtoH(dst unsafe.Pointer, src DevPtr, bytes int64) error {
	if bytes == 0 {
		return nil
	}
	if bytes < 0 || dst == nil || src == 0 {
		return badCopy("CopyDtoH", uintptr(dst), uintptr(src), bytes)
	}
	if err := c.lock(); err != nil {
		return err
	}
	defer c.unlock()
	return c.drv.memcpyDtoH(dst, src, bytes)
}

// CopyDtoD copies between device buffers on the stream.
func (c *Context) CopyDtoD(dst, src DevPtr, bytes int64) error {
	if bytes == 0 {
		return nil
	}
	if bytes < 0 || dst == 0 || src == 0 {
		return badCopy("CopyDtoD", uintptr(dst), uintptr(src), bytes)
	}
	if err := c.lock(); err != nil {
		return err
	}
	defer c.unlock()
	return c.drv.memcpyDtoDAsync(dst, src, bytes, cuStreamNull)
}

// Kernel looks up a kernel of Options.Module by its extern "C" name.
func (c *Context) Kernel(name string) (Kernel, error) {
	if err := c.lock(); err != nil {
		return nil, err
	}
	defer c.unlock()
	if k, ok := c.kernels[name]; ok {
		return k, nil
	}
	if c.module == 0 {
		return nil, fmt.Errorf("%w: kernel %q: no module was loaded (Options.Module is empty)", ErrLaunch, name)
	}
	fn, err := c.drv.moduleGetFunction(c.module, name)
	if err != nil {
		return nil, err
	}
	k := &kernel{c: c, name: name, fn: fn}
	c.kernels[name] = k
	return k, nil
}

// Launch runs k on the stream. Each argument takes an 8-byte slot of a
// page-locked buffer (32-bit values in the low half: the driver reads
// each parameter at its declared size); cuLaunchKernel copies them, so
// the buffer is reused. More than 48 KiB of dynamic shared memory raises
// the function's limit first.
func (c *Context) Launch(k Kernel, grid, block Dim3, sharedBytes int, args ...uint64) error {
	kk, ok := k.(*kernel)
	if !ok || kk == nil || kk.c != c {
		return fmt.Errorf("%w: Launch of a kernel (%T) not made by this Context", ErrLaunch, k)
	}
	grid, block = grid.Norm(), block.Norm()
	if err := CheckLaunch(grid, block, sharedBytes); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrLaunch, kk.name, err)
	}
	if len(args) > maxKernelArgs {
		return fmt.Errorf("%w: %s: %d arguments, at most %d", ErrLaunch, kk.name, len(args), maxKernelArgs)
	}
	if err := c.lock(); err != nil {
		return err
	}
	defer c.unlock()
	return c.launchLocked(kk, grid, block, sharedBytes, args)
}

func (c *Context) launchLocked(k *kernel, grid, block Dim3, shared int, args []uint64) error {
	if shared > defaultSharedLimit && shared > k.sharedSet {
		if err := c.drv.funcSetAttribute(k.fn, cuFuncAttributeMaxDynamicSharedSizeBytes, shared,
			k.name+": MAX_DYNAMIC_SHARED_SIZE_BYTES "+strconv.Itoa(shared)); err != nil {
			return err
		}
		k.sharedSet = shared
	}
	copy(unsafe.Slice((*uint64)(c.params), maxKernelArgs), args)
	return c.drv.launchKernel(k.fn, grid, block, shared, cuStreamNull, unsafe.Add(c.params, 8*maxKernelArgs), k.name)
}

// scaleKernel returns the K == 0 kernel for t, loading its module once.
func (c *Context) scaleKernel(t DType) (*kernel, error) {
	i, name := 0, "sy_gemm_scale_f32"
	if t == BF16 {
		i, name = 1, "sy_gemm_scale_bf16"
	}
	if c.scale[i] != nil {
		return c.scale[i], nil
	}
	if c.scaleModule == 0 {
		m, err := c.drv.moduleLoad(nulTerminated(gemmScalePTX))
		if err != nil {
			return nil, err
		}
		c.scaleModule = m
	}
	fn, err := c.drv.moduleGetFunction(c.scaleModule, name)
	if err != nil {
		return nil, err
	}
	c.scale[i] = &kernel{c: c, name: name, fn: fn}
	return c.scale[i], nil
}

// scaleLocked runs a K == 0 product: D = Beta*C.
func (c *Context) scaleLocked(g *Gemm) error {
	out, ldo, so := g.D, g.Ldd, g.StrideD
	if out == 0 {
		out, ldo, so = g.C, g.Ldc, g.StrideC
	}
	batch := max(g.Batch, 1)
	if g.Beta == 1 && out == g.C && ldo == g.Ldc && (batch == 1 || so == g.StrideC) {
		return nil
	}
	if batch > 65535 {
		return fmt.Errorf("%w: %s: K == 0 with more than 65535 batches", ErrLaunch, gemmString(g))
	}
	k, err := c.scaleKernel(g.CD)
	if err != nil {
		return err
	}
	src, lds, ss := g.C, g.Ldc, g.StrideC
	if g.Beta == 0 { // C is not read
		src, lds, ss = out, ldo, so
	}
	n := int64(g.M) * int64(g.N)
	blocks := min((n+255)/256, 4096)
	args := [...]uint64{uint64(out), uint64(ldo), uint64(so), uint64(src), uint64(lds), uint64(ss),
		Int(g.M), Int(g.N), Float(g.Beta)}
	return c.launchLocked(k, Dim3{X: int(blocks), Y: batch, Z: 1}, D1(256), 0, args[:])
}

// Sync waits for all work and reports the first asynchronous error.
func (c *Context) Sync() error {
	if err := c.lock(); err != nil {
		return err
	}
	defer c.unlock()
	return c.drv.ctxSynchronize()
}

// NewEvent creates a timing event (destroyed by Close).
func (c *Context) NewEvent() (Event, error) {
	if err := c.lock(); err != nil {
		return nil, err
	}
	defer c.unlock()
	h, err := c.drv.eventCreate(cuEventDefault)
	if err != nil {
		return nil, err
	}
	c.events = append(c.events, h)
	return &event{c: c, h: h}, nil
}

func (c *Context) ownEvent(e Event) (*event, error) {
	ev, ok := e.(*event)
	if !ok || ev == nil || ev.c != c {
		return nil, fmt.Errorf("%w: an event (%T) not made by this Context", ErrLaunch, e)
	}
	return ev, nil
}

// Record places e in the stream.
func (c *Context) Record(e Event) error {
	ev, err := c.ownEvent(e)
	if err != nil {
		return err
	}
	if err := c.lock(); err != nil {
		return err
	}
	defer c.unlock()
	return c.drv.eventRecord(ev.h, cuStreamNull)
}

// Elapsed waits for b and returns the time from a to b (both recorded).
func (c *Context) Elapsed(a, b Event) (time.Duration, error) {
	ea, err := c.ownEvent(a)
	if err != nil {
		return 0, err
	}
	eb, err := c.ownEvent(b)
	if err != nil {
		return 0, err
	}
	if err := c.lock(); err != nil {
		return 0, err
	}
	defer c.unlock()
	if err := c.drv.eventSynchronize(eb.h); err != nil {
		return 0, err
	}
	ms, err := c.drv.eventElapsed(ea.h, eb.h)
	if err != nil {
		return 0, err
	}
	return time.Duration(float64(ms) * float64(time.Millisecond)), nil
}

// Close waits for the device, then releases the handles, the workspace,
// the staging memory, the events, the modules and the primary context.
// A second Close does nothing.
func (c *Context) Close() error {
	// first the NCCL communicators still open, aborted (their work may
	// wait for a peer that will not come), each as its own Abort does it
	// (its lock, then the Context's)
	c.mu.Lock()
	comms := make([]*NCCL, 0, len(c.nccls))
	for n := range c.nccls {
		comms = append(comms, n)
	}
	c.mu.Unlock()
	var errs []error
	for _, n := range comms {
		errs = append(errs, n.Abort())
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errors.Join(errs...)
	}
	c.closed = true
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return errors.Join(append(errs, c.release())...)
}

// release frees everything c holds, reporting every failure.
func (c *Context) release() error {
	d := c.drv
	if c.ctx == 0 {
		return nil
	}
	var errs []error
	keep := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	keep(d.ctxSetCurrent(c.ctx))
	if err := d.ctxSynchronize(); err != nil {
		// A fault is sticky: every release below would report it again.
		errs = append(errs, err)
		keep = func(error) {}
	}
	if c.lt != nil {
		for k, pl := range c.plans {
			keep(c.lt.destroyPlan(pl))
			delete(c.plans, k)
		}
		if c.ltPref != 0 {
			keep(c.lt.prefDestroy(c.ltPref))
		}
		if c.ltHandle != 0 {
			keep(c.lt.destroy(c.ltHandle))
		}
	}
	if c.blas != nil && c.blasHandle != 0 {
		keep(c.blas.destroy(c.blasHandle))
	}
	for _, p := range []DevPtr{c.workspace, c.grouped.dev} {
		if p != 0 {
			keep(d.memFree(p))
		}
	}
	for _, p := range []unsafe.Pointer{c.stage, c.params} {
		if p != nil {
			keep(d.memFreeHost(p))
		}
	}
	for _, h := range append(c.events, c.ringEvents[:]...) {
		if h != 0 {
			keep(d.eventDestroy(h))
		}
	}
	for _, m := range []uintptr{c.module, c.scaleModule} {
		if m != 0 {
			keep(d.moduleUnload(m))
		}
	}
	keep(d.primaryCtxRelease(c.dev))
	keep(d.ctxSetCurrent(0))
	c.ctx, c.params, c.stage, c.module, c.scaleModule = 0, nil, nil, 0, 0
	c.workspace, c.grouped.dev, c.ltHandle, c.ltPref, c.blasHandle = 0, 0, 0, 0, 0
	c.events, c.ringEvents = nil, [stagingRegions]uintptr{}
	return errors.Join(errs...)
}

// ring hands out staging space for CopyHtoD. Its regions are used in
// turn; leaving a region records its event, and a region is reused only
// after that event has completed, i.e. after the device has read the
// copies staged in it before.
type ring struct {
	regionBytes int64
	regions     int
	cur         int
	off         int64
	pending     []bool // region left with copies not yet known done
}

// ringSync records and waits for a region's event.
type ringSync interface {
	leave(region int) error
	enter(region int) error
}

func newRing(regionBytes int64, regions int) ring {
	return ring{regionBytes: regionBytes, regions: regions, pending: make([]bool, regions)}
}

// take returns the offset in the ring of n bytes (n <= regionBytes) that
// no copy in flight reads.
func (r *ring) take(n int64, s ringSync) (int64, error) {
	n = (n + 63) &^ 63
	if r.off+n > r.regionBytes {
		if err := s.leave(r.cur); err != nil {
			return 0, err
		}
		r.pending[r.cur] = true
		r.cur = (r.cur + 1) % r.regions
		r.off = 0
		if r.pending[r.cur] {
			if err := s.enter(r.cur); err != nil {
				return 0, err
			}
			r.pending[r.cur] = false
		}
	}
	o := int64(r.cur)*r.regionBytes + r.off
	r.off += n
	return o, nil
}

// Info is what Probe found.
type Info struct {
	// DriverVersion is the CUDA version the driver supports, e.g. 12080
	// for 12.8 (cuDriverGetVersion).
	DriverVersion int
	Devices       []DeviceInfo
	// Libraries: the CUDA driver, cuBLASLt, cuBLAS, NCCL and NVML, each
	// with its path or the error that says where it was looked for.
	Libraries []LibraryInfo
}

// DeviceInfo describes one GPU.
type DeviceInfo struct {
	Ordinal          int
	Name             string
	TotalMem         int64
	CCMajor, CCMinor int
	SMs              int
}

// LibraryInfo is one library and where it was found.
type LibraryInfo struct {
	Name    string // "the CUDA driver", "cuBLASLt", "cuBLAS", "NCCL", "NVML"
	Path    string // "" when not found
	Version int    // cuBLASLt: cublasLtGetVersion(), e.g. 120604; else 0
	Note    string // e.g. whether cublasGemmGroupedBatchedEx is present
	Err     string // why it was not found
}

func libInfo(name string, l *library, err error) LibraryInfo {
	if err != nil {
		return LibraryInfo{Name: name, Err: err.Error()}
	}
	return LibraryInfo{Name: name, Path: l.path}
}

// Probe loads the libraries and lists the devices, for diagnostics. It
// fails only when the driver is missing or does not initialise; a missing
// BLAS, NCCL or NVML library is reported in Info.Libraries.
func Probe() (Info, error) {
	var info Info
	d, err := loadDriver()
	if err != nil {
		info.Libraries = append(info.Libraries, libInfo(roleDriver.name, nil, err))
		return info, err
	}
	info.Libraries = append(info.Libraries, libInfo(roleDriver.name, d.lib, nil))
	if err := d.init(); err != nil {
		return info, err
	}
	if info.DriverVersion, err = d.driverVersion(); err != nil {
		return info, err
	}
	n, err := d.deviceCount()
	if err != nil {
		return info, err
	}
	for i := 0; i < n; i++ {
		di := DeviceInfo{Ordinal: i}
		dev, err := d.device(i)
		if err != nil {
			return info, err
		}
		if di.Name, err = d.deviceName(dev); err != nil {
			return info, err
		}
		if di.TotalMem, err = d.totalMem(dev); err != nil {
			return info, err
		}
		if di.CCMajor, err = d.attribute(dev, cuDeviceAttributeComputeCapMajor); err != nil {
			return info, err
		}
		if di.CCMinor, err = d.attribute(dev, cuDeviceAttributeComputeCapMinor); err != nil {
			return info, err
		}
		if di.SMs, err = d.attribute(dev, cuDeviceAttributeMultiprocessorCount); err != nil {
			return info, err
		}
		info.Devices = append(info.Devices, di)
	}
	lt, err := loadLt()
	if err != nil {
		info.Libraries = append(info.Libraries, libInfo(roleLt.name, nil, err))
	} else {
		li := libInfo(roleLt.name, lt.lib, nil)
		li.Version = lt.version()
		info.Libraries = append(info.Libraries, li)
		b, err := loadBLAS(lt.lib)
		if err != nil {
			info.Libraries = append(info.Libraries, libInfo(roleBLAS.name, nil, err))
		} else {
			li := libInfo(roleBLAS.name, b.lib, nil)
			li.Note = "cublasGemmGroupedBatchedEx present"
			if b.cublasGemmGroupedBatchedEx == 0 {
				li.Note = "cublasGemmGroupedBatchedEx missing (cuBLAS < 12.5): GemmGrouped loops over Gemm"
			}
			info.Libraries = append(info.Libraries, li)
		}
	}
	nc, err := findNCCL()
	li := libInfo(roleNCCL.name, nc, err)
	if err == nil {
		if v, err := NCCLVersion(); err != nil {
			li.Note = "unusable: " + err.Error()
		} else {
			li.Note = "NCCL " + v
		}
	}
	info.Libraries = append(info.Libraries, li)
	nv, err := find(roleNVML, planSearch(hostSearchEnv()))
	info.Libraries = append(info.Libraries, libInfo(roleNVML.name, nv, err))
	return info, nil
}

// String is a multi-line report.
func (i Info) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "CUDA driver API %d.%d, %d device(s)\n", i.DriverVersion/1000, i.DriverVersion%1000/10, len(i.Devices))
	for _, d := range i.Devices {
		fmt.Fprintf(&b, "  device %d: %s, %.1f GiB, compute capability %d.%d, %d SMs\n",
			d.Ordinal, d.Name, float64(d.TotalMem)/(1<<30), d.CCMajor, d.CCMinor, d.SMs)
	}
	for _, l := range i.Libraries {
		switch {
		case l.Err != "":
			fmt.Fprintf(&b, "  %s: %s\n", l.Name, l.Err)
		default:
			fmt.Fprintf(&b, "  %s: %s", l.Name, l.Path)
			if l.Version != 0 {
				fmt.Fprintf(&b, " (version %d)", l.Version)
			}
			if l.Note != "" {
				fmt.Fprintf(&b, " (%s)", l.Note)
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}
