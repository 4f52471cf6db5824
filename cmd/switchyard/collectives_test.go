package main

import (
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/parallel/collbench"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int{"4096": 4096, "4KiB": 4096, "1MiB": 1 << 20, "64MiB": 64 << 20, "2G": 2 << 30, " 16 MiB ": 16 << 20, "0": 0} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "x", "-1", "1.5MiB", "MiB"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) succeeded", bad)
		}
	}
}

// Our rows meet gloo's (all_to_all_single is all_to_all) and the targets
// follow from the ratios.
func TestCollectivesRows(t *testing.T) {
	runs := []collectivesRun{{DataPlane: "tcp", World: 2,
		TCP:      collbench.Result{BusBWGBs: 2},
		TCPBidir: collbench.Result{BusBWGBs: 1},
		Results: []collbench.Result{
			{Op: "all_reduce", World: 2, Bytes: 16 << 20, LatencyMS: 10, BusBWGBs: 1.7},
			{Op: "all_to_all", World: 2, Bytes: 16 << 20, LatencyMS: 10, BusBWGBs: 0.8},
			{Op: "all_reduce", World: 2, Bytes: 4 << 10, LatencyMS: 0.1, BusBWGBs: 0.04},
		}}}
	g := &glooReport{Results: []glooWorld{{World: 2, Rows: []glooRow{
		{"all_reduce", 2, 16 << 20, 0.0136, 1.24},
		{"all_to_all_single", 2, 16 << 20, 0.01, 1.0},
		{"all_reduce", 2, 4 << 10, 0.0007, 0.006},
	}}}}
	rows, targets := collectivesRows(runs, g)
	if len(rows) != 3 || rows[0].GlooBusBW != 1.24 || rows[1].GlooBusBW != 1.0 || rows[0].OverTCP != 0.85 || rows[0].OverBidir != 1.7 {
		t.Fatalf("rows %+v", rows)
	}
	want := map[string]bool{
		"all_reduce W=2 16MiB over tcp: busbw >= gloo":       true,
		"all_reduce W=2 16MiB over tcp: busbw >= 80% of TCP": true,
		"all_reduce W=2 4KiB over tcp: latency <= gloo":      true,
	}
	if len(targets) != len(want) {
		t.Fatalf("targets %+v", targets)
	}
	for _, tg := range targets {
		if met, ok := want[tg.What]; !ok || met != tg.Met {
			t.Errorf("target %+v", tg)
		}
	}
}

// Repetitions fold into medians; the ratio to gloo is the median of the
// per-pair ratios (not the ratio of the medians), with its extremes.
func TestMedianRows(t *testing.T) {
	row := func(bw, gloo float64) collectivesRow {
		return collectivesRow{Op: "all_reduce", World: 4, Bytes: 64 << 20, DataPlane: "tcp", LatencyMS: 100 / bw,
			BusBWGBs: bw, GlooMS: 100 / gloo, GlooBusBW: gloo, OverGloo: bw / gloo, TCPGBs: 2, OverTCP: bw / 2}
	}
	got := medianRows([][]collectivesRow{{row(0.5, 0.5)}, {row(0.9, 0.6)}, {row(0.4, 0.8)}})
	if len(got) != 1 {
		t.Fatalf("rows %+v", got)
	}
	r := got[0]
	if r.BusBWGBs != 0.5 || r.GlooBusBW != 0.6 || r.OverGloo != 1 || r.OverGlooMin != 0.5 || r.OverGlooMax != 1.5 || r.Reps != 3 || len(r.OverGlooReps) != 3 {
		t.Fatalf("row %+v", r)
	}
	if tg := collectivesTargets(got); len(tg) != 2 || !tg[0].Met || tg[1].Met {
		t.Fatalf("targets %+v", tg)
	}
	if one := medianRows([][]collectivesRow{{row(1, 2)}}); one[0].Reps != 0 || one[0].OverGloo != 0.5 {
		t.Fatalf("one repetition changed: %+v", one[0])
	}
	if m := median([]float64{3, 1, 2, 4}); m != 2.5 {
		t.Fatalf("median = %v", m)
	}
}

// TestBenchUsage: bench names every benchmark it has.
func TestBenchUsage(t *testing.T) {
	r := runCmd(t, false, "bench")
	wantCode(t, r, exitUsage)
	wantContains(t, r.stderr, "say what to measure: engine, collectives, checkpoint")
	r = runCmd(t, false, "bench", "--help") // its usage goes to the process's stdout
	wantCode(t, r, exitOK)
}
