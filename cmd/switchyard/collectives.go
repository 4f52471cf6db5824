package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/parallel"
	"github.com/switchyard-ml/switchyard/pkg/parallel/collbench"
)

// collectivesReport is what `switchyard bench collectives --json` prints.
type collectivesReport struct {
	CPUs    int                 `json:"cpus"`
	LoadAvg string              `json:"loadavg_before"` // /proc/loadavg when the run began
	Runs    []collectivesRun    `json:"runs"`           // one per data plane and world size
	Rows    []collectivesRow    `json:"rows"`           // ours next to gloo and TCP
	Gloo    *glooReport         `json:"gloo,omitempty"` // the reference run, as it printed it
	Notes   []string            `json:"notes,omitempty"`
	Summary []collectivesTarget `json:"targets,omitempty"`
}

type collectivesRun struct {
	Rep            int                `json:"rep"` // which repetition (--repeat)
	DataPlane      string             `json:"data_plane"`
	World          int                `json:"world"`
	ForeignCPUFrac float64            `json:"foreign_cpu_frac"`   // other processes' share of all cores during the run
	TCP            collbench.Result   `json:"tcp_loopback"`       // one stream, one way
	TCPBidir       collbench.Result   `json:"tcp_loopback_bidir"` // one connection, both ways at once (per direction)
	Results        []collbench.Result `json:"results"`
}

type collectivesRow struct {
	Op        string  `json:"op"` // all_reduce | all_to_all
	World     int     `json:"world"`
	Bytes     int     `json:"bytes"`
	DataPlane string  `json:"data_plane"`
	LatencyMS float64 `json:"latency_ms"`
	AlgBWGBs  float64 `json:"algbw_gbs"`
	BusBWGBs  float64 `json:"busbw_gbs"`
	CPUMS     float64 `json:"cpu_ms_all_ranks,omitempty"` // CPU time of all ranks together per operation
	TCPGBs    float64 `json:"tcp_gbs"`                    // loopback TCP ceiling (one way) measured in the same run
	OverTCP   float64 `json:"busbw_over_tcp"`             // busbw / TCP ceiling
	TCPBidir  float64 `json:"tcp_bidir_gbs"`              // per-direction TCP throughput with both directions busy
	OverBidir float64 `json:"busbw_over_tcp_bidir"`
	GlooMS    float64 `json:"gloo_latency_ms,omitempty"`
	GlooBusBW float64 `json:"gloo_busbw_gbs,omitempty"`
	OverGloo  float64 `json:"busbw_over_gloo,omitempty"` // ours / gloo (> 1: faster)
	// With --repeat: the figures above are medians over the repetitions,
	// OverGloo the median of the per-repetition ratios (each from one
	// back-to-back pair), and these their spread.
	Reps         int       `json:"reps,omitempty"`
	OverGlooMin  float64   `json:"busbw_over_gloo_min,omitempty"`
	OverGlooMax  float64   `json:"busbw_over_gloo_max,omitempty"`
	OverGlooReps []float64 `json:"busbw_over_gloo_reps,omitempty"`
}

// collectivesTarget checks the targets for one row.
type collectivesTarget struct {
	What string `json:"what"`
	Met  bool   `json:"met"`
}

// glooReport is the RESULT_JSON of shared/bench/allreduce_bench.py.
type glooReport struct {
	Bench   string      `json:"bench"`
	Torch   string      `json:"torch"`
	Results []glooWorld `json:"results"`
}

type glooWorld struct {
	Rep            int            `json:"rep"` // set by us: which repetition (--repeat)
	World          int            `json:"world"`
	Support        map[string]any `json:"support"`
	ForeignCPUFrac float64        `json:"foreign_cpu_frac"` // other processes' share of the CPUs during the run
	Rows           []glooRow      `json:"rows"`
}

type glooRow struct {
	Op        string  `json:"op"` // all_reduce | all_to_all_single
	World     int     `json:"world"`
	Bytes     int     `json:"bytes"`
	TimeS     float64 `json:"time_s_median"`
	BusBWGBps float64 `json:"busbw_GBps"`
}

const collectivesUsage = `usage: switchyard bench collectives [flags]

Latency and bus bandwidth of all-reduce and all-to-all over Switchyard's
collective transport (gRPC on loopback, every rank its own process), the
loopback TCP ceiling measured in the same run, and optionally the PyTorch
gloo reference run back to back.

flags:
`

func cmdBenchCollectives(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("bench collectives", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), collectivesUsage)
		fs.PrintDefaults()
	}
	worlds := fs.String("world", "2,4", "world sizes (ranks), comma-separated")
	sizesFlag := fs.String("sizes", "4KiB,1MiB,16MiB,64MiB", "message sizes per rank, comma-separated (B, KiB, MiB, GiB)")
	iters := fs.Int("iters", 10, "timed iterations per size (sizes under 1 MiB run 10x as many)")
	planes := fs.String("data-plane", "tcp,grpc", "transport data planes to measure: grpc (messages on the gRPC streams), tcp (a plain socket beside them)")
	tlsMode := fs.String("tls", "off", "mutual TLS between the ranks: off, on, or both (each data plane measured plain and encrypted, side by side)")
	segment := fs.String("segment", "0", "ring pipelining segment (0: the library default, what training uses)")
	asJSON := fs.Bool("json", false, "print JSON")
	glooScript := fs.String("gloo-script", "", "run this PyTorch/gloo reference (allreduce_bench.py) with /usr/bin/python3 and compare")
	glooWait := fs.Bool("gloo-wait-idle", false, "let the gloo script wait for an idle machine first")
	repeat := fs.Int("repeat", 1, "repetitions: each world size runs ours and gloo back to back this many times, the order alternating; figures are medians, ratios medians of the per-pair ratios, with their spread")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return usageError{err}
	}
	ws, err := parseInts(*worlds)
	if err != nil {
		return usageError{fmt.Errorf("bench collectives: --world: %w", err)}
	}
	var sizes []int
	for _, s := range strings.Split(*sizesFlag, ",") {
		n, err := parseSize(s)
		if err != nil || n < 4 {
			return usageError{fmt.Errorf("bench collectives: --sizes: bad size %q", s)}
		}
		sizes = append(sizes, n)
	}
	seg, err := parseSize(*segment)
	if err != nil {
		return usageError{fmt.Errorf("bench collectives: --segment: %w", err)}
	}
	if *iters < 1 {
		return usageError{errors.New("bench collectives: --iters must be >= 1")}
	}
	if *repeat < 1 {
		return usageError{errors.New("bench collectives: --repeat must be >= 1")}
	}
	for _, w := range ws {
		if w < 2 || w > 64 {
			return usageError{fmt.Errorf("bench collectives: world %d out of range 2..64", w)}
		}
	}
	rep := collectivesReport{CPUs: runtime.NumCPU(), LoadAvg: loadAvg()}
	var encrypt []bool
	switch *tlsMode {
	case "off":
		encrypt = []bool{false}
	case "on":
		encrypt = []bool{true}
	case "both":
		encrypt = []bool{false, true}
	default:
		return usageError{fmt.Errorf("bench collectives: --tls %q: want off, on or both", *tlsMode)}
	}
	type plan struct {
		opts parallel.Options
		tls  bool
	}
	var planeOpts []plan
	for _, plane := range strings.Split(*planes, ",") {
		opts := parallel.Options{Timeout: 2 * time.Minute, DataPlane: plane}
		if err := opts.Validate(); err != nil {
			return usageError{err}
		}
		for _, e := range encrypt {
			planeOpts = append(planeOpts, plan{opts, e})
		}
	}
	ours := func(r, w int) ([]collectivesRun, error) {
		var runs []collectivesRun
		for _, p := range planeOpts {
			before := cpuSnapshot()
			start := time.Now()
			bo := []collbench.Option{collbench.WithTransport(p.opts, parallel.CommOptions{Segment: seg})}
			label := p.opts.DataPlane
			if p.tls {
				bo, label = append(bo, collbench.WithTLS()), label+"+tls"
			}
			res, err := collbench.Collectives(ctx, w, sizes, *iters, bo...)
			if err != nil {
				return nil, fmt.Errorf("bench collectives: world %d, data plane %s: %w", w, label, err)
			}
			run := collectivesRun{Rep: r, DataPlane: label, World: w, ForeignCPUFrac: foreignCPU(before, cpuSnapshot(), time.Since(start))}
			for _, r := range res {
				switch r.Op {
				case "tcp_loopback":
					run.TCP = r
				case "tcp_loopback_bidir":
					run.TCPBidir = r
				default:
					run.Results = append(run.Results, r)
				}
			}
			runs = append(runs, run)
		}
		return runs, nil
	}
	var repRows [][]collectivesRow
	for r := 0; r < *repeat; r++ {
		var runs []collectivesRun
		var g *glooReport
		for _, w := range ws {
			// Gloo second on even repetitions, first on odd ones: drift in
			// the load of a shared machine falls on both sides alike.
			for half := range 2 {
				if (half == 0) == (r%2 == 0) {
					rs, err := ours(r, w)
					if err != nil {
						return err
					}
					runs = append(runs, rs...)
					continue
				}
				if *glooScript == "" {
					continue
				}
				gw, err := runGloo(ctx, *glooScript, []int{w}, sizes, *glooWait)
				if err != nil {
					return err
				}
				for i := range gw.Results {
					gw.Results[i].Rep = r
				}
				if g == nil {
					g = gw
				} else {
					g.Results = append(g.Results, gw.Results...)
				}
			}
		}
		rows, _ := collectivesRows(runs, g)
		repRows = append(repRows, rows)
		rep.Runs = append(rep.Runs, runs...)
		if g != nil {
			if rep.Gloo == nil {
				rep.Gloo = g
			} else {
				rep.Gloo.Results = append(rep.Gloo.Results, g.Results...)
			}
		}
	}
	rep.Rows = medianRows(repRows)
	rep.Summary = collectivesTargets(rep.Rows)
	rep.Notes = append(rep.Notes,
		"latency: median over iterations of the slowest rank; busbw = bytes*2(W-1)/W/t (all-reduce), bytes*(W-1)/W/t (all-to-all); cpu: CPU time of all ranks together per operation (steadier than latency when other load shares the cores)",
		"--repeat N: each world size runs ours and gloo back to back N times, the order alternating; figures are medians over the repetitions, busbw_over_gloo the median of the per-pair ratios, with min, max and every pair's ratio",
		"tcp_gbs: one loopback TCP stream, 1 MiB writes, measured before each world's run; tcp_bidir_gbs: per direction with both directions of one connection busy, the traffic of a ring (every rank sends and receives at once)",
		"data_plane grpc: messages as gRPC stream frames; tcp: a plain stream socket per rank pair beside the gRPC stream (a Unix socket here, all ranks being on one host)")
	if *asJSON {
		return printJSON(rep)
	}
	printCollectives(rep)
	return nil
}

// collectivesRows joins our results with gloo's and the TCP ceiling.
func collectivesRows(runs []collectivesRun, g *glooReport) ([]collectivesRow, []collectivesTarget) {
	type key struct {
		op           string
		world, bytes int
	}
	gloo := map[key][2]float64{}
	if g != nil {
		for _, r := range g.Results {
			for _, row := range r.Rows {
				op := strings.TrimSuffix(row.Op, "_single")
				gloo[key{op, row.World, row.Bytes}] = [2]float64{row.TimeS * 1e3, row.BusBWGBps}
			}
		}
	}
	var rows []collectivesRow
	for _, run := range runs {
		for _, r := range run.Results {
			row := collectivesRow{Op: r.Op, World: r.World, Bytes: r.Bytes, DataPlane: run.DataPlane,
				LatencyMS: r.LatencyMS, AlgBWGBs: r.AlgBWGBs, BusBWGBs: r.BusBWGBs, CPUMS: r.CPUMS, TCPGBs: run.TCP.BusBWGBs}
			if row.TCPGBs > 0 {
				row.OverTCP = r.BusBWGBs / row.TCPGBs
			}
			if row.TCPBidir = run.TCPBidir.BusBWGBs; row.TCPBidir > 0 {
				row.OverBidir = r.BusBWGBs / row.TCPBidir
			}
			if gv, ok := gloo[key{r.Op, r.World, r.Bytes}]; ok {
				row.GlooMS, row.GlooBusBW = gv[0], gv[1]
				if gv[1] > 0 {
					row.OverGloo = r.BusBWGBs / gv[1]
				}
			}
			rows = append(rows, row)
		}
	}
	return rows, collectivesTargets(rows)
}

// collectivesTargets checks the all-reduce targets on rows.
func collectivesTargets(rows []collectivesRow) []collectivesTarget {
	var targets []collectivesTarget
	for _, row := range rows {
		if row.Op != "all_reduce" {
			continue
		}
		id := fmt.Sprintf("all_reduce W=%d %s over %s", row.World, fmtSize(row.Bytes), row.DataPlane)
		if row.Bytes >= 16<<20 {
			if row.GlooBusBW > 0 {
				targets = append(targets, collectivesTarget{id + ": busbw >= gloo", row.OverGloo >= 1})
			}
			targets = append(targets, collectivesTarget{id + ": busbw >= 80% of TCP", row.OverTCP >= 0.8})
		}
		if row.Bytes <= 64<<10 && row.GlooMS > 0 {
			targets = append(targets, collectivesTarget{id + ": latency <= gloo", row.LatencyMS <= row.GlooMS})
		}
	}
	return targets
}

// medianRows folds the rows of several repetitions (the same rows in the
// same order) into one: every figure the median over the repetitions, the
// ratio to gloo the median of the per-repetition ratios, with its extremes.
// One repetition is returned as it is.
func medianRows(reps [][]collectivesRow) []collectivesRow {
	if len(reps) == 1 {
		return reps[0]
	}
	out := slices.Clone(reps[0])
	for i := range out {
		col := func(f func(collectivesRow) float64) float64 {
			var v []float64
			for _, rows := range reps {
				if x := f(rows[i]); x > 0 {
					v = append(v, x)
				}
			}
			return median(v)
		}
		r := &out[i]
		r.LatencyMS = col(func(r collectivesRow) float64 { return r.LatencyMS })
		r.AlgBWGBs = col(func(r collectivesRow) float64 { return r.AlgBWGBs })
		r.BusBWGBs = col(func(r collectivesRow) float64 { return r.BusBWGBs })
		r.CPUMS = col(func(r collectivesRow) float64 { return r.CPUMS })
		r.TCPGBs = col(func(r collectivesRow) float64 { return r.TCPGBs })
		r.OverTCP = col(func(r collectivesRow) float64 { return r.OverTCP })
		r.TCPBidir = col(func(r collectivesRow) float64 { return r.TCPBidir })
		r.OverBidir = col(func(r collectivesRow) float64 { return r.OverBidir })
		r.GlooMS = col(func(r collectivesRow) float64 { return r.GlooMS })
		r.GlooBusBW = col(func(r collectivesRow) float64 { return r.GlooBusBW })
		r.Reps = len(reps)
		r.OverGlooReps = nil
		for _, rows := range reps {
			if x := rows[i].OverGloo; x > 0 {
				r.OverGlooReps = append(r.OverGlooReps, x)
			}
		}
		if len(r.OverGlooReps) > 0 {
			r.OverGloo = median(r.OverGlooReps)
			r.OverGlooMin, r.OverGlooMax = slices.Min(r.OverGlooReps), slices.Max(r.OverGlooReps)
		}
	}
	return out
}

// median of v (0 for none; the mean of the middle two for an even count).
func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	if n := len(v); n%2 == 0 {
		return (v[n/2-1] + v[n/2]) / 2
	}
	return v[len(v)/2]
}

func printCollectives(rep collectivesReport) {
	fmt.Printf("%-10s %2s %6s %5s %10s %7s %9s %5s %6s %10s %7s %6s\n", "op", "W", "size", "plane", "latency", "busbw", "cpu", "/tcp", "/bidir", "gloo", "gloo-bw", "/gloo")
	for _, r := range rep.Rows {
		fmt.Printf("%-10s %2d %6s %5s %8.3fms %7.3f %7.2fms %5.2f %6.2f", r.Op, r.World, fmtSize(r.Bytes), r.DataPlane, r.LatencyMS, r.BusBWGBs, r.CPUMS, r.OverTCP, r.OverBidir)
		if r.GlooMS > 0 {
			fmt.Printf(" %8.3fms %7.3f %6.2f", r.GlooMS, r.GlooBusBW, r.OverGloo)
			if r.Reps > 1 {
				fmt.Printf(" [%.2f..%.2f over %d pairs]", r.OverGlooMin, r.OverGlooMax, len(r.OverGlooReps))
			}
		}
		fmt.Println()
	}
	for _, run := range rep.Runs {
		fmt.Printf("rep %d before W=%d over %s: loopback TCP %.2f GB/s one way, %.2f GB/s each way both ways; %.0f%% of the CPUs busy elsewhere\n",
			run.Rep, run.World, run.DataPlane, run.TCP.BusBWGBs, run.TCPBidir.BusBWGBs, 100*run.ForeignCPUFrac)
	}
	if rep.Gloo != nil {
		for _, g := range rep.Gloo.Results {
			fmt.Printf("gloo rep %d W=%d (torch %s): %.0f%% of the CPUs busy elsewhere\n", g.Rep, g.World, rep.Gloo.Torch, 100*g.ForeignCPUFrac)
		}
	}
	for _, t := range rep.Summary {
		fmt.Printf("target %-60s %v\n", t.What, t.Met)
	}
}

// runGloo runs the PyTorch reference and parses its RESULT_JSON line.
func runGloo(ctx context.Context, script string, worlds, sizes []int, waitIdle bool) (*glooReport, error) {
	out, err := os.MkdirTemp("", "switchyard-gloo-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(out)
	args := []string{"-B", script, "--out", filepath.Join(out, "gloo.json"), "--world"}
	for _, w := range worlds {
		args = append(args, strconv.Itoa(w))
	}
	args = append(args, "--sizes")
	for _, s := range sizes {
		args = append(args, strconv.Itoa(s))
	}
	if !waitIdle {
		args = append(args, "--no-wait-idle")
	}
	cmd := exec.CommandContext(ctx, "/usr/bin/python3", args...)
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("bench collectives: gloo reference %s: %w", script, err)
	}
	sc := bufio.NewScanner(&stdout)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		if j, ok := strings.CutPrefix(sc.Text(), "RESULT_JSON "); ok {
			var g glooReport
			if err := json.Unmarshal([]byte(j), &g); err != nil {
				return nil, fmt.Errorf("bench collectives: gloo RESULT_JSON: %w", err)
			}
			return &g, nil
		}
	}
	return nil, fmt.Errorf("bench collectives: gloo reference %s printed no RESULT_JSON", script)
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, nil
}

// parseSize reads "4096", "4KiB", "1MiB", "2GiB" (also K/M/G, KB/MB/GB as
// binary units).
func parseSize(s string) (int, error) {
	s = strings.TrimSpace(s)
	mult := 1
	for _, u := range []struct {
		suffix string
		mult   int
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30},
		{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"B", 1}} {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = v, u.mult
			break
		}
	}
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 0 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return n * mult, nil
}

func fmtSize(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return strconv.Itoa(n)
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// cpuSnapshot: machine-wide busy CPU seconds (/proc/stat) and this process'
// CPU seconds including its reaped children (the ranks).
type cpuSnap struct{ busy, own float64 }

func cpuSnapshot() cpuSnap {
	var s cpuSnap
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		f := strings.Fields(line)
		for _, i := range []int{1, 2, 3, 6, 7, 8} { // user nice system irq softirq steal
			if i < len(f) {
				v, _ := strconv.ParseFloat(f[i], 64)
				s.busy += v / 100 // USER_HZ
			}
		}
	}
	for _, who := range []int{syscall.RUSAGE_SELF, syscall.RUSAGE_CHILDREN} {
		var ru syscall.Rusage
		if syscall.Getrusage(who, &ru) == nil {
			s.own += time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
		}
	}
	return s
}

// foreignCPU is the share of all cores other processes used between a and b.
func foreignCPU(a, b cpuSnap, wall time.Duration) float64 {
	other := (b.busy - a.busy) - (b.own - a.own)
	if other < 0 || wall <= 0 {
		return 0
	}
	return other / (wall.Seconds() * float64(runtime.NumCPU()))
}
