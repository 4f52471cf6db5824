package train

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/cuda"
	"github.com/switchyard-ml/switchyard/pkg/devcomm"
	"github.com/switchyard-ml/switchyard/pkg/gpu"
	"github.com/switchyard-ml/switchyard/pkg/model"
	"github.com/switchyard-ml/switchyard/pkg/optim"
	"github.com/switchyard-ml/switchyard/pkg/parallel"
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
	// abort tears down collectives that peers may still wait in (before
	// close, after a failure).
	abort()
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

func (e *cpuEngine) abort()       {} // the transport's collectives end with their timeouts and aborts
func (e *cpuEngine) close() error { return e.m.Close() }

// ---- GPU ----

type gpuEngine struct {
	m         *gpu.Model
	dist      *Dist // data, expert and tensor parallelism
	colls     gpuCollectives
	nvml      *cuda.NVML // the step metrics' GPU utilisation (nil: none)
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

// update: with tensor parallelism the gradients of the MoE layers'
// parameters (partial sums over the TP ranks' token slices) are summed
// over the TP group first; with several data-parallel ranks the gradients
// are then summed over the DP group on the device buffers (devcomm: NCCL,
// or host-staged in buckets), and the mean is taken by scaling: the norm
// of the sum divided by the DP size is the norm of the mean, and AdamW
// reads the gradient times clip/DP. Every rank's norm, clipping and AdamW
// step see the same gradient; the LBL counts were all-reduced during the
// steps by the balancer.
func (e *gpuEngine) update(ctx context.Context, lr float64) (float64, error) {
	if e.dist != nil && e.dist.runs == nil {
		e.dist.planRuns(e.m.P)
	}
	if tp := e.colls.tp; tp != nil {
		if err := e.sumRuns(ctx, func(r gradRun) devcomm.Comm {
			if r.tp == model.TPPartial {
				return tp
			}
			return nil
		}); err != nil {
			return 0, fmt.Errorf("train: tensor-parallel gradient all-reduce: %w", err)
		}
	}
	mean := 1.0
	if dp := e.colls.dp; dp != nil {
		if err := e.sumRuns(ctx, func(r gradRun) devcomm.Comm {
			if r.expert {
				return e.colls.expertDP // the owner summed every source's rows already
			}
			return dp
		}); err != nil {
			return 0, fmt.Errorf("train: gradient all-reduce: %w", err)
		}
		mean = 1 / float64(dp.Size())
	}
	start := time.Now()
	gnorm, err := e.gradNorm(ctx)
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

// sumRuns all-reduces each run of the flat gradient over the group via
// picks for it (nil: none), in buckets when host-staged.
func (e *gpuEngine) sumRuns(ctx context.Context, via func(gradRun) devcomm.Comm) error {
	g, _ := e.m.GradBuffer()
	for _, r := range e.dist.runs {
		c := via(r)
		if c == nil {
			continue
		}
		bucket := r.len
		if c.Backend() == devcomm.Host {
			bucket = gradBucket // bounds the host staging and the transport's buffers
		}
		for off := r.off; off < r.off+r.len; off += bucket {
			if err := c.AllReduceSum(ctx, g.Add(int64(4*off)), min(bucket, r.off+r.len-off)); err != nil {
				return fmt.Errorf("%s: %w", c.Backend(), err)
			}
		}
	}
	return nil
}

// gradNorm is the norm of the whole model's (summed) gradient: with
// expert parallelism each rank holds its experts' part, whose squares are
// summed over the EP group, and with tensor parallelism its slices of the
// attention projections, summed over the TP group (as Dist.gradNorm does
// on the CPU).
func (e *gpuEngine) gradNorm(ctx context.Context) (float64, error) {
	if e.dist == nil || (e.dist.ep == nil && e.dist.tp == nil) {
		return e.m.GradNorm(ctx)
	}
	var rep float64
	exp, shard := []float64{0}, []float64{0}
	for _, r := range e.dist.runs {
		s, err := e.m.GradSumSq(r.off, r.len)
		if err != nil {
			return 0, err
		}
		switch {
		case r.expert:
			exp[0] += s
		case r.tp == model.TPSharded:
			shard[0] += s
		default:
			rep += s
		}
	}
	for _, g := range []struct {
		c *parallel.Comm
		v []float64
	}{{e.dist.ep, exp}, {e.dist.tp, shard}} {
		if g.c == nil {
			continue
		}
		if err := g.c.AllReduceF64(ctx, g.v, parallel.Sum); err != nil {
			return 0, fmt.Errorf("train: gradient norm: %w", err)
		}
	}
	return math.Sqrt(rep + exp[0] + shard[0]), nil
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

func (e *gpuEngine) abort() { e.colls.abort() }

func (e *gpuEngine) close() error {
	err := errors.Join(e.m.Close(), e.colls.close(), e.m.Device().Close())
	if e.nvml != nil {
		err = errors.Join(err, e.nvml.Close())
	}
	return err
}

// gpuCollectives are a GPU rank's device collectives (pkg/devcomm), one
// per group that has several ranks: the gradient all-reduce over the DP
// group and over the expert-DP group (expert gradients), the expert
// rows' exchange over the EP group, and the activations' all-reduces and
// all-gathers over the TP group (and its partial gradients' sum).
type gpuCollectives struct {
	dp, expertDP, ep, tp devcomm.Comm
}

func (c gpuCollectives) all() []devcomm.Comm { return []devcomm.Comm{c.dp, c.expertDP, c.ep, c.tp} }

// openCollectives opens them in one order on every rank (DP, expert-DP,
// EP, TP: each a collective over its group).
func openCollectives(dev cuda.Device, d *Dist, backend string) (gpuCollectives, error) {
	var c gpuCollectives
	if d == nil {
		return c, nil
	}
	want, err := devcomm.ParseBackend(backend)
	if err != nil {
		return c, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	for _, g := range []struct {
		name string
		comm *parallel.Comm
		dst  *devcomm.Comm
		uses devcomm.Uses
	}{
		{"data-parallel", d.dp, &c.dp, devcomm.UsesAllReduce}, // gradients
		{"expert-data-parallel", d.expertDP, &c.expertDP, devcomm.UsesAllReduce},
		{"expert-parallel", d.ep, &c.ep, devcomm.UsesAllToAll},                          // the experts' rows
		{"tensor-parallel", d.tp, &c.tp, devcomm.UsesAllReduce | devcomm.UsesAllGather}, // attention sums, MoE gathers
	} {
		if g.comm == nil || g.comm.Size() == 1 {
			continue
		}
		if *g.dst, err = devcomm.Open(context.Background(), dev, g.comm, want, g.uses); err != nil {
			return c, errors.Join(fmt.Errorf("train: %s collectives: %w", g.name, err), c.close())
		}
	}
	return c, nil
}

func (c gpuCollectives) describe() string {
	var parts []string
	for _, g := range []struct {
		name string
		c    devcomm.Comm
	}{{"gradients over the DP group", c.dp}, {"expert gradients over the expert-DP group", c.expertDP}, {"expert rows over the EP group", c.ep},
		{"attention and MoE activations over the TP group", c.tp}} {
		if g.c != nil {
			parts = append(parts, fmt.Sprintf("%s (%d ranks): %s", g.name, g.c.Size(), g.c.Describe()))
		}
	}
	return strings.Join(parts, "; ")
}

// abort aborts the communicators that can be (NCCL's); Close then has
// nothing to wait for.
func (c gpuCollectives) abort() {
	for _, g := range c.all() {
		if a, ok := g.(interface{ Abort() error }); ok {
			_ = a.Abort() // an error of a communicator given up on says nothing more
		}
	}
}

func (c gpuCollectives) close() error {
	var errs []error
	for _, g := range c.all() {
		if g != nil {
			errs = append(errs, g.Close())
		}
	}
	return errors.Join(errs...)
}
