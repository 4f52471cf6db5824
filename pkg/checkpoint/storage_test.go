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

// TestDirStorageStaysInItsRoot: a link in a job's directory (a rank may
// have made it, as another OS user) that leads out of the root is not
// followed by Get, Stat or Delete, which say so and change nothing there;
// a link that stays inside the root is followed.
func TestDirStorageStaysInItsRoot(t *testing.T) {
	ctx := context.Background()
	root, outside := t.TempDir(), t.TempDir()
	st, err := checkpoint.NewDirStorage(root)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(outside, "p.bin"), []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.Put(ctx, "j/step-000000000001/p.bin", strings.NewReader("inside")); err != nil {
		t.Fatal(err)
	}
	for link, to := range map[string]string{
		"j/step-000000000002": outside,                                           // absolute, out
		"j/step-000000000003": filepath.Join("..", "..", filepath.Base(outside)), // relative, out
		"j/step-000000000004": "step-000000000001",                               // inside
	} {
		if err := os.Symlink(to, filepath.Join(root, filepath.FromSlash(link))); err != nil {
			t.Fatal(err)
		}
	}
	for _, step := range []string{"2", "3"} {
		key := "j/step-00000000000" + step + "/p.bin"
		if rc, err := st.Get(ctx, key); err == nil {
			rc.Close()
			t.Errorf("Get %s read through a link out of the root", key)
		}
		if _, err := st.Stat(ctx, key); err == nil {
			t.Errorf("Stat %s went through a link out of the root", key)
		}
		if err := st.Delete(ctx, key); err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("Delete %s: %v, want an error naming it", key, err)
		}
	}
	if raw, err := os.ReadFile(filepath.Join(outside, "p.bin")); err != nil || string(raw) != "keep" {
		t.Fatalf("the file out of the root: %q, %v", raw, err)
	}
	rc, err := st.Get(ctx, "j/step-000000000004/p.bin")
	if err != nil {
		t.Fatalf("Get through a link inside the root: %v", err)
	}
	rc.Close()
	if info, err := st.Stat(ctx, "j/step-000000000004/p.bin"); err != nil || info.Size != int64(len("inside")) {
		t.Fatalf("Stat through a link inside the root: %+v, %v", info, err)
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
