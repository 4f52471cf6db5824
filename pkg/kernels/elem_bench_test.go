package kernels

import (
	"math"
	"math/rand/v2"
	"testing"
)

// BenchmarkElem compares each fused kernel with its reference on the tiny
// preset's sizes (T=2048 tokens, d=256, h=512 per expert slot); the metric
// is nanoseconds per element.
func BenchmarkElem(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 1))
	const T, d, h = 2048, 256, 512
	n := T * h / 4 // one expert's activations (512 tokens x 512)
	a, bb, c, dd, e := randSlice(r, n), randSlice(r, n), randSlice(r, n), randSlice(r, n), randSlice(r, n)
	v := absSlice(randSlice(r, n))
	x, y, g, rstd := randSlice(r, T*d), make([]float32, T*d), randSlice(r, d), make([]float32, T)
	RefRMSNorm(y, rstd, x, g, T, d, 1e-5)
	cos, sin := make([]float32, 32), make([]float32, 32)
	for i := range cos {
		th := float64(i) * 0.1
		cos[i], sin[i] = float32(math.Cos(th)), float32(math.Sin(th))
	}
	type kcase struct {
		name  string
		elems int
		fast  func()
		ref   func()
	}
	cases := []kcase{
		{"swiglu", n, func() { SwiGLU(a, bb, c) }, func() { RefSwiGLU(a, bb, c) }},
		{"swiglu-bwd", n, func() { SwiGLUBackward(a, bb, c, dd, e) }, func() { RefSwiGLUBackward(a, bb, c, dd, e) }},
		{"rmsnorm", T * d, func() { RMSNorm(y, rstd, x, g, T, d, 1e-5) }, func() { RefRMSNorm(y, rstd, x, g, T, d, 1e-5) }},
		{"rmsnorm-bwd", T * d, func() { RMSNormBackward(y, c[:d], x, x, g, rstd, T, d) }, func() { RefRMSNormBackward(y, c[:d], x, x, g, rstd, T, d) }},
		{"softmax-256", 256 * 256, func() {
			for i := 0; i < 256; i++ {
				Softmax(a[i*256 : (i+1)*256])
			}
		}, func() { RefSoftmaxRows(a, 256, 256, 256, nil) }},
		{"rope-row", T * d, func() {
			for i := 0; i < T; i++ {
				RoPERow(x[i*d:(i+1)*d], 4, 64, cos, sin, false)
			}
		}, func() { RefRoPE(x, T, 4, 64, func(int) int { return 0 }, cos, sin, false) }},
		{"adamw", n, func() { AdamW(a, bb, c, v, 1e-4, 0.9, 0.999, 1e-8, 0.01, 0.5, 0.5) }, func() { RefAdamW(a, bb, c, v, 1e-4, 0.9, 0.999, 1e-8, 0.01, 0.5, 0.5) }},
		{"dot", n, func() { _ = Dot(a, bb) }, nil},
		{"axpy", n, func() { Axpy(1e-3, a, bb) }, nil},
	}
	for _, kc := range cases {
		run := func(fn func()) func(b *testing.B) {
			return func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					fn()
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(kc.elems), "ns/elem")
			}
		}
		b.Run(kc.name+"/fast", run(kc.fast))
		if kc.ref != nil {
			b.Run(kc.name+"/ref", run(kc.ref))
		}
	}
}
