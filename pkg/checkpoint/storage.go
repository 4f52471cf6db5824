package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
)

var (
	// ErrNotFound is wrapped when a storage key or a catalogue entry does
	// not exist.
	ErrNotFound = errors.New("checkpoint: not found")
	// ErrInvalidKey is wrapped when a storage key is malformed; the message
	// after it names the rule broken.
	ErrInvalidKey = errors.New("checkpoint: invalid key")
)

// Storage holds checkpoint blobs under slash-separated keys such as
// "job-7/step-000000001200/rank-0003/params.bin". Implementations must be
// safe for concurrent use.
//
// Keys are relative: no leading or trailing slash, no empty segment, no
// "." or ".." segment, and no segment that starts with ".tmp-" (left free
// for an implementation's temporary files); other dot-names are keys like
// any (a PyTorch DCP checkpoint's ".metadata"). ValidateKey
// checks the rule; every method rejects a bad key with ErrInvalidKey. A
// key may not also be the directory of other keys ("a/b" and "a/b/c"):
// the directory backend cannot store both, so callers must not rely on it.
type Storage interface {
	// Put stores everything read from r under key, replacing any previous
	// blob, and returns its size and lowercase hex SHA-256. On success the
	// blob is durable (it survives a crash of the process and of the
	// machine); on failure the previous blob, or no blob, is left: never a
	// partial one.
	Put(ctx context.Context, key string, r io.Reader) (size int64, sha256 string, err error)
	// Get opens the blob; a missing key gives an error wrapping ErrNotFound.
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	// Delete removes the blob; deleting a missing key is not an error.
	Delete(ctx context.Context, key string) error
	// List returns the keys that start with prefix, sorted. The prefix is
	// matched as a string ("a/b" matches "a/b/c" and "a/bc"); an empty
	// prefix lists everything.
	List(ctx context.Context, prefix string) ([]string, error)
	// Stat describes the blob; a missing key gives an error wrapping
	// ErrNotFound.
	Stat(ctx context.Context, key string) (ObjectInfo, error)
}

// ObjectInfo describes one stored blob.
type ObjectInfo struct {
	Key  string
	Size int64
}

// ValidateKey reports whether key is a valid storage key (see Storage).
func ValidateKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty key", ErrInvalidKey)
	}
	if strings.HasPrefix(key, "/") {
		return fmt.Errorf("%w: %q is absolute", ErrInvalidKey, key)
	}
	for _, seg := range strings.Split(key, "/") {
		if err := validateSegment(key, seg); err != nil {
			return err
		}
	}
	return nil
}

func validateSegment(key, seg string) error {
	switch {
	case seg == "":
		return fmt.Errorf("%w: %q has an empty segment", ErrInvalidKey, key)
	case seg == "..":
		return fmt.Errorf("%w: %q contains \"..\"", ErrInvalidKey, key)
	case seg == ".":
		return fmt.Errorf("%w: %q contains \".\"", ErrInvalidKey, key)
	case strings.HasPrefix(seg, tempPrefix):
		return fmt.Errorf("%w: %q has a segment starting with %q (reserved for temporary files)", ErrInvalidKey, key, tempPrefix)
	case strings.ContainsAny(seg, "\\\x00"):
		return fmt.Errorf("%w: %q contains a backslash or NUL", ErrInvalidKey, key)
	}
	return nil
}

// validatePrefix accepts "" and any prefix of a valid key: a trailing slash
// is allowed, and the last segment may be partial.
func validatePrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	if err := ValidateKey(strings.TrimSuffix(prefix, "/")); err != nil {
		return fmt.Errorf("prefix: %w", err)
	}
	return nil
}
