package gpu

import "github.com/switchyard-ml/switchyard/pkg/cuda"

// F32ToBF16 and BF16ToF32 are pkg/cuda's conversions (the reference for
// the kernels' f2bf and bf2f).
var (
	F32ToBF16 = cuda.F32ToBF16
	BF16ToF32 = cuda.BF16ToF32
)

// RoundBF16 is f rounded through bfloat16.
func RoundBF16(f float32) float32 { return BF16ToF32(F32ToBF16(f)) }
