package kernels

import (
	"syscall"
	"testing"
	"time"
)

// cpuClock returns the process's user+system CPU time: benchmarks report
// GFLOP/s per busy core from it as well, which other load on the machine
// disturbs far less than wall-clock time.
func cpuClock() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU adds a "GFLOP/s-cpu" metric: flops per CPU-second since t0.
func reportCPU(b *testing.B, t0 time.Duration, flops float64) {
	if d := cpuClock() - t0; d > 0 {
		b.ReportMetric(flops/d.Seconds()/1e9, "GFLOP/s-cpu")
	}
}
