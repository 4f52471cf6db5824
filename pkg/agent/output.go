package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/switchyard-ml/switchyard/pkg/events"
	"github.com/switchyard-ml/switchyard/pkg/metrics"
	"github.com/switchyard-ml/switchyard/pkg/train"
)

const (
	// MaxLogLine is the longest line published; longer lines are cut.
	MaxLogLine = 4 << 10
	// stderrTail is how many stderr lines are kept for the failure report.
	stderrTail = 20
	// metricsPoll is how often rank 0's metrics.jsonl is read.
	metricsPoll = 250 * time.Millisecond
	// maxMetricsLine bounds a metrics line waiting for its newline.
	maxMetricsLine = 4 << 20
	// maxMetricsRead bounds what one read of metrics.jsonl takes in
	// (beyond the partial line it carries): a command rank writes that
	// file itself (SWITCHYARD_METRICS_FILE) as fast as it likes.
	maxMetricsRead = 1 << 20
)

// lineWriter copies a stream to a file and splits it into lines for emit
// (cut at MaxLogLine bytes, the rest of a long line dropped), keeping the
// last few lines. exec.Cmd writes to it from one goroutine; the owner
// reads it after Wait.
type lineWriter struct {
	file     io.Writer
	emit     func(string)
	buf      []byte
	skipping bool // the current line was cut: drop the rest up to '\n'
	keep     int
	tail     []string
	fatal    string // the first Go panic or fatal error line, if any
	// aside starts lines that are emitted but never kept in the tail:
	// the rank's event lines, which say nothing of why it failed
	aside string
}

func newLineWriter(file io.Writer, keep int, emit func(string)) *lineWriter {
	return &lineWriter{file: file, emit: emit, keep: keep}
}

func (w *lineWriter) Write(p []byte) (int, error) {
	if w.file != nil {
		w.file.Write(p) // a full disk must not stop the rank's output
	}
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		chunk := p
		if i >= 0 {
			chunk, p = p[:i], p[i+1:]
		} else {
			p = nil
		}
		if !w.skipping {
			if room := MaxLogLine - len(w.buf); len(chunk) > room {
				w.buf = append(w.buf, chunk[:room]...)
				w.line()
				w.skipping = true
			} else {
				w.buf = append(w.buf, chunk...)
			}
		}
		if i >= 0 {
			if !w.skipping {
				w.line()
			}
			w.skipping = false
		}
	}
	return n, nil
}

// line emits the buffered line.
func (w *lineWriter) line() {
	b := bytes.TrimSuffix(w.buf, []byte("\r"))
	if len(b) == MaxLogLine { // a cut line: do not end in half a rune
		if i := lastRuneStart(b); !utf8.FullRune(b[i:]) {
			b = b[:i]
		}
	}
	s := string(b)
	w.buf = w.buf[:0]
	if w.keep > 0 && w.fatal == "" && (strings.HasPrefix(s, "panic: ") || strings.HasPrefix(s, "fatal error: ")) {
		w.fatal = s
	}
	if w.keep > 0 && (w.aside == "" || !strings.HasPrefix(s, w.aside)) {
		w.tail = append(w.tail, s)
		if len(w.tail) > w.keep {
			w.tail = w.tail[len(w.tail)-w.keep:]
		}
	}
	w.emit(s)
}

func lastRuneStart(b []byte) int {
	for i := len(b) - 1; i >= 0; i-- {
		if utf8.RuneStart(b[i]) {
			return i
		}
	}
	return 0
}

// flush emits an unterminated last line.
func (w *lineWriter) flush() {
	if len(w.buf) > 0 && !w.skipping {
		w.line()
	}
}

// tailLines are the last lines kept.
func (w *lineWriter) tailLines() []string { return w.tail }

// reason is the line that says why the process failed: a Go panic's or
// runtime fatal error's first line (its stack trace follows it, and the
// last line of that says nothing), else the last non-blank line kept.
func (w *lineWriter) reason() string {
	if w.fatal != "" {
		return w.fatal
	}
	for i := len(w.tail) - 1; i >= 0; i-- {
		if s := strings.TrimSpace(w.tail[i]); s != "" && !strings.HasPrefix(w.tail[i], ExecLogPrefix) {
			return s
		}
	}
	return ""
}

// logFeed publishes a rank's log lines. A line the bus drops (its buffer
// full: the rank prints faster than the bus sends) is counted, and a note
// of how many are missing and of where the whole output is follows, at
// most one a noteEvery and once more when the rank ended, so that a gap
// in `job logs` is never silent. Both of the rank's streams write to it.
type logFeed struct {
	publish func(stream, line string) error
	whole   string           // where the rank's whole output is, for the note
	now     func() time.Time // nil: time.Now

	mu      sync.Mutex
	missing int       // lines dropped since the last note
	noted   time.Time // when the last note went out
}

// noteEvery spaces the notes of a rank that keeps the bus behind.
const noteEvery = time.Second

func (f *logFeed) line(stream, line string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.missing > 0 && f.clock().Sub(f.noted) >= noteEvery {
		f.note()
	}
	if err := f.publish(stream, line); errors.Is(err, events.ErrDropped) {
		f.missing++
	}
}

func (f *logFeed) clock() time.Time {
	if f.now == nil {
		return time.Now()
	}
	return f.now()
}

// note publishes the count of missing lines; false when it could not.
func (f *logFeed) note() bool {
	msg := fmt.Sprintf("switchyard: %d line(s) of this rank's output are missing above (the worker's event bus was behind); %s has them all", f.missing, f.whole)
	if f.publish("stderr", msg) != nil {
		return false
	}
	f.missing, f.noted = 0, f.clock()
	return true
}

// flush notes the lines still missing when the rank has ended, trying
// for up to wait while the bus catches up; it returns how many stay
// missing from the log without a note.
func (f *logFeed) flush(wait time.Duration) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	deadline := time.Now().Add(wait)
	for f.missing > 0 && !f.note() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	return f.missing
}

// followMetrics reads rank 0's metrics.jsonl as it grows (it may appear
// late, end in a partial line, or be recreated) and publishes each step,
// until the rank exited; then it reads once more. A step past steps (when
// not 0: the job's) is malformed: taken, it would hide every later step.
func (a *Agent) followMetrics(tk *task, path string, steps int64, exited <-chan struct{}) {
	f := metricsFollower{path: path}
	t := time.NewTicker(metricsPoll)
	defer t.Stop()
	for {
		final := false
		select {
		case <-exited:
			final = true
		case <-t.C:
		}
		for {
			bad := f.bad
			for _, m := range f.read() {
				if steps > 0 && int64(m.Step) > steps {
					f.bad++
					f.why = fmt.Sprintf("step %d is past the job's %d steps", m.Step, steps)
					continue
				}
				a.reportMetrics(tk, m)
			}
			tk.malformedMetrics(f.bad-bad, f.why)
			if !final || !f.behind {
				break // the rest at the next tick
			}
		}
		if final {
			tk.finalMalformed()
			return
		}
	}
}

func (a *Agent) reportMetrics(tk *task, m train.StepMetrics) {
	var lbl float64
	for _, v := range m.LBL {
		lbl += v
	}
	if len(m.LBL) > 0 {
		lbl /= float64(len(m.LBL))
	}
	if !tk.setMetrics(int64(m.Step), m.Loss, m.TokensPerS) {
		return
	}
	var gpus []metrics.GPU
	for _, g := range m.GPUs {
		gpus = append(gpus, metrics.GPU{Rank: g.Rank, UUID: g.UUID, UtilPct: g.UtilPct, MemUsedBytes: g.MemUsedBytes, MemTotalBytes: g.MemTotalBytes})
	}
	// a command job's trainer writes these lines: at most one per rank of
	// its world, before they go into every sync and the job's record
	gpus = metrics.BoundGPUs(gpus, int(tk.def.GetWorldSize()))
	tk.setGPUs(gpus)
	if a.laterRankZero(tk.key) {
		return // the job's series and stream are a later attempt's now
	}
	a.tm.Observe(tk.key.jobID, metrics.Step{
		Step: m.Step, Loss: m.Loss, LBL: m.LBL, TokensPerS: m.TokensPerS, StepS: m.StepS, ExpertLoad: m.ExpertLoad,
		LBLSyncS: m.LBLSyncS, GradSyncS: m.GradSyncS, CheckpointStallS: m.CheckpointStallS, CheckpointWriteMBps: m.CheckpointWriteMBps, DeviceMemBytes: m.DeviceMemBytes,
		GPUs: gpus,
	})
	var util []float64
	for _, g := range gpus {
		for len(util) <= g.Rank {
			util = append(util, -1)
		}
		util[g.Rank] = g.UtilPct
	}
	a.publish(events.Message{Kind: events.KindMetrics, JobID: tk.key.jobID, Metrics: &events.StepMetrics{
		Step: int64(m.Step), Rank: int(tk.key.rank), Loss: m.Loss, LBL: lbl, NoLBL: len(m.LBL) == 0,
		TokensPerSecond: m.TokensPerS, ExpertLoadLE: metrics.BoundExpertLoad(m.ExpertLoad), GPUUtilPct: util,
	}})
}

// metricsFollower reads the complete lines appended to a JSON Lines file
// since the last read, at most maxMetricsRead bytes of them a read.
type metricsFollower struct {
	path     string
	off      int64
	partial  []byte
	skipping bool   // the line being read was longer than maxMetricsLine: drop it up to '\n'
	behind   bool   // the last read stopped at maxMetricsRead: more is there
	bad      int    // lines skipped: not a JSON object with a step >= 1 and a finite loss
	why      string // what was wrong with the last of them
}

func (f *metricsFollower) read() []train.StepMetrics {
	f.behind = false
	file, err := openNoFollow(f.path, os.O_RDONLY)
	if err != nil {
		return nil
	}
	defer file.Close()
	st, err := file.Stat()
	if err != nil {
		return nil
	}
	if st.Size() < f.off { // recreated
		f.off, f.partial, f.skipping = 0, nil, false
	}
	if _, err := file.Seek(f.off, io.SeekStart); err != nil {
		return nil
	}
	data, err := io.ReadAll(io.LimitReader(file, maxMetricsRead+1))
	if err != nil && !errors.Is(err, io.EOF) {
		return nil
	}
	if len(data) > maxMetricsRead {
		data, f.behind = data[:maxMetricsRead], true
	}
	f.off += int64(len(data))
	var out []train.StepMetrics
	for len(data) > 0 {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			if !f.skipping {
				f.partial = append(f.partial, data...)
			}
			break
		}
		line := data[:i]
		data = data[i+1:]
		if f.skipping {
			f.skipping = false
			continue // counted when it began
		}
		if len(f.partial) > 0 {
			line = append(f.partial, line...)
			f.partial = nil
		}
		if len(line) > maxMetricsLine {
			f.bad++
			f.why = fmt.Sprintf("a line longer than %d bytes: %.80q", maxMetricsLine, line)
			continue
		}
		m, err := parseMetricsLine(line)
		if errors.Is(err, errBlankLine) {
			continue
		}
		if err != nil {
			f.bad++
			f.why = fmt.Sprintf("%v: %.80q", err, bytes.TrimSpace(line))
			continue
		}
		out = append(out, m)
	}
	if len(f.partial) > maxMetricsLine {
		f.bad++
		f.why = fmt.Sprintf("a line longer than %d bytes: %.80q", maxMetricsLine, f.partial)
		f.partial, f.skipping = nil, true
	}
	f.partial = append([]byte(nil), f.partial...) // let the read data go
	return out
}

var errBlankLine = errors.New("blank line")

// parseMetricsLine decodes one line of metrics.jsonl: a JSON object with
// a step >= 1 and a finite loss (errBlankLine for a line of spaces).
func parseMetricsLine(line []byte) (train.StepMetrics, error) {
	var m train.StepMetrics
	line = bytes.TrimSpace(line)
	if len(line) == 0 {
		return m, errBlankLine
	}
	if err := json.Unmarshal(line, &m); err != nil {
		return train.StepMetrics{}, err
	}
	if m.Step < 1 || math.IsNaN(m.Loss) || math.IsInf(m.Loss, 0) {
		return train.StepMetrics{}, fmt.Errorf("step %d, loss %v: want a step >= 1 and a finite loss", m.Step, m.Loss)
	}
	return m, nil
}
