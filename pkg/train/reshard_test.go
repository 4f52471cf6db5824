package train

import (
	"context"
	"math"
	"sync"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/cuda"
	"github.com/switchyard-ml/switchyard/pkg/data"
	"github.com/switchyard-ml/switchyard/pkg/parallel"
)

// ranksFor builds the in-process trainers of one layout (micro is per DP
// rank; TP peers share it).
func ranksFor(t *testing.T, tp, dp, ep int, cfg Config, corpus *data.Corpus) ([]*Trainer, func()) {
	t.Helper()
	return ranksOn(t, tp, dp, ep, cfg, corpus, nil)
}

// ranksOn is ranksFor with each rank's GPU from dev (nil: cfg.Device's).
func ranksOn(t *testing.T, tp, dp, ep int, cfg Config, corpus *data.Corpus, dev func() cuda.Device) ([]*Trainer, func()) {
	t.Helper()
	world := tp * dp
	layout, err := parallel.NewLayout(world, tp, dp, ep)
	if err != nil {
		t.Fatal(err)
	}
	all := make([]int, world)
	for i := range all {
		all[i] = i
	}
	trs := parallel.NewMemTransports(world, parallel.DefaultOptions())
	trainers := make([]*Trainer, world)
	errs := make([]error, world)
	var wg sync.WaitGroup
	for r := 0; r < world; r++ {
		comm, err := parallel.NewComm(trs[r], all, parallel.CommOptions{Name: "world"})
		if err != nil {
			t.Fatal(err)
		}
		dist, err := NewDist(layout, r, comm)
		if err != nil {
			t.Fatal(err)
		}
		var d cuda.Device
		if dev != nil {
			d = dev()
		}
		wg.Add(1)
		go func() { // ranks agree on their collectives at construction: concurrently, like real ones
			defer wg.Done()
			trainers[r], errs[r] = NewParallelOn(cfg, corpus, nil, dist, d)
		}()
	}
	wg.Wait()
	closeAll := func() {
		for r := range trainers {
			if trainers[r] != nil {
				trainers[r].Close()
			}
			trs[r].Close()
		}
	}
	for r, err := range errs {
		if err != nil {
			closeAll()
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	return trainers, closeAll
}

// onAll runs fn on every rank concurrently and fails on the first error.
func onAll(t *testing.T, trainers []*Trainer, fn func(*Trainer) error) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, len(trainers))
	for r, tr := range trainers {
		wg.Add(1)
		go func() { defer wg.Done(); errs[r] = fn(tr) }()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
}

func meanBits(ev *Eval) float64 {
	var s float64
	for _, b := range ev.BitsPerByte {
		s += b
	}
	return s / float64(len(ev.BitsPerByte))
}

// A checkpoint saved under (TP2, EP2, DP2) loads under (TP1, EP4, DP4) and
// (TP1, EP1, DP1) — experts move between ranks, attention slices are
// reassembled — and gives the same validation loss (within float32
// summation-order differences, 1e-5 relative).
func TestReshardCheckpoint(t *testing.T) {
	const steps = 3
	cfg, corpus := smallRun(t, "global", 10)
	cfg.Checkpoint = CheckpointConfig{Dir: t.TempDir(), Every: steps}
	ctx := context.Background()

	src, closeSrc := ranksFor(t, 2, 2, 2, withMicro(cfg, 4), corpus)
	want := trainAndSave(t, src, steps)
	closeSrc()

	cfg.Resume = true
	for _, tc := range []struct{ tp, dp, ep, micro int }{{1, 4, 4, 2}, {1, 1, 1, 8}} {
		dst, closeDst := ranksFor(t, tc.tp, tc.dp, tc.ep, withMicro(cfg, tc.micro), corpus)
		var got float64
		onAll(t, dst, func(tr *Trainer) error {
			if tr.Step() != steps {
				t.Errorf("layout tp%d dp%d ep%d resumed at step %d, want %d", tc.tp, tc.dp, tc.ep, tr.Step(), steps)
			}
			ev, err := tr.Evaluate(ctx)
			if err == nil && (tr.Dist == nil || tr.Dist.Rank == 0) {
				got = meanBits(ev)
			}
			return err
		})
		closeDst()
		t.Logf("tp%d dp%d ep%d: validation %.6f bits/byte, saved under tp2 dp2 ep2: %.6f", tc.tp, tc.dp, tc.ep, got, want)
		if math.Abs(got-want) > 1e-5*want {
			t.Errorf("tp%d dp%d ep%d: validation %.7f, saved run %.7f", tc.tp, tc.dp, tc.ep, got, want)
		}
	}
}

// trainAndSave trains steps steps on every rank, checkpointing as
// configured and at the end, and returns rank 0's mean validation
// bits/byte afterwards.
func trainAndSave(t *testing.T, ranks []*Trainer, steps int) float64 {
	t.Helper()
	ctx := context.Background()
	for i := 0; i < steps; i++ {
		onAll(t, ranks, func(tr *Trainer) error {
			if _, err := tr.TrainStep(ctx); err != nil {
				return err
			}
			return tr.checkpointAfterStep(ctx)
		})
	}
	onAll(t, ranks, func(tr *Trainer) error { return tr.checkpointAtEnd(ctx) })
	var bits float64
	onAll(t, ranks, func(tr *Trainer) error {
		ev, err := tr.Evaluate(ctx)
		if err == nil && tr.Dist.Rank == 0 {
			bits = meanBits(ev)
		}
		return err
	})
	return bits
}

func withMicro(c Config, micro int) Config {
	c.MicroBatch = micro
	return c
}
