package data

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"unicode/utf8"
)

// Document is one corpus record: a domain label and its UTF-8 text. Each byte
// of Text is one token.
type Document struct {
	Domain string `json:"domain"`
	Text   string `json:"text"`
}

// ReadFile reads a JSON Lines corpus from path; see ReadJSONL. A file that
// cannot be opened gives "data: open corpus: ..." wrapping the os error (so
// errors.Is(err, fs.ErrNotExist) works).
// A device, pipe or directory (/dev/zero) is refused with ErrNotAFile
// before anything is read.
func ReadFile(path string) ([]Document, error) {
	f, err := openCorpus(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ReadJSONL(f, path)
}

// CheckFile checks, reading nothing, that ReadFile can open path: its
// errors are ReadFile's before the first line (a worker refuses a rank
// whose corpus it cannot open, rather than start it to fail).
func CheckFile(path string) error {
	f, err := openCorpus(path)
	if err != nil {
		return err
	}
	return f.Close()
}

// openCorpus opens the regular file at path.
func openCorpus(path string) (*os.File, error) {
	// a named pipe would block Open until a writer came
	if st, err := os.Stat(path); err == nil && !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is %s", ErrNotAFile, path, fileKind(st.Mode()))
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("data: open corpus: %w", err)
	}
	if st, err := f.Stat(); err != nil {
		f.Close()
		return nil, fmt.Errorf("data: open corpus: %w", err)
	} else if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%w: %s is %s", ErrNotAFile, path, fileKind(st.Mode()))
	}
	return f, nil
}

// MaxLineBytes is the longest line (one document) ReadJSONL accepts.
const MaxLineBytes = 64 << 20

// ReadJSONL reads one JSON object per line, {"domain": "...", "text": "..."};
// other fields are ignored, blank lines are skipped, a leading UTF-8 byte
// order mark and CRLF line ends are accepted, and lines may be up to
// MaxLineBytes long (ErrLineTooLong past that, so input that never ends a
// line is not read whole).
// name labels errors, which are *LineError values with the 1-based line
// number: invalid JSON (ErrInvalidJSON), a missing or empty domain
// (ErrMissingDomain) or text (ErrMissingText), and bytes that are not UTF-8
// or \u escapes that decode to an unpaired surrogate (ErrInvalidUTF8). A
// corpus without documents gives ErrEmptyCorpus.
func ReadJSONL(r io.Reader, name string) ([]Document, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var (
		docs []Document
		line []byte
	)
	for lineNo := 1; ; lineNo++ {
		line = line[:0]
		var err error
		for {
			chunk, e := br.ReadSlice('\n')
			line = append(line, chunk...)
			if len(line) > MaxLineBytes {
				return nil, &LineError{Name: name, Line: lineNo, Err: ErrLineTooLong, Detail: fmt.Sprintf("over %d MiB", MaxLineBytes>>20)}
			}
			if e != bufio.ErrBufferFull {
				err = e
				break
			}
		}
		if err != nil && err != io.EOF {
			return nil, fmt.Errorf("data: read %s: %w", name, err)
		}
		if len(line) == 0 && err == io.EOF {
			break
		}
		if lineNo == 1 {
			line = bytes.TrimPrefix(line, []byte("\ufeff"))
		}
		doc, ok, perr := parseLine(line, name, lineNo)
		if perr != nil {
			return nil, perr
		}
		if ok {
			docs = append(docs, doc)
		}
		if err == io.EOF {
			break
		}
	}
	if len(docs) == 0 {
		return nil, errorf(ErrEmptyCorpus, nil, "%s", name)
	}
	return docs, nil
}

// parseLine decodes one line; ok is false for a blank line.
func parseLine(line []byte, name string, lineNo int) (doc Document, ok bool, err error) {
	line = bytes.TrimRight(line, "\r\n")
	if len(bytes.TrimSpace(line)) == 0 {
		return Document{}, false, nil
	}
	lerr := func(sentinel, cause error, detail string) error {
		return &LineError{Name: name, Line: lineNo, Err: sentinel, Cause: cause, Detail: detail}
	}
	if !utf8.Valid(line) {
		return Document{}, false, lerr(ErrInvalidUTF8, nil,
			fmt.Sprintf("first bad byte at offset %d of the line", invalidUTF8Offset(line)))
	}
	if err := json.Unmarshal(line, &doc); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field != "" {
			err = fmt.Errorf("field %q must be a string, not %s", typeErr.Field, typeErr.Value)
		}
		return Document{}, false, lerr(ErrInvalidJSON, err, "")
	}
	if doc.Domain == "" {
		return Document{}, false, lerr(ErrMissingDomain, nil, "")
	}
	if doc.Text == "" {
		return Document{}, false, lerr(ErrMissingText, nil, "")
	}
	// encoding/json turns an unpaired surrogate escape (\ud800) into U+FFFD
	// silently; that is not text the writer meant, so reject it unless the
	// line really contains U+FFFD.
	if (strings.ContainsRune(doc.Text, utf8.RuneError) || strings.ContainsRune(doc.Domain, utf8.RuneError)) &&
		!bytes.Contains(line, []byte("\ufffd")) && !bytes.Contains(bytes.ToLower(line), []byte(`\ufffd`)) {
		return Document{}, false, lerr(ErrInvalidUTF8, nil, "unpaired UTF-16 surrogate escape")
	}
	return doc, true, nil
}

// invalidUTF8Offset returns the byte offset of the first invalid sequence.
func invalidUTF8Offset(b []byte) int {
	for i := 0; i < len(b); {
		r, size := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && size <= 1 {
			return i
		}
		i += size
	}
	return len(b)
}

// fileKind names what a path that is not a regular file is.
func fileKind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a device"
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	}
	return "not a regular file (" + m.Type().String() + ")"
}
