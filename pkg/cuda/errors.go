package cuda

import (
	"fmt"
	"strconv"
	"unsafe"
)

// CallError is a call into the CUDA driver, cuBLASLt or cuBLAS that
// returned an error code. It wraps ErrOutOfMemory, ErrLaunch or
// ErrNoDevice where one of them applies (see resultKind, statusKind).
type CallError struct {
	Call   string // the C function, e.g. "cuLaunchKernel"
	Detail string // what the call was doing (a shape, a size); may be empty
	Code   int    // the CUresult or cublasStatus_t
	Name   string // e.g. "CUDA_ERROR_ILLEGAL_ADDRESS"
	Text   string // the library's description of the code; may be empty
	Log    string // the JIT error log of cuModuleLoadDataEx; may be empty
	kind   error
}

func (e *CallError) Error() string {
	s := "cuda: " + e.Call
	if e.Detail != "" {
		s += " (" + e.Detail + ")"
	}
	s += ": " + e.Name
	if e.Text != "" {
		s += ": " + e.Text
	}
	if e.Log != "" {
		s += "\nJIT log:\n" + e.Log
	}
	return s
}

// Unwrap returns the sentinel the code maps to (nil when none applies).
func (e *CallError) Unwrap() error { return e.kind }

// cuResult is a CUresult (cuda.h, enum cudaError_enum).
type cuResult int32

// cuErrorNotReady is CUDA_ERROR_NOT_READY: an asynchronous operation
// (cuEventQuery's event) has not completed; not an error.
const cuErrorNotReady cuResult = 600

// The CUresult values of cuda.h (CUDA 12.6, CUDA_VERSION 12060), by value.
var cuResultNames = map[cuResult]string{
	0:   "CUDA_SUCCESS",
	1:   "CUDA_ERROR_INVALID_VALUE",
	2:   "CUDA_ERROR_OUT_OF_MEMORY",
	3:   "CUDA_ERROR_NOT_INITIALIZED",
	4:   "CUDA_ERROR_DEINITIALIZED",
	5:   "CUDA_ERROR_PROFILER_DISABLED",
	6:   "CUDA_ERROR_PROFILER_NOT_INITIALIZED",
	7:   "CUDA_ERROR_PROFILER_ALREADY_STARTED",
	8:   "CUDA_ERROR_PROFILER_ALREADY_STOPPED",
	34:  "CUDA_ERROR_STUB_LIBRARY",
	46:  "CUDA_ERROR_DEVICE_UNAVAILABLE",
	100: "CUDA_ERROR_NO_DEVICE",
	101: "CUDA_ERROR_INVALID_DEVICE",
	102: "CUDA_ERROR_DEVICE_NOT_LICENSED",
	200: "CUDA_ERROR_INVALID_IMAGE",
	201: "CUDA_ERROR_INVALID_CONTEXT",
	202: "CUDA_ERROR_CONTEXT_ALREADY_CURRENT",
	205: "CUDA_ERROR_MAP_FAILED",
	206: "CUDA_ERROR_UNMAP_FAILED",
	207: "CUDA_ERROR_ARRAY_IS_MAPPED",
	208: "CUDA_ERROR_ALREADY_MAPPED",
	209: "CUDA_ERROR_NO_BINARY_FOR_GPU",
	210: "CUDA_ERROR_ALREADY_ACQUIRED",
	211: "CUDA_ERROR_NOT_MAPPED",
	212: "CUDA_ERROR_NOT_MAPPED_AS_ARRAY",
	213: "CUDA_ERROR_NOT_MAPPED_AS_POINTER",
	214: "CUDA_ERROR_ECC_UNCORRECTABLE",
	215: "CUDA_ERROR_UNSUPPORTED_LIMIT",
	216: "CUDA_ERROR_CONTEXT_ALREADY_IN_USE",
	217: "CUDA_ERROR_PEER_ACCESS_UNSUPPORTED",
	218: "CUDA_ERROR_INVALID_PTX",
	219: "CUDA_ERROR_INVALID_GRAPHICS_CONTEXT",
	220: "CUDA_ERROR_NVLINK_UNCORRECTABLE",
	221: "CUDA_ERROR_JIT_COMPILER_NOT_FOUND",
	222: "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
	223: "CUDA_ERROR_JIT_COMPILATION_DISABLED",
	224: "CUDA_ERROR_UNSUPPORTED_EXEC_AFFINITY",
	225: "CUDA_ERROR_UNSUPPORTED_DEVSIDE_SYNC",
	300: "CUDA_ERROR_INVALID_SOURCE",
	301: "CUDA_ERROR_FILE_NOT_FOUND",
	302: "CUDA_ERROR_SHARED_OBJECT_SYMBOL_NOT_FOUND",
	303: "CUDA_ERROR_SHARED_OBJECT_INIT_FAILED",
	304: "CUDA_ERROR_OPERATING_SYSTEM",
	400: "CUDA_ERROR_INVALID_HANDLE",
	401: "CUDA_ERROR_ILLEGAL_STATE",
	402: "CUDA_ERROR_LOSSY_QUERY",
	500: "CUDA_ERROR_NOT_FOUND",
	600: "CUDA_ERROR_NOT_READY",
	700: "CUDA_ERROR_ILLEGAL_ADDRESS",
	701: "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES",
	702: "CUDA_ERROR_LAUNCH_TIMEOUT",
	703: "CUDA_ERROR_LAUNCH_INCOMPATIBLE_TEXTURING",
	704: "CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED",
	705: "CUDA_ERROR_PEER_ACCESS_NOT_ENABLED",
	708: "CUDA_ERROR_PRIMARY_CONTEXT_ACTIVE",
	709: "CUDA_ERROR_CONTEXT_IS_DESTROYED",
	710: "CUDA_ERROR_ASSERT",
	711: "CUDA_ERROR_TOO_MANY_PEERS",
	712: "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED",
	713: "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED",
	714: "CUDA_ERROR_HARDWARE_STACK_ERROR",
	715: "CUDA_ERROR_ILLEGAL_INSTRUCTION",
	716: "CUDA_ERROR_MISALIGNED_ADDRESS",
	717: "CUDA_ERROR_INVALID_ADDRESS_SPACE",
	718: "CUDA_ERROR_INVALID_PC",
	719: "CUDA_ERROR_LAUNCH_FAILED",
	720: "CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE",
	800: "CUDA_ERROR_NOT_PERMITTED",
	801: "CUDA_ERROR_NOT_SUPPORTED",
	802: "CUDA_ERROR_SYSTEM_NOT_READY",
	803: "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH",
	804: "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE",
	805: "CUDA_ERROR_MPS_CONNECTION_FAILED",
	806: "CUDA_ERROR_MPS_RPC_FAILURE",
	807: "CUDA_ERROR_MPS_SERVER_NOT_READY",
	808: "CUDA_ERROR_MPS_MAX_CLIENTS_REACHED",
	809: "CUDA_ERROR_MPS_MAX_CONNECTIONS_REACHED",
	810: "CUDA_ERROR_MPS_CLIENT_TERMINATED",
	811: "CUDA_ERROR_CDP_NOT_SUPPORTED",
	812: "CUDA_ERROR_CDP_VERSION_MISMATCH",
	900: "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED",
	901: "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED",
	902: "CUDA_ERROR_STREAM_CAPTURE_MERGE",
	903: "CUDA_ERROR_STREAM_CAPTURE_UNMATCHED",
	904: "CUDA_ERROR_STREAM_CAPTURE_UNJOINED",
	905: "CUDA_ERROR_STREAM_CAPTURE_ISOLATION",
	906: "CUDA_ERROR_STREAM_CAPTURE_IMPLICIT",
	907: "CUDA_ERROR_CAPTURED_EVENT",
	908: "CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD",
	909: "CUDA_ERROR_TIMEOUT",
	910: "CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE",
	911: "CUDA_ERROR_EXTERNAL_DEVICE",
	912: "CUDA_ERROR_INVALID_CLUSTER_SIZE",
	913: "CUDA_ERROR_FUNCTION_NOT_LOADED",
	914: "CUDA_ERROR_INVALID_RESOURCE_TYPE",
	915: "CUDA_ERROR_INVALID_RESOURCE_CONFIGURATION",
	999: "CUDA_ERROR_UNKNOWN",
}

func (r cuResult) String() string {
	if s, ok := cuResultNames[r]; ok {
		return s
	}
	return "CUresult(" + strconv.Itoa(int(r)) + ")"
}

// launchCalls are the driver calls whose every failure is a refused launch
// (cuModuleGetFunction: the kernel is not in the module).
var launchCalls = map[string]bool{"cuLaunchKernel": true, "cuFuncSetAttribute": true, "cuModuleGetFunction": true}

// resultKind is the one table from CUresult to the package's sentinels.
func resultKind(call string, r cuResult) error {
	switch {
	case r == 2: // CUDA_ERROR_OUT_OF_MEMORY
		return ErrOutOfMemory
	case r == 3, r == 34, r == 46, r == 100, r == 101, r == 102, r == 802, r == 803, r == 804:
		// not initialised, stub library, device unavailable, no device,
		// invalid device, not licensed, system not ready, driver
		// mismatch, compat not supported.
		return ErrNoDevice
	case r >= 700 && r <= 720:
		// A kernel faulted or could not run (illegal address, out of
		// resources, timeout, assert, launch failed, ...). These are
		// sticky: every later call of the context reports them.
		return ErrLaunch
	case launchCalls[call]:
		return ErrLaunch
	}
	return nil
}

// cublasStatus is a cublasStatus_t (cublas_api.h; cuBLASLt returns the same type).
type cublasStatus int32

// The cublasStatus_t values of cublas_api.h (cuBLAS 12.6), with a short
// description of each.
var cublasStatusNames = map[cublasStatus][2]string{
	0:  {"CUBLAS_STATUS_SUCCESS", "success"},
	1:  {"CUBLAS_STATUS_NOT_INITIALIZED", "the library was not initialized"},
	3:  {"CUBLAS_STATUS_ALLOC_FAILED", "resource allocation failed"},
	7:  {"CUBLAS_STATUS_INVALID_VALUE", "an unsupported value or parameter was passed"},
	8:  {"CUBLAS_STATUS_ARCH_MISMATCH", "the device does not support the operation"},
	11: {"CUBLAS_STATUS_MAPPING_ERROR", "access to GPU memory space failed"},
	13: {"CUBLAS_STATUS_EXECUTION_FAILED", "the GPU program failed to execute"},
	14: {"CUBLAS_STATUS_INTERNAL_ERROR", "an internal operation failed"},
	15: {"CUBLAS_STATUS_NOT_SUPPORTED", "the functionality requested is not supported"},
	16: {"CUBLAS_STATUS_LICENSE_ERROR", "license error"},
}

func (s cublasStatus) String() string {
	if n, ok := cublasStatusNames[s]; ok {
		return n[0]
	}
	return "cublasStatus_t(" + strconv.Itoa(int(s)) + ")"
}

func (s cublasStatus) text() string { return cublasStatusNames[s][1] }

// statusKind is the one table from cublasStatus_t to the package's sentinels.
func statusKind(s cublasStatus) error {
	switch s {
	case 3: // CUBLAS_STATUS_ALLOC_FAILED
		return ErrOutOfMemory
	case 1, 16: // NOT_INITIALIZED, LICENSE_ERROR
		return ErrLibrary
	}
	// INVALID_VALUE, NOT_SUPPORTED, ARCH_MISMATCH, EXECUTION_FAILED, ...:
	// the product was refused or failed.
	return ErrLaunch
}

// blasCheck turns a cuBLAS or cuBLASLt return value into an error. The
// status is a 32-bit enum: the upper half of the register is not defined.
func blasCheck(call, detail string, r uintptr) error {
	s := cublasStatus(int32(r))
	if s == 0 {
		return nil
	}
	return &CallError{Call: call, Detail: detail, Code: int(s), Name: s.String(), Text: s.text(), kind: statusKind(s)}
}

// errClosed is returned by the methods of a closed Context.
var errClosed = fmt.Errorf("%w: the device was closed", ErrNoDevice)

// cString copies the NUL-terminated C string at p (at most 64 KiB).
func cString(p unsafe.Pointer) string {
	if p == nil {
		return ""
	}
	n := 0
	for n < 1<<16 && *(*byte)(unsafe.Add(p, n)) != 0 {
		n++
	}
	return string(unsafe.Slice((*byte)(p), n))
}
