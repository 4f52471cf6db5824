package cuda

import "math"

// F32ToBF16 rounds f to bfloat16 (nearest, ties to even; NaN stays a quiet
// NaN): the reference for every bf16 conversion of the GPU code (the
// kernels' f2bf, the emulator's GEMM, the tests' expectations).
func F32ToBF16(f float32) uint16 {
	u := math.Float32bits(f)
	if u&0x7fffffff > 0x7f800000 {
		return uint16(u>>16) | 0x40
	}
	u += 0x7fff + (u>>16)&1
	return uint16(u >> 16)
}

// BF16ToF32 widens a bfloat16 (exact).
func BF16ToF32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }
