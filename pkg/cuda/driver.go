package cuda

import (
	"fmt"
	"unsafe"

	"github.com/ebitengine/purego"
)

// Bindings of the CUDA driver API (libcuda.so.1). Signatures and values
// are from cuda.h of CUDA 12.6 (CUDA_VERSION 12060). cuda.h maps the
// plain names to versioned symbols with #define (cuMemAlloc ->
// cuMemAlloc_v2, ...); the symbols bound here are the ones those macros
// name without CUDA_API_PER_THREAD_DEFAULT_STREAM, so stream 0 is the
// legacy NULL stream.
//
// C types on linux/amd64: CUresult and the enums are 32-bit ints;
// CUdevice is int; CUdeviceptr is unsigned long long; CUcontext, CUmodule,
// CUfunction, CUevent and CUstream are pointers; size_t is 64-bit.

// Values from cuda.h.
const (
	cuDeviceAttributeMultiprocessorCount    = 16 // CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT
	cuDeviceAttributeComputeCapMajor        = 75 // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
	cuDeviceAttributeComputeCapMinor        = 76 // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR
	cuDeviceAttributeMaxSharedPerBlockOptin = 97 // CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN

	cuFuncAttributeMaxDynamicSharedSizeBytes = 8 // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES

	cuJitInfoLogBuffer           = 3 // CU_JIT_INFO_LOG_BUFFER (char *)
	cuJitInfoLogBufferSizeBytes  = 4 // CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES (unsigned int, in and out)
	cuJitErrorLogBuffer          = 5 // CU_JIT_ERROR_LOG_BUFFER (char *)
	cuJitErrorLogBufferSizeBytes = 6 // CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES (unsigned int, in and out)

	cuEventDefault       = 0x0 // CU_EVENT_DEFAULT
	cuEventDisableTiming = 0x2 // CU_EVENT_DISABLE_TIMING

	cuStreamNull = 0 // the legacy NULL stream ((CUstream)0)
)

// driverAPI holds the driver's function addresses.
type driverAPI struct {
	lib *library

	cuInit                    uintptr
	cuDriverGetVersion        uintptr
	cuDeviceGetCount          uintptr
	cuDeviceGet               uintptr
	cuDeviceGetName           uintptr
	cuDeviceGetAttribute      uintptr
	cuDeviceTotalMem          uintptr
	cuDeviceGetUuid           uintptr
	cuDevicePrimaryCtxRetain  uintptr
	cuDevicePrimaryCtxRelease uintptr
	cuCtxSetCurrent           uintptr
	cuCtxSynchronize          uintptr
	cuMemGetInfo              uintptr
	cuMemAlloc                uintptr
	cuMemFree                 uintptr
	cuMemAllocHost            uintptr
	cuMemFreeHost             uintptr
	cuMemcpyHtoD              uintptr
	cuMemcpyDtoH              uintptr
	cuMemcpyDtoD              uintptr
	cuMemcpyHtoDAsync         uintptr
	cuMemcpyDtoDAsync         uintptr
	cuMemsetD8Async           uintptr
	cuMemsetD32Async          uintptr
	cuModuleLoadDataEx        uintptr
	cuModuleGetFunction       uintptr
	cuModuleUnload            uintptr
	cuFuncSetAttribute        uintptr
	cuLaunchKernel            uintptr
	cuEventCreate             uintptr
	cuEventRecord             uintptr
	cuEventSynchronize        uintptr
	cuEventQuery              uintptr
	cuEventElapsedTime        uintptr
	cuEventDestroy            uintptr
	cuStreamSynchronize       uintptr
	cuGetErrorName            uintptr
	cuGetErrorString          uintptr
}

func bindDriver(l *library) (*driverAPI, error) {
	d := &driverAPI{lib: l}
	err := l.bind([]symbol{
		// CUresult cuInit(unsigned int Flags);
		{addr: &d.cuInit, name: "cuInit"},
		// CUresult cuDriverGetVersion(int *driverVersion);
		{addr: &d.cuDriverGetVersion, name: "cuDriverGetVersion"},
		// CUresult cuDeviceGetCount(int *count);
		{addr: &d.cuDeviceGetCount, name: "cuDeviceGetCount"},
		// CUresult cuDeviceGet(CUdevice *device, int ordinal);
		{addr: &d.cuDeviceGet, name: "cuDeviceGet"},
		// CUresult cuDeviceGetName(char *name, int len, CUdevice dev);
		{addr: &d.cuDeviceGetName, name: "cuDeviceGetName"},
		// CUresult cuDeviceGetAttribute(int *pi, CUdevice_attribute attrib, CUdevice dev);
		{addr: &d.cuDeviceGetAttribute, name: "cuDeviceGetAttribute"},
		// CUresult cuDeviceTotalMem(size_t *bytes, CUdevice dev);  (#define cuDeviceTotalMem cuDeviceTotalMem_v2)
		{addr: &d.cuDeviceTotalMem, name: "cuDeviceTotalMem_v2"},
		// CUresult cuDeviceGetUuid(CUuuid *uuid, CUdevice dev);  (CUuuid: 16 bytes)
		{addr: &d.cuDeviceGetUuid, name: "cuDeviceGetUuid"},
		// CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev);
		{addr: &d.cuDevicePrimaryCtxRetain, name: "cuDevicePrimaryCtxRetain"},
		// CUresult cuDevicePrimaryCtxRelease(CUdevice dev);  (#define ... cuDevicePrimaryCtxRelease_v2)
		{addr: &d.cuDevicePrimaryCtxRelease, name: "cuDevicePrimaryCtxRelease_v2"},
		// CUresult cuCtxSetCurrent(CUcontext ctx);
		{addr: &d.cuCtxSetCurrent, name: "cuCtxSetCurrent"},
		// CUresult cuCtxSynchronize(void);
		{addr: &d.cuCtxSynchronize, name: "cuCtxSynchronize"},
		// CUresult cuMemGetInfo(size_t *free, size_t *total);  (#define ... cuMemGetInfo_v2)
		{addr: &d.cuMemGetInfo, name: "cuMemGetInfo_v2"},
		// CUresult cuMemAlloc(CUdeviceptr *dptr, size_t bytesize);  (#define ... cuMemAlloc_v2)
		{addr: &d.cuMemAlloc, name: "cuMemAlloc_v2"},
		// CUresult cuMemFree(CUdeviceptr dptr);  (#define ... cuMemFree_v2)
		{addr: &d.cuMemFree, name: "cuMemFree_v2"},
		// CUresult cuMemAllocHost(void **pp, size_t bytesize);  (#define ... cuMemAllocHost_v2)
		{addr: &d.cuMemAllocHost, name: "cuMemAllocHost_v2"},
		// CUresult cuMemFreeHost(void *p);
		{addr: &d.cuMemFreeHost, name: "cuMemFreeHost"},
		// CUresult cuMemcpyHtoD(CUdeviceptr dstDevice, const void *srcHost, size_t ByteCount);  (_v2)
		{addr: &d.cuMemcpyHtoD, name: "cuMemcpyHtoD_v2"},
		// CUresult cuMemcpyDtoH(void *dstHost, CUdeviceptr srcDevice, size_t ByteCount);  (_v2)
		{addr: &d.cuMemcpyDtoH, name: "cuMemcpyDtoH_v2"},
		// CUresult cuMemcpyDtoD(CUdeviceptr dstDevice, CUdeviceptr srcDevice, size_t ByteCount);  (_v2)
		{addr: &d.cuMemcpyDtoD, name: "cuMemcpyDtoD_v2"},
		// CUresult cuMemcpyHtoDAsync(CUdeviceptr dstDevice, const void *srcHost, size_t ByteCount, CUstream hStream);  (_v2)
		{addr: &d.cuMemcpyHtoDAsync, name: "cuMemcpyHtoDAsync_v2"},
		// CUresult cuMemcpyDtoDAsync(CUdeviceptr dstDevice, CUdeviceptr srcDevice, size_t ByteCount, CUstream hStream);  (_v2)
		{addr: &d.cuMemcpyDtoDAsync, name: "cuMemcpyDtoDAsync_v2"},
		// CUresult cuMemsetD8Async(CUdeviceptr dstDevice, unsigned char uc, size_t N, CUstream hStream);
		{addr: &d.cuMemsetD8Async, name: "cuMemsetD8Async"},
		// CUresult cuMemsetD32Async(CUdeviceptr dstDevice, unsigned int ui, size_t N, CUstream hStream);
		{addr: &d.cuMemsetD32Async, name: "cuMemsetD32Async"},
		// CUresult cuModuleLoadDataEx(CUmodule *module, const void *image, unsigned int numOptions,
		//                             CUjit_option *options, void **optionValues);
		{addr: &d.cuModuleLoadDataEx, name: "cuModuleLoadDataEx"},
		// CUresult cuModuleGetFunction(CUfunction *hfunc, CUmodule hmod, const char *name);
		{addr: &d.cuModuleGetFunction, name: "cuModuleGetFunction"},
		// CUresult cuModuleUnload(CUmodule hmod);
		{addr: &d.cuModuleUnload, name: "cuModuleUnload"},
		// CUresult cuFuncSetAttribute(CUfunction hfunc, CUfunction_attribute attrib, int value);
		{addr: &d.cuFuncSetAttribute, name: "cuFuncSetAttribute"},
		// CUresult cuLaunchKernel(CUfunction f, unsigned int gridDimX, unsigned int gridDimY,
		//                         unsigned int gridDimZ, unsigned int blockDimX, unsigned int blockDimY,
		//                         unsigned int blockDimZ, unsigned int sharedMemBytes, CUstream hStream,
		//                         void **kernelParams, void **extra);
		{addr: &d.cuLaunchKernel, name: "cuLaunchKernel"},
		// CUresult cuEventCreate(CUevent *phEvent, unsigned int Flags);
		{addr: &d.cuEventCreate, name: "cuEventCreate"},
		// CUresult cuEventRecord(CUevent hEvent, CUstream hStream);
		{addr: &d.cuEventRecord, name: "cuEventRecord"},
		// CUresult cuEventSynchronize(CUevent hEvent);
		{addr: &d.cuEventSynchronize, name: "cuEventSynchronize"},
		// CUresult cuEventQuery(CUevent hEvent);  (CUDA_SUCCESS: done; CUDA_ERROR_NOT_READY: not yet)
		{addr: &d.cuEventQuery, name: "cuEventQuery"},
		// CUresult cuEventElapsedTime(float *pMilliseconds, CUevent hStart, CUevent hEnd);
		{addr: &d.cuEventElapsedTime, name: "cuEventElapsedTime"},
		// CUresult cuEventDestroy(CUevent hEvent);  (#define ... cuEventDestroy_v2)
		{addr: &d.cuEventDestroy, name: "cuEventDestroy_v2"},
		// CUresult cuStreamSynchronize(CUstream hStream);
		{addr: &d.cuStreamSynchronize, name: "cuStreamSynchronize"},
		// CUresult cuGetErrorName(CUresult error, const char **pStr);
		{addr: &d.cuGetErrorName, name: "cuGetErrorName"},
		// CUresult cuGetErrorString(CUresult error, const char **pStr);
		{addr: &d.cuGetErrorString, name: "cuGetErrorString"},
	})
	if err != nil {
		return nil, err
	}
	return d, nil
}

// ccall calls the C function fn. A pointer converted to uintptr in the
// argument list of a ccall stays where it is until the call returns
// (//go:uintptrescapes moves its object to the heap, which does not
// move), so out-parameters may be Go variables; memory the C side keeps
// or reads through a second pointer is never Go memory.
//
//go:uintptrescapes
func ccall(fn uintptr, args ...uintptr) uintptr {
	r, _, _ := purego.SyscallN(fn, args...)
	return r
}

// check turns a CUresult into an error. CUresult is a 32-bit enum: the
// upper half of the register is not defined.
func (d *driverAPI) check(call, detail string, r uintptr) error {
	code := cuResult(int32(r))
	if code == 0 {
		return nil
	}
	e := &CallError{Call: call, Detail: detail, Code: int(code), Name: code.String(), kind: resultKind(call, code)}
	var s unsafe.Pointer
	if cuResult(int32(ccall(d.cuGetErrorString, uintptr(code), uintptr(unsafe.Pointer(&s))))) == 0 {
		e.Text = cString(s)
	}
	if _, known := cuResultNames[code]; !known {
		var n unsafe.Pointer
		if cuResult(int32(ccall(d.cuGetErrorName, uintptr(code), uintptr(unsafe.Pointer(&n))))) == 0 && n != nil {
			e.Name = cString(n)
		}
	}
	return e
}

func (d *driverAPI) init() error {
	return d.check("cuInit", "", ccall(d.cuInit, 0))
}

func (d *driverAPI) driverVersion() (int, error) {
	var v int32
	err := d.check("cuDriverGetVersion", "", ccall(d.cuDriverGetVersion, uintptr(unsafe.Pointer(&v))))
	return int(v), err
}

func (d *driverAPI) deviceCount() (int, error) {
	var n int32
	err := d.check("cuDeviceGetCount", "", ccall(d.cuDeviceGetCount, uintptr(unsafe.Pointer(&n))))
	return int(n), err
}

func (d *driverAPI) device(ordinal int) (int32, error) {
	var dev int32
	err := d.check("cuDeviceGet", "", ccall(d.cuDeviceGet, uintptr(unsafe.Pointer(&dev)), uintptr(uint32(int32(ordinal)))))
	return dev, err
}

func (d *driverAPI) deviceName(dev int32) (string, error) {
	var buf [256]byte
	if err := d.check("cuDeviceGetName", "", ccall(d.cuDeviceGetName, uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)-1), uintptr(uint32(dev)))); err != nil {
		return "", err
	}
	return cString(unsafe.Pointer(&buf[0])), nil
}

func (d *driverAPI) attribute(dev int32, attr int) (int, error) {
	var v int32
	err := d.check("cuDeviceGetAttribute", "", ccall(d.cuDeviceGetAttribute, uintptr(unsafe.Pointer(&v)), uintptr(attr), uintptr(uint32(dev))))
	return int(v), err
}

func (d *driverAPI) totalMem(dev int32) (int64, error) {
	var n uint64
	err := d.check("cuDeviceTotalMem_v2", "", ccall(d.cuDeviceTotalMem, uintptr(unsafe.Pointer(&n)), uintptr(uint32(dev))))
	return int64(n), err
}

func (d *driverAPI) primaryCtxRetain(dev int32) (uintptr, error) {
	var ctx uintptr
	err := d.check("cuDevicePrimaryCtxRetain", "", ccall(d.cuDevicePrimaryCtxRetain, uintptr(unsafe.Pointer(&ctx)), uintptr(uint32(dev))))
	return ctx, err
}

func (d *driverAPI) primaryCtxRelease(dev int32) error {
	return d.check("cuDevicePrimaryCtxRelease_v2", "", ccall(d.cuDevicePrimaryCtxRelease, uintptr(uint32(dev))))
}

func (d *driverAPI) ctxSetCurrent(ctx uintptr) error {
	return d.check("cuCtxSetCurrent", "", ccall(d.cuCtxSetCurrent, ctx))
}

func (d *driverAPI) ctxSynchronize() error {
	return d.check("cuCtxSynchronize", "", ccall(d.cuCtxSynchronize))
}

func (d *driverAPI) memGetInfo() (free, total int64, err error) {
	var f, t uint64
	err = d.check("cuMemGetInfo_v2", "", ccall(d.cuMemGetInfo, uintptr(unsafe.Pointer(&f)), uintptr(unsafe.Pointer(&t))))
	return int64(f), int64(t), err
}

func (d *driverAPI) memAlloc(bytes int64) (DevPtr, error) {
	var p uint64
	if r := ccall(d.cuMemAlloc, uintptr(unsafe.Pointer(&p)), uintptr(bytes)); cuResult(int32(r)) != 0 {
		return 0, d.check("cuMemAlloc_v2", itoa(bytes)+" bytes", r)
	}
	return DevPtr(p), nil
}

func (d *driverAPI) memFree(p DevPtr) error {
	return d.check("cuMemFree_v2", "", ccall(d.cuMemFree, uintptr(p)))
}

// memAllocHost returns page-locked host memory (outside the Go heap).
func (d *driverAPI) memAllocHost(bytes int64) (unsafe.Pointer, error) {
	var p unsafe.Pointer
	if r := ccall(d.cuMemAllocHost, uintptr(unsafe.Pointer(&p)), uintptr(bytes)); cuResult(int32(r)) != 0 {
		return nil, d.check("cuMemAllocHost_v2", itoa(bytes)+" bytes", r)
	}
	return p, nil
}

func (d *driverAPI) memFreeHost(p unsafe.Pointer) error {
	return d.check("cuMemFreeHost", "", ccall(d.cuMemFreeHost, uintptr(p)))
}

func (d *driverAPI) memcpyHtoD(dst DevPtr, src unsafe.Pointer, bytes int64) error {
	return d.check("cuMemcpyHtoD_v2", "", ccall(d.cuMemcpyHtoD, uintptr(dst), uintptr(src), uintptr(bytes)))
}

func (d *driverAPI) memcpyDtoH(dst unsafe.Pointer, src DevPtr, bytes int64) error {
	return d.check("cuMemcpyDtoH_v2", "", ccall(d.cuMemcpyDtoH, uintptr(dst), uintptr(src), uintptr(bytes)))
}

func (d *driverAPI) memcpyHtoDAsync(dst DevPtr, src unsafe.Pointer, bytes int64, stream uintptr) error {
	return d.check("cuMemcpyHtoDAsync_v2", "", ccall(d.cuMemcpyHtoDAsync, uintptr(dst), uintptr(src), uintptr(bytes), stream))
}

func (d *driverAPI) memcpyDtoDAsync(dst, src DevPtr, bytes int64, stream uintptr) error {
	return d.check("cuMemcpyDtoDAsync_v2", "", ccall(d.cuMemcpyDtoDAsync, uintptr(dst), uintptr(src), uintptr(bytes), stream))
}

func (d *driverAPI) memsetD8Async(p DevPtr, v byte, n int64, stream uintptr) error {
	return d.check("cuMemsetD8Async", "", ccall(d.cuMemsetD8Async, uintptr(p), uintptr(v), uintptr(n), stream))
}

func (d *driverAPI) memsetD32Async(p DevPtr, v uint32, n int64, stream uintptr) error {
	return d.check("cuMemsetD32Async", "", ccall(d.cuMemsetD32Async, uintptr(p), uintptr(v), uintptr(n), stream))
}

// jitLogBytes is the size of each JIT log buffer.
const jitLogBytes = 64 << 10

// moduleLoad JIT-compiles a NUL-terminated PTX image. The options and
// their values live in page-locked memory (optionValues holds pointers to
// the log buffers, so it may not be Go memory); a compile error is
// returned with the JIT's error log.
func (d *driverAPI) moduleLoad(image []byte) (uintptr, error) {
	// Layout of the scratch: options (4 x int32) at 0, optionValues
	// (4 x void*) at 64, the error log at 128, the info log after it.
	const optOff, valOff, errOff, infoOff = 0, 64, 128, 128 + jitLogBytes
	scratch, err := d.memAllocHost(infoOff + jitLogBytes)
	if err != nil {
		return 0, err
	}
	defer d.memFreeHost(scratch)
	opts := unsafe.Slice((*int32)(unsafe.Add(scratch, optOff)), 4)
	vals := unsafe.Slice((*uintptr)(unsafe.Add(scratch, valOff)), 4)
	opts[0], vals[0] = cuJitErrorLogBuffer, uintptr(unsafe.Add(scratch, errOff))
	opts[1], vals[1] = cuJitErrorLogBufferSizeBytes, jitLogBytes
	opts[2], vals[2] = cuJitInfoLogBuffer, uintptr(unsafe.Add(scratch, infoOff))
	opts[3], vals[3] = cuJitInfoLogBufferSizeBytes, jitLogBytes
	*(*byte)(unsafe.Add(scratch, errOff)) = 0
	*(*byte)(unsafe.Add(scratch, infoOff)) = 0

	var mod uintptr
	r := ccall(d.cuModuleLoadDataEx, uintptr(unsafe.Pointer(&mod)), uintptr(unsafe.Pointer(&image[0])), 4,
		uintptr(unsafe.Add(scratch, optOff)), uintptr(unsafe.Add(scratch, valOff)))
	if err := d.check("cuModuleLoadDataEx", itoa(int64(len(image)-1))+" bytes of PTX", r); err != nil {
		if ce, ok := err.(*CallError); ok {
			ce.Log = cString(unsafe.Add(scratch, errOff))
		}
		return 0, err
	}
	return mod, nil
}

func (d *driverAPI) moduleGetFunction(mod uintptr, name string) (uintptr, error) {
	cname := append([]byte(name), 0)
	var fn uintptr
	err := d.check("cuModuleGetFunction", name, ccall(d.cuModuleGetFunction, uintptr(unsafe.Pointer(&fn)), mod, uintptr(unsafe.Pointer(&cname[0]))))
	return fn, err
}

func (d *driverAPI) moduleUnload(mod uintptr) error {
	return d.check("cuModuleUnload", "", ccall(d.cuModuleUnload, mod))
}

func (d *driverAPI) funcSetAttribute(fn uintptr, attr, value int, detail string) error {
	return d.check("cuFuncSetAttribute", detail, ccall(d.cuFuncSetAttribute, fn, uintptr(attr), uintptr(uint32(int32(value)))))
}

// launchKernel launches fn; params is a void** array in memory outside the
// Go heap.
func (d *driverAPI) launchKernel(fn uintptr, grid, block Dim3, shared int, stream uintptr, params unsafe.Pointer, name string) error {
	r := ccall(d.cuLaunchKernel, fn,
		uintptr(uint32(grid.X)), uintptr(uint32(grid.Y)), uintptr(uint32(grid.Z)),
		uintptr(uint32(block.X)), uintptr(uint32(block.Y)), uintptr(uint32(block.Z)),
		uintptr(uint32(shared)), stream, uintptr(params), 0)
	if cuResult(int32(r)) == 0 {
		return nil
	}
	return d.check("cuLaunchKernel", fmt.Sprintf("%s, grid %dx%dx%d, block %dx%dx%d, %d bytes of dynamic shared memory",
		name, grid.X, grid.Y, grid.Z, block.X, block.Y, block.Z, shared), r)
}

func (d *driverAPI) eventCreate(flags uint32) (uintptr, error) {
	var ev uintptr
	err := d.check("cuEventCreate", "", ccall(d.cuEventCreate, uintptr(unsafe.Pointer(&ev)), uintptr(flags)))
	return ev, err
}

func (d *driverAPI) eventRecord(ev, stream uintptr) error {
	return d.check("cuEventRecord", "", ccall(d.cuEventRecord, ev, stream))
}

func (d *driverAPI) eventSynchronize(ev uintptr) error {
	return d.check("cuEventSynchronize", "", ccall(d.cuEventSynchronize, ev))
}

// uuid is the device's UUID as nvidia-smi prints it (GPU-8-4-4-4-12 hex).
func (d *driverAPI) uuid(dev int32) (string, error) {
	var u [16]byte
	if err := d.check("cuDeviceGetUuid", "", ccall(d.cuDeviceGetUuid, uintptr(unsafe.Pointer(&u[0])), uintptr(dev))); err != nil {
		return "", err
	}
	return fmt.Sprintf("GPU-%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16]), nil
}

// eventQuery reports whether the work before ev's record has finished.
func (d *driverAPI) eventQuery(ev uintptr) (bool, error) {
	r := ccall(d.cuEventQuery, ev)
	if cuResult(int32(r)) == cuErrorNotReady {
		return false, nil
	}
	return true, d.check("cuEventQuery", "", r)
}

func (d *driverAPI) eventElapsed(a, b uintptr) (float32, error) {
	var ms float32
	err := d.check("cuEventElapsedTime", "", ccall(d.cuEventElapsedTime, uintptr(unsafe.Pointer(&ms)), a, b))
	return ms, err
}

func (d *driverAPI) eventDestroy(ev uintptr) error {
	return d.check("cuEventDestroy_v2", "", ccall(d.cuEventDestroy, ev))
}

func (d *driverAPI) streamSynchronize(stream uintptr) error {
	return d.check("cuStreamSynchronize", "", ccall(d.cuStreamSynchronize, stream))
}
