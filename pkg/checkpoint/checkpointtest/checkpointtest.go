// Package checkpointtest holds the contract tests that every
// checkpoint.Storage and checkpoint.Catalogue implementation must pass.
// Call them from the implementation's own tests:
//
//	func TestDirStorageContract(t *testing.T) {
//		checkpointtest.Storage(t, func(t *testing.T) checkpoint.Storage { ... })
//	}
package checkpointtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
)

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func get(t *testing.T, st checkpoint.Storage, key string) []byte {
	t.Helper()
	rc, err := st.Get(context.Background(), key)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("Get(%q): read: %v", key, err)
	}
	return b
}

type failingReader struct{ n int }

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, errors.New("source failed")
	}
	k := min(len(p), f.n)
	for i := range p[:k] {
		p[i] = 'x'
	}
	f.n -= k
	return k, nil
}

// Storage runs the Storage contract against fresh stores made by newStore.
func Storage(t *testing.T, newStore func(t *testing.T) checkpoint.Storage) {
	ctx := context.Background()

	t.Run("PutGetStat", func(t *testing.T) {
		st := newStore(t)
		data := []byte("hello, shard")
		n, h, err := st.Put(ctx, "job/step-1/rank-0000/params.bin", bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		if n != int64(len(data)) || h != sum(data) {
			t.Fatalf("Put = %d, %s; want %d, %s", n, h, len(data), sum(data))
		}
		if got := get(t, st, "job/step-1/rank-0000/params.bin"); !bytes.Equal(got, data) {
			t.Fatalf("Get = %q, want %q", got, data)
		}
		info, err := st.Stat(ctx, "job/step-1/rank-0000/params.bin")
		if err != nil || info.Size != int64(len(data)) || info.Key != "job/step-1/rank-0000/params.bin" {
			t.Fatalf("Stat = %+v, %v", info, err)
		}
	})

	t.Run("EmptyBlob", func(t *testing.T) {
		st := newStore(t)
		n, h, err := st.Put(ctx, "e", bytes.NewReader(nil))
		if err != nil || n != 0 || h != sum(nil) {
			t.Fatalf("Put empty = %d, %s, %v", n, h, err)
		}
		if got := get(t, st, "e"); len(got) != 0 {
			t.Fatalf("Get = %q", got)
		}
	})

	t.Run("Overwrite", func(t *testing.T) {
		st := newStore(t)
		for _, s := range []string{"first version, longer", "second"} {
			if _, _, err := st.Put(ctx, "a/b", strings.NewReader(s)); err != nil {
				t.Fatal(err)
			}
			if got := get(t, st, "a/b"); string(got) != s {
				t.Fatalf("Get = %q, want %q", got, s)
			}
		}
	})

	t.Run("FailedPutLeavesOldBlob", func(t *testing.T) {
		st := newStore(t)
		if _, _, err := st.Put(ctx, "k/v", strings.NewReader("old")); err != nil {
			t.Fatal(err)
		}
		if _, _, err := st.Put(ctx, "k/v", &failingReader{n: 100000}); err == nil {
			t.Fatal("Put from a failing reader succeeded")
		}
		if got := get(t, st, "k/v"); string(got) != "old" {
			t.Fatalf("after failed Put, Get = %q, want old", got)
		}
		if _, _, err := st.Put(ctx, "k/new", &failingReader{n: 10}); err == nil {
			t.Fatal("Put from a failing reader succeeded")
		}
		if _, err := st.Stat(ctx, "k/new"); !errors.Is(err, checkpoint.ErrNotFound) {
			t.Fatalf("failed Put left a blob: Stat err = %v", err)
		}
		keys, err := st.List(ctx, "")
		if err != nil || !reflect.DeepEqual(keys, []string{"k/v"}) {
			t.Fatalf("List = %v, %v; want [k/v]", keys, err)
		}
	})

	t.Run("CancelledPut", func(t *testing.T) {
		st := newStore(t)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, _, err := st.Put(cctx, "c", strings.NewReader("x")); err == nil {
			t.Fatal("Put with a cancelled context succeeded")
		}
		if _, err := st.Stat(ctx, "c"); !errors.Is(err, checkpoint.ErrNotFound) {
			t.Fatalf("cancelled Put left a blob: %v", err)
		}
	})

	t.Run("NotFound", func(t *testing.T) {
		st := newStore(t)
		if _, err := st.Get(ctx, "missing/key"); !errors.Is(err, checkpoint.ErrNotFound) {
			t.Fatalf("Get missing: %v", err)
		}
		if _, err := st.Stat(ctx, "missing/key"); !errors.Is(err, checkpoint.ErrNotFound) {
			t.Fatalf("Stat missing: %v", err)
		}
	})

	t.Run("DeleteIdempotent", func(t *testing.T) {
		st := newStore(t)
		if _, _, err := st.Put(ctx, "d/x", strings.NewReader("x")); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 2; i++ {
			if err := st.Delete(ctx, "d/x"); err != nil {
				t.Fatalf("Delete #%d: %v", i+1, err)
			}
		}
		if err := st.Delete(ctx, "never/was"); err != nil {
			t.Fatalf("Delete never-existing: %v", err)
		}
		if _, err := st.Get(ctx, "d/x"); !errors.Is(err, checkpoint.ErrNotFound) {
			t.Fatalf("Get after Delete: %v", err)
		}
		if keys, _ := st.List(ctx, ""); len(keys) != 0 {
			t.Fatalf("List after Delete = %v", keys)
		}
		// The key can be written again.
		if _, _, err := st.Put(ctx, "d/x", strings.NewReader("y")); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("List", func(t *testing.T) {
		st := newStore(t)
		keys := []string{"j/step-2/b", "j/step-1/a", "j/step-1/sub/c", "j/step-10/a", "jx/a", "k"}
		for _, k := range keys {
			if _, _, err := st.Put(ctx, k, strings.NewReader(k)); err != nil {
				t.Fatal(err)
			}
		}
		for _, tc := range []struct {
			prefix string
			want   []string
		}{
			{"", []string{"j/step-1/a", "j/step-1/sub/c", "j/step-10/a", "j/step-2/b", "jx/a", "k"}},
			{"j/", []string{"j/step-1/a", "j/step-1/sub/c", "j/step-10/a", "j/step-2/b"}},
			{"j", []string{"j/step-1/a", "j/step-1/sub/c", "j/step-10/a", "j/step-2/b", "jx/a"}},
			{"j/step-1/", []string{"j/step-1/a", "j/step-1/sub/c"}},
			{"j/step-1", []string{"j/step-1/a", "j/step-1/sub/c", "j/step-10/a"}},
			{"j/step-1/sub/c", []string{"j/step-1/sub/c"}},
			{"nothing/", []string{}},
		} {
			got, err := st.List(ctx, tc.prefix)
			if err != nil {
				t.Fatalf("List(%q): %v", tc.prefix, err)
			}
			if len(got) == 0 && len(tc.want) == 0 {
				continue
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("List(%q) = %v, want %v", tc.prefix, got, tc.want)
			}
		}
	})

	t.Run("DotNames", func(t *testing.T) {
		// a DCP checkpoint's ".metadata" is a key like any other
		st := newStore(t)
		if _, _, err := st.Put(ctx, "j/step-1/.metadata", strings.NewReader("meta")); err != nil {
			t.Fatal(err)
		}
		if keys, err := st.List(ctx, "j/"); err != nil || !reflect.DeepEqual(keys, []string{"j/step-1/.metadata"}) {
			t.Fatalf("List = %v, %v", keys, err)
		}
		if err := st.Delete(ctx, "j/step-1/.metadata"); err != nil {
			t.Fatal(err)
		}
		if keys, _ := st.List(ctx, ""); len(keys) != 0 {
			t.Fatalf("after delete: %v", keys)
		}
	})

	t.Run("BadKeys", func(t *testing.T) {
		st := newStore(t)
		for _, k := range []string{"", "/abs", "a//b", "a/../b", "..", "a/", "./a", "a/./b", "a/.tmp-1", "a\\b"} {
			if _, _, err := st.Put(ctx, k, strings.NewReader("x")); !errors.Is(err, checkpoint.ErrInvalidKey) {
				t.Errorf("Put(%q) err = %v, want ErrInvalidKey", k, err)
			}
			if _, err := st.Get(ctx, k); !errors.Is(err, checkpoint.ErrInvalidKey) {
				t.Errorf("Get(%q) err = %v, want ErrInvalidKey", k, err)
			}
			if err := st.Delete(ctx, k); !errors.Is(err, checkpoint.ErrInvalidKey) {
				t.Errorf("Delete(%q) err = %v, want ErrInvalidKey", k, err)
			}
			if _, err := st.Stat(ctx, k); !errors.Is(err, checkpoint.ErrInvalidKey) {
				t.Errorf("Stat(%q) err = %v, want ErrInvalidKey", k, err)
			}
		}
		for _, p := range []string{"/abs", "a//", "../x", "a/../"} {
			if _, err := st.List(ctx, p); !errors.Is(err, checkpoint.ErrInvalidKey) {
				t.Errorf("List(%q) err = %v, want ErrInvalidKey", p, err)
			}
		}
	})

	t.Run("Concurrent", func(t *testing.T) {
		st := newStore(t)
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 10; i++ {
					key := fmt.Sprintf("c/w%d/%d", w, i)
					data := bytes.Repeat([]byte{byte(w)}, 1000+i)
					if _, h, err := st.Put(ctx, key, bytes.NewReader(data)); err != nil || h != sum(data) {
						errs <- fmt.Errorf("Put %s: %v", key, err)
						return
					}
					// Deleting siblings while others write exercises
					// directory removal racing directory creation.
					if err := st.Delete(ctx, key); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}

func manifest(job string, step int64) checkpoint.Manifest {
	return checkpoint.Manifest{
		Job: job, Step: step, CreatedUnixNano: 1000 + step,
		Layout: checkpoint.Layout{TP: 1, DP: 2, EP: 2},
		Spec:   []byte(`{"model":"tiny"}`),
		Shards: []checkpoint.ShardInfo{
			{Name: "rank-0000/params.bin", Size: 3, SHA256: sum([]byte("abc")), Rank: 0, Kind: checkpoint.KindParams},
			{Name: "rank-0001/params.bin", Size: 0, SHA256: sum(nil), Rank: 1, Kind: checkpoint.KindParams},
		},
		Meta: map[string]string{"val-loss": "2.5"},
	}
}

// rewritten is m with other contents in its first shard: another
// checkpoint of the same step (a catalogue may take a re-commit of the
// very manifest it holds for a retry whose answer was lost, not this).
func rewritten(m checkpoint.Manifest, contents string) checkpoint.Manifest {
	m = m.Clone()
	m.Shards[0].Size, m.Shards[0].SHA256 = int64(len(contents)), sum([]byte(contents))
	return m
}

func steps(ms []checkpoint.Manifest) []int64 {
	out := []int64{}
	for _, m := range ms {
		out = append(out, m.Step)
	}
	return out
}

// Catalogue runs the Catalogue contract against fresh catalogues made by
// newCat.
func Catalogue(t *testing.T, newCat func(t *testing.T) checkpoint.Catalogue) {
	ctx := context.Background()

	t.Run("Empty", func(t *testing.T) {
		c := newCat(t)
		if _, err := c.Latest(ctx, "j"); !errors.Is(err, checkpoint.ErrNoCheckpoint) {
			t.Fatalf("Latest empty: %v", err)
		}
		if ms, err := c.List(ctx, "j"); err != nil || len(ms) != 0 {
			t.Fatalf("List empty = %v, %v", ms, err)
		}
		if d, err := c.Deleting(ctx, "j"); err != nil || len(d) != 0 {
			t.Fatalf("Deleting empty = %v, %v", d, err)
		}
		if _, err := c.Get(ctx, "j", 1); !errors.Is(err, checkpoint.ErrNotFound) {
			t.Fatalf("Get missing: %v", err)
		}
	})

	t.Run("CommitLatestList", func(t *testing.T) {
		c := newCat(t)
		for _, s := range []int64{10, 20, 30} {
			if err := c.Commit(ctx, manifest("j", s)); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.Commit(ctx, manifest("other", 5)); err != nil {
			t.Fatal(err)
		}
		l, err := c.Latest(ctx, "j")
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(l, manifest("j", 30)) {
			t.Fatalf("Latest = %+v, want %+v", l, manifest("j", 30))
		}
		ms, err := c.List(ctx, "j")
		if err != nil || !reflect.DeepEqual(steps(ms), []int64{30, 20, 10}) {
			t.Fatalf("List = %v, %v; want [30 20 10]", steps(ms), err)
		}
		g, err := c.Get(ctx, "j", 20)
		if err != nil || !reflect.DeepEqual(g, manifest("j", 20)) {
			t.Fatalf("Get(20) = %+v, %v", g, err)
		}
		// Results are copies.
		l.Shards[0].Name = "mutated"
		l.Meta["val-loss"] = "0"
		if l2, _ := c.Latest(ctx, "j"); !reflect.DeepEqual(l2, manifest("j", 30)) {
			t.Fatal("mutating a returned manifest changed the catalogue")
		}
	})

	t.Run("Stale", func(t *testing.T) {
		c := newCat(t)
		if err := c.Commit(ctx, manifest("j", 10)); err != nil {
			t.Fatal(err)
		}
		for _, s := range []int64{10, 9, 0} {
			if err := c.Commit(ctx, rewritten(manifest("j", s), "other")); !errors.Is(err, checkpoint.ErrStale) {
				t.Fatalf("Commit step %d after 10: %v, want ErrStale", s, err)
			}
		}
		// A deleting entry still counts.
		if err := c.Commit(ctx, manifest("j", 20)); err != nil {
			t.Fatal(err)
		}
		if err := c.MarkDeleting(ctx, "j", 20); err != nil {
			t.Fatal(err)
		}
		if err := c.Commit(ctx, rewritten(manifest("j", 15), "other")); !errors.Is(err, checkpoint.ErrStale) {
			t.Fatalf("Commit 15 with 20 deleting: %v, want ErrStale", err)
		}
		if ms, _ := c.List(ctx, "j"); !reflect.DeepEqual(steps(ms), []int64{10}) {
			t.Fatalf("List = %v, want [10]", steps(ms))
		}
	})

	t.Run("InvalidManifest", func(t *testing.T) {
		c := newCat(t)
		m := manifest("j", 1)
		m.Shards[1].SHA256 = "nothex"
		if err := c.Commit(ctx, m); !errors.Is(err, checkpoint.ErrInvalidManifest) {
			t.Fatalf("Commit invalid: %v", err)
		}
		if _, err := c.Latest(ctx, "j"); !errors.Is(err, checkpoint.ErrNoCheckpoint) {
			t.Fatalf("invalid manifest was committed: %v", err)
		}
	})

	t.Run("DeleteProtocol", func(t *testing.T) {
		c := newCat(t)
		for _, s := range []int64{1, 2, 3} {
			if err := c.Commit(ctx, manifest("j", s)); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.Remove(ctx, "j", 2); !errors.Is(err, checkpoint.ErrNotDeleting) {
			t.Fatalf("Remove live entry: %v, want ErrNotDeleting", err)
		}
		if err := c.MarkDeleting(ctx, "j", 7); !errors.Is(err, checkpoint.ErrNotFound) {
			t.Fatalf("MarkDeleting missing: %v, want ErrNotFound", err)
		}
		for i := 0; i < 2; i++ {
			if err := c.MarkDeleting(ctx, "j", 2); err != nil {
				t.Fatalf("MarkDeleting #%d: %v", i+1, err)
			}
		}
		if err := c.MarkDeleting(ctx, "j", 1); err != nil {
			t.Fatal(err)
		}
		if d, err := c.Deleting(ctx, "j"); err != nil || !reflect.DeepEqual(d, []int64{1, 2}) {
			t.Fatalf("Deleting = %v, %v; want [1 2]", d, err)
		}
		if ms, _ := c.List(ctx, "j"); !reflect.DeepEqual(steps(ms), []int64{3}) {
			t.Fatalf("List = %v, want [3]", steps(ms))
		}
		if _, err := c.Get(ctx, "j", 2); err != nil {
			t.Fatalf("Get deleting entry: %v", err)
		}
		for i := 0; i < 2; i++ {
			if err := c.Remove(ctx, "j", 2); err != nil {
				t.Fatalf("Remove #%d: %v", i+1, err)
			}
		}
		if d, _ := c.Deleting(ctx, "j"); !reflect.DeepEqual(d, []int64{1}) {
			t.Fatalf("Deleting = %v, want [1]", d)
		}
		if _, err := c.Get(ctx, "j", 2); !errors.Is(err, checkpoint.ErrNotFound) {
			t.Fatalf("Get removed: %v", err)
		}
		// Marking the latest deleting leaves the previous live one latest.
		if err := c.MarkDeleting(ctx, "j", 3); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Latest(ctx, "j"); !errors.Is(err, checkpoint.ErrNoCheckpoint) {
			t.Fatalf("Latest with all deleting: %v", err)
		}
	})

	t.Run("ConcurrentCommits", func(t *testing.T) {
		c := newCat(t)
		var wg sync.WaitGroup
		var mu sync.Mutex
		ok := 0
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := c.Commit(ctx, rewritten(manifest("race", 100), fmt.Sprint("writer ", w)))
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					ok++
				case !errors.Is(err, checkpoint.ErrStale):
					t.Errorf("Commit: %v", err)
				}
			}()
		}
		wg.Wait()
		if ok != 1 {
			t.Fatalf("%d concurrent commits of the same step succeeded, want 1", ok)
		}
	})
}

// Fencing runs the Fencing contract against fresh catalogues made by
// newCat, and the Catalogue contract against a view of one (As).
func Fencing(t *testing.T, newCat func(t *testing.T) checkpoint.Fencing) {
	ctx := context.Background()

	t.Run("ViewIsACatalogue", func(t *testing.T) {
		Catalogue(t, func(t *testing.T) checkpoint.Catalogue {
			c := newCat(t)
			if err := c.Fence(ctx, "j", 3); err != nil {
				t.Fatal(err)
			}
			return c.As(3)
		})
	})

	t.Run("NeverFenced", func(t *testing.T) {
		c := newCat(t)
		for i, a := range []int64{5, 0, 2} {
			if err := c.As(a).Commit(ctx, manifest("j", int64(10*(i+1)))); err != nil {
				t.Fatalf("commit as attempt %d of a job never fenced: %v", a, err)
			}
		}
	})

	t.Run("OldAttemptRefused", func(t *testing.T) {
		c := newCat(t)
		old, cur := c.As(1), c.As(2)
		for _, step := range []int64{10, 20} {
			if err := old.Commit(ctx, manifest("j", step)); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.Fence(ctx, "j", 1); err != nil {
			t.Fatal(err)
		}
		if err := old.MarkDeleting(ctx, "j", 10); err != nil {
			t.Fatalf("mark deleting as the fenced attempt itself: %v", err)
		}
		if err := c.Fence(ctx, "j", 2); err != nil {
			t.Fatal(err)
		}
		// every write of attempt 1 now fails and changes nothing
		if err := old.Commit(ctx, manifest("j", 30)); !errors.Is(err, checkpoint.ErrFenced) {
			t.Fatalf("commit as attempt 1 after the fence at 2: %v", err)
		}
		if err := old.MarkDeleting(ctx, "j", 20); !errors.Is(err, checkpoint.ErrFenced) {
			t.Fatalf("mark deleting as attempt 1 after the fence at 2: %v", err)
		}
		if err := old.Remove(ctx, "j", 10); !errors.Is(err, checkpoint.ErrFenced) {
			t.Fatalf("remove as attempt 1 after the fence at 2: %v", err)
		}
		if ms, err := c.List(ctx, "j"); err != nil || !slices.Equal(steps(ms), []int64{20}) {
			t.Fatalf("after the refused writes List = %v, %v; want [20]", steps(ms), err)
		}
		if d, err := c.Deleting(ctx, "j"); err != nil || !slices.Equal(d, []int64{10}) {
			t.Fatalf("after the refused writes Deleting = %v, %v; want [10]", d, err)
		}
		// a write that would change nothing is no error, as unfenced
		if err := old.Remove(ctx, "j", 99); err != nil {
			t.Fatalf("remove of a missing entry as attempt 1: %v", err)
		}
		// reads of the old view, and writes of the current attempt, go on
		if m, err := old.Latest(ctx, "j"); err != nil || m.Step != 20 {
			t.Fatalf("Latest through the old view: %v, %v", m.Step, err)
		}
		if err := cur.Commit(ctx, manifest("j", 30)); err != nil {
			t.Fatal(err)
		}
		if err := cur.Remove(ctx, "j", 10); err != nil {
			t.Fatal(err)
		}
		if err := cur.MarkDeleting(ctx, "j", 20); err != nil {
			t.Fatal(err)
		}
		// the unfenced catalogue is not an attempt's: it writes anyway
		if err := c.Commit(ctx, manifest("j", 40)); err != nil {
			t.Fatalf("unfenced commit: %v", err)
		}
		// other jobs are not fenced by j's fence
		if err := old.Commit(ctx, manifest("k", 10)); err != nil {
			t.Fatalf("commit of another job: %v", err)
		}
	})

	t.Run("FenceNeverLowers", func(t *testing.T) {
		c := newCat(t)
		if err := c.Fence(ctx, "j", 4); err != nil {
			t.Fatal(err)
		}
		if err := c.Fence(ctx, "j", 4); err != nil {
			t.Fatalf("the same fence again: %v", err)
		}
		if err := c.Fence(ctx, "j", 3); !errors.Is(err, checkpoint.ErrFenced) {
			t.Fatalf("a lower fence: %v", err)
		}
		if err := c.As(3).Commit(ctx, manifest("j", 10)); !errors.Is(err, checkpoint.ErrFenced) {
			t.Fatalf("commit as attempt 3 after the refused lower fence: %v", err)
		}
		if err := c.Fence(ctx, "j", -1); err == nil {
			t.Fatal("a negative attempt was fenced")
		}
	})

	// Concurrent commits of an old attempt and a fence of the next: each
	// commit is either refused or visible once the fence returned.
	t.Run("FenceRacesCommits", func(t *testing.T) {
		c := newCat(t)
		old := c.As(0)
		var wg sync.WaitGroup
		var mu sync.Mutex
		landed := map[int64]bool{}
		for i := range 8 {
			wg.Go(func() {
				step := int64(10 * (i + 1))
				err := old.Commit(ctx, manifest("j", step))
				switch {
				case err == nil:
					mu.Lock()
					landed[step] = true
					mu.Unlock()
				case errors.Is(err, checkpoint.ErrFenced), errors.Is(err, checkpoint.ErrStale):
				default:
					t.Errorf("commit of step %d: %v", step, err)
				}
			})
		}
		if err := c.Fence(ctx, "j", 1); err != nil {
			t.Fatal(err)
		}
		ms, err := c.List(ctx, "j")
		if err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		after, err := c.List(ctx, "j")
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(steps(ms), steps(after)) {
			t.Fatalf("commits landed after the fence returned: %v then %v", steps(ms), steps(after))
		}
		for _, m := range after {
			if !landed[m.Step] {
				t.Errorf("step %d is listed but its commit failed", m.Step)
			}
		}
	})
}
