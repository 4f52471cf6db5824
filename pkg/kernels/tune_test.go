package kernels

import (
	"os"
	"strconv"
	"testing"
)

// Tuning helpers, not part of the regular benchmark set:
//
//	N=1024 M=.. K=.. TA=1 TB=1 KC=.. MC=.. NC=.. go test -bench Tune -cpu 1
//	KC=256 go test -bench KernelOnly -cpu 1   # micro-kernel from cache
func envInt(k string, d int) int {
	if v, err := strconv.Atoi(os.Getenv(k)); err == nil {
		return v
	}
	return d
}

func BenchmarkTune(b *testing.B) {
	f := NewFast()
	f.t.kc = envInt("KC", f.t.kc)
	f.t.mc = envInt("MC", f.t.mc)
	f.t.nc = envInt("NC", f.t.nc)
	n := envInt("N", 1024)
	runSgemmBench(b, f, benchShape{m: envInt("M", n), n: n, k: envInt("K", n), tA: envInt("TA", 0) == 1, tB: envInt("TB", 0) == 1})
}

func BenchmarkKernelOnly(b *testing.B) {
	t := tuningFor(path)
	kc := envInt("KC", 256)
	a := make([]float32, t.mr*kc)
	bb := make([]float32, t.nr*kc)
	c := make([]float32, t.mr*t.nr)
	for i := 0; i < b.N; i++ {
		t.kern(kc, &a[0], &bb[0], &c[0], t.nr, 1, 0)
	}
	b.ReportMetric(2*float64(t.mr*t.nr*kc)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}
