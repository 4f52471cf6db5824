package plots

import (
	"fmt"
	"math"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"

	"github.com/switchyard-ml/switchyard/pkg/train"
)

// Series is one run of a comparison: the name of its variant (runs with
// the same name are seeds of one variant and share a colour), its step
// metrics and its final report; either may be missing.
type Series struct {
	Name    string
	Metrics []train.StepMetrics
	Report  *train.Report
}

// Compare draws runs side by side into dir: compare_loss (every run's
// training loss, one colour per variant) when any run has metrics, and
// compare_val_bpb (per domain, each variant's validation bits/byte, the
// mean over its seeds with a bar from min to max) when any has a report;
// each as .png and .svg. title starts the pictures' titles (may be empty).
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
		w.plot("compare_loss", compareLoss(prefix+"training loss", variants, runs))
	}
	if haveReport {
		w.plot("compare_val_bpb", compareBPB(prefix+"validation bits/byte per domain (bar: mean over seeds, whisker: min to max)", variants, runs))
	}
	return w.paths, w.err
}

func compareLoss(title string, variants []string, runs []Series) *plot.Plot {
	p := newPlot(title, "step", "loss (nats/token)")
	named := map[string]bool{}
	for _, r := range runs {
		var xys plotter.XYs
		for _, m := range r.Metrics {
			if !math.IsNaN(m.Loss) && !math.IsInf(m.Loss, 0) {
				xys = append(xys, plotter.XY{X: float64(m.Step), Y: m.Loss})
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

// legendName is the variant's name and how many runs it has.
func legendName(name string, runs []Series) string {
	n := 0
	for _, r := range runs {
		if r.Name == name {
			n++
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
