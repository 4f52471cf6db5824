package model

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/lbl"
)

// stuckGroup is a peer group whose collectives never complete: the other
// ranks are gone. It returns only when the caller's context ends.
type stuckGroup struct{ size int }

func (g stuckGroup) Rank() int { return 0 }
func (g stuckGroup) Size() int { return g.size }
func (g stuckGroup) AllToAllVF32(ctx context.Context, _ []float32, _ []int, _ []float32, _ []int) error {
	<-ctx.Done()
	return ctx.Err()
}
func (g stuckGroup) AllReduceSum(ctx context.Context, _ []float32) error {
	<-ctx.Done()
	return ctx.Err()
}
func (g stuckGroup) AllGatherEqual(ctx context.Context, _ []float32) error {
	<-ctx.Done()
	return ctx.Err()
}

// A cancelled step interrupts a collective that would otherwise wait
// forever, and reports the collective's own error, not gorgonia's wrapping.
func TestCancelledStepInterruptsCollectives(t *testing.T) {
	for _, tc := range []struct {
		name string
		opt  Option
		want string
	}{
		{"expert parallel all-to-all", WithExpertParallel(stuckGroup{size: 2}), "expert count exchange"},
		{"tensor parallel all-reduce", WithTensorParallel(stuckGroup{size: 2}), "tensor-parallel all-reduce"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testConfig()
			bal, err := lbl.NewBalancer(lbl.Config{GlobalCoef: 0.1}, c.MoELayers(), c.Experts, c.TopK, lbl.Identity{})
			if err != nil {
				t.Fatal(err)
			}
			m, err := New(c, 2, bal, 1, tc.opt)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			m.P.Init(c, 1)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				_, err := m.Step(ctx)
				done <- err
			}()
			cancel()
			select {
			case err = <-done:
			case <-time.After(time.Minute):
				t.Fatal("the step did not return a minute after its context was cancelled")
			}
			if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("step error %v, want context.Canceled from the %s", err, tc.want)
			}
		})
	}
}

// Each model keeps its own profile: models stepping at once in one process
// (ranks of a test cluster) neither share nor race on it.
func TestProfilePerModel(t *testing.T) {
	c := testConfig()
	h1 := newHarness(t, c, lbl.Config{GlobalCoef: 0.1}, 2, 1)
	h2 := newHarness(t, c, lbl.Config{GlobalCoef: 0.1}, 2, 2)
	h1.m.EnableProfile(true)
	var wg sync.WaitGroup
	for _, h := range []*fdHarness{h1, h2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 3 {
				if _, err := h.m.Step(context.Background()); err != nil {
					t.Error(err)
				}
				h.bal.StepDone()
			}
		}()
	}
	wg.Wait()
	p := h1.m.Profile()
	for name, d := range map[string]time.Duration{"attention": p.Attention, "experts": p.Experts,
		"router": p.Router, "norms": p.NormsLoss, "graph": p.Graph} {
		if d <= 0 {
			t.Errorf("profiled model: %s took %v", name, d)
		}
	}
	if q := h2.m.Profile(); q != (Profile{}) {
		t.Errorf("the model without profiling recorded %+v", q)
	}
	h1.m.EnableProfile(false)
	if q := h1.m.Profile(); q != (Profile{}) {
		t.Errorf("profile not cleared: %+v", q)
	}
}

// TestMinRankBytesCountsTheRanksParameters: runconfig's host-memory bound
// counts exactly the parameters a rank's layout holds (16 bytes each),
// however tensor and expert parallelism split them.
func TestMinRankBytesCountsTheRanksParameters(t *testing.T) {
	for _, name := range []string{"tiny", "small", "science"} {
		c, _ := Preset(name)
		c.Shared, c.MoEEvery = 1, 2
		c.Defaults()
		for _, par := range []struct{ tp, ep int }{{1, 1}, {2, 1}, {1, 2}, {2, 4}} {
			acts := float64(4*c.SeqLen) * float64(c.Layers*c.Dim+2*c.Vocab) * 4
			got := c.MinRankBytes(4, par.tp, par.ep) - acts
			want := 16 * float64(CountParams(c, 0, c.Experts/par.ep, par.tp))
			if got != want {
				t.Errorf("%s tp %d ep %d: the bound counts %.0f parameters, a rank holds %.0f", name, par.tp, par.ep, got/16, want/16)
			}
		}
	}
}
