package train

import (
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/switchyard-ml/switchyard/pkg/data"
	"github.com/switchyard-ml/switchyard/pkg/lbl"
)

// ErrState is wrapped by every error restoring a trainer state.
var ErrState = errors.New("train: state does not fit this run")

// State is everything that determines the rest of a run after an optimizer
// step: with it restored, the following steps are bitwise those of the
// uninterrupted run (same kernels, same layout). It holds this rank's
// parameters (with expert parallelism: its experts only) and optimizer
// moments; the balancer and loader states are the same on every rank.
type State struct {
	Step     int           // optimizer steps taken
	Params   []float32     // model.Params.Data
	AdamM    []float32     // optimizer first moments
	AdamV    []float32     // optimizer second moments
	AdamT    int           // optimizer step count (bias correction)
	Balancer lbl.State     // expert bias and LBL accumulation buffer
	Loader   data.Position // next training sequence of the global stream
}

// Snapshot copies the trainer's state at a step boundary. The copy is the
// caller's: training may go on while it is written out.
func (t *Trainer) Snapshot() (State, error) { return t.SnapshotInto(State{}) }

// SnapshotInto is Snapshot reusing the buffers of an earlier snapshot that
// is no longer in use (no allocation, no page faults at the step boundary).
// On the CPU the copies are split across GOMAXPROCS goroutines (at the
// step boundary training waits for them, and one core does not saturate
// memory); on a GPU they are copies from the device.
func (t *Trainer) SnapshotInto(buf State) (State, error) {
	s := State{Step: t.step, Params: buf.Params, AdamM: buf.AdamM, AdamV: buf.AdamV, Balancer: t.Bal.State(), Loader: t.Loader.Pos()}
	if err := t.eng.snapshot(&s); err != nil {
		return State{}, fmt.Errorf("train: snapshot at step %d: %w", t.step, err)
	}
	return s, nil
}

// resize returns b with length n, reallocated only if its capacity is short.
func resize(b []float32, n int) []float32 {
	if cap(b) < n {
		return make([]float32, n)
	}
	return b[:n]
}

// copyParallelMin is the least number of values one goroutine of
// copyParallel copies (smaller copies are not worth a goroutine).
const copyParallelMin = 1 << 20

// copyParallel does copy(p[0], p[1]) for every pair (equal lengths), the
// total split evenly across up to GOMAXPROCS goroutines.
func copyParallel(pairs [][2][]float32) {
	total := 0
	for _, p := range pairs {
		total += len(p[1])
	}
	workers := min(runtime.GOMAXPROCS(0), max(1, total/copyParallelMin))
	// worker w copies the values [w*total/workers, (w+1)*total/workers) of
	// the pairs laid end to end
	part := func(w int) {
		lo, hi := w*total/workers, (w+1)*total/workers
		base := 0
		for _, p := range pairs {
			n := len(p[1])
			if a, b := max(lo, base), min(hi, base+n); a < b {
				copy(p[0][a-base:b-base], p[1][a-base:b-base])
			}
			base += n
		}
	}
	var wg sync.WaitGroup
	for w := 1; w < workers; w++ {
		wg.Go(func() { part(w) })
	}
	part(0)
	wg.Wait()
}

// Restore makes the trainer continue from s. It checks every size first and
// changes nothing if one does not fit.
func (t *Trainer) Restore(s State) error {
	n := len(t.eng.params().Data)
	switch {
	case len(s.Params) != n:
		return fmt.Errorf("%w: %d parameters, the model has %d", ErrState, len(s.Params), n)
	case len(s.AdamM) != n || len(s.AdamV) != n:
		return fmt.Errorf("%w: optimizer moments of %d and %d values, the model has %d", ErrState, len(s.AdamM), len(s.AdamV), n)
	case s.Step < 0 || s.Step > t.Cfg.Steps:
		return fmt.Errorf("%w: step %d outside the run's %d steps", ErrState, s.Step, t.Cfg.Steps)
	case s.AdamT < 0:
		return fmt.Errorf("%w: optimizer step %d", ErrState, s.AdamT)
	}
	if err := t.Bal.SetState(s.Balancer); err != nil {
		return fmt.Errorf("%w: %w", ErrState, err)
	}
	if err := t.Loader.Seek(s.Loader); err != nil {
		return fmt.Errorf("%w: %w", ErrState, err)
	}
	if err := t.eng.restore(s); err != nil {
		return fmt.Errorf("train: restore: %w", err)
	}
	t.step, t.startStep = s.Step, s.Step
	return nil
}
