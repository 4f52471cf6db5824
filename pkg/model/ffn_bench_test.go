package model

import (
	"fmt"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"
)

// cpuClock returns the process's user+system CPU time. GFLOP/s-cpu (flops
// per busy core-second) is far less disturbed by other load on the machine
// than the wall-clock GFLOP/s; idle waits inside the step do not count in it.
func cpuClock() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkExpertsGrouped measures one MoE layer's expert work (forward and
// backward over E experts with equal token counts) through ffnGroup.
func BenchmarkExpertsGrouped(b *testing.B) {
	for _, tc := range []struct{ E, n, d, h int }{{8, 512, 256, 512}, {16, 256, 512, 1024}} {
		b.Run(fmt.Sprintf("E%d-n%d-d%d-h%d", tc.E, tc.n, tc.d, tc.h), func(b *testing.B) {
			ns := make([]int, tc.E)
			for e := range ns {
				ns[e] = tc.n
			}
			benchExperts(b, tc.d, tc.h, ns)
		})
	}
}

// BenchmarkExpertsUneven is the tiny preset's layer with the uneven token
// counts a router produces (sum 4096, as E8-n512).
func BenchmarkExpertsUneven(b *testing.B) {
	benchExperts(b, 256, 512, []int{700, 300, 512, 90, 1000, 512, 480, 502})
}

func benchExperts(b *testing.B, d, h int, ns []int) {
	E, rows := len(ns), 0
	for _, n := range ns {
		rows += n
	}
	rng := rand.New(rand.NewPCG(1, 2))
	fill := func(k int) []float32 {
		s := make([]float32, k)
		for i := range s {
			s[i] = float32(rng.NormFloat64() * 0.02)
		}
		return s
	}
	x, y, dy, dx := fill(rows*d), make([]float32, rows*d), fill(rows*d), make([]float32, rows*d)
	w1, w3, w2 := fill(E*d*h), fill(E*d*h), fill(E*h*d)
	g1, g3, g2 := make([]float32, E*d*h), make([]float32, E*d*h), make([]float32, E*h*d)
	act, scr := newFFNAct(rows, h), newFFNAct(rows, h)
	g := ffnGroup{d: d, h: h, blocks: make([]ffnBlock, E)}
	lo := 0
	for e, n := range ns {
		hi := lo + n
		g.blocks[e] = ffnBlock{n: n, x: x[lo*d : hi*d], y: y[lo*d : hi*d], dy: dy[lo*d : hi*d], dx: dx[lo*d : hi*d],
			w1: w1[e*d*h : (e+1)*d*h], w3: w3[e*d*h : (e+1)*d*h], w2: w2[e*h*d : (e+1)*h*d],
			gw1: g1[e*d*h : (e+1)*d*h], gw3: g3[e*d*h : (e+1)*d*h], gw2: g2[e*h*d : (e+1)*h*d],
			act: act.rows(lo, hi, h), scratch: scr.rows(lo, hi, h)}
		lo = hi
	}
	b.ResetTimer()
	t0 := cpuClock()
	for i := 0; i < b.N; i++ {
		g.forward(0)
		g.backward(0)
	}
	flops := 18 * float64(rows) * float64(d) * float64(h)
	b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
	if dt := cpuClock() - t0; dt > 0 {
		b.ReportMetric(flops*float64(b.N)/dt.Seconds()/1e9, "GFLOP/s-cpu")
		b.ReportMetric(dt.Seconds()/b.Elapsed().Seconds(), "cpus")
	}
}
