package parallel

import (
	"math"
	"math/rand/v2"
	"testing"
)

// The vectorised float32 sum is bitwise the plain loop, for every length
// (vector body and masked tail), for special values, and for a source that
// is not 4-byte aligned (as a received message may be).
func TestAddF32MatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	special := []float32{0, float32(math.Copysign(0, -1)), float32(math.Inf(1)), float32(math.Inf(-1)),
		float32(math.NaN()), math.MaxFloat32, math.SmallestNonzeroFloat32, -1e-38}
	for _, n := range []int{1, 3, 15, 16, 17, 31, 100, 1000, 4099} {
		for _, misalign := range []int{0, 1} {
			dst := make([]float32, n)
			srcBuf := make([]byte, 4*n+misalign)
			src := srcBuf[misalign:]
			sf := make([]float32, n)
			for i := range dst {
				dst[i] = float32(rng.NormFloat64() * math.Pow(10, float64(rng.IntN(20)-10)))
				sf[i] = float32(rng.NormFloat64() * math.Pow(10, float64(rng.IntN(20)-10)))
				if rng.IntN(10) == 0 {
					sf[i] = special[rng.IntN(len(special))]
				}
			}
			copy(src, f32Bytes(sf))
			want := append([]float32(nil), dst...)
			addF32Ref(f32Bytes(want), src)
			addF32(f32Bytes(dst), src)
			for i := range dst {
				if math.Float32bits(dst[i]) != math.Float32bits(want[i]) && !(math.IsNaN(float64(dst[i])) && math.IsNaN(float64(want[i]))) {
					t.Fatalf("n %d misalign %d: [%d] = %v, reference %v", n, misalign, i, dst[i], want[i])
				}
			}
		}
	}
}
