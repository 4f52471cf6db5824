package plots

import (
	"fmt"
	"math"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/switchyard-ml/switchyard/pkg/train"
)

// Series is one run of a comparison: the name of its variant (runs with
// the same name are seeds of one variant and share a colour), its step
// metrics and its final report; either may be missing.
type Series struct {
	Name    string
	Metrics []train.StepMetrics
	Report  *train.Report
	// Balance is how many sequences the run's load-balancing statistics
	// cover (0: unknown) and Random whether they are a random sample of
	// the global batch (the control); with two or more balance batches
	// among the reports, Compare draws the metrics against it.
	Balance int
	Random  bool
	// Seed pairs runs across variants: runs of one seed train on the same
	// batches (0: unknown). With seeds, Compare draws compare_loss_delta.
	Seed int64
}

// Compare draws runs side by side into dir: compare_loss (every run's
// training loss, one colour per variant) when any run has metrics,
// compare_val_curve (the same of the mean validation bits/byte) when any
// step has an evaluation, and
// compare_val_bpb (per domain, each variant's validation bits/byte, the
// mean over its seeds with a bar from min to max) when any has a report;
// each as .png and .svg. With reports it also draws
// compare_experts_layer<L>: per MoE layer, each variant's domain x expert
// selection frequencies (its first run with a report) stacked on one
// colour scale, experts ordered by the domain they serve most; and with
// two or more balance batches among them, compare_balance_bpb and
// compare_balance_mi: mean validation bits/byte and domain-expert mutual
// information (train.Report.DomainExpertMI, mean over layers) against the
// balance batch. title starts the pictures' titles (may be empty).
func Compare(dir, title string, runs []Series) ([]string, error) {
	var variants []string // in order of first appearance
	var haveMetrics, haveReport bool
	for _, r := range runs {
		if !slices.Contains(variants, r.Name) {
			variants = append(variants, r.Name)
		}
		if len(r.Metrics) > 0 {
			if err := (Run{Metrics: r.Metrics}).check(); err != nil {
				return nil, fmt.Errorf("%s: %w", r.Name, err)
			}
			haveMetrics = true
		}
		haveReport = haveReport || (r.Report != nil && len(r.Report.Domains) > 0)
	}
	if !haveMetrics && !haveReport {
		return nil, fmt.Errorf("%w: no run has metrics or a report", ErrNoData)
	}
	prefix := ""
	if title != "" {
		prefix = title + ": "
	}
	w := &writer{dir: dir}
	if haveMetrics {
		w.plot("compare_loss", compareLoss(prefix+"training loss", "loss (nats/token)", variants, runs, lossOf))
		if p := compareLossDelta(prefix, variants, runs); p != nil {
			w.plot("compare_loss_delta", p)
		}
		if slices.ContainsFunc(runs, func(r Series) bool {
			return slices.ContainsFunc(r.Metrics, func(m train.StepMetrics) bool { return len(m.ValBPB) > 0 })
		}) {
			w.plot("compare_val_curve", compareLoss(prefix+"validation bits/byte (mean over domains)", "validation bits/byte", variants, runs, valOf))
		}
	}
	if haveReport {
		w.plot("compare_val_bpb", compareBPB(prefix+"validation bits/byte per domain (bar: mean over seeds, whisker: min to max)", variants, runs))
		if err := w.compareExperts(prefix, variants, runs); err != nil {
			return w.paths, err
		}
		balances := map[int]bool{}
		for _, r := range runs {
			if r.Report != nil && r.Balance > 0 {
				balances[r.Balance] = true
			}
		}
		if len(balances) >= 2 {
			if p := compareBalance(prefix+"validation bits/byte against the balance batch", "validation bits/byte (mean over domains)", runs, (*train.Report).MeanBitsPerByte); p != nil {
				w.plot("compare_balance_bpb", p)
			}
			if p := compareBalance(prefix+"specialisation against the balance batch", "domain-expert mutual information (bits, mean over layers)", runs, (*train.Report).MeanDomainExpertMI); p != nil {
				w.plot("compare_balance_mi", p)
			}
		}
	}
	return w.paths, w.err
}

// deltaWindow is the trailing mean compare_loss_delta draws, in steps.
const deltaWindow = 20

// compareLossDelta draws lossDeltas; nil when there are none.
func compareLossDelta(prefix string, variants []string, runs []Series) *plot.Plot {
	deltas := lossDeltas(variants, runs)
	if len(deltas) == 0 {
		return nil
	}
	p := newPlot(fmt.Sprintf("%straining loss minus %s's, same seed (same batches), %d-step mean", prefix, orRun(variants[0]), deltaWindow), "step", "loss difference (nats/token)")
	named := map[string]bool{}
	for _, d := range deltas {
		l := &plotter.Line{XYs: d.xys, LineStyle: plotter.DefaultLineStyle}
		l.Color, l.Width = plotutil.Color(slices.Index(variants, d.name)), vg.Points(1.2)
		p.Add(l)
		if !named[d.name] {
			named[d.name] = true
			p.Legend.Add(legendName(d.name, runs), l)
		}
	}
	zero := plotter.NewFunction(func(float64) float64 { return 0 })
	zero.Color = plotutil.Color(0)
	zero.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
	p.Add(zero)
	return p
}

type lossDelta struct {
	name string
	seed int64
	xys  plotter.XYs
}

// lossDeltas is, for every run of a variant after the first whose seed
// the first variant also ran, its training loss minus the first
// variant's at the same step (the same batches: the data's noise
// cancels), as a trailing mean over deltaWindow steps.
func lossDeltas(variants []string, runs []Series) []lossDelta {
	if len(variants) < 2 {
		return nil
	}
	base := map[int64]map[int]float64{} // seed -> step -> loss of the first variant
	for _, r := range runs {
		if r.Name == variants[0] && r.Seed != 0 && len(r.Metrics) > 0 {
			m := map[int]float64{}
			for _, x := range r.Metrics {
				m[x.Step] = x.Loss
			}
			base[r.Seed] = m
		}
	}
	var out []lossDelta
	for _, r := range runs {
		b, ok := base[r.Seed]
		if r.Name == variants[0] || !ok {
			continue
		}
		var steps []int
		var diffs []float64
		for _, x := range r.Metrics {
			if y, ok := b[x.Step]; ok && !math.IsNaN(x.Loss-y) && !math.IsInf(x.Loss-y, 0) {
				steps, diffs = append(steps, x.Step), append(diffs, x.Loss-y)
			}
		}
		d := lossDelta{name: r.Name, seed: r.Seed}
		var sum float64
		for i := range diffs {
			sum += diffs[i]
			if i >= deltaWindow {
				sum -= diffs[i-deltaWindow]
			}
			if i+1 >= min(deltaWindow, len(diffs)) {
				d.xys = append(d.xys, plotter.XY{X: float64(steps[i]), Y: sum / float64(min(i+1, deltaWindow))})
			}
		}
		if len(d.xys) > 0 {
			out = append(out, d)
		}
	}
	return out
}

// compareBalance draws metric(report) against the balance batch (log2
// axis): a point per run, a line through the means of the runs that take
// contiguous statistics, and the random-sample runs (the control) as
// triangles of their own colour; nil when no run has a finite value.
func compareBalance(title, yLabel string, runs []Series, metric func(*train.Report) float64) *plot.Plot {
	p := newPlot(title, "balance batch (sequences, log scale)", yLabel)
	p.X.Scale = plot.LogScale{}
	type key struct {
		balance int
		random  bool
	}
	groups := map[key][]float64{}
	var keys []key
	for _, r := range runs {
		if r.Report == nil || r.Balance <= 0 {
			continue
		}
		v := metric(r.Report)
		if math.IsNaN(v) || math.IsInf(v, 0) {
			continue
		}
		k := key{r.Balance, r.Random}
		if _, ok := groups[k]; !ok {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], v)
	}
	if len(keys) == 0 {
		return nil // no finite value (e.g. reports without expert statistics)
	}
	slices.SortFunc(keys, func(a, b key) int { return a.balance - b.balance })
	var ticks plot.ConstantTicks
	for i, k := range keys {
		if i == 0 || k.balance != keys[i-1].balance {
			ticks = append(ticks, plot.Tick{Value: float64(k.balance), Label: fmt.Sprint(k.balance)})
		}
	}
	if len(ticks) > 0 {
		p.X.Tick.Marker = ticks
		p.X.Min, p.X.Max = ticks[0].Value/1.6, ticks[len(ticks)-1].Value*1.6
	}
	var means plotter.XYs
	for _, random := range []bool{false, true} {
		var pts plotter.XYs
		for _, k := range keys {
			if k.random != random {
				continue
			}
			var m float64
			for _, v := range groups[k] {
				pts = append(pts, plotter.XY{X: float64(k.balance), Y: v})
				m += v / float64(len(groups[k]))
			}
			if !random {
				means = append(means, plotter.XY{X: float64(k.balance), Y: m})
			}
		}
		if len(pts) == 0 {
			continue
		}
		sc, err := plotter.NewScatter(pts)
		if err != nil {
			continue
		}
		name := "contiguous statistics (a run each)"
		sc.Color, sc.Radius = plotutil.Color(0), vg.Points(3.5)
		if random {
			name = "random sample of the global batch (control)"
			sc.Color, sc.Shape = plotutil.Color(1), draw.TriangleGlyph{}
		}
		p.Add(sc)
		p.Legend.Add(name, sc)
	}
	if len(means) > 1 {
		l, err := plotter.NewLine(means)
		if err == nil {
			l.Color, l.Width = plotutil.Color(0), vg.Points(1)
			p.Add(l)
			p.Legend.Add("mean over seeds", l)
		}
	}
	return p
}

// compareExperts draws, per MoE layer, the variants' specialisation heat
// maps stacked (the first run of each variant with a report).
func (w *writer) compareExperts(prefix string, variants []string, runs []Series) error {
	var names []string
	var grids [][]*grid // [variant][layer]
	for _, v := range variants {
		for _, r := range runs {
			if r.Name != v || r.Report == nil || len(r.Report.Experts) == 0 {
				continue
			}
			gs, err := specialisationGrids(r.Report)
			if err != nil {
				return fmt.Errorf("%s: %w", v, err)
			}
			names, grids = append(names, v), append(grids, gs)
			break
		}
	}
	if len(grids) == 0 {
		return nil
	}
	for l := range grids[0] {
		var panels []*grid
		var titles []string
		for i, gs := range grids {
			if l < len(gs) {
				panels = append(panels, byServedDomain(gs[l]))
				titles = append(titles, orRun(names[i]))
			}
		}
		w.stack(fmt.Sprintf("compare_experts_layer%d", l),
			fmt.Sprintf("%sMoE layer %d: selection frequency per domain (experts ordered by the domain they serve most)", prefix, l), titles, panels)
	}
	return w.err
}

func orRun(name string) string {
	if name == "" {
		return "run"
	}
	return name
}

// byServedDomain returns g with its expert columns reordered: by the
// domain (row) each expert serves most, then by that frequency, largest
// first. A specialised layer shows a staircase, a uniform one noise.
func byServedDomain(g *grid) *grid {
	type col struct {
		i, row int
		v      float64
	}
	cols := make([]col, g.cols())
	for c, z := range g.zCR {
		best := 0
		for r := range z {
			if z[r] > z[best] {
				best = r
			}
		}
		cols[c] = col{c, best, z[best]}
	}
	slices.SortStableFunc(cols, func(a, b col) int {
		if a.row != b.row {
			return a.row - b.row
		}
		switch {
		case a.v > b.v:
			return -1
		case a.v < b.v:
			return 1
		}
		return 0
	})
	out := &grid{xLabel: "expert (reordered)", yLabel: g.yLabel, zLabel: g.zLabel, rowNames: g.rowNames}
	for k, c := range cols {
		out.xs = append(out.xs, float64(k))
		out.zCR = append(out.zCR, g.zCR[c.i])
		out.colNames = append(out.colNames, g.colNames[c.i])
	}
	return out
}

// lossOf and valOf are the curves compareLoss can draw: the training
// loss (nats/token) and the mean validation bits/byte of the steps with
// an evaluation.
func lossOf(m *train.StepMetrics) (float64, bool) { return m.Loss, true }

func valOf(m *train.StepMetrics) (float64, bool) {
	if len(m.ValBPB) == 0 {
		return 0, false
	}
	var s float64
	for _, v := range m.ValBPB {
		s += v / float64(len(m.ValBPB))
	}
	return s, true
}

// compareLoss draws y(m) of every run against the step, a colour per
// variant.
func compareLoss(title, yLabel string, variants []string, runs []Series, y func(*train.StepMetrics) (float64, bool)) *plot.Plot {
	p := newPlot(title, "step", yLabel)
	named := map[string]bool{}
	for _, r := range runs {
		var xys plotter.XYs
		for i := range r.Metrics {
			v, ok := y(&r.Metrics[i])
			if ok && !math.IsNaN(v) && !math.IsInf(v, 0) {
				xys = append(xys, plotter.XY{X: float64(r.Metrics[i].Step), Y: v})
			}
		}
		if len(xys) == 0 {
			continue
		}
		v := slices.Index(variants, r.Name)
		l := &plotter.Line{XYs: xys, LineStyle: plotter.DefaultLineStyle}
		l.Color, l.Width = plotutil.Color(v), vg.Points(1.2)
		p.Add(l)
		if !named[r.Name] {
			named[r.Name] = true
			p.Legend.Add(legendName(r.Name, runs), l)
		}
	}
	return p
}

// legendName is the variant's name and how many of its runs have
// metrics or a report.
func legendName(name string, runs []Series) string {
	n := 0
	for _, r := range runs {
		if r.Name == name && (len(r.Metrics) > 0 || r.Report != nil) {
			n++ // a run with something to draw
		}
	}
	if name == "" {
		name = "run"
	}
	if n == 1 {
		return name
	}
	return fmt.Sprintf("%s (%d runs)", name, n)
}

// compareBPB is grouped bars: per domain, one bar per variant.
func compareBPB(title string, variants []string, runs []Series) *plot.Plot {
	var domains []string
	bpb := map[[2]string][]float64{} // variant, domain -> per seed
	for _, r := range runs {
		if r.Report == nil {
			continue
		}
		for _, d := range r.Report.Domains {
			if !slices.Contains(domains, d.Domain) {
				domains = append(domains, d.Domain)
			}
			k := [2]string{r.Name, d.Domain}
			bpb[k] = append(bpb[k], d.BitsPerByte)
		}
	}
	p := newPlot(title, "domain", "validation bits/byte")
	// Domain d's group is centred at d*(V+1); variant v's bar at
	// d*(V+1) + v - (V-1)/2, one unit wide less a gap.
	V := float64(len(variants))
	barW := (width - 1.2*vg.Inch) / vg.Length(float64(len(domains))*(V+1)) * 0.9
	var ticks plot.ConstantTicks
	top := 0.0 // the highest whisker
	for d, dom := range domains {
		ticks = append(ticks, plot.Tick{Value: float64(d) * (V + 1), Label: dom})
	}
	for v, name := range variants {
		var pts plotter.XYs
		var errs plotter.YErrors
		for d, dom := range domains {
			xs := bpb[[2]string{name, dom}]
			if len(xs) == 0 {
				continue
			}
			mean := 0.0
			for _, x := range xs {
				mean += x / float64(len(xs))
			}
			x := float64(d)*(V+1) + float64(v) - (V-1)/2
			pts = append(pts, plotter.XY{X: x, Y: mean})
			errs = append(errs, struct{ Low, High float64 }{mean - slices.Min(xs), slices.Max(xs) - mean})
			if hi := slices.Max(xs); !math.IsNaN(hi) && !math.IsInf(hi, 0) {
				top = max(top, hi)
			}
		}
		if len(pts) == 0 {
			continue
		}
		var first *plotter.BarChart
		for i, pt := range pts {
			b, err := plotter.NewBarChart(plotter.Values{pt.Y}, barW)
			if err != nil {
				continue // a non-finite mean: no bar
			}
			b.XMin, b.Color, b.LineStyle.Width = pt.X, plotutil.Color(v), 0
			p.Add(b)
			if first == nil {
				first = b
			}
			if errs[i].Low > 0 || errs[i].High > 0 {
				e := &plotter.YErrorBars{XYs: plotter.XYs{pt}, YErrors: plotter.YErrors{errs[i]}, LineStyle: plotter.DefaultLineStyle, CapWidth: barW / 2}
				p.Add(e)
			}
		}
		if first != nil {
			p.Legend.Add(legendName(name, runs), first)
		}
	}
	p.X.Tick.Marker = ticks
	p.X.Min = -(V+1)/2 + 0.25
	p.X.Max = float64(len(domains)-1)*(V+1) + (V+1)/2 - 0.25
	p.Y.Min = 0
	if top > 0 {
		p.Y.Max = top * 1.2 // room for the legend above the bars
	}
	return p
}
