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

// Size formats n bytes for people in the largest binary unit it reaches:
// "1 MiB", "1.5 GiB", "100 B".
func Size(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	u := 0
	for u+1 < len(units) && n>>(10*(u+1)) > 0 {
		u++
	}
	if n%(1<<(10*u)) == 0 {
		return fmt.Sprintf("%d %s", n>>(10*u), units[u])
	}
	return fmt.Sprintf("%.1f %s", float64(n)/float64(int64(1)<<(10*u)), units[u])
}
