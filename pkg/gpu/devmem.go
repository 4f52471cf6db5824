package gpu

import (
	"fmt"
	"unsafe"

	"github.com/switchyard-ml/switchyard/pkg/cuda"
)

// arena allocates device buffers and remembers them so that Close frees
// everything, and counts the bytes it holds.
type arena struct {
	dev   cuda.Device
	ptrs  []cuda.DevPtr
	bytes int64
}

func (a *arena) alloc(n int64, t cuda.DType, what string) (cuda.DevPtr, error) {
	bytes := max(n, 1) * t.Size()
	p, err := a.dev.Alloc(bytes)
	if err != nil {
		return 0, fmt.Errorf("gpu: allocate %s (%d x %s): %w", what, n, t, err)
	}
	a.ptrs = append(a.ptrs, p)
	a.bytes += bytes
	return p, nil
}

func (a *arena) free() error {
	var first error
	for _, p := range a.ptrs {
		if err := a.dev.Free(p); err != nil && first == nil {
			first = err
		}
	}
	a.ptrs, a.bytes = nil, 0
	return first
}

// upload copies a host slice to dst.
func upload[E float32 | int32 | uint16 | float64](dev cuda.Device, dst cuda.DevPtr, src []E) error {
	if len(src) == 0 {
		return nil
	}
	return dev.CopyHtoD(dst, unsafe.Pointer(&src[0]), int64(len(src))*int64(unsafe.Sizeof(src[0])))
}

// download copies len(dst) elements from src.
func download[E float32 | int32 | uint16 | float64](dev cuda.Device, dst []E, src cuda.DevPtr) error {
	if len(dst) == 0 {
		return nil
	}
	return dev.CopyDtoH(unsafe.Pointer(&dst[0]), src, int64(len(dst))*int64(unsafe.Sizeof(dst[0])))
}

// uploadAct copies float values to an act-typed buffer (rounded to bf16 in
// the mixed mode).
func uploadAct(dev cuda.Device, t cuda.DType, dst cuda.DevPtr, src []float32) error {
	if t == cuda.F32 {
		return upload(dev, dst, src)
	}
	h := make([]uint16, len(src))
	for i, v := range src {
		h[i] = F32ToBF16(v)
	}
	return upload(dev, dst, h)
}

// downloadAct reads n act-typed values as float32.
func downloadAct(dev cuda.Device, t cuda.DType, src cuda.DevPtr, n int) ([]float32, error) {
	out := make([]float32, n)
	if t == cuda.F32 {
		return out, download(dev, out, src)
	}
	h := make([]uint16, n)
	if err := download(dev, h, src); err != nil {
		return nil, err
	}
	for i, v := range h {
		out[i] = BF16ToF32(v)
	}
	return out, nil
}
