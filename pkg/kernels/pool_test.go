package kernels

import (
	"sync"
	"testing"
)

// BenchmarkHandoff measures the fixed cost of running one task on another
// goroutine and waiting for it: the persistent pool against a goroutine per
// call, for a 64^3 GEMM half (the size where the choice matters).
func BenchmarkHandoff(b *testing.B) {
	f := NewFast()
	m, n, k := 32, 64, 64
	a, bb, c := make([]float32, m*k), make([]float32, k*n), make([]float32, 2*m*n)
	g := gemmArgs{m: m, n: n, k: k, alpha: 1, a: a, lda: k, b: bb, ldb: n, c: c, ldc: n}
	g2 := g
	g2.c = c[m*n:]
	b.Run("inline", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			f.run(g)
			f.run(g2)
		}
	})
	b.Run("pool", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			j := getJob()
			j.begin(1)
			submit(task{f: f, g: g2, job: j})
			f.run(g)
			j.wait()
			putJob(j)
		}
	})
	b.Run("spawn", func(b *testing.B) {
		b.ReportAllocs()
		var wg sync.WaitGroup
		for i := 0; i < b.N; i++ {
			wg.Add(1)
			go func() {
				f.run(g2)
				wg.Done()
			}()
			f.run(g)
			wg.Wait()
		}
	})
}
