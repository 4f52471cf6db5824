package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"syscall"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/fsutil"
	"github.com/switchyard-ml/switchyard/pkg/train"
)

// memoryInterval is how often a rank's memory is measured.
const memoryInterval = 250 * time.Millisecond

// errNoMemoryAccounting: this system cannot measure a process group's
// memory (only Linux's /proc can).
var errNoMemoryAccounting = errors.New("measuring a rank's memory needs Linux's /proc")

// memoryGuard holds a rank to its resources.memory_mib: every interval it
// adds up the resident private memory (anonymous and shared-memory pages,
// not the mapped files of programs and libraries, which the page cache
// can drop) of every process in the rank's process group, and kills the
// group when the sum is over the limit. The kernel is not involved (no
// cgroup is needed, so it works in containers that delegate none): a
// spike shorter than the interval can pass.
type memoryGuard struct {
	limit    int64 // bytes
	interval time.Duration
	measure  func(pgid int) (int64, error) // groupMemory
}

// watch runs until exited is closed. It records the peak in tk and, on
// the first measurement over the limit, the reason in tk and kills the
// group.
func (g memoryGuard) watch(tk *task, pid int, exited <-chan struct{}, log *slog.Logger) {
	t := time.NewTicker(g.interval)
	defer t.Stop()
	for {
		select {
		case <-exited:
			return
		case <-t.C:
		}
		used, err := g.measure(pid)
		if err != nil {
			log.Warn("rank memory not enforced", "error", err)
			return
		}
		if !tk.sawMemory(used, g.limit) {
			continue
		}
		log.Error("rank over its memory: killing it", "pid", pid, "used", used, "limit", g.limit)
		if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil {
			log.Debug("sigkill", "error", err)
		}
		return
	}
}

// sawMemory records a measurement of used bytes against limit; it
// reports whether it is over (the first time: the reason and an event
// are recorded then).
func (t *task) sawMemory(used, limit int64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.peakMemory = max(t.peakMemory, used)
	if used <= limit || t.overMemory != "" {
		return false
	}
	// the event's message does not name the rank: the job's history
	// says "rank N: " before every rank's event
	what := fmt.Sprintf("used %s of memory, over the %s of its resources.memory_mib: killed by the worker (ask for more memory in the job spec)",
		fsutil.Size(used), fsutil.Size(limit))
	t.overMemory = fmt.Sprintf("rank %d %s", t.key.rank, what)
	t.appendEvent(train.Event{Type: "OutOfMemory", Message: what})
	return true
}

// sawLastMemory records, when the rank was measured at all, the most it
// used as an event of the job's history: what to ask for next time.
func (t *task) sawLastMemory(limit int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.peakMemory > 0 && t.overMemory == "" {
		t.appendEvent(train.Event{Type: "MemoryPeak", Message: fmt.Sprintf("used at most %s of the %s of its resources.memory_mib",
			fsutil.Size(t.peakMemory), fsutil.Size(limit))})
	}
}

// memoryVerdict is why the rank was killed for its memory ("" if it was
// not) and the most it was seen to use.
func (t *task) memoryVerdict() (reason string, peak int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.overMemory, t.peakMemory
}
