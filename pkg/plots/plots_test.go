package plots

import (
	"bytes"
	"encoding/xml"
	"errors"
	"image/png"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"github.com/switchyard-ml/switchyard/pkg/train"
)

// metrics is n steps of a run with 2 MoE layers of 4 experts: the loss
// falls, layer 0 drifts onto expert 0, layer 1 stays balanced.
func metrics(n int) []train.StepMetrics {
	var ms []train.StepMetrics
	for i := range n {
		f := float64(i) / float64(n)
		ms = append(ms, train.StepMetrics{
			Step: i + 1, Loss: 5 - 3*f, LBL: []float64{1 + f, 1}, TokensPerS: 4000 + 10*float64(i%7),
			ExpertLoad: [][]float64{{0.25 + 0.3*f, 0.25 - 0.1*f, 0.25 - 0.1*f, 0.25 - 0.1*f}, {0.25, 0.25, 0.25, 0.25}},
		})
	}
	return ms
}

func report() *train.Report {
	return &train.Report{LBLMode: "global", Domains: []train.DomainReport{{Domain: "code", BitsPerByte: 2.5}, {Domain: "english", BitsPerByte: 3}},
		Experts: []train.Specialisation{
			{Layer: 0, Domain: "code", Frequency: []float64{0.7, 0.1, 0.1, 0.1}},
			{Layer: 0, Domain: "english", Frequency: []float64{0.1, 0.1, 0.1, 0.7}},
			{Layer: 1, Domain: "code", Frequency: []float64{0.25, 0.25, 0.25, 0.25}},
			{Layer: 1, Domain: "english", Frequency: []float64{0.25, 0.25, 0.25, 0.25}},
		}}
}

// wantPictures checks that paths are exactly the names, each as a PNG
// that decodes to 768 x 480 pixels and an SVG that parses as XML.
func wantPictures(t *testing.T, dir string, paths []string, names ...string) {
	t.Helper()
	var want []string
	for _, n := range names {
		want = append(want, filepath.Join(dir, n+".png"), filepath.Join(dir, n+".svg"))
	}
	if !slices.Equal(paths, want) {
		t.Fatalf("wrote\n  %v\nwant\n  %v", paths, want)
	}
	for _, p := range paths {
		raw, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		switch filepath.Ext(p) {
		case ".png":
			img, err := png.Decode(bytes.NewReader(raw))
			if err != nil {
				t.Fatalf("%s: %v", p, err)
			}
			b := img.Bounds()
			if strings.HasPrefix(filepath.Base(p), "compare_experts_") { // stacked panels: as high as they need
				if b.Dx() != 768 || b.Dy() < 150 {
					t.Fatalf("%s: %v, want 768 wide, >= 150 high", p, b)
				}
			} else if b.Dx() != 768 || b.Dy() != 480 {
				t.Fatalf("%s: %v, want 768 x 480", p, b)
			}
		case ".svg":
			d := xml.NewDecoder(bytes.NewReader(raw))
			var root string
			for {
				tok, err := d.Token()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatalf("%s: not well-formed XML: %v", p, err)
				}
				if se, ok := tok.(xml.StartElement); ok && root == "" {
					root = se.Name.Local
				}
			}
			if root != "svg" {
				t.Fatalf("%s: root element %q", p, root)
			}
		}
	}
}

// TestExactTicks: over a narrow range every major tick's label reads as
// its value (gonum's own rounds 2.05 to "2.1", next to the tick at 2.1),
// and labels that already do are left as they are.
func TestExactTicks(t *testing.T) {
	for _, r := range [][2]float64{{2.05, 2.22}, {6.235, 6.3016}, {0, 150}, {1e-4, 3e-4}, {-0.5, 0.5}} {
		seen := map[string]bool{}
		for _, tk := range (exactTicks{}).Ticks(r[0], r[1]) {
			if tk.Label == "" {
				continue
			}
			x, err := strconv.ParseFloat(tk.Label, 64)
			if err != nil || math.Abs(x-tk.Value) > 1e-9 || seen[tk.Label] {
				t.Errorf("range %v: tick %v labelled %q", r, tk.Value, tk.Label)
			}
			seen[tk.Label] = true
		}
	}
}

func TestWriteRun(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "plots")
	paths, err := Run{Title: "run", Metrics: metrics(50), Report: report()}.Write(dir)
	if err != nil {
		t.Fatal(err)
	}
	wantPictures(t, dir, paths, "loss", "lbl", "tokens_per_s", "expert_load_layer0", "expert_load_layer1",
		"specialisation_layer0", "specialisation_layer1")

	// Without a report, LBL or expert load (a command job's metrics): the
	// pictures of what there is.
	ms := metrics(5)
	for i := range ms {
		ms[i].LBL, ms[i].ExpertLoad = nil, nil
	}
	dir = t.TempDir()
	paths, err = Run{Metrics: ms}.Write(dir)
	if err != nil {
		t.Fatal(err)
	}
	wantPictures(t, dir, paths, "loss", "tokens_per_s")
}

// A long run's expert load is drawn over bins of steps.
func TestLoadGridBins(t *testing.T) {
	r := Run{Metrics: metrics(1000)}
	g := r.loadGrids()[0]
	if g.binned != 5 || g.cols() != 200 || g.rows() != 4 {
		t.Fatalf("binned %d, %d columns x %d rows; want 5, 200 x 4", g.binned, g.cols(), g.rows())
	}
	// the first column: the mean of steps 1..5
	if g.X(0) != 3 || math.Abs(g.Z(0, 0)-(0.25+0.3*2/1000.0)) > 1e-12 {
		t.Fatalf("column 0 at step %g, share of e0 %g", g.X(0), g.Z(0, 0))
	}
}

// luma is the perceived brightness of the pixel at data point (x, y) of
// the heat map drawn on img.
func luma(t *testing.T, img *vgimg.Canvas, x, y float64, dataArea func() (func(float64) vg.Length, func(float64) vg.Length)) float64 {
	t.Helper()
	trX, trY := dataArea()
	dpi := 96.0
	px := int(trX(x).Dots(dpi))
	py := img.Image().Bounds().Dy() - 1 - int(trY(y).Dots(dpi))
	r, g, b, _ := img.Image().At(px, py).RGBA()
	return (0.299*float64(r) + 0.587*float64(g) + 0.114*float64(b)) / 0xffff
}

// One hot cell (step 5, expert 2) of an otherwise cold expert-load map is
// drawn bright where it is, and its neighbours dark: experts on y, steps
// on x, colour rising with the share.
func TestHeatMapHotCell(t *testing.T) {
	var ms []train.StepMetrics
	for s := 1; s <= 10; s++ {
		load := []float64{0.25, 0.25, 0.25, 0.25}
		if s == 5 {
			load = []float64{0, 0, 1, 0}
		}
		ms = append(ms, train.StepMetrics{Step: s, Loss: 1, ExpertLoad: [][]float64{load}})
	}
	g := (Run{Metrics: ms}).loadGrids()[0]
	p, _ := heatPlot("hot cell", g)
	img := vgimg.New(width, height)
	dc := draw.New(img)
	p.Draw(dc)
	area := func() (func(float64) vg.Length, func(float64) vg.Length) {
		da := p.DataCanvas(dc)
		return p.Transforms(&da)
	}
	hot := luma(t, img, 5, 2, area)
	cold := luma(t, img, 5, 0, area)    // same step, share 0
	quarter := luma(t, img, 3, 2, area) // same expert, share 0.25
	if !(hot > 0.8 && cold < 0.1 && hot-quarter > 0.3 && quarter-cold > 0.1) {
		t.Fatalf("brightness: hot cell %.2f, share 0.25 %.2f, share 0 %.2f; want hot > 0.8 > 0.25-cell > 0-cell < 0.1", hot, quarter, cold)
	}
}

func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		name string
		run  Run
		want error
		msg  string
	}{
		{"no metrics", Run{}, ErrNoData, "no step metrics"},
		{"ragged expert load", Run{Metrics: func() []train.StepMetrics {
			ms := metrics(3)
			ms[1].ExpertLoad[1] = []float64{0.5, 0.5, 0}
			return ms
		}()}, ErrInvalid, "step 2: expert_load of layer 1 has 3 experts, layer 0 of step 1 has 4 (ragged rows)"},
		{"layers change", Run{Metrics: func() []train.StepMetrics {
			ms := metrics(3)
			ms[2].ExpertLoad = ms[2].ExpertLoad[:1]
			return ms
		}()}, ErrInvalid, "step 3 has expert_load for 1 layers, step 1 for 2"},
		{"steps out of order", Run{Metrics: func() []train.StepMetrics {
			ms := metrics(3)
			ms[2].Step = 2
			return ms
		}()}, ErrInvalid, "step 2 follows step 2"},
		{"ragged report", Run{Metrics: metrics(3), Report: func() *train.Report {
			r := report()
			r.Experts[1].Frequency = r.Experts[1].Frequency[:3]
			return r
		}()}, ErrInvalid, "layer 0 domain english has frequencies of 3 experts"},
	} {
		_, err := tt.run.Write(dir)
		if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("%s: error %v, want %v naming %q", tt.name, err, tt.want, tt.msg)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("bad input wrote %d files", len(ents))
	}
}

func TestCompare(t *testing.T) {
	dir := t.TempDir()
	rep := func(code, english float64) *train.Report {
		return &train.Report{Domains: []train.DomainReport{{Domain: "code", BitsPerByte: code}, {Domain: "english", BitsPerByte: english}}}
	}
	runs := []Series{
		{Name: "lbl.mode=global", Metrics: metrics(40), Report: rep(2.5, 3.1)},
		{Name: "lbl.mode=global", Metrics: metrics(40), Report: rep(2.6, 3.0)},
		{Name: "lbl.mode=micro", Metrics: metrics(30), Report: rep(2.8, 3.3)},
		{Name: "lbl.mode=micro"}, // not finished: nothing yet
	}
	paths, err := Compare(dir, "sweep", runs)
	if err != nil {
		t.Fatal(err)
	}
	wantPictures(t, dir, paths, "compare_loss", "compare_val_bpb")

	// reports only (the runs' metrics are gone)
	dir = t.TempDir()
	paths, err = Compare(dir, "", []Series{{Name: "a", Report: rep(1, 2)}, {Name: "b", Report: rep(2, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	wantPictures(t, dir, paths, "compare_val_bpb")

	if _, err := Compare(t.TempDir(), "", []Series{{Name: "a"}}); !errors.Is(err, ErrNoData) {
		t.Fatalf("no data: %v", err)
	}
	bad := metrics(3)
	bad[0].ExpertLoad[0] = nil
	if _, err := Compare(t.TempDir(), "", []Series{{Name: "a", Metrics: bad}}); !errors.Is(err, ErrInvalid) || !strings.HasPrefix(err.Error(), "a: ") {
		t.Fatalf("ragged: %v", err)
	}
}

// TestCompareBalance: runs that know their balance batch add the metric
// against it and every layer's heat maps side by side; the heat maps
// order experts by the domain they serve most.
func TestCompareBalance(t *testing.T) {
	dir := t.TempDir()
	evals := metrics(20)
	evals[9].ValBPB = map[string]float64{"code": 3, "english": 4}
	evals[19].ValBPB = map[string]float64{"code": 2.5, "english": 3.5}
	runs := []Series{
		{Name: "micro-8", Report: report(), Balance: 8, Metrics: evals, Seed: 1},
		{Name: "micro-8", Report: report(), Balance: 8, Seed: 2},
		{Name: "global-128", Report: report(), Balance: 128, Metrics: metrics(20), Seed: 1},
		{Name: "random-8", Report: report(), Balance: 8, Random: true},
	}
	paths, err := Compare(dir, "sweep", runs)
	if err != nil {
		t.Fatal(err)
	}
	wantPictures(t, dir, paths, "compare_loss", "compare_loss_delta", "compare_val_curve", "compare_val_bpb", "compare_experts_layer0", "compare_experts_layer1", "compare_balance_bpb", "compare_balance_mi")

	// one balance batch: nothing to draw against it
	dir = t.TempDir()
	runs[0].Metrics = nil
	runs[2].Metrics = nil
	paths, err = Compare(dir, "", runs[:2])
	if err != nil {
		t.Fatal(err)
	}
	wantPictures(t, dir, paths, "compare_val_bpb", "compare_experts_layer0", "compare_experts_layer1")

	g, err := specialisationGrids(report())
	if err != nil {
		t.Fatal(err)
	}
	// layer 0: e0 serves code (0.7), e3 english (0.7), e1 and e2 code and
	// english alike (ties go to the first row, code; then by value, stable)
	o := byServedDomain(g[0])
	if !slices.Equal(o.colNames, []string{"e0", "e1", "e2", "e3"}) {
		t.Errorf("order %v", o.colNames)
	}
	g[0].zCR[0], g[0].zCR[3] = []float64{0.1, 0.7}, []float64{0.7, 0.1} // e0 english, e3 code
	if o := byServedDomain(g[0]); !slices.Equal(o.colNames, []string{"e3", "e1", "e2", "e0"}) || o.zCR[0][0] != 0.7 {
		t.Errorf("order %v, first column %v", o.colNames, o.zCR[0])
	}
}

// TestLossDeltas: a run's loss minus the first variant's of its seed, at
// the same steps, as a trailing mean; seeds the first variant lacks and
// the first variant itself draw nothing.
func TestLossDeltas(t *testing.T) {
	ms := func(n int, loss func(step int) float64) []train.StepMetrics {
		var out []train.StepMetrics
		for s := 1; s <= n; s++ {
			out = append(out, train.StepMetrics{Step: s, Loss: loss(s)})
		}
		return out
	}
	runs := []Series{
		{Name: "a", Seed: 1, Metrics: ms(60, func(s int) float64 { return 3 - 0.01*float64(s) })},
		{Name: "b", Seed: 1, Metrics: ms(50, func(s int) float64 { return 3 - 0.01*float64(s) - 0.1 })},
		{Name: "b", Seed: 2, Metrics: ms(50, func(s int) float64 { return 1 })}, // a has no seed 2
		{Name: "c", Seed: 1, Metrics: ms(60, func(s int) float64 { return 3 - 0.01*float64(s) + float64(s%2) })},
	}
	ds := lossDeltas([]string{"a", "b", "c"}, runs)
	if len(ds) != 2 || ds[0].name != "b" || ds[1].name != "c" {
		t.Fatalf("deltas %+v", ds)
	}
	// b: -0.1 at every step from the window's end (step 20) to 50
	if b := ds[0].xys; len(b) != 31 || b[0].X != 20 || b[30].X != 50 || math.Abs(b[0].Y+0.1) > 1e-9 || math.Abs(b[30].Y+0.1) > 1e-9 {
		t.Errorf("b: %d points, first %v, last %v", len(b), b[0], b[len(b)-1])
	}
	// c: +1 on odd steps, 0 on even: 0.5 over any 20 steps
	if c := ds[1].xys; math.Abs(c[len(c)-1].Y-0.5) > 1e-9 {
		t.Errorf("c: last %v, want 0.5", c[len(c)-1])
	}
}

// TestCompareBalanceWithoutExperts: reports without expert statistics
// draw bits/byte against the balance batch but no specialisation picture
// (nothing finite to put on its log axis).
func TestCompareBalanceWithoutExperts(t *testing.T) {
	dir := t.TempDir()
	rep := func() *train.Report {
		return &train.Report{Domains: []train.DomainReport{{Domain: "code", BitsPerByte: 2.5}}}
	}
	paths, err := Compare(dir, "", []Series{{Name: "a", Report: rep(), Balance: 8}, {Name: "b", Report: rep(), Balance: 32}})
	if err != nil {
		t.Fatal(err)
	}
	wantPictures(t, dir, paths, "compare_val_bpb", "compare_balance_bpb")
}
