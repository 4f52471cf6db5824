// Package fsutil reads files whose size the reader does not control (job
// specs, configs, manifests named on a command line) without trusting it:
// a path to /dev/zero or a 10 GB file gives an error naming the limit,
// not an out-of-memory crash.
package fsutil

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// ErrTooLarge is wrapped by ReadFile's error for a file over its limit.
var ErrTooLarge = errors.New("file too large")

// ReadFile reads the file at path, at most max bytes of it: a longer
// file (or a device that never ends) is an error wrapping ErrTooLarge
// after reading max+1 bytes. The os errors are wrapped as os.ReadFile's
// are, so errors.Is(err, fs.ErrNotExist) works.
func ReadFile(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s: %w: over the limit of %s", path, ErrTooLarge, Size(max))
	}
	return b, nil
}

// Size formats n bytes for people: "1 MiB", "512 KiB", "100 B".
func Size(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}
