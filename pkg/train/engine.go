package train

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/devcomm"
	"github.com/switchyard-ml/switchyard/pkg/gpu"
	"github.com/switchyard-ml/switchyard/pkg/model"
	"github.com/switchyard-ml/switchyard/pkg/optim"
)

// engine is one rank's compute: the model's forward and backward over a
// micro-batch and the optimizer update. Two implement it: the CPU engine
// (pkg/model's gorgonia graph with the Go kernels, AdamW in Go) and the
// GPU engine (pkg/gpu). Both keep the parameters in the same flat layout
// (model.Params), so checkpoints move between them.
type engine interface {
	// params is the parameter layout; for the CPU engine its Data and
	// Grad are the live buffers, for the GPU engine Data is a host copy.
	params() *model.Params
	trainBatch() *model.Batch
	evalBatch() *model.Batch
	evalStats() *model.ExpertStats
	// step runs forward and backward on trainBatch, accumulating the
	// gradients, and returns the mean cross-entropy (nats/token).
	step(ctx context.Context) (float64, error)
	// forward evaluates evalBatch: per-token NLL, expert statistics.
	forward(ctx context.Context) ([]float32, error)
	// update reduces the gradients over the data-parallel ranks, clips
	// them to the global norm, applies AdamW with lr and clears them; it
	// returns the gradient norm before clipping.
	update(ctx context.Context, lr float64) (float64, error)
	// snapshot copies parameters and AdamW state into s (resizing its
	// buffers as needed); restore sets them from s.
	snapshot(s *State) error
	restore(s State) error
	// split is the time of the parts of the steps since enableProfile.
	enableProfile(on bool)
	split() map[string]float64
	close() error
}

// ---- CPU ----

type cpuEngine struct {
	m    *model.Model
	opt  *optim.AdamW
	dist *Dist
	t    *time.Duration // optimizer time
}

func (e *cpuEngine) params() *model.Params                     { return e.m.P }
func (e *cpuEngine) trainBatch() *model.Batch                  { return e.m.Train.Batch }
func (e *cpuEngine) evalBatch() *model.Batch                   { return e.m.Eval.Batch }
func (e *cpuEngine) evalStats() *model.ExpertStats             { return e.m.Eval.Stats }
func (e *cpuEngine) step(ctx context.Context) (float64, error) { return e.m.Step(ctx) }
func (e *cpuEngine) forward(ctx context.Context) ([]float32, error) {
	return e.m.Forward(ctx)
}

func (e *cpuEngine) update(ctx context.Context, lr float64) (float64, error) {
	if err := e.dist.reduceGrads(ctx, e.m.P); err != nil {
		return 0, err
	}
	start := time.Now()
	gnorm, err := e.dist.gradNorm(ctx, e.m.P)
	if err != nil {
		return 0, err
	}
	if s := e.opt.ClipScale(gnorm); s < 1 {
		for i := range e.m.P.Grad {
			e.m.P.Grad[i] *= float32(s)
		}
	}
	e.opt.Step(e.m.P.Data, e.m.P.Grad, lr)
	e.m.P.ZeroGrad()
	*e.t += time.Since(start)
	return gnorm, nil
}

func (e *cpuEngine) snapshot(s *State) error {
	s.Params = resize(s.Params, len(e.m.P.Data))
	s.AdamM = resize(s.AdamM, len(e.opt.M))
	s.AdamV = resize(s.AdamV, len(e.opt.V))
	s.AdamT = e.opt.T
	copyParallel([][2][]float32{{s.Params, e.m.P.Data}, {s.AdamM, e.opt.M}, {s.AdamV, e.opt.V}})
	return nil
}

func (e *cpuEngine) restore(s State) error {
	copy(e.m.P.Data, s.Params)
	copy(e.opt.M, s.AdamM)
	copy(e.opt.V, s.AdamV)
	e.opt.T = s.AdamT
	e.m.P.ZeroGrad()
	return nil
}

func (e *cpuEngine) enableProfile(on bool) { e.m.EnableProfile(on) }

func (e *cpuEngine) split() map[string]float64 {
	pf := e.m.Profile()
	return map[string]float64{
		"attention":        pf.Attention.Seconds(),
		"experts":          pf.Experts.Seconds(),
		"router_lbl":       pf.Router.Seconds(),
		"projections_head": pf.Graph.Seconds(),
		"norms_embed_loss": pf.NormsLoss.Seconds(),
	}
}

func (e *cpuEngine) close() error { return e.m.Close() }

// ---- GPU ----

type gpuEngine struct {
	m         *gpu.Model
	dist      *Dist        // data parallelism only (Dist.checkGPU)
	dc        devcomm.Comm // over the DP group when it has several ranks
	cfg       optim.Config
	train     *model.Batch
	eval      *model.Batch
	stats     *model.ExpertStats
	gradScale float32
	t         *time.Duration
}

func (e *gpuEngine) params() *model.Params         { return e.m.P }
func (e *gpuEngine) trainBatch() *model.Batch      { return e.train }
func (e *gpuEngine) evalBatch() *model.Batch       { return e.eval }
func (e *gpuEngine) evalStats() *model.ExpertStats { return e.stats }

func (e *gpuEngine) step(ctx context.Context) (float64, error) {
	return e.m.Step(ctx, e.train, e.gradScale)
}

func (e *gpuEngine) forward(ctx context.Context) ([]float32, error) {
	return e.m.Forward(ctx, e.eval, e.stats)
}

// update: with several data-parallel ranks the gradients are summed over
// the DP group on the device buffers (devcomm: NCCL, or host-staged in
// buckets), and the mean is taken by scaling: the norm of the sum divided
// by the DP size is the norm of the mean, and AdamW reads the gradient
// times clip/DP. Every rank's norm, clipping and AdamW step see the same
// gradient; the LBL counts were all-reduced during the steps by the
// balancer.
func (e *gpuEngine) update(ctx context.Context, lr float64) (float64, error) {
	mean := 1.0
	if e.dc != nil {
		g, n := e.m.GradBuffer()
		bucket := n
		if e.dc.Backend() == devcomm.Host {
			bucket = gradBucket // bounds the host staging and the transport's buffers
		}
		for off := 0; off < n; off += bucket {
			if err := e.dc.AllReduceSum(ctx, g.Add(int64(4*off)), min(bucket, n-off)); err != nil {
				return 0, fmt.Errorf("train: gradient all-reduce (%s): %w", e.dc.Backend(), err)
			}
		}
		mean = 1 / float64(e.dc.Size())
	}
	start := time.Now()
	gnorm, err := e.m.GradNorm(ctx)
	if err != nil {
		return 0, err
	}
	gnorm *= mean
	clip := 1.0
	if e.cfg.ClipNorm > 0 && gnorm > e.cfg.ClipNorm {
		clip = e.cfg.ClipNorm / (gnorm + 1e-6)
	}
	if err := e.m.Update(e.cfg, lr, clip*mean); err != nil {
		return 0, err
	}
	err = e.m.EndUpdate()
	*e.t += time.Since(start)
	return gnorm, err
}

func (e *gpuEngine) snapshot(s *State) error {
	n := len(e.m.P.Data)
	s.Params, s.AdamM, s.AdamV = resize(s.Params, n), resize(s.AdamM, n), resize(s.AdamV, n)
	s.AdamT = e.m.Steps()
	if err := e.m.Download(); err != nil {
		return err
	}
	copy(s.Params, e.m.P.Data)
	return e.m.Moments(s.AdamM, s.AdamV)
}

func (e *gpuEngine) restore(s State) error {
	copy(e.m.P.Data, s.Params)
	if err := e.m.Upload(); err != nil {
		return err
	}
	return e.m.SetMoments(s.AdamM, s.AdamV, s.AdamT)
}

func (e *gpuEngine) enableProfile(on bool) { e.m.EnableProfile(on) }

func (e *gpuEngine) split() map[string]float64 {
	out := map[string]float64{}
	for i, d := range e.m.Profile() {
		out[gpu.RegionNames[i]] = d.Seconds()
	}
	return out
}

func (e *gpuEngine) close() error {
	var err error
	if e.dc != nil {
		err = e.dc.Close()
	}
	return errors.Join(err, e.m.Close(), e.m.Device().Close())
}
