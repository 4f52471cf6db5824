package kernels

// A small persistent worker pool shared by every Fast. Work is handed over
// by value on a channel so that a call allocates nothing; when the pool is
// busy (concurrent callers) the submitter runs the task itself.
//
// Nothing spins: waking a parked worker costs ~10-30 us here, which is why
// small problems stay on the caller (Fast.minParallel). Polling workers
// were measured slower on these shared 2-vCPU machines (a spinning helper
// takes the core the caller or a neighbour needs), the lesson PyTorch's
// OpenMP pool taught too.

import (
	"runtime"
	"sync"
	"sync/atomic"
)

// maxWorkers caps the helper goroutines (the caller's goroutine is extra).
const maxWorkers = 15

// job counts the tasks of one call. The last task to finish sends one
// token on done; the caller receives it exactly once per call that added
// tasks, so a pooled job never carries a stale token.
type job struct {
	pending atomic.Int32
	added   bool
	done    chan struct{}
}

var jobPool = sync.Pool{New: func() any { return &job{done: make(chan struct{}, 1)} }}

func getJob() *job  { return jobPool.Get().(*job) }
func putJob(j *job) { jobPool.Put(j) }

// begin announces n tasks before any of them is handed out.
func (j *job) begin(n int) {
	if n > 0 {
		j.added = true
		j.pending.Add(int32(n))
	}
}

func (j *job) finish() {
	if j.pending.Add(-1) == 0 {
		j.done <- struct{}{}
	}
}

// wait returns once every added task has finished.
func (j *job) wait() {
	if !j.added {
		return
	}
	j.added = false
	<-j.done
}

// task is one unit of work: a plain SGEMM, or participant part of a
// grouped call.
type task struct {
	f    *Fast
	g    gemmArgs
	job  *job
	gj   *gjob
	part int
}

func (t *task) do() {
	if t.gj != nil {
		if t.gj.work(t.part) {
			t.gj.done <- struct{}{}
		}
		t.gj.release()
		return
	}
	t.f.run(t.g)
	t.job.finish()
}

var (
	poolOnce sync.Once
	taskCh   chan task
	nWorkers int
)

func startPool() {
	nWorkers = min(runtime.NumCPU()-1, maxWorkers)
	taskCh = make(chan task, 2*maxWorkers)
	for i := 0; i < nWorkers; i++ {
		go worker()
	}
}

func worker() {
	for t := range taskCh {
		t.do()
	}
}

// submit queues t on the pool or runs it inline when the pool is saturated.
func submit(t task) {
	poolOnce.Do(startPool)
	if nWorkers > 0 {
		select {
		case taskCh <- t:
			return
		default:
		}
	}
	t.do()
}
