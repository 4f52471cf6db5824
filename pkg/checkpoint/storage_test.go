package checkpoint_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
	"github.com/switchyard-ml/switchyard/pkg/checkpoint/checkpointtest"
)

func TestDirStorageContract(t *testing.T) {
	checkpointtest.Storage(t, func(t *testing.T) checkpoint.Storage {
		st, err := checkpoint.NewDirStorage(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return st
	})
}

func TestMemStorageContract(t *testing.T) {
	checkpointtest.Storage(t, func(t *testing.T) checkpoint.Storage { return checkpoint.NewMemStorage() })
}

func TestMemCatalogueContract(t *testing.T) {
	checkpointtest.Catalogue(t, func(t *testing.T) checkpoint.Catalogue { return checkpoint.NewMemCatalogue() })
	checkpointtest.Fencing(t, func(t *testing.T) checkpoint.Fencing { return checkpoint.NewMemCatalogue() })
}

func TestStorageCatalogueContract(t *testing.T) {
	t.Run("Mem", func(t *testing.T) {
		checkpointtest.Catalogue(t, func(t *testing.T) checkpoint.Catalogue {
			return checkpoint.NewStorageCatalogue(checkpoint.NewMemStorage())
		})
	})
	t.Run("Dir", func(t *testing.T) {
		checkpointtest.Catalogue(t, func(t *testing.T) checkpoint.Catalogue {
			st, err := checkpoint.NewDirStorage(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			return checkpoint.NewStorageCatalogue(st)
		})
	})
}

func TestDirStorageLayoutAndTemp(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	st, err := checkpoint.NewDirStorage(root)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.Put(ctx, "j/step-000000000001/rank-0000/p.bin", strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(root, "j", "step-000000000001", "rank-0000", "p.bin")); err != nil || string(b) != "x" {
		t.Fatalf("file = %q, %v", b, err)
	}
	// A crashed Put's temporary file is invisible to List and removed by
	// CleanTemp once old enough.
	tmp := filepath.Join(root, "j", "step-000000000001", ".tmp-12345")
	if err := os.WriteFile(tmp, []byte("partial"), 0o644); err != nil {
		t.Fatal(err)
	}
	keys, err := st.List(ctx, "")
	if err != nil || len(keys) != 1 {
		t.Fatalf("List = %v, %v", keys, err)
	}
	if n, err := st.CleanTemp(ctx, time.Hour); err != nil || n != 0 {
		t.Fatalf("CleanTemp(1h) = %d, %v; want 0 (file is new)", n, err)
	}
	if n, err := st.CleanTemp(ctx, 0); err != nil || n != 1 {
		t.Fatalf("CleanTemp(0) = %d, %v; want 1", n, err)
	}
	// Deleting the last file removes the now-empty directories.
	if err := st.Delete(ctx, "j/step-000000000001/rank-0000/p.bin"); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(root); len(ents) != 0 {
		t.Fatalf("root not empty after delete: %v", ents)
	}
}

func BenchmarkDirStoragePut(b *testing.B) {
	st, err := checkpoint.NewDirStorage(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	data := make([]byte, 64<<20)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, _, err := st.Put(context.Background(), "bench/blob", bytes.NewReader(data)); err != nil {
			b.Fatal(err)
		}
	}
}
