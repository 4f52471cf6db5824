package train

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// progress prints live training progress: a redrawn bar on a terminal,
// one plain line every few steps otherwise.
type progress struct {
	w     io.Writer
	tty   bool
	total int
	start time.Time
	last  time.Time
	toks  float64 // smoothed tokens/s
}

func newProgress(w io.Writer, total int) *progress {
	tty := false
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	// rank 0's background commit announces its retries on w too
	return &progress{w: &lockedWriter{w: w}, tty: tty, total: total, start: time.Now()}
}

// lockedWriter serialises the writes of several goroutines to w.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (p *progress) update(sm StepMetrics) {
	if p.toks == 0 {
		p.toks = sm.TokensPerS
	} else {
		p.toks = 0.8*p.toks + 0.2*sm.TokensPerS
	}
	el := time.Since(p.start)
	eta := time.Duration(float64(el) / float64(sm.Step) * float64(p.total-sm.Step)).Round(time.Second)
	lbl := 0.0
	for _, v := range sm.LBL {
		lbl += v / float64(max(len(sm.LBL), 1))
	}
	msg := fmt.Sprintf("step %d/%d  loss %.4f  lbl %.4f  %.0f tok/s  eta %s", sm.Step, p.total, sm.Loss, lbl, p.toks, eta)
	if p.tty {
		const width = 24
		n := width * sm.Step / p.total
		fmt.Fprintf(p.w, "\r[%s%s] %s\x1b[K", strings.Repeat("#", n), strings.Repeat(".", width-n), msg)
		return
	}
	every := max(1, p.total/20)
	if sm.Step == 1 || sm.Step%every == 0 || sm.Step == p.total || time.Since(p.last) > 30*time.Second {
		p.last = time.Now()
		fmt.Fprintln(p.w, msg)
	}
}

func (p *progress) eval(step int, ev *Eval, domains []string) {
	if p.tty {
		fmt.Fprintln(p.w)
	}
	var parts []string
	for dom, b := range ev.BitsPerByte {
		name := fmt.Sprint(dom)
		if dom < len(domains) {
			name = domains[dom]
		}
		parts = append(parts, fmt.Sprintf("%s:%.3f", name, b))
	}
	fmt.Fprintf(p.w, "eval at step %d: val bits/byte by domain %s\n", step, strings.Join(parts, " "))
}

func (p *progress) resumed(step int) {
	fmt.Fprintf(p.w, "resumed from the checkpoint of step %d\n", step)
	announce(p.w, "Resumed", fmt.Sprintf("resumed from the checkpoint of step %d", step))
}

func (p *progress) done() {
	if p.tty {
		fmt.Fprintln(p.w)
	}
}

// EventPrefix starts a line by which a rank announces an event of its job
// (the worker turns it into an entry of the job's history):
// "switchyard-event {"type":"Resumed","message":"..."}".
const EventPrefix = "switchyard-event "

// Event is what follows EventPrefix, as JSON.
type Event struct {
	Type    string `json:"type"`
	Message string `json:"message"`
}

// EventsEnv set to "1" turns the event lines on (the worker sets it for
// its ranks; a run in a terminal does not print them).
const EventsEnv = "SWITCHYARD_EVENTS"

// announce writes an event line to w (nothing when w is nil or the
// event lines are off).
func announce(w io.Writer, typ, msg string) {
	if w == nil || os.Getenv(EventsEnv) != "1" {
		return
	}
	b, _ := json.Marshal(Event{Type: typ, Message: msg})
	fmt.Fprintf(w, "%s%s\n", EventPrefix, b)
}

// Announce writes an event line of the job to w (a rank's stderr) when
// the worker asked for them (EventsEnv): for processes that run a rank
// without a Trainer, such as `switchyard exec`.
func Announce(w io.Writer, typ, msg string) { announce(w, typ, msg) }
