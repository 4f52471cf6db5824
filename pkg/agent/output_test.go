package agent

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/switchyard-ml/switchyard/pkg/events"
	"github.com/switchyard-ml/switchyard/pkg/train"
)

func TestLineWriter(t *testing.T) {
	var got []string
	var file bytes.Buffer
	w := newLineWriter(&file, 3, func(s string) { got = append(got, s) })
	long := strings.Repeat("x", MaxLogLine-1) + "é" + strings.Repeat("y", 100) // the cut falls inside "é"
	input := []string{"one\r\ntw", "o\n\n", long[:2000], long[2000:], "\nthree", " four\nlast"}
	for _, p := range input {
		if n, err := w.Write([]byte(p)); n != len(p) || err != nil {
			t.Fatal(n, err)
		}
	}
	if file.String() != strings.Join(input, "") {
		t.Fatal("file copy differs")
	}
	w.flush()
	want := []string{"one", "two", "", strings.Repeat("x", MaxLogLine-1), "three four", "last"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("lines %q", got)
	}
	for _, s := range got {
		if !utf8.ValidString(s) || len(s) > MaxLogLine {
			t.Fatalf("bad line of %d bytes", len(s))
		}
	}
	if w.reason() != "last" || len(w.tailLines()) != 3 {
		t.Fatalf("reason %q tail %q", w.reason(), w.tailLines())
	}
	// A line of exactly MaxLogLine bytes is kept whole.
	got = nil
	exact := strings.Repeat("z", MaxLogLine)
	w.Write([]byte(exact + "\nnext\n"))
	if !reflect.DeepEqual(got, []string{exact, "next"}) {
		t.Fatalf("exact: %d lines", len(got))
	}
}

func TestMetricsFollower(t *testing.T) {
	path := filepath.Join(t.TempDir(), "metrics.jsonl")
	f := metricsFollower{path: path}
	if ms := f.read(); len(ms) != 0 { // not there yet
		t.Fatal(ms)
	}
	appendFile := func(s string) {
		fh, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		fh.WriteString(s)
		fh.Close()
	}
	appendFile(`{"step":1,"loss":3}` + "\n" + `{"step":2,`)
	if ms := f.read(); len(ms) != 1 || ms[0].Step != 1 || ms[0].Loss != 3 {
		t.Fatalf("%+v", ms)
	}
	appendFile(`"loss":2}` + "\nnot json\n" + `{"step":3,"loss":1}` + "\n")
	if ms := f.read(); len(ms) != 2 || ms[0].Step != 2 || ms[0].Loss != 2 || ms[1].Step != 3 {
		t.Fatalf("%+v", ms)
	}
	if ms := f.read(); len(ms) != 0 {
		t.Fatalf("read twice: %+v", ms)
	}
	// Recreated (a new run truncates it): read from the start.
	os.WriteFile(path, []byte(`{"step":1,"loss":9}`+"\n"), 0o644)
	if ms := f.read(); len(ms) != 1 || ms[0].Loss != 9 {
		t.Fatalf("%+v", ms)
	}
}

// TestPanicReason: a rank that panics fails with the panic's line as its
// reason, not the last line of the stack trace below it.
func TestPanicReason(t *testing.T) {
	w := newLineWriter(nil, 5, func(string) {})
	w.Write([]byte("step 3 loss 4.1\npanic: runtime error: makeslice: len out of range\n\ngoroutine 1 [running]:\n"))
	for range 50 {
		w.Write([]byte("main.f(...)\n\t/src/x.go:12 +0x1d\n"))
	}
	w.Write([]byte("exit status 2\n"))
	if got := w.reason(); got != "panic: runtime error: makeslice: len out of range" {
		t.Fatalf("reason %q", got)
	}
	msg := exitMessage(1, errors.New("exit status 2"), w.reason())
	if !strings.HasSuffix(msg, ": panic: runtime error: makeslice: len out of range") {
		t.Fatalf("message %q", msg)
	}
}

// TestEventLineIsNoReason: the event lines switchyard exec and the trainer
// write to stderr reach the job's history, never a failure's reason (a
// restarted command that exited 3 read as failing on "no checkpoint").
func TestEventLineIsNoReason(t *testing.T) {
	var emitted []string
	w := newLineWriter(nil, 5, func(s string) { emitted = append(emitted, s) })
	w.aside = train.EventPrefix
	w.Write([]byte("error: out of cheese\n" + train.EventPrefix + `{"type":"NoCheckpoint","message":"starts from the beginning"}` + "\n"))
	if got := w.reason(); got != "error: out of cheese" {
		t.Errorf("reason %q", got)
	}
	if len(emitted) != 2 {
		t.Errorf("emitted %q: want both lines", emitted)
	}
	only := newLineWriter(nil, 5, func(string) {})
	only.aside = train.EventPrefix
	only.Write([]byte(train.EventPrefix + `{"type":"NoCheckpoint"}` + "\n"))
	if got := only.reason(); got != "" {
		t.Errorf("a rank that printed only an event: reason %q", got)
	}
}

// A rank killed by a signal is said to be, by the signal's number and
// name (Go's names read "killed by signal killed").
func TestExitMessageSignal(t *testing.T) {
	cmd := exec.Command("sh", "-c", "kill -9 $$")
	err := cmd.Run()
	if got, want := exitMessage(1, err, ""), "rank 1 killed by signal 9 (SIGKILL)"; got != want {
		t.Errorf("%q, want %q", got, want)
	}
	if got := signalName(syscall.Signal(34)); got != "signal 34" {
		t.Errorf("an unnamed signal: %q", got)
	}
}

// TestLogFeedNotesDroppedLines: lines the bus drops are not lost
// silently: a note of how many are missing and where the whole output
// is follows them, at most one a noteEvery while the bus stays behind,
// and one more when the rank has ended.
func TestLogFeedNotesDroppedLines(t *testing.T) {
	var got []string
	full := false
	now := time.Unix(1000, 0)
	f := &logFeed{
		publish: func(stream, line string) error {
			if full {
				return events.ErrDropped
			}
			got = append(got, stream+": "+line)
			return nil
		},
		whole: "/run/rank-0 (stdout.log, stderr.log) on worker w1",
		now:   func() time.Time { return now },
	}
	note := func(n int) string {
		return fmt.Sprintf("stderr: switchyard: %d line(s) of this rank's output are missing above (the worker's event bus was behind); /run/rank-0 (stdout.log, stderr.log) on worker w1 has them all", n)
	}
	f.line("stdout", "one")
	full = true
	f.line("stdout", "two")
	f.line("stderr", "three")
	full = false
	f.line("stdout", "four")
	if want := []string{"stdout: one", note(2), "stdout: four"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("published %q, want %q", got, want)
	}
	// behind again within noteEvery: the lines that get through go on,
	// the note waits
	got = nil
	full = true
	f.line("stdout", "five")
	full = false
	f.line("stdout", "six")
	now = now.Add(noteEvery)
	f.line("stdout", "seven")
	if want := []string{"stdout: six", note(1), "stdout: seven"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("published %q, want %q", got, want)
	}
	// the rank ends with lines missing: the note waits for the bus
	got = nil
	full = true
	f.line("stdout", "eight")
	if n := f.flush(0); n != 1 || len(got) != 0 {
		t.Fatalf("flush with the bus full: %d missing, published %q", n, got)
	}
	full = false
	if n := f.flush(0); n != 0 || !reflect.DeepEqual(got, []string{note(1)}) {
		t.Fatalf("flush: %d missing, published %q", n, got)
	}
}

// TestExecLogNotTheReason: what `switchyard exec` logged before the
// program started is not taken for why the program failed; with nothing
// else on stderr there is no reason.
func TestExecLogNotTheReason(t *testing.T) {
	w := newLineWriter(nil, 5, func(string) {})
	w.Write([]byte("out of cheese\n" + ExecLogPrefix + "time=2026-12-08T03:02:54Z level=INFO msg=\"checkpoint deleted\" step=20\n"))
	if got := w.reason(); got != "out of cheese" {
		t.Fatalf("reason %q", got)
	}
	w = newLineWriter(nil, 5, func(string) {})
	w.Write([]byte(ExecLogPrefix + "level=WARN msg=\"checkpoint unusable, falling back\"\n"))
	if got := w.reason(); got != "" {
		t.Fatalf("reason %q, want none", got)
	}
}
