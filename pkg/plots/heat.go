package plots

import (
	"fmt"
	"image/color"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/palette"
	"gonum.org/v1/plot/palette/moreland"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/switchyard-ml/switchyard/pkg/train"
)

// maxColumns bounds the columns of an expert-load heat map: longer runs
// are drawn as the mean over bins of consecutive steps.
const maxColumns = 240

// grid is a heat map's data, a plotter.GridXYZ: zCR[column][row], columns
// at xs, rows at 0, 1, 2, ...; names label the rows and, when set, the
// columns (then the columns are at 0, 1, 2, ... too).
type grid struct {
	xs       []float64
	zCR      [][]float64
	rowNames []string
	colNames []string
	xLabel   string
	yLabel   string
	zLabel   string  // the colour bar's
	binned   int     // steps per column (expert load)
	fixedMax float64 // > 0: the colour scale's top (shared by stacked maps)
}

func (g *grid) Dims() (c, r int)   { return len(g.zCR), len(g.zCR[0]) }
func (g *grid) Z(c, r int) float64 { return g.zCR[c][r] }
func (g *grid) X(c int) float64    { return g.xs[c] }
func (g *grid) Y(r int) float64    { return float64(r) }
func (g *grid) cols() int          { return len(g.zCR) }
func (g *grid) rows() int          { return len(g.zCR[0]) }
func (g *grid) Min() float64       { return 0 }
func (g *grid) Max() float64       { return g.max() }
func (g *grid) max() (m float64) {
	if g.fixedMax > 0 {
		return g.fixedMax
	}
	for _, col := range g.zCR {
		for _, v := range col {
			m = max(m, v)
		}
	}
	if m == 0 {
		m = 1 // all zero: any positive range draws it
	}
	return m
}

// loadGrids is one grid per MoE layer: experts on y, steps on x (binned
// to at most maxColumns), the share of the layer's routed tokens. Steps
// without expert load are left out. Run.check has made the rows even.
func (r Run) loadGrids() []*grid {
	var steps []*train.StepMetrics
	for i := range r.Metrics {
		if len(r.Metrics[i].ExpertLoad) > 0 {
			steps = append(steps, &r.Metrics[i])
		}
	}
	layers, experts := len(steps[0].ExpertLoad), len(steps[0].ExpertLoad[0])
	bin := (len(steps) + maxColumns - 1) / maxColumns
	out := make([]*grid, layers)
	for l := range out {
		g := &grid{xLabel: "step", yLabel: "expert", zLabel: "share of routed tokens", binned: bin}
		for e := range experts {
			g.rowNames = append(g.rowNames, fmt.Sprintf("e%d", e))
		}
		for lo := 0; lo < len(steps); lo += bin {
			hi := min(lo+bin, len(steps))
			col := make([]float64, experts)
			var x float64
			for _, m := range steps[lo:hi] {
				x += float64(m.Step) / float64(hi-lo)
				for e, v := range m.ExpertLoad[l] {
					col[e] += v / float64(hi-lo)
				}
			}
			g.xs, g.zCR = append(g.xs, x), append(g.zCR, col)
		}
		out[l] = g
	}
	return out
}

// specialisationGrids is one grid per MoE layer of the report: experts on
// x, domains on y, the domain's selection frequency of the expert.
func specialisationGrids(rep *train.Report) ([]*grid, error) {
	var out []*grid
	rowOf := map[string]int{} // domain -> row, in the report's order
	for _, s := range rep.Experts {
		if _, ok := rowOf[s.Domain]; !ok {
			rowOf[s.Domain] = len(rowOf)
		}
	}
	for _, s := range rep.Experts {
		if s.Layer < 0 || s.Layer > 1024 {
			return nil, fmt.Errorf("%w: report: layer %d", ErrInvalid, s.Layer)
		}
		for len(out) <= s.Layer {
			out = append(out, nil)
		}
		g := out[s.Layer]
		if g == nil {
			g = &grid{xLabel: "expert", yLabel: "domain", zLabel: "selection frequency", rowNames: make([]string, len(rowOf))}
			for d, row := range rowOf {
				g.rowNames[row] = d
			}
			for e := range s.Frequency {
				g.xs = append(g.xs, float64(e))
				g.colNames = append(g.colNames, fmt.Sprintf("e%d", e))
				g.zCR = append(g.zCR, make([]float64, len(rowOf)))
			}
			out[s.Layer] = g
		}
		if len(s.Frequency) == 0 || len(s.Frequency) != g.cols() {
			return nil, fmt.Errorf("%w: report: layer %d domain %s has frequencies of %d experts, the layer's first domain of %d",
				ErrInvalid, s.Layer, s.Domain, len(s.Frequency), g.cols())
		}
		for e, f := range s.Frequency {
			g.zCR[e][rowOf[s.Domain]] = f
		}
	}
	for l, g := range out {
		if g == nil {
			return nil, fmt.Errorf("%w: report: no frequencies for MoE layer %d", ErrInvalid, l)
		}
	}
	return out, nil
}

// colours is the heat maps' colour map: dark (0) to pale yellow (the
// largest value), luminance increasing with the value (magma's stops).
func colours(maxV float64) palette.ColorMap {
	cm, err := moreland.NewLuminance([]color.Color{
		color.RGBA{0x00, 0x00, 0x04, 0xff},
		color.RGBA{0x51, 0x12, 0x7c, 0xff},
		color.RGBA{0xb7, 0x37, 0x79, 0xff},
		color.RGBA{0xfc, 0x89, 0x61, 0xff},
		color.RGBA{0xfc, 0xfd, 0xbf, 0xff},
	})
	if err != nil {
		panic(err) // the stops above are constant
	}
	cm.SetMax(maxV)
	cm.SetMin(0)
	return cm
}

// heatPlot is g as a heat map from 0 (dark) to g's largest value (pale),
// and its colour bar.
func heatPlot(title string, g *grid) (*plot.Plot, *plot.Plot) {
	cm := colours(g.max())
	h := plotter.NewHeatMap(g, cm.Palette(256))
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text, p.Y.Label.Text = g.xLabel, g.yLabel
	p.X.Padding, p.Y.Padding = 0, 0
	p.Add(h)
	p.Y.Tick.Marker = names(g.rowNames)
	if g.colNames != nil {
		p.X.Tick.Marker = names(g.colNames)
	}

	bar := plot.New()
	bar.Add(&plotter.ColorBar{ColorMap: cm, Vertical: true})
	bar.HideX()
	bar.Y.Padding = 0
	bar.Y.Label.Text = g.zLabel
	return p, bar
}

// heat draws g with its colour bar on the right, level with the map.
func (w *writer) heat(name, title string, g *grid) {
	p, bar := heatPlot(title, g)
	barW := 0.9 * vg.Inch
	w.draw(name, func(c draw.Canvas) {
		left := draw.Crop(c, 0, -barW, 0, 0)
		p.Draw(left)
		da := p.DataCanvas(left)
		bc := c
		bc.Min = vg.Point{X: c.Max.X - barW + vg.Points(6), Y: da.Min.Y}
		bc.Max.Y = da.Max.Y
		bar.Draw(bc)
	})
}

// stack draws the panels one above the other on one colour scale (the
// largest value of any), each titled, with the colour bar on the right.
func (w *writer) stack(name, title string, titles []string, panels []*grid) {
	top := 0.0
	for _, g := range panels {
		top = max(top, g.max())
	}
	var maps []*plot.Plot
	var bar *plot.Plot
	for i, g := range panels {
		scaled := *g
		scaled.fixedMax = top
		p, b := heatPlot(titles[i], &scaled)
		if i < len(panels)-1 {
			p.X.Label.Text = ""
		}
		maps, bar = append(maps, p), b
	}
	head := plot.New()
	head.Title.Text = title
	head.HideAxes()
	barW := 0.9 * vg.Inch
	panelH := 1.7 * vg.Inch
	h := vg.Length(len(panels))*panelH + 0.4*vg.Inch
	w.drawSized(name, width, h, func(c draw.Canvas) {
		head.Draw(draw.Crop(c, 0, 0, h-0.4*vg.Inch, 0))
		body := draw.Crop(c, 0, -barW, 0, -0.4*vg.Inch)
		tiles := draw.Tiles{Rows: len(maps), Cols: 1, PadY: vg.Points(4)}
		var da draw.Canvas
		for i, p := range maps {
			tc := tiles.At(body, 0, i)
			p.Draw(tc)
			if i == 0 {
				da = p.DataCanvas(tc)
			} else {
				da.Min = p.DataCanvas(tc).Min
			}
		}
		bc := c
		bc.Min = vg.Point{X: c.Max.X - barW + vg.Points(6), Y: da.Min.Y}
		bc.Max.Y = da.Max.Y
		bar.Draw(bc)
	})
}

// names labels the integer coordinates 0, 1, 2, ... of an axis; with
// many names, every k-th.
func names(ns []string) plot.ConstantTicks {
	k := (len(ns) + 23) / 24
	var ts plot.ConstantTicks
	for i, n := range ns {
		if i%k == 0 {
			ts = append(ts, plot.Tick{Value: float64(i), Label: n})
		} else {
			ts = append(ts, plot.Tick{Value: float64(i)})
		}
	}
	return ts
}
