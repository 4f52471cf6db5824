package data

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"unicode/utf8"
)

func TestReadJSONLErrors(t *testing.T) {
	good := `{"domain":"a","text":"hello"}` + "\n"
	cases := []struct {
		name     string
		in       string
		sentinel error
		line     int
		msg      string // exact message when not empty
	}{
		{"bad json", good + "\n" + `{bad` + "\n", ErrInvalidJSON, 3,
			`data: corpus.jsonl:3: invalid JSON: invalid character 'b' looking for beginning of object key string`},
		{"truncated", good + `{"domain":"a","text":"x"`, ErrInvalidJSON, 2, ""},
		{"trailing garbage", `{"domain":"a","text":"x"} x`, ErrInvalidJSON, 1, ""},
		{"not an object", `["a","b"]`, ErrInvalidJSON, 1, ""},
		{"text not a string", good + `{"domain":"a","text":5}`, ErrInvalidJSON, 2,
			`data: corpus.jsonl:2: invalid JSON: field "text" must be a string, not number`},
		{"missing domain", good + good + `{"text":"x"}`, ErrMissingDomain, 3,
			`data: corpus.jsonl:3: missing or empty domain`},
		{"empty domain", `{"domain":"","text":"x"}`, ErrMissingDomain, 1, ""},
		{"missing text", `{"domain":"a"}`, ErrMissingText, 1, `data: corpus.jsonl:1: missing or empty text`},
		{"empty text", good + `{"domain":"a","text":""}`, ErrMissingText, 2, ""},
		{"null line", `null`, ErrMissingDomain, 1, ""},
		{"non-utf8 text", good + "{\"domain\":\"a\",\"text\":\"ab\xffc\"}\n", ErrInvalidUTF8, 2,
			`data: corpus.jsonl:2: invalid UTF-8: first bad byte at offset 24 of the line`},
		{"non-utf8 other field", "{\"domain\":\"a\",\"text\":\"x\",\"src\":\"\xc3\"}", ErrInvalidUTF8, 1, ""},
		{"unpaired surrogate", `{"domain":"a","text":"x\ud800y"}`, ErrInvalidUTF8, 1,
			`data: corpus.jsonl:1: invalid UTF-8: unpaired UTF-16 surrogate escape`},
		{"empty", "", ErrEmptyCorpus, 0, `data: corpus.jsonl: empty corpus`},
		{"blank lines only", "\n  \n\r\n", ErrEmptyCorpus, 0, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			docs, err := ReadJSONL(strings.NewReader(tc.in), "corpus.jsonl")
			if err == nil {
				t.Fatalf("got %d docs and no error", len(docs))
			}
			if !errors.Is(err, tc.sentinel) {
				t.Fatalf("error %q does not match %v", err, tc.sentinel)
			}
			if tc.msg != "" && err.Error() != tc.msg {
				t.Errorf("message\n got %q\nwant %q", err, tc.msg)
			}
			if !strings.HasPrefix(err.Error(), "data: corpus.jsonl") {
				t.Errorf("message %q lacks the corpus name", err)
			}
			var le *LineError
			if tc.line > 0 {
				if !errors.As(err, &le) || le.Line != tc.line {
					t.Errorf("error %q: want a LineError on line %d", err, tc.line)
				}
			} else if errors.As(err, &le) {
				t.Errorf("error %q: unexpected LineError", err)
			}
		})
	}
}

func TestReadJSONLSyntaxErrorReachable(t *testing.T) {
	_, err := ReadJSONL(strings.NewReader(`{"domain":`), "c")
	var se *json.SyntaxError
	if !errors.As(err, &se) {
		t.Fatalf("error %q does not expose *json.SyntaxError", err)
	}
}

func TestReadJSONLAccepts(t *testing.T) {
	long := strings.Repeat("é", 600_000) // 1.2 MB line, far beyond bufio.Scanner's 64 KiB
	in := "\ufeff" + `{"domain":"a","text":"one","source":"x","n":[1,2,{"k":null}]}` + "\r\n" +
		"\n" +
		`{"text":"two\n\"quoted\"\t\u00e9\ufffd","domain":"b"}` + "\n" +
		`{"domain":"a","text":"` + long + `"}` + "\n" +
		`{"domain":"c","text":"\ud83d\ude00 last line without newline"}`
	docs, err := ReadJSONL(strings.NewReader(in), "c.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	want := []Document{
		{"a", "one"},
		{"b", "two\n\"quoted\"\té\ufffd"},
		{"a", long},
		{"c", "😀 last line without newline"},
	}
	if len(docs) != len(want) {
		t.Fatalf("got %d docs, want %d", len(docs), len(want))
	}
	for i := range want {
		if docs[i] != want[i] {
			t.Errorf("doc %d = %.40q, want %.40q", i, docs[i], want[i])
		}
	}
}

func TestReadFile(t *testing.T) {
	dir := t.TempDir()
	_, err := ReadFile(filepath.Join(dir, "missing.jsonl"))
	if !errors.Is(err, fs.ErrNotExist) || !strings.HasPrefix(err.Error(), "data: open corpus: ") {
		t.Fatalf("missing file: got %v", err)
	}
	p := filepath.Join(dir, "corpus.jsonl")
	if err := os.WriteFile(p, []byte(`{"domain":"a","text":"x"}`+"\n"+`{"domain":"a"}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = ReadFile(p)
	if want := "data: " + p + ":2: missing or empty text"; err == nil || err.Error() != want {
		t.Fatalf("got %v, want %s", err, want)
	}
}

func FuzzReadJSONL(f *testing.F) {
	for _, s := range []string{
		`{"domain":"a","text":"x"}`,
		`{"domain":"a","text":"x"}` + "\n\n" + `{"domain":"b","text":"y\u00e9"}` + "\r\n",
		`{"domain":"a","text":"\ud800"}`,
		"{\"domain\":\"a\",\"text\":\"\xff\"}",
		`{"domain":"a"`,
		`null`, `[]`, "\ufeff", "",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		docs, err := ReadJSONL(bytes.NewReader(in), "fuzz")
		if err != nil {
			if docs != nil || !strings.HasPrefix(err.Error(), "data: fuzz") {
				t.Fatalf("bad failure: docs=%v err=%q", docs, err)
			}
			return
		}
		for _, d := range docs {
			if d.Domain == "" || d.Text == "" || !utf8.ValidString(d.Text) {
				t.Fatalf("bad document %q", d)
			}
		}
	})
}

// TestReadBounded: input that never ends (a device, a line without end)
// is refused after a bounded read, not read whole.
func TestReadBounded(t *testing.T) {
	for p, kind := range map[string]string{"/dev/zero": "is a character device", t.TempDir(): "is a directory"} {
		if _, err := ReadFile(p); !errors.Is(err, ErrNotAFile) || !strings.HasSuffix(err.Error(), p+" "+kind) {
			t.Errorf("%s: %v, want ErrNotAFile saying it %s", p, err, kind)
		}
	}
	long := io.MultiReader(strings.NewReader(`{"domain": "a", "text": "ok"}`+"\n"+`{"domain": "a", "text": "`), zeros{})
	_, err := ReadJSONL(long, "endless")
	var le *LineError
	if !errors.Is(err, ErrLineTooLong) || !errors.As(err, &le) || le.Line != 2 {
		t.Fatalf("a line that never ends: %v", err)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// CheckFile opens nothing that is not a regular file (a named pipe would
// block) and gives ReadFile's errors; a readable corpus passes.
func TestCheckFile(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.jsonl")
	if err := CheckFile(missing); !errors.Is(err, fs.ErrNotExist) || err.Error() != "data: open corpus: open "+missing+": no such file or directory" {
		t.Errorf("missing: %v", err)
	}
	fifo := filepath.Join(dir, "pipe")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	for p, kind := range map[string]string{fifo: "is a named pipe", dir: "is a directory", "/dev/null": "is a character device"} {
		if err := CheckFile(p); !errors.Is(err, ErrNotAFile) || !strings.HasSuffix(err.Error(), p+" "+kind) {
			t.Errorf("%s: %v, want ErrNotAFile saying it %s", p, err, kind)
		}
	}
	ok := filepath.Join(dir, "c.jsonl")
	os.WriteFile(ok, []byte("not even JSON"), 0o644) // not read
	if err := CheckFile(ok); err != nil {
		t.Errorf("a regular file: %v", err)
	}
}
