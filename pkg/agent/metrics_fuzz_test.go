package agent

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestMetricsFollowerBounded: a command rank writes its metrics file
// itself; what one read takes in is bounded (maxMetricsRead, not the
// whole of what was appended since the last poll), the reads that follow
// get the rest, and a line past maxMetricsLine is skipped whole, counted
// once.
func TestMetricsFollowerBounded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "metrics.jsonl")
	line := `{"step":1,"loss":2}` + "\n"
	n := 3*maxMetricsRead/len(line) + 7
	long := `{"step":2,"loss":1,"lbl":[` + strings.Repeat("0,", maxMetricsLine/2) + "0]}\n"
	if err := os.WriteFile(path, []byte(strings.Repeat(line, n)+long+line), 0o644); err != nil {
		t.Fatal(err)
	}
	f := metricsFollower{path: path}
	got, reads := 0, 0
	for ms := f.read(); len(ms) > 0 || f.partial != nil; ms = f.read() {
		if max := maxMetricsRead/len(line) + 1; len(ms) > max {
			t.Fatalf("read %d: %d metrics from one read, want at most %d", reads, len(ms), max)
		}
		got += len(ms)
		if reads++; reads > 100 {
			t.Fatal("never caught up")
		}
	}
	if got != n+1 || f.bad != 1 {
		t.Fatalf("%d metrics, %d malformed (%s); want %d and 1", got, f.bad, f.why, n+1)
	}
}

// FuzzParseMetricsLine: a trainer's metrics line never panics the parser;
// an accepted one has a step >= 1 and a finite loss and encodes as JSON
// that parses into the same metrics.
func FuzzParseMetricsLine(f *testing.F) {
	for _, s := range []string{
		`{"step": 1, "loss": 2.5}`,
		`{"step": 2, "loss": 2.25, "tokens_per_s": 10, "lbl": [1.01, 1.2], "expert_load": [[0.5, 0.5], [0.25, 0.75]]}`,
		`{"step": 3, "loss": 1, "gpus": [{"rank": 0, "uuid": "GPU-1", "util_pct": 90}], "val_bits_per_byte": {"web": 1.5}}`,
		`{"step": 0, "loss": 1}`,
		`{"step": 1, "loss": 1e999}`,
		`{"step": 1e30, "loss": 1}`,
		`  `,
		`[]`,
		`null`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		m, err := parseMetricsLine(line)
		if err != nil {
			return
		}
		if m.Step < 1 || math.IsNaN(m.Loss) || math.IsInf(m.Loss, 0) {
			t.Fatalf("accepted step %d, loss %v", m.Step, m.Loss)
		}
		out, err := json.Marshal(m)
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		m2, err := parseMetricsLine(out)
		if err != nil {
			t.Fatalf("re-parse: %v\n%s", err, out)
		}
		// as JSON: an empty list or map and an absent one are the same
		if out2, _ := json.Marshal(m2); !bytes.Equal(out, out2) {
			t.Fatalf("round trip changed the metrics:\n%s\n%s", out, out2)
		}
	})
}

// FuzzMetricsTap: whatever a command rank prints, in whatever chunks, the
// tap passes on every line that does not start with MetricsPrefix
// unchanged and in order, and sends every one that does to the metrics
// file without the prefix, one line each.
func FuzzMetricsTap(f *testing.F) {
	f.Add([]byte("hello\n"+MetricsPrefix+`{"step": 1, "loss": 2.5}`+"\nSWITCH not metrics\n"+MetricsPrefix+`{"step": 3}`), uint8(3))
	f.Add([]byte("SWITCHYARD_METRICS"), uint8(1))
	f.Add([]byte(MetricsPrefix+"\n\n"+MetricsPrefix), uint8(7))
	f.Fuzz(func(t *testing.T, out []byte, chunk uint8) {
		var next, sink bytes.Buffer
		tap := &metricsTap{next: &next, sink: nopCloser{&sink}}
		step := int(chunk%64) + 1
		for i := 0; i < len(out); i += step {
			tap.Write(out[i:min(i+step, len(out))])
		}
		tap.close()
		var wantNext, wantSink strings.Builder
		lines := strings.SplitAfter(string(out), "\n")
		for _, l := range lines {
			if l == "" {
				continue
			}
			if rest, ok := strings.CutPrefix(l, MetricsPrefix); ok {
				wantSink.WriteString(strings.TrimSuffix(rest, "\n") + "\n")
			} else {
				wantNext.WriteString(l)
			}
		}
		if next.String() != wantNext.String() {
			t.Fatalf("passed on %q, want %q", next.String(), wantNext.String())
		}
		if sink.String() != wantSink.String() {
			t.Fatalf("metrics file %q, want %q", sink.String(), wantSink.String())
		}
	})
}

type nopCloser struct{ *bytes.Buffer }

func (nopCloser) Close() error { return nil }
