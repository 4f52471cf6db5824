package kernels

import "math"

// Portable float32 exp with the same algorithm as the AVX-512 kernel:
// x = n*ln2 + r with |r| <= ln2/2 (Cody-Waite split of ln2), exp(r) by its
// degree-7 Taylor polynomial (truncation < 4e-9 relative), scaled by 2^n.
// Inputs are clamped to [-104, 100] (exp overflows to +Inf above ~88.7 and
// underflows to 0 below ~-103.9 either way); NaN stays NaN. The measured
// relative error against math.Exp is below 1e-6 (see TestExpAccuracy).

const (
	expLog2e = 1.4426950408889634
	expLn2Hi = 0.693359375
	expLn2Lo = -2.12194440e-4
)

func expf(x float32) float32 {
	if x > 100 {
		x = 100
	} else if x < -104 {
		x = -104
	}
	n := float32(math.RoundToEven(float64(x * expLog2e)))
	r := x - n*expLn2Hi
	r = r - n*expLn2Lo
	p := float32(1.0 / 5040)
	p = p*r + 1.0/720
	p = p*r + 1.0/120
	p = p*r + 1.0/24
	p = p*r + 1.0/6
	p = p*r + 0.5
	p = p*r + 1
	p = p*r + 1
	// 2^n as a float64 (n is within [-150, 145]) so the product cannot
	// overflow before the final rounding to float32. NaN: int conversion of
	// NaN is unspecified, so pass it through explicitly.
	if x != x {
		return x
	}
	return float32(float64(p) * math.Float64frombits(uint64(int64(n)+1023)<<52))
}

func sigmoidf(x float32) float32 { return 1 / (1 + expf(-x)) }

func softmaxGeneric(x []float32) {
	mx := float32(math.Inf(-1))
	for _, v := range x {
		if v > mx {
			mx = v
		}
	}
	var s float32
	for i, v := range x {
		e := expf(v - mx)
		x[i] = e
		s += e
	}
	inv := 1 / s
	for i := range x {
		x[i] *= inv
	}
}

// sumSq returns sum x[i]^2.
func sumSq(x []float32) float32 {
	if len(x) == 0 {
		return 0
	}
	if path == pathAVX512 {
		return sumSqAVX512(&x[0], len(x))
	}
	var s float32
	for _, v := range x {
		s += v * v
	}
	return s
}
