package train

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/cuda"
	"github.com/switchyard-ml/switchyard/pkg/data"
	"github.com/switchyard-ml/switchyard/pkg/parallel"
)

// curveOf trains `steps` steps on `dp` in-process data-parallel ranks
// (in-memory transport) and returns rank 0's per-step loss and LBL, and
// every rank's final parameters.
func curveOf(t *testing.T, dp int, balance parallel.Balance, mode string, micro, accum, steps int) (loss, lblv []float64, params [][]float32) {
	return curveOfEP(t, dp, 1, balance, mode, micro, accum, steps)
}

func curveOfEP(t *testing.T, dp, ep int, balance parallel.Balance, mode string, micro, accum, steps int) (loss, lblv []float64, params [][]float32) {
	return curveOfLayout(t, 1, dp, ep, balance, mode, micro, accum, steps)
}

// curveOfLayout runs tp x dp in-process ranks; micro is per DP rank (its
// TP peers share it).
func curveOfLayout(t *testing.T, tp, dp, ep int, balance parallel.Balance, mode string, micro, accum, steps int) (loss, lblv []float64, params [][]float32) {
	t.Helper()
	cfg, corpus := smallRun(t, mode, steps)
	cfg.MicroBatch, cfg.Accumulation = micro, accum
	c := curveRun(t, cfg, corpus, tp, dp, ep, balance, nil)
	return c.loss, c.lbl, c.params
}

// curves are what curveRun measured: rank 0's loss, summed LBL and
// gradient norm per step, and every rank's final parameters.
type curves struct {
	loss, lbl, gnorm []float64
	params           [][]float32
}

// curveRun trains cfg.Steps steps of tp x dp in-process ranks (on devices
// from dev when it is not nil: the GPU engine) and returns rank 0's loss
// and summed LBL per step and every rank's final parameters.
func curveRun(t *testing.T, cfg Config, corpus *data.Corpus, tp, dp, ep int, balance parallel.Balance, dev func() cuda.Device) (c curves) {
	t.Helper()
	steps := cfg.Steps
	cfg.Optim.ClipNorm = 0.5 // clipping needs the global gradient norm
	world := tp * dp
	layout, err := parallel.NewLayout(world, tp, dp, ep, parallel.WithBalance(balance))
	if err != nil {
		t.Fatal(err)
	}
	all := make([]int, world)
	for i := range all {
		all[i] = i
	}
	dp = world // from here on: the number of ranks
	opts := parallel.DefaultOptions()
	trs := parallel.NewMemTransports(dp, opts)
	trainers := make([]*Trainer, dp)
	errs := make([]error, dp)
	var wg sync.WaitGroup
	for r := 0; r < dp; r++ {
		world, err := parallel.NewComm(trs[r], all, parallel.CommOptions{Name: "world"})
		if err != nil {
			t.Fatal(err)
		}
		dist, err := NewDist(layout, r, world)
		if err != nil {
			t.Fatal(err)
		}
		var d cuda.Device
		if dev != nil {
			d = dev()
		}
		// concurrently, as the ranks' processes do: a GPU rank's
		// construction agrees on the collectives with the others
		wg.Go(func() { trainers[r], errs[r] = NewParallelOn(cfg, corpus, nil, dist, d) })
	}
	wg.Wait()
	defer func() {
		for r := range trainers {
			if trainers[r] != nil {
				trainers[r].Close()
			}
			trs[r].Close()
		}
	}()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	for s := 0; s < steps; s++ {
		var wg sync.WaitGroup
		errs := make([]error, dp)
		sms := make([]StepMetrics, dp)
		for r := 0; r < dp; r++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sms[r], errs[r] = trainers[r].TrainStep(context.Background())
			}()
		}
		wg.Wait()
		for r, err := range errs {
			if err != nil {
				t.Fatalf("rank %d step %d: %v", r, s, err)
			}
		}
		var l float64
		for _, v := range sms[0].LBL {
			l += v
		}
		c.loss = append(c.loss, sms[0].Loss)
		c.lbl = append(c.lbl, l)
		c.gnorm = append(c.gnorm, sms[0].GradNorm)
	}
	for _, tr := range trainers {
		var s State
		if err := tr.eng.snapshot(&s); err != nil {
			t.Fatal(err)
		}
		c.params = append(c.params, s.Params)
	}
	return c
}

func closeCurves(t *testing.T, what string, a, b []float64, rel float64) {
	t.Helper()
	worst := 0.0
	for i := range a {
		worst = max(worst, math.Abs(a[i]-b[i])/math.Abs(b[i]))
	}
	t.Logf("%s: worst relative difference %.2e over %d steps", what, worst, len(a))
	if worst > rel {
		t.Errorf("%s differ by %.2e relative (limit %.0e):\n%v\n%v", what, worst, rel, a, b)
	}
}

// Data parallelism is the single-process run of the same global batch:
// DP ranks each taking MicroBatch sequences of a global micro-batch of
// MicroBatch x DP equal one process with micro-batch MicroBatch x DP and
// the same accumulation — loss and global-batch LBL per step within 1e-5
// over 20 steps, and every rank ends with the same parameters.
func TestDataParallelMatchesOneProcess(t *testing.T) {
	const steps = 20
	refLoss, refLBL, _ := curveOf(t, 1, parallel.BalanceDP, "global", 8, 2, steps)
	for _, dp := range []int{2, 4} {
		t.Run(fmt.Sprintf("dp%d", dp), func(t *testing.T) {
			loss, lblv, params := curveOf(t, dp, parallel.BalanceDP, "global", 8/dp, 2, steps)
			closeCurves(t, "loss", loss, refLoss, 1e-5)
			closeCurves(t, "global-batch LBL", lblv, refLBL, 1e-5)
			for r := 1; r < dp; r++ {
				for i := range params[0] {
					if params[r][i] != params[0][i] {
						t.Fatalf("rank %d parameter %d differs from rank 0: %v vs %v", r, i, params[r][i], params[0][i])
					}
				}
			}
		})
	}
}

// With balance group "none" every rank balances only its own micro-batch:
// DP=2 x accumulation 1 reproduces one process with micro-batch LBL over
// the same micro-batches (accumulation 2).
func TestBalanceNoneIsMicroBatchLBL(t *testing.T) {
	const steps = 10
	refLoss, refLBL, _ := curveOf(t, 1, parallel.BalanceDP, "micro", 4, 2, steps)
	loss, lblv, _ := curveOf(t, 2, parallel.BalanceNone, "global", 4, 1, steps)
	closeCurves(t, "loss", loss, refLoss, 1e-5)
	closeCurves(t, "LBL", lblv, refLBL, 1e-5)
}

// Balance group dp and none must actually differ (else the tests above
// could not tell them apart).
func TestBalanceGroupMatters(t *testing.T) {
	_, a, _ := curveOf(t, 2, parallel.BalanceDP, "global", 4, 1, 2)
	_, b, _ := curveOf(t, 2, parallel.BalanceNone, "global", 4, 1, 2)
	if a[0] == b[0] {
		t.Fatalf("balance dp and none gave the same LBL %v", a[0])
	}
}

// Micro-batch LBL does not depend on the balance group: DP=4 without
// accumulation matches one process accumulating the same 4 micro-batches.
func TestDataParallelMatchesAccumulation(t *testing.T) {
	const steps = 10
	refLoss, refLBL, _ := curveOf(t, 1, parallel.BalanceDP, "micro", 2, 4, steps)
	loss, lblv, _ := curveOf(t, 4, parallel.BalanceDP, "micro", 2, 1, steps)
	closeCurves(t, "loss", loss, refLoss, 1e-5)
	closeCurves(t, "micro LBL", lblv, refLBL, 1e-5)
}

// Expert parallelism: experts live only on their EP rank and tokens travel
// by all-to-all; EP=2 and EP=4 (over DP=4) match EP=1 over the same DP and
// one process with the whole global micro-batch, loss and global-batch LBL
// within 1e-5 over 20 steps.
func TestExpertParallelMatchesOneProcess(t *testing.T) {
	const steps = 20
	refLoss, refLBL, refParams := curveOf(t, 1, parallel.BalanceDP, "global", 8, 2, steps)
	for _, tc := range []struct{ dp, ep int }{{2, 2}, {4, 2}, {4, 4}} {
		t.Run(fmt.Sprintf("dp%d-ep%d", tc.dp, tc.ep), func(t *testing.T) {
			loss, lblv, params := curveOfEP(t, tc.dp, tc.ep, parallel.BalanceDP, "global", 8/tc.dp, 2, steps)
			closeCurves(t, "loss", loss, refLoss, 1e-5)
			closeCurves(t, "global-batch LBL", lblv, refLBL, 1e-5)
			// each rank holds only E/ep experts of each of the 2 MoE layers
			// (3 matrices of 32x32 per expert)
			const perExpert, experts, layers = 3 * 32 * 32, 4, 2
			want := len(refParams[0]) - (experts-experts/tc.ep)*layers*perExpert
			for r := range params {
				if len(params[r]) != want {
					t.Fatalf("rank %d holds %d parameters, want %d", r, len(params[r]), want)
				}
			}
		})
	}
}

// Tensor parallelism: Megatron-split attention and TED-split MoE tokens over
// TP=2 match one process; so does the combined layout TP=2 x DP=2 with
// EP=2 (4 ranks) — loss and global-batch LBL within 1e-5 over 20 steps.
func TestTensorParallelMatchesOneProcess(t *testing.T) {
	const steps = 20
	refLoss, refLBL, refParams := curveOf(t, 1, parallel.BalanceDP, "global", 8, 2, steps)
	for _, tc := range []struct{ tp, dp, ep int }{{2, 1, 1}, {2, 2, 2}} {
		t.Run(fmt.Sprintf("tp%d-dp%d-ep%d", tc.tp, tc.dp, tc.ep), func(t *testing.T) {
			loss, lblv, params := curveOfLayout(t, tc.tp, tc.dp, tc.ep, parallel.BalanceDP, "global", 8/tc.dp, 2, steps)
			closeCurves(t, "loss", loss, refLoss, 1e-5)
			closeCurves(t, "global-batch LBL", lblv, refLBL, 1e-5)
			// d = 32, 2 layers: each TP rank holds half of wqkv (32x96)
			// and wo (32x32); each EP rank half of the 4 experts
			const d, layers, perExpert = 32, 2, 3 * 32 * 32
			want := len(refParams[0]) - layers*(3*d*d+d*d)*(tc.tp-1)/tc.tp - (4-4/tc.ep)*layers*perExpert
			for r := range params {
				if len(params[r]) != want {
					t.Fatalf("rank %d holds %d parameters, want %d", r, len(params[r]), want)
				}
			}
		})
	}
}

// Micro-batch LBL needs a micro-batch's counts on one rank: refused with TP.
func TestTensorParallelRefusesMicroLBL(t *testing.T) {
	cfg, corpus := smallRun(t, "micro", 1)
	layout, _ := parallel.NewLayout(2, 2, 1, 1)
	trs := parallel.NewMemTransports(2, parallel.DefaultOptions())
	defer trs[0].Close()
	defer trs[1].Close()
	world, _ := parallel.NewComm(trs[0], []int{0, 1}, parallel.CommOptions{Name: "world"})
	dist, err := NewDist(layout, 0, world)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewParallel(cfg, corpus, nil, dist); err == nil || !errors.Is(err, ErrConfig) {
		t.Fatalf("micro LBL with tp=2: %v", err)
	}
}

// Micro-batch LBL under tensor parallelism, as the refusal of lbl.mode
// micro with tp suggests: the global-batch LBL over a window of one
// micro-batch, balanced over the TP group (balance none), trains as one
// process with micro-batch LBL does.
func TestTensorParallelMicroBatchBalance(t *testing.T) {
	const steps = 10
	cfg, corpus := smallRun(t, "micro", steps)
	cfg.MicroBatch, cfg.Accumulation = 8, 2
	ref := curveRun(t, cfg, corpus, 1, 1, 1, parallel.BalanceDP, nil)
	cfg.LBL.Mode, cfg.LBL.Window = "global", 1
	tp := curveRun(t, cfg, corpus, 2, 1, 1, parallel.BalanceNone, nil)
	closeCurves(t, "loss", tp.loss, ref.loss, 1e-5)
	closeCurves(t, "LBL", tp.lbl, ref.lbl, 1e-5)
}
