package gpu

import (
	"fmt"
	"math/rand/v2"
	"strings"

	"github.com/switchyard-ml/switchyard/pkg/cuda"
)

// GemmCeiling measures the device's GEMM rate in TFLOP/s: n x n x n in the
// precision's operand type (bf16 operands with float accumulation, or
// true fp32) on random data, through the same library calls the engine
// makes, median of 10 after 3 warm-ups.
func GemmCeiling(dev cuda.Device, prec Precision, n int) (float64, error) {
	t := prec.act()
	a := &arena{dev: dev}
	defer a.free()
	A, err := a.alloc(int64(n)*int64(n), t, "ceiling A")
	if err != nil {
		return 0, err
	}
	B, err := a.alloc(int64(n)*int64(n), t, "ceiling B")
	if err != nil {
		return 0, err
	}
	C, err := a.alloc(int64(n)*int64(n), t, "ceiling C")
	if err != nil {
		return 0, err
	}
	rng := rand.New(rand.NewPCG(1, 2))
	host := make([]float32, n*n)
	for i := range host {
		host[i] = float32(rng.NormFloat64())
	}
	if err := uploadAct(dev, t, A, host); err != nil {
		return 0, err
	}
	if err := uploadAct(dev, t, B, host); err != nil {
		return 0, err
	}
	g := cuda.Gemm{M: n, N: n, K: n, Alpha: 1, A: A, Lda: n, B: B, Ldb: n, C: C, Ldc: n, AB: t, CD: t}
	e0, err := dev.NewEvent()
	if err != nil {
		return 0, err
	}
	e1, err := dev.NewEvent()
	if err != nil {
		return 0, err
	}
	var ts []float64
	for i := 0; i < 13; i++ {
		if err := dev.Record(e0); err != nil {
			return 0, err
		}
		if err := dev.Gemm(&g); err != nil {
			return 0, fmt.Errorf("gpu: ceiling gemm: %w", err)
		}
		if err := dev.Record(e1); err != nil {
			return 0, err
		}
		d, err := dev.Elapsed(e0, e1)
		if err != nil {
			return 0, err
		}
		if i >= 3 {
			ts = append(ts, d.Seconds())
		}
	}
	med := median(ts)
	return 2 * float64(n) * float64(n) * float64(n) / med / 1e12, nil
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
	return s[len(s)/2]
}

// SpecPeakTFlops is the datasheet's dense peak of a GPU for the precision
// (0 when unknown): H100/H200 SXM 989 TFLOP/s bf16, 67 fp32.
func SpecPeakTFlops(name string, prec Precision) float64 {
	if strings.Contains(name, "H100") || strings.Contains(name, "H200") {
		if prec == BF16 {
			return 989.4
		}
		return 66.9
	}
	return 0
}
