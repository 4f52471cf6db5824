package train

import (
	"errors"
	"slices"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/devcomm"
)

// abortComm is a device collective that records Abort and Close.
type abortComm struct {
	devcomm.Comm // nil: only Abort and Close are called here
	name         string
	calls        *[]string
}

func (c abortComm) Abort() error { *c.calls = append(*c.calls, c.name+" abort"); return nil }
func (c abortComm) Close() error { *c.calls = append(*c.calls, c.name+" close"); return nil }

// closeOnly is a device collective that cannot be aborted (host-staged).
type closeOnly struct {
	devcomm.Comm
	calls *[]string
}

func (c closeOnly) Close() error { *c.calls = append(*c.calls, "ep close"); return nil }

// engineCalls is an engine that records abort and close.
type engineCalls struct {
	engine // nil: only abort and close are called here
	calls  []string
}

func (e *engineCalls) abort()       { e.calls = append(e.calls, "abort") }
func (e *engineCalls) close() error { e.calls = append(e.calls, "close"); return nil }

// TestAbortAfterFailure: a trainer whose step or evaluation failed aborts
// its device collectives before closing them (peers may wait in one,
// which NCCL's destroy would wait for); one that did not fail only closes;
// the communicators that cannot be aborted (host-staged) are closed.
func TestAbortAfterFailure(t *testing.T) {
	var calls []string
	c := gpuCollectives{dp: abortComm{name: "dp", calls: &calls}, ep: closeOnly{calls: &calls}}
	c.abort()
	if err := c.close(); err != nil {
		t.Fatal(err)
	}
	if want := []string{"dp abort", "dp close", "ep close"}; !slices.Equal(calls, want) {
		t.Errorf("collectives: %v, want %v", calls, want)
	}

	for _, failed := range []bool{false, true} {
		e := &engineCalls{}
		tr := &Trainer{eng: e}
		var err error
		if failed {
			err = errors.New("step failed")
		}
		tr.failedIf(&err)
		if err := tr.Close(); err != nil {
			t.Fatal(err)
		}
		want := []string{"close"}
		if failed {
			want = []string{"abort", "close"}
		}
		if !slices.Equal(e.calls, want) {
			t.Errorf("failed %v: engine calls %v, want %v", failed, e.calls, want)
		}
	}
}
