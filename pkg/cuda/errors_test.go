package cuda

import (
	"errors"
	"strings"
	"testing"
)

// Spot checks of the tables against cuda.h and cublas_api.h (CUDA 12.6).
func TestResultNames(t *testing.T) {
	for code, name := range map[cuResult]string{
		0:     "CUDA_SUCCESS",
		1:     "CUDA_ERROR_INVALID_VALUE",
		2:     "CUDA_ERROR_OUT_OF_MEMORY",
		3:     "CUDA_ERROR_NOT_INITIALIZED",
		34:    "CUDA_ERROR_STUB_LIBRARY",
		100:   "CUDA_ERROR_NO_DEVICE",
		200:   "CUDA_ERROR_INVALID_IMAGE",
		209:   "CUDA_ERROR_NO_BINARY_FOR_GPU",
		218:   "CUDA_ERROR_INVALID_PTX",
		222:   "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
		400:   "CUDA_ERROR_INVALID_HANDLE",
		500:   "CUDA_ERROR_NOT_FOUND",
		600:   "CUDA_ERROR_NOT_READY",
		700:   "CUDA_ERROR_ILLEGAL_ADDRESS",
		701:   "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES",
		719:   "CUDA_ERROR_LAUNCH_FAILED",
		803:   "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH",
		999:   "CUDA_ERROR_UNKNOWN",
		12345: "CUresult(12345)",
	} {
		if got := code.String(); got != name {
			t.Errorf("CUresult %d = %s, want %s", code, got, name)
		}
	}
	for code, name := range map[cublasStatus]string{
		0:  "CUBLAS_STATUS_SUCCESS",
		1:  "CUBLAS_STATUS_NOT_INITIALIZED",
		3:  "CUBLAS_STATUS_ALLOC_FAILED",
		7:  "CUBLAS_STATUS_INVALID_VALUE",
		8:  "CUBLAS_STATUS_ARCH_MISMATCH",
		11: "CUBLAS_STATUS_MAPPING_ERROR",
		13: "CUBLAS_STATUS_EXECUTION_FAILED",
		14: "CUBLAS_STATUS_INTERNAL_ERROR",
		15: "CUBLAS_STATUS_NOT_SUPPORTED",
		16: "CUBLAS_STATUS_LICENSE_ERROR",
		2:  "cublasStatus_t(2)",
	} {
		if got := code.String(); got != name {
			t.Errorf("cublasStatus_t %d = %s, want %s", code, got, name)
		}
	}
}

func TestResultKinds(t *testing.T) {
	for _, tc := range []struct {
		call string
		code cuResult
		want error
	}{
		{"cuMemAlloc_v2", 2, ErrOutOfMemory},
		{"cuInit", 100, ErrNoDevice},
		{"cuInit", 34, ErrNoDevice},
		{"cuInit", 803, ErrNoDevice},
		{"cuMemcpyDtoH_v2", 700, ErrLaunch},
		{"cuCtxSynchronize", 719, ErrLaunch},
		{"cuLaunchKernel", 1, ErrLaunch},
		{"cuFuncSetAttribute", 1, ErrLaunch},
		{"cuModuleGetFunction", 500, ErrLaunch},
		{"cuMemcpyDtoH_v2", 1, nil},
		{"cuModuleLoadDataEx", 218, nil},
	} {
		if got := resultKind(tc.call, tc.code); got != tc.want {
			t.Errorf("%s %s: kind %v, want %v", tc.call, tc.code, got, tc.want)
		}
	}
}

func TestCallErrorText(t *testing.T) {
	e := &CallError{Call: "cuLaunchKernel", Detail: "addone, grid 1x1x1", Code: 700, Name: "CUDA_ERROR_ILLEGAL_ADDRESS",
		Text: "an illegal memory access was encountered", kind: ErrLaunch}
	want := "cuda: cuLaunchKernel (addone, grid 1x1x1): CUDA_ERROR_ILLEGAL_ADDRESS: an illegal memory access was encountered"
	if e.Error() != want {
		t.Errorf("got %q\nwant %q", e.Error(), want)
	}
	if !errors.Is(e, ErrLaunch) {
		t.Error("not ErrLaunch")
	}
	e = &CallError{Call: "cuModuleLoadDataEx", Name: "CUDA_ERROR_INVALID_PTX", Log: "ptxas fatal: bad"}
	if !strings.HasSuffix(e.Error(), "CUDA_ERROR_INVALID_PTX\nJIT log:\nptxas fatal: bad") {
		t.Errorf("log missing: %q", e.Error())
	}

	err := blasCheck("cublasLtMatmul", "gemm M=1", 0xffffffff_0000000f) // garbage in the upper half
	var ce *CallError
	if !errors.As(err, &ce) || ce.Code != 15 || !errors.Is(err, ErrLaunch) ||
		err.Error() != "cuda: cublasLtMatmul (gemm M=1): CUBLAS_STATUS_NOT_SUPPORTED: the functionality requested is not supported" {
		t.Errorf("blasCheck: %v", err)
	}
	if err := blasCheck("x", "", 0xffffffff_00000000); err != nil {
		t.Errorf("success with garbage upper half: %v", err)
	}
	if !errors.Is(blasCheck("x", "", 3), ErrOutOfMemory) || !errors.Is(blasCheck("x", "", 1), ErrLibrary) {
		t.Error("cuBLAS status kinds")
	}
	if !errors.Is(errClosed, ErrNoDevice) {
		t.Error("errClosed")
	}
}
