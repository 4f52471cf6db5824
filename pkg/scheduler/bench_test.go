package scheduler

import (
	"fmt"
	"testing"
)

// benchCluster is 1,000 workers: 250 hosts of 4 in racks of 10 hosts and
// 5 zones; every fourth host has GPUs; 20% of the workers are busy.
func benchCluster() Snapshot {
	var s Snapshot
	for h := range 250 {
		host := fmt.Sprintf("h%03d", h)
		labels := map[string]string{"rack": fmt.Sprintf("r%02d", h/10), "zone": fmt.Sprintf("z%d", h/50)}
		res := Resources{CPUCores: 16, MemoryMiB: 65536}
		if h%4 == 0 {
			labels["gpu"] = "h100"
			res.GPUs = 1
		}
		for w := range 4 {
			wk := Worker{ID: fmt.Sprintf("%s-w%d", host, w), Host: host, Labels: labels, Total: res, Free: res, Healthy: true}
			if (h*4+w)%5 == 0 {
				wk.Job = "running"
			}
			s.Workers = append(s.Workers, wk)
		}
	}
	return s
}

// benchQueue is 100 jobs of 1 to 32 ranks, a mix of TP 1/2/4 and EP 1/2/4,
// a quarter of them on GPUs, three priorities.
func benchQueue() []Job {
	q := make([]Job, 100)
	for i := range q {
		tp := []int{1, 2, 4}[i%3]
		ep := []int{1, 2, 4}[(i/3)%3]
		dp := ep * (1 + i%4)
		j := Job{ID: fmt.Sprintf("job%03d", i), Priority: i % 3, Seq: uint64(i), Layout: Layout{TP: tp, DP: dp, EP: ep},
			PerRank: Resources{CPUCores: 4, MemoryMiB: 8192}}
		if i%4 == 0 {
			j.PerRank.GPUs = 1
			j.Labels = map[string]string{"gpu": "h100"}
		}
		q[i] = j
	}
	return q
}

func BenchmarkSchedule1000Workers100Jobs(b *testing.B) {
	snap, queue := benchCluster(), benchQueue()
	var placed []Plan
	b.ReportAllocs()
	for b.Loop() {
		placed, _ = Schedule(snap, queue)
	}
	b.ReportMetric(float64(len(placed)), "placed/op")
}

func BenchmarkPlace1000Workers(b *testing.B) {
	snap := benchCluster()
	j := Job{ID: "j", Layout: Layout{TP: 4, DP: 32, EP: 8}, PerRank: Resources{CPUCores: 4, MemoryMiB: 8192}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Place(snap, j); err != nil {
			b.Fatal(err)
		}
	}
}
