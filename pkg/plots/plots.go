package plots

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	_ "gonum.org/v1/plot/vg/vgimg" // the png format
	_ "gonum.org/v1/plot/vg/vgsvg" // the svg format

	"github.com/switchyard-ml/switchyard/pkg/train"
)

var (
	// ErrNoData: there is nothing to draw (no step metrics, no runs).
	ErrNoData = errors.New("plots: nothing to plot")
	// ErrInvalid: the numbers do not fit together (steps out of order,
	// expert-load rows of different lengths, ...).
	ErrInvalid = errors.New("plots: invalid input")
)

// Every picture is 8 x 5 inches: 768 x 480 pixels in the PNG (96 dpi).
const (
	width  = 8 * vg.Inch
	height = 5 * vg.Inch
)

// formats are the files written for every picture.
var formats = []string{"png", "svg"}

// Run is one training run to draw.
type Run struct {
	// Title starts every picture's title (a job ID, a run's name); may be
	// empty.
	Title string
	// Metrics are the run's step metrics, steps increasing.
	Metrics []train.StepMetrics
	// Report is the run's final report; nil: no specialisation heat maps.
	Report *train.Report
	// LBLMean says that each step's LBL holds one value, the mean over the
	// MoE layers (all that the cluster's metrics stream carries), not one
	// value per layer.
	LBLMean bool
}

// Write draws the run into dir (created if missing) and returns the paths
// written: loss, lbl (when the steps carry LBL), tokens_per_s,
// expert_load_layer<L> per MoE layer (when the steps carry expert load)
// and, with a report, specialisation_layer<L>; each as .png and .svg.
func (r Run) Write(dir string) ([]string, error) {
	if err := r.check(); err != nil {
		return nil, err
	}
	var loads []*grid
	if r.hasLoad() {
		loads = r.loadGrids()
	}
	var specs []*grid
	if r.Report != nil {
		var err error
		if specs, err = specialisationGrids(r.Report); err != nil {
			return nil, err
		}
	}
	w := &writer{dir: dir}
	w.plot("loss", r.linePlot("training loss", "loss (nats/token)", func(m *train.StepMetrics) []float64 { return []float64{m.Loss} }, nil))
	if r.hasLBL() {
		title, names := "load-balancing loss per MoE layer (1.0 is balanced)", r.lblNames()
		if r.LBLMean {
			title = "load-balancing loss, mean over MoE layers (1.0 is balanced)"
		}
		w.plot("lbl", r.linePlot(title, r.lblLabel(), func(m *train.StepMetrics) []float64 { return m.LBL }, names))
	}
	rate := r.linePlot("throughput", "tokens/s", func(m *train.StepMetrics) []float64 { return []float64{m.TokensPerS} }, nil)
	rate.Y.Min = 0 // a drop reads at its true size
	w.plot("tokens_per_s", rate)
	for l, g := range loads {
		t := fmt.Sprintf("expert load, MoE layer %d\nshare of the layer's routed tokens per step (1/E = %.3g is balanced)", l, 1/float64(g.rows()))
		if g.binned > 1 {
			t = fmt.Sprintf("expert load, MoE layer %d\nshare of the layer's routed tokens, mean over bins of %d steps (1/E = %.3g is balanced)", l, g.binned, 1/float64(g.rows()))
		}
		w.heat(fmt.Sprintf("expert_load_layer%d", l), r.title(t), g)
	}
	for l, g := range specs {
		t := fmt.Sprintf("specialisation, MoE layer %d\nexpert selection frequency of each domain's validation tokens (1/E = %.3g is uniform)", l, 1/float64(g.cols()))
		w.heat(fmt.Sprintf("specialisation_layer%d", l), r.title(t), g)
	}
	return w.paths, w.err
}

// check refuses metrics the pictures cannot be drawn from, naming the
// step and what is wrong.
func (r Run) check() error {
	ms := r.Metrics
	if len(ms) == 0 {
		return fmt.Errorf("%w: no step metrics", ErrNoData)
	}
	lblAt, loadAt := -1, -1 // the first step with LBL, with expert load
	for i := range ms {
		m := &ms[i]
		if i > 0 && m.Step <= ms[i-1].Step {
			return fmt.Errorf("%w: step %d follows step %d (steps must increase)", ErrInvalid, m.Step, ms[i-1].Step)
		}
		if len(m.LBL) > 0 {
			if lblAt < 0 {
				lblAt = i
			} else if len(m.LBL) != len(ms[lblAt].LBL) {
				return fmt.Errorf("%w: step %d has LBL for %d layers, step %d for %d", ErrInvalid, m.Step, len(m.LBL), ms[lblAt].Step, len(ms[lblAt].LBL))
			}
		}
		if len(m.ExpertLoad) == 0 {
			continue
		}
		if loadAt < 0 {
			loadAt = i
		}
		ref := ms[loadAt].ExpertLoad
		if len(m.ExpertLoad) != len(ref) {
			return fmt.Errorf("%w: step %d has expert_load for %d layers, step %d for %d", ErrInvalid, m.Step, len(m.ExpertLoad), ms[loadAt].Step, len(ref))
		}
		for l, row := range m.ExpertLoad {
			if len(row) == 0 || len(row) != len(ref[0]) {
				return fmt.Errorf("%w: step %d: expert_load of layer %d has %d experts, layer 0 of step %d has %d (ragged rows)",
					ErrInvalid, m.Step, l, len(row), ms[loadAt].Step, len(ref[0]))
			}
		}
	}
	return nil
}

func (r Run) hasLBL() bool {
	for _, m := range r.Metrics {
		if len(m.LBL) > 0 {
			return true
		}
	}
	return false
}

func (r Run) hasLoad() bool {
	for _, m := range r.Metrics {
		if len(m.ExpertLoad) > 0 {
			return true
		}
	}
	return false
}

func (r Run) lblNames() []string {
	if r.LBLMean {
		return []string{"mean over layers"}
	}
	var n int
	for _, m := range r.Metrics {
		n = max(n, len(m.LBL))
	}
	names := make([]string, n)
	for l := range names {
		names[l] = fmt.Sprintf("layer %d", l)
	}
	return names
}

func (r Run) lblLabel() string {
	if r.Report != nil && r.Report.LBLMode != "" {
		return "LBL (" + r.Report.LBLMode + ", unweighted)"
	}
	return "LBL (unweighted)"
}

func (r Run) title(s string) string {
	if r.Title == "" {
		return s
	}
	return r.Title + ": " + s
}

// linePlot draws one line per value that ys returns for a step (names
// label them when there are several); non-finite values are left out.
func (r Run) linePlot(title, yLabel string, ys func(*train.StepMetrics) []float64, names []string) *plot.Plot {
	var series []plotter.XYs
	for i := range r.Metrics {
		m := &r.Metrics[i]
		for k, y := range ys(m) {
			for len(series) <= k {
				series = append(series, nil)
			}
			if !math.IsNaN(y) && !math.IsInf(y, 0) {
				series[k] = append(series[k], plotter.XY{X: float64(m.Step), Y: y})
			}
		}
	}
	p := newPlot(r.title(title), "step", yLabel)
	for k, xys := range series {
		if len(xys) == 0 {
			continue
		}
		l := &plotter.Line{XYs: xys, LineStyle: plotter.DefaultLineStyle}
		l.Color = plotutil.Color(k)
		l.Width = vg.Points(1.5)
		p.Add(l)
		if len(names) > 1 && k < len(names) {
			p.Legend.Add(names[k], l)
		}
	}
	return p
}

func newPlot(title, x, y string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = x
	p.Y.Label.Text = y
	p.X.Tick.Marker, p.Y.Tick.Marker = exactTicks{}, exactTicks{}
	p.Add(plotter.NewGrid())
	p.Legend.Top = true
	return p
}

// exactTicks is gonum's default ticks, the major ones relabelled with as
// many decimals as their values need when gonum's labels round them: over
// a narrow range it labels 2.05 and 2.15 "2.1" and "2.2", next to 2.1
// and 2.2.
type exactTicks struct{}

func (exactTicks) Ticks(lo, hi float64) []plot.Tick {
	ts := plot.DefaultTicks{}.Ticks(lo, hi)
	var major []float64
	for _, t := range ts {
		if t.Label != "" {
			major = append(major, t.Value)
		}
	}
	if len(major) < 2 {
		return ts
	}
	tol := math.Abs(major[1]-major[0]) * 1e-6
	exact := func(label func(float64) string) bool {
		for _, v := range major {
			if x, err := strconv.ParseFloat(label(v), 64); err != nil || math.Abs(x-v) > tol {
				return false
			}
		}
		return true
	}
	labels := map[float64]string{}
	for _, t := range ts {
		if t.Label != "" {
			labels[t.Value] = t.Label
		}
	}
	if exact(func(v float64) string { return labels[v] }) {
		return ts
	}
	for prec := 0; prec <= 15; prec++ {
		label := func(v float64) string { return strconv.FormatFloat(v, 'f', prec, 64) }
		if exact(label) {
			for i := range ts {
				if ts[i].Label != "" {
					ts[i].Label = label(ts[i].Value)
				}
			}
			break
		}
	}
	return ts
}

// writer writes pictures in every format and remembers the first error.
type writer struct {
	dir   string
	paths []string
	err   error
}

func (w *writer) plot(name string, p *plot.Plot) { w.draw(name, p.Draw) }

// draw renders one picture with fn into name.png and name.svg.
func (w *writer) draw(name string, fn func(draw.Canvas)) { w.drawSized(name, width, height, fn) }

// drawSized is draw for a picture of another size.
func (w *writer) drawSized(name string, wd, ht vg.Length, fn func(draw.Canvas)) {
	if w.err != nil {
		return
	}
	if err := os.MkdirAll(w.dir, 0o755); err != nil {
		w.err = fmt.Errorf("plots: %w", err)
		return
	}
	for _, f := range formats {
		c, err := draw.NewFormattedCanvas(wd, ht, f)
		if err != nil {
			w.err = fmt.Errorf("plots: %s: %w", f, err)
			return
		}
		fn(draw.New(c))
		path := filepath.Join(w.dir, name+"."+f)
		if err := writeFile(path, c); err != nil {
			w.err = err
			return
		}
		w.paths = append(w.paths, path)
	}
}

func writeFile(path string, c vg.CanvasWriterTo) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("plots: %w", err)
	}
	if _, err := c.WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("plots: write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("plots: write %s: %w", path, err)
	}
	return nil
}
