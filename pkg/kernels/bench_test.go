package kernels

import (
	"fmt"
	"github.com/switchyard-ml/switchyard/pkg/kernels/openblas"
	"math/rand/v2"
	"testing"
)

// Benchmarks report GFLOP/s (2*m*n*k per call). With -tags openblas the same
// shapes also run through OpenBLAS for the ratio.

type benchShape struct {
	name    string
	tA, tB  bool
	m, n, k int
}

func benchShapes() []benchShape {
	s := []benchShape{}
	for _, n := range []int{256, 512, 1024, 2048} {
		s = append(s, benchShape{name: fmt.Sprintf("square%d", n), m: n, n: n, k: n})
	}
	// fwd: Y[m,n] = X[m,k] W[k,n]; bwd: dX = dY W^T (m x k, inner n);
	// dW = X^T dY (k x n, inner m).
	model := []benchShape{
		{name: "tiny/qkv", m: 2048, n: 768, k: 256},
		{name: "tiny/proj", m: 2048, n: 256, k: 256},
		{name: "tiny/w13", m: 512, n: 512, k: 256},
		{name: "tiny/w2", m: 512, n: 256, k: 512},
		{name: "tiny/head", m: 2048, n: 256, k: 256},
		{name: "small/qkv", m: 2048, n: 1536, k: 512},
		{name: "small/w13", m: 256, n: 1024, k: 512},
		{name: "small/w2", m: 256, n: 512, k: 1024},
	}
	for _, f := range model {
		s = append(s, f)
		s = append(s, benchShape{name: f.name + "/dX", tB: true, m: f.m, n: f.k, k: f.n})
		s = append(s, benchShape{name: f.name + "/dW", tA: true, m: f.k, n: f.n, k: f.m})
	}
	return s
}

func runSgemmBench(b *testing.B, impl BLAS, s benchShape) {
	r := rand.New(rand.NewPCG(1, 1))
	a := randSlice(r, s.m*s.k)
	bb := randSlice(r, s.k*s.n)
	c := make([]float32, s.m*s.n)
	lda, ldb := s.k, s.n
	if s.tA {
		lda = s.m
	}
	if s.tB {
		ldb = s.k
	}
	impl.Sgemm(s.tA, s.tB, s.m, s.n, s.k, 1, a, lda, bb, ldb, 0, c, s.n)
	b.ResetTimer()
	t0 := cpuClock()
	for i := 0; i < b.N; i++ {
		impl.Sgemm(s.tA, s.tB, s.m, s.n, s.k, 1, a, lda, bb, ldb, 0, c, s.n)
	}
	flops := 2 * float64(s.m) * float64(s.n) * float64(s.k) * float64(b.N)
	b.ReportMetric(flops/b.Elapsed().Seconds()/1e9, "GFLOP/s")
	reportCPU(b, t0, flops)
}

func BenchmarkSgemm(b *testing.B) {
	impls := []struct {
		name string
		blas BLAS
	}{{"fast", NewFast()}}
	if openblas.Available {
		impls = append(impls, struct {
			name string
			blas BLAS
		}{"openblas", openblas.New()})
	}
	for _, s := range benchShapes() {
		for _, im := range impls {
			b.Run(s.name+"/"+im.name, func(b *testing.B) { runSgemmBench(b, im.blas, s) })
		}
	}
}

// BenchmarkGroupedSgemm: the tiny preset's expert w1 over 8 experts with
// uneven token counts (sum 4096 = T*k), one grouped call vs a loop of Sgemm.
func BenchmarkGroupedSgemm(b *testing.B) {
	r := rand.New(rand.NewPCG(2, 2))
	ms := []int{700, 300, 512, 90, 1000, 512, 480, 502}
	gs := makeGroups(r, ms, 512, 256)
	var flops float64
	for _, g := range gs {
		flops += 2 * float64(g.M*g.N*g.K)
	}
	f := NewFast()
	b.Run("grouped", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			f.GroupedSgemm(gs)
		}
		b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
	})
	loop := func(b *testing.B, impl BLAS) {
		for i := 0; i < b.N; i++ {
			for _, g := range gs {
				impl.Sgemm(false, false, g.M, g.N, g.K, 1, g.A, g.Lda, g.B, g.Ldb, 0, g.C, g.Ldc)
			}
		}
		b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
	}
	b.Run("loop", func(b *testing.B) { loop(b, f) })
	if openblas.Available {
		b.Run("loop-openblas", func(b *testing.B) { loop(b, openblas.New()) })
	}
}
