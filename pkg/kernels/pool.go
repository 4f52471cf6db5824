package kernels

// A small persistent worker pool shared by every Fast. Work is handed over
// by value on a channel so that a call allocates nothing; when the pool is
// busy (concurrent callers) the submitter runs the task itself.

import (
	"runtime"
	"sync"
)

// maxWorkers caps the helper goroutines (the callers' goroutine is extra).
const maxWorkers = 15

type job struct{ wg sync.WaitGroup }

var jobPool = sync.Pool{New: func() any { return new(job) }}

func getJob() *job  { return jobPool.Get().(*job) }
func putJob(j *job) { jobPool.Put(j) }

// task is one unit of work: a plain SGEMM, or a row range of a grouped one.
type task struct {
	f      *Fast
	g      gemmArgs
	groups []Gemm
	lo, hi int64
	job    *job
}

func (t *task) do() {
	if t.groups != nil {
		t.f.groupRange(t.groups, t.lo, t.hi)
	} else {
		t.f.run(t.g)
	}
	t.job.wg.Done()
}

var (
	poolOnce sync.Once
	taskCh   chan task
)

func startPool() {
	n := min(runtime.NumCPU()-1, maxWorkers)
	taskCh = make(chan task, 2*maxWorkers)
	for i := 0; i < n; i++ {
		go func() {
			for t := range taskCh {
				t.do()
			}
		}()
	}
}

// submit queues t on the pool or runs it inline when the pool is saturated.
func submit(t task) {
	poolOnce.Do(startPool)
	if cap(taskCh) > 0 && runtime.NumCPU() > 1 {
		select {
		case taskCh <- t:
			return
		default:
		}
	}
	t.do()
}
