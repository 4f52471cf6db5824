package scheduler

import (
	"fmt"
	"math/rand/v2"
)

// fx builds cluster snapshots for tests.
type fx struct{ snap Snapshot }

func newFx() *fx { return &fx{} }

// host adds n idle, healthy workers "<host>-w<i>" on host with res each and
// the labels given as "k=v" pairs.
func (f *fx) host(host string, n int, res Resources, labels ...string) *fx {
	for i := range n {
		f.worker(fmt.Sprintf("%s-w%d", host, i), host, res, labels...)
	}
	return f
}

func (f *fx) worker(id, host string, res Resources, labels ...string) *fx {
	f.snap.Workers = append(f.snap.Workers, Worker{
		ID: id, Host: host, Labels: kv(labels...), Total: res, Free: res, Healthy: true,
	})
	return f
}

// set changes the worker with the given id.
func (f *fx) set(id string, change func(*Worker)) *fx {
	for i := range f.snap.Workers {
		if f.snap.Workers[i].ID == id {
			change(&f.snap.Workers[i])
			return f
		}
	}
	panic("no worker " + id)
}

func kv(pairs ...string) map[string]string {
	if len(pairs) == 0 {
		return nil
	}
	m := make(map[string]string, len(pairs))
	for _, p := range pairs {
		for i := 0; i < len(p); i++ {
			if p[i] == '=' {
				m[p[:i]] = p[i+1:]
				break
			}
		}
	}
	return m
}

func job(id string, prio int, seq uint64, tp, dp, ep int, per Resources, labels ...string) Job {
	return Job{ID: id, Priority: prio, Seq: seq, Layout: Layout{TP: tp, DP: dp, EP: ep}, PerRank: per, Labels: kv(labels...)}
}

var (
	cpu1 = Resources{CPUCores: 1, MemoryMiB: 1024}
	gpu1 = Resources{CPUCores: 4, MemoryMiB: 16384, GPUs: 1}
)

// randomSnapshot is a cluster of up to maxHosts hosts in racks and zones,
// with some workers busy, unhealthy, partly loaded, or without a host.
func randomSnapshot(r *rand.Rand, maxHosts int) Snapshot {
	var s Snapshot
	nHosts := 1 + r.IntN(maxHosts)
	for h := range nHosts {
		host := fmt.Sprintf("h%03d", h)
		labels := map[string]string{}
		if r.IntN(8) != 0 {
			labels["rack"] = fmt.Sprintf("r%d", r.IntN(4))
		}
		if r.IntN(8) != 0 {
			labels["zone"] = fmt.Sprintf("z%d", r.IntN(2))
		}
		if r.IntN(3) == 0 {
			labels["gpu"] = "h100"
		}
		var roots []string // most hosts do not say; some allow one of the data folders
		if r.IntN(3) == 0 {
			roots = []string{"/srv/sy", []string{"/data", "/data/a", "/data/ab", "/"}[r.IntN(4)]}
		}
		total := Resources{CPUCores: 1 + r.IntN(16), MemoryMiB: int64(512 * (1 + r.IntN(64)))}
		var gpuMem int64 // most hosts' GPUs are declared by count
		if labels["gpu"] != "" {
			total.GPUs = 1 + r.IntN(2)
			gpuMem = []int64{0, 0, 24576, 40960, 81920}[r.IntN(5)]
		}
		for w := range 1 + r.IntN(6) {
			wk := Worker{ID: fmt.Sprintf("%s-w%d", host, w), Host: host, Labels: labels, Total: total, Free: total, Healthy: r.IntN(10) != 0, Roots: roots, GPUMemoryMiB: gpuMem}
			switch r.IntN(6) {
			case 0:
				wk.Job = "running"
			case 1:
				wk.Free.CPUCores = r.IntN(total.CPUCores + 1)
				wk.Free.MemoryMiB = r.Int64N(total.MemoryMiB + 1)
			}
			if r.IntN(20) == 0 {
				wk.Host = ""
			}
			s.Workers = append(s.Workers, wk)
		}
	}
	if r.IntN(5) == 0 {
		s.TopologyKeys = []string{}
	}
	return s
}

func randomQueue(r *rand.Rand, n int) []Job {
	q := make([]Job, n)
	for i := range q {
		tp := []int{1, 1, 2, 4}[r.IntN(4)]
		ep := []int{1, 2, 4}[r.IntN(3)]
		dp := ep * (1 + r.IntN(4))
		j := Job{
			ID:       fmt.Sprintf("j%03d", i),
			Priority: r.IntN(3),
			Seq:      uint64(r.IntN(1000)),
			Layout:   Layout{TP: tp, DP: dp, EP: ep},
			PerRank:  Resources{CPUCores: 1 + r.IntN(8), MemoryMiB: int64(256 * r.IntN(32))},
		}
		if r.IntN(4) == 0 {
			j.PerRank.GPUs = 1
			j.Labels = map[string]string{"gpu": "h100"}
			j.GPUMemoryMiB = []int64{0, 20480, 40960, 61440}[r.IntN(4)]
		}
		if r.IntN(3) == 0 { // a corpus, sometimes a checkpoint folder too
			j.Paths = []string{[]string{"/data/a/c.jsonl", "/data/abc/c.jsonl", "/data/b", "/srv/sy/c.jsonl", "/data/a"}[r.IntN(5)]}
			if r.IntN(3) == 0 {
				j.Paths = append(j.Paths, "/srv/sy/ckpt")
			}
		}
		if r.IntN(30) == 0 {
			j.Layout.EP = 3 // sometimes invalid
		}
		if r.IntN(40) == 0 {
			j.Paths = []string{"data/c.jsonl"} // invalid: relative
		}
		q[i] = j
	}
	return q
}
