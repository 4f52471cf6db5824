package checkpoint

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
)

// MemStorage is a Storage in memory, for tests and single-process dev runs.
// The zero value is not usable; call NewMemStorage.
type MemStorage struct {
	mu    sync.RWMutex
	blobs map[string][]byte
}

var _ Storage = (*MemStorage)(nil)

// NewMemStorage returns an empty MemStorage.
func NewMemStorage() *MemStorage { return &MemStorage{blobs: map[string][]byte{}} }

// Put implements Storage.
func (m *MemStorage) Put(ctx context.Context, key string, r io.Reader) (int64, string, error) {
	if err := ValidateKey(key); err != nil {
		return 0, "", err
	}
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, ctxReader{ctx, r}); err != nil {
		return 0, "", fmt.Errorf("checkpoint: put %s: %w", key, err)
	}
	b := buf.Bytes()
	sum := sha256.Sum256(b)
	m.mu.Lock()
	m.blobs[key] = b
	m.mu.Unlock()
	return int64(len(b)), hex.EncodeToString(sum[:]), nil
}

// Get implements Storage. The reader sees the blob as it was when Get
// returned.
func (m *MemStorage) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := ValidateKey(key); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.RLock()
	b, ok := m.blobs[key]
	m.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, key)
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

// Delete implements Storage.
func (m *MemStorage) Delete(ctx context.Context, key string) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	delete(m.blobs, key)
	m.mu.Unlock()
	return nil
}

// List implements Storage.
func (m *MemStorage) List(ctx context.Context, prefix string) ([]string, error) {
	if err := validatePrefix(prefix); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.RLock()
	keys := []string{}
	for k := range m.blobs {
		if strings.HasPrefix(k, prefix) {
			keys = append(keys, k)
		}
	}
	m.mu.RUnlock()
	sort.Strings(keys)
	return keys, nil
}

// Stat implements Storage.
func (m *MemStorage) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	if err := ValidateKey(key); err != nil {
		return ObjectInfo{}, err
	}
	if err := ctx.Err(); err != nil {
		return ObjectInfo{}, err
	}
	m.mu.RLock()
	b, ok := m.blobs[key]
	m.mu.RUnlock()
	if !ok {
		return ObjectInfo{}, fmt.Errorf("%w: %s", ErrNotFound, key)
	}
	return ObjectInfo{Key: key, Size: int64(len(b))}, nil
}

// Corrupt flips one bit of the blob at byte offset off, for tests of
// corruption detection. It reports whether the blob exists and is long
// enough.
func (m *MemStorage) Corrupt(key string, off int) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.blobs[key]
	if !ok || off < 0 || off >= len(b) {
		return false
	}
	c := append([]byte(nil), b...)
	c[off] ^= 0x01
	m.blobs[key] = c
	return true
}
