package controller

import (
	"context"
	"sync"
)

// commitsInFlight is the checkpoint commits that passed their attempt
// check under the leader's lock and are on their way to etcd without it.
// Whatever ends a job's attempt (a requeue, a failure, a cancel, success)
// first waits for that job's commits, under the lock, so that no commit
// of an attempt lands after the attempt ended; other jobs, syncs and
// supervision do not wait for etcd. A commit is bounded (commitTimeout,
// then its event), so the wait is too.
type commitsInFlight struct {
	mu   sync.Mutex
	jobs map[string]*jobCommits
}

type jobCommits struct {
	n    int
	done chan struct{} // closed when n reaches 0
}

// begin registers a commit of the job; called under the leader's lock.
func (c *commitsInFlight) begin(job string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.jobs == nil {
		c.jobs = map[string]*jobCommits{}
	}
	jc := c.jobs[job]
	if jc == nil {
		jc = &jobCommits{done: make(chan struct{})}
		c.jobs[job] = jc
	}
	jc.n++
}

// end unregisters a commit that begin registered.
func (c *commitsInFlight) end(job string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	jc := c.jobs[job]
	if jc.n--; jc.n == 0 {
		close(jc.done)
		delete(c.jobs, job)
	}
}

// wait returns true when the job has no commit in flight (none can
// begin meanwhile: the caller holds the leader's lock), false when ctx
// ended first: the caller must not end the attempt then, or the commit
// would land after it.
func (c *commitsInFlight) wait(ctx context.Context, job string) bool {
	c.mu.Lock()
	jc := c.jobs[job]
	c.mu.Unlock()
	if jc == nil {
		return true
	}
	select {
	case <-jc.done:
		return true
	case <-ctx.Done():
		return false
	}
}
