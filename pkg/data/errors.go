package data

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors. Errors returned by this package wrap one of these where it
// applies, so callers can test with errors.Is; messages add the file, line or
// domain concerned.
var (
	ErrEmptyCorpus    = errors.New("data: empty corpus")
	ErrInvalidJSON    = errors.New("data: invalid JSON")
	ErrMissingDomain  = errors.New("data: missing or empty domain")
	ErrMissingText    = errors.New("data: missing or empty text")
	ErrInvalidUTF8    = errors.New("data: invalid UTF-8")
	ErrDomainTooSmall = errors.New("data: domain too small")
	ErrUnknownDomain  = errors.New("data: unknown demo domain")
	ErrNoGoSource     = errors.New("data: Go source tree not found")
	ErrInvalidConfig  = errors.New("data: invalid config")
	ErrLineTooLong    = errors.New("data: line too long")
	ErrNotAFile       = errors.New("data: corpus is not a regular file")
)

// LineError reports a problem with one line of a JSON Lines corpus. Its
// message reads "data: NAME:LINE: WHAT: DETAIL". errors.Is matches the
// sentinel in Err; errors.As can reach Cause (for example a *json.SyntaxError).
type LineError struct {
	Name  string // corpus name, usually the file path
	Line  int    // 1-based line number
	Err   error  // one of the sentinel errors above
	Cause error  // underlying error, may be nil
	// Detail is extra text appended to the message when Cause is nil.
	Detail string
}

func (e *LineError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "data: %s:%d: %s", e.Name, e.Line, what(e.Err))
	switch {
	case e.Cause != nil:
		b.WriteString(": ")
		b.WriteString(e.Cause.Error())
	case e.Detail != "":
		b.WriteString(": ")
		b.WriteString(e.Detail)
	}
	return b.String()
}

// Unwrap returns the sentinel and, when present, the underlying cause.
func (e *LineError) Unwrap() []error {
	if e.Cause == nil {
		return []error{e.Err}
	}
	return []error{e.Err, e.Cause}
}

// detailError is an error whose message is chosen by the caller but which
// matches a sentinel (and an optional cause) under errors.Is / errors.As.
type detailError struct {
	msg      string
	sentinel error
	cause    error
}

func (e *detailError) Error() string { return e.msg }

func (e *detailError) Unwrap() []error {
	if e.cause == nil {
		return []error{e.sentinel}
	}
	return []error{e.sentinel, e.cause}
}

// errorf builds "data: " + formatted context + ": " + what(sentinel).
func errorf(sentinel, cause error, format string, args ...any) error {
	msg := "data: " + fmt.Sprintf(format, args...) + ": " + what(sentinel)
	if cause != nil {
		msg += ": " + cause.Error()
	}
	return &detailError{msg: msg, sentinel: sentinel, cause: cause}
}

// what is a sentinel's message without the package prefix.
func what(sentinel error) string {
	return strings.TrimPrefix(sentinel.Error(), "data: ")
}
