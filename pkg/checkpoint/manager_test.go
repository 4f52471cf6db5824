package checkpoint_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
)

const job = "job-a"

var layout = checkpoint.Layout{TP: 1, DP: 2, EP: 1}

// shardsFor returns the shards of a two-rank checkpoint at step.
func shardsFor(step int64) []checkpoint.ShardSource {
	var out []checkpoint.ShardSource
	for r := 0; r < 2; r++ {
		vals := make([]float32, 256)
		for i := range vals {
			vals[i] = float32(step) + float32(r)/10 + float32(i)
		}
		out = append(out,
			checkpoint.TensorShard(fmt.Sprintf("rank-%04d/params.bin", r), r, checkpoint.KindParams,
				[]checkpoint.Tensor{{Name: "w", Shape: []int{16, 16}, Data: vals}}),
			checkpoint.BytesShard(fmt.Sprintf("rank-%04d/rng.json", r), r, checkpoint.KindRNG,
				[]byte(fmt.Sprintf(`{"seed":%d}`, step*10+int64(r)))),
		)
	}
	return out
}

func save(t *testing.T, g *checkpoint.Manager, step int64, loss float64) checkpoint.Manifest {
	t.Helper()
	m, err := g.Save(context.Background(), checkpoint.Manifest{
		Job: job, Step: step, CreatedUnixNano: step, Layout: layout, Spec: []byte("spec"),
		Meta: map[string]string{"val-loss": strconv.FormatFloat(loss, 'g', -1, 64)},
	}, shardsFor(step))
	if err != nil {
		t.Fatalf("Save step %d: %v", step, err)
	}
	return m
}

func liveSteps(t *testing.T, c checkpoint.Catalogue) []int64 {
	t.Helper()
	ms, err := c.List(context.Background(), job)
	if err != nil {
		t.Fatal(err)
	}
	out := []int64{}
	for _, m := range ms {
		out = append(out, m.Step)
	}
	return out
}

// checkInvariants asserts that every catalogued manifest verifies and that
// every file under the job prefix belongs to a catalogued checkpoint.
func checkInvariants(t *testing.T, st checkpoint.Storage, c checkpoint.Catalogue) {
	t.Helper()
	ctx := context.Background()
	ms, err := c.List(ctx, job)
	if err != nil {
		t.Fatal(err)
	}
	owned := map[string]bool{}
	for _, m := range ms {
		if err := checkpoint.Verify(ctx, st, checkpoint.StepPrefix(job, m.Step), m); err != nil {
			t.Errorf("committed step %d does not verify: %v", m.Step, err)
		}
		for _, s := range m.Shards {
			owned[checkpoint.ShardKey(job, m.Step, s.Name)] = true
		}
	}
	keys, err := st.List(ctx, checkpoint.JobPrefix(job))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		// shards live in step directories; other files (a storage
		// catalogue's) are not checkpoint data
		if strings.HasPrefix(k, checkpoint.JobPrefix(job)+"step-") && !owned[k] {
			t.Errorf("file %s belongs to no committed checkpoint", k)
		}
	}
}

func TestSaveLoadRoundTrip(t *testing.T) {
	ctx := context.Background()
	st := checkpoint.NewMemStorage()
	g := checkpoint.NewManager(st, checkpoint.NewMemCatalogue(), nil)
	m := save(t, g, 100, 1)
	if len(m.Shards) != 4 || m.Shards[0].Name != "rank-0000/params.bin" || m.Shards[0].Kind != checkpoint.KindParams {
		t.Fatalf("shards = %+v", m.Shards)
	}
	got, err := g.LoadLatestVerified(ctx, job, nil)
	if err != nil || !reflect.DeepEqual(got, m) {
		t.Fatalf("LoadLatestVerified = %+v, %v", got, err)
	}
	b, err := checkpoint.ReadShardVerified(ctx, st, checkpoint.StepPrefix(job, 100), got, "rank-0001/params.bin")
	if err != nil {
		t.Fatal(err)
	}
	ts, err := checkpoint.DecodeShard(b)
	if err != nil || ts[0].Data[3] != 100+0.1+3 {
		t.Fatalf("decoded %v, %v", ts, err)
	}
	if _, err := checkpoint.ReadShardVerified(ctx, st, checkpoint.StepPrefix(job, 100), got, "nope"); !errors.Is(err, checkpoint.ErrNotFound) {
		t.Fatalf("ReadShardVerified unknown shard: %v", err)
	}
	// A stale save writes nothing.
	if _, err := g.Save(ctx, checkpoint.Manifest{Job: job, Step: 100, Layout: layout}, shardsFor(100)); !errors.Is(err, checkpoint.ErrStale) {
		t.Fatalf("stale Save: %v", err)
	}
	checkInvariants(t, st, g.Catalogue())
}

func TestVerifyNamesShard(t *testing.T) {
	ctx := context.Background()
	st := checkpoint.NewMemStorage()
	g := checkpoint.NewManager(st, checkpoint.NewMemCatalogue(), nil)
	m := save(t, g, 5, 1)
	prefix := checkpoint.StepPrefix(job, 5)
	st.Corrupt(prefix+"rank-0001/params.bin", 100)
	if err := st.Delete(ctx, prefix+"rank-0000/rng.json"); err != nil {
		t.Fatal(err)
	}
	err := checkpoint.Verify(ctx, st, prefix, m)
	for _, want := range []string{
		"checkpoint: shard rank-0001/params.bin: sha256 mismatch",
		"checkpoint: shard rank-0000/rng.json: missing",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Verify = %v, want it to say %q", err, want)
		}
	}
	if !errors.Is(err, checkpoint.ErrShardCorrupt) || !errors.Is(err, checkpoint.ErrShardMissing) {
		t.Errorf("Verify error does not wrap both sentinels: %v", err)
	}
	var se *checkpoint.ShardError
	if !errors.As(err, &se) || se.Name == "" {
		t.Errorf("Verify error is not a ShardError: %v", err)
	}
	// A longer file is corrupt too.
	if _, _, err := st.Put(ctx, prefix+"rank-0001/rng.json", strings.NewReader(`{"seed":51}extra`)); err != nil {
		t.Fatal(err)
	}
	if err := checkpoint.Verify(ctx, st, prefix, m); err == nil || !strings.Contains(err.Error(), "rank-0001/rng.json: larger than") {
		t.Errorf("Verify with a longer shard = %v", err)
	}
}

func TestLoadFallsBackPastCorruption(t *testing.T) {
	ctx := context.Background()
	st := checkpoint.NewMemStorage()
	g := checkpoint.NewManager(st, checkpoint.NewMemCatalogue(), nil)
	save(t, g, 100, 1)
	save(t, g, 200, 1)
	save(t, g, 300, 1)
	// Flip a byte in 300, delete a shard of 200.
	st.Corrupt(checkpoint.ShardKey(job, 300, "rank-0000/params.bin"), 40)
	st.Delete(ctx, checkpoint.ShardKey(job, 200, "rank-0001/rng.json"))
	type event struct {
		step int64
		err  error
	}
	var events []event
	m, err := g.LoadLatestVerified(ctx, job, func(step int64, err error) { events = append(events, event{step, err}) })
	if err != nil || m.Step != 100 {
		t.Fatalf("LoadLatestVerified = step %d, %v; want 100", m.Step, err)
	}
	if len(events) != 2 || events[0].step != 300 || events[1].step != 200 ||
		!errors.Is(events[0].err, checkpoint.ErrShardCorrupt) || !errors.Is(events[1].err, checkpoint.ErrShardMissing) {
		t.Fatalf("events = %+v", events)
	}
	// Nothing usable.
	st.Corrupt(checkpoint.ShardKey(job, 100, "rank-0001/params.bin"), 0)
	if _, err := g.LoadLatestVerified(ctx, job, nil); !errors.Is(err, checkpoint.ErrNoUsableCheckpoint) {
		t.Fatalf("all corrupt: %v", err)
	}
	// Nothing committed.
	if _, err := g.LoadLatestVerified(ctx, "other", nil); !errors.Is(err, checkpoint.ErrNoCheckpoint) {
		t.Fatalf("no checkpoint: %v", err)
	}
}

// faultStorage fails Gets of every key, or Puts of keys containing putMatch
// after passing failAfter bytes, with the given error.
type faultStorage struct {
	checkpoint.Storage
	getErr    error
	putMatch  string
	failAfter int64
	putErr    error
}

type failAfterReader struct {
	r    io.Reader
	left int64
	err  error
}

func (f *failAfterReader) Read(p []byte) (int, error) {
	if f.left <= 0 {
		return 0, f.err
	}
	if int64(len(p)) > f.left {
		p = p[:f.left]
	}
	n, err := f.r.Read(p)
	f.left -= int64(n)
	return n, err
}

func (f *faultStorage) Put(ctx context.Context, key string, r io.Reader) (int64, string, error) {
	if f.putErr != nil && strings.Contains(key, f.putMatch) {
		r = &failAfterReader{r: r, left: f.failAfter, err: f.putErr}
	}
	return f.Storage.Put(ctx, key, r)
}

func (f *faultStorage) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if f.getErr != nil {
		return nil, f.getErr
	}
	return f.Storage.Get(ctx, key)
}

func TestLoadDoesNotFallBackOnOutage(t *testing.T) {
	ctx := context.Background()
	mem := checkpoint.NewMemStorage()
	cat := checkpoint.NewMemCatalogue()
	save(t, checkpoint.NewManager(mem, cat, nil), 100, 1)
	outage := errors.New("storage unreachable")
	g := checkpoint.NewManager(&faultStorage{Storage: mem, getErr: outage}, cat, nil)
	called := false
	_, err := g.LoadLatestVerified(ctx, job, func(int64, error) { called = true })
	if !errors.Is(err, outage) || called {
		t.Fatalf("LoadLatestVerified during outage = %v (unusable called: %v); want the outage error and no event", err, called)
	}
}

// TestSimulatedDiskFull fails a shard write with ENOSPC half way through,
// and a catalogue write with ENOSPC, without needing a real full disk.
func TestSimulatedDiskFull(t *testing.T) {
	ctx := context.Background()
	mem := checkpoint.NewMemStorage()
	catStore := &faultStorage{Storage: checkpoint.NewMemStorage()}
	cat := checkpoint.NewStorageCatalogue(catStore)
	save(t, checkpoint.NewManager(mem, cat, nil), 100, 1)

	st := &faultStorage{Storage: mem, putMatch: "rank-0001/params.bin", failAfter: 500, putErr: syscall.ENOSPC}
	g := checkpoint.NewManager(st, cat, nil)
	_, err := g.Save(ctx, checkpoint.Manifest{Job: job, Step: 200, Layout: layout}, shardsFor(200))
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "rank-0001/params.bin") {
		t.Fatalf("Save on a full disk = %v, want ENOSPC naming the shard", err)
	}
	if _, err := mem.Stat(ctx, checkpoint.ShardKey(job, 200, "rank-0001/params.bin")); !errors.Is(err, checkpoint.ErrNotFound) {
		t.Fatalf("partial shard stored: %v", err)
	}
	if got := liveSteps(t, cat); !reflect.DeepEqual(got, []int64{100}) {
		t.Fatalf("live = %v, want [100]", got)
	}
	removed, err := g.CollectGarbage(ctx, job)
	if err != nil || len(removed) != 2 { // rank-0000's two shards of step 200
		t.Fatalf("GC removed %v, %v; want 2 leftovers", removed, err)
	}
	checkInvariants(t, mem, cat)

	// The catalogue's own write fails: nothing is committed, the old
	// catalogue is intact.
	catStore.putMatch, catStore.failAfter, catStore.putErr = "catalogue", 10, syscall.ENOSPC
	g = checkpoint.NewManager(mem, cat, nil)
	if _, err := g.Save(ctx, checkpoint.Manifest{Job: job, Step: 300, Layout: layout}, shardsFor(300)); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Save with a full catalogue disk = %v", err)
	}
	catStore.putErr = nil
	if got := liveSteps(t, cat); !reflect.DeepEqual(got, []int64{100}) {
		t.Fatalf("live = %v, want [100]", got)
	}
	if m, err := g.LoadLatestVerified(ctx, job, nil); err != nil || m.Step != 100 {
		t.Fatalf("LoadLatestVerified = %d, %v", m.Step, err)
	}
	if _, err := g.CollectGarbage(ctx, job); err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, mem, cat)
}

func TestStreamingShardWriterError(t *testing.T) {
	ctx := context.Background()
	st := checkpoint.NewMemStorage()
	boom := errors.New("snapshot failed")
	_, err := checkpoint.SaveShards(ctx, st, "j/step-000000000001/", []checkpoint.ShardSource{{
		Name: "rank-0000/params.bin", Kind: checkpoint.KindParams,
		Write: func(w io.Writer) error {
			w.Write(bytes.Repeat([]byte{1}, 1000))
			return boom
		},
	}})
	if !errors.Is(err, boom) {
		t.Fatalf("SaveShards = %v, want the writer's error", err)
	}
	if keys, _ := st.List(ctx, ""); len(keys) != 0 {
		t.Fatalf("failed shard stored: %v", keys)
	}
	for _, bad := range [][]checkpoint.ShardSource{
		{checkpoint.BytesShard("../x", 0, "k", nil)},
		{checkpoint.BytesShard("a", 0, "k", nil), checkpoint.BytesShard("a", 0, "k", nil)},
		{{Name: "a", Kind: "k"}},
	} {
		if _, err := checkpoint.SaveShards(ctx, st, "j/", bad); err == nil {
			t.Errorf("SaveShards(%v) succeeded", bad)
		}
	}
}

func TestCommitRefusesMissingOrCorruptShards(t *testing.T) {
	ctx := context.Background()
	st := checkpoint.NewMemStorage()
	g := checkpoint.NewManager(st, checkpoint.NewMemCatalogue(), nil)
	infos, err := checkpoint.SaveShards(ctx, st, checkpoint.StepPrefix(job, 10), shardsFor(10))
	if err != nil {
		t.Fatal(err)
	}
	m := checkpoint.Manifest{Job: job, Step: 10, Layout: layout, Shards: infos}
	bad := m.Clone()
	bad.Shards = append(bad.Shards, checkpoint.ShardInfo{Name: "rank-0001/never-written", SHA256: hexSum(nil), Rank: 1, Kind: "x"})
	if err := g.Commit(ctx, bad); !errors.Is(err, checkpoint.ErrShardMissing) {
		t.Fatalf("Commit with a missing shard = %v", err)
	}
	st.Corrupt(checkpoint.ShardKey(job, 10, infos[2].Name), 3)
	if err := g.Commit(ctx, m); !errors.Is(err, checkpoint.ErrShardCorrupt) {
		t.Fatalf("Commit with a corrupt shard = %v", err)
	}
	if got := liveSteps(t, g.Catalogue()); len(got) != 0 {
		t.Fatalf("committed: %v", got)
	}
}

func TestDeleteAndResume(t *testing.T) {
	ctx := context.Background()
	for _, fp := range []string{checkpoint.FailAfterMarkDeleting, checkpoint.FailAfterDeleteFiles} {
		t.Run(fp, func(t *testing.T) {
			st := checkpoint.NewMemStorage()
			cat := checkpoint.NewMemCatalogue()
			g := checkpoint.NewManager(st, cat, nil)
			save(t, g, 1, 1)
			save(t, g, 2, 1)
			checkpoint.SetFailpointHook(func(name string) error {
				if name == fp {
					return checkpoint.ErrFailpoint
				}
				return nil
			})
			err := g.Delete(ctx, job, 1)
			checkpoint.SetFailpointHook(nil)
			if !errors.Is(err, checkpoint.ErrFailpoint) {
				t.Fatalf("Delete = %v, want the failpoint", err)
			}
			if d, _ := cat.Deleting(ctx, job); !reflect.DeepEqual(d, []int64{1}) {
				t.Fatalf("Deleting = %v, want [1]", d)
			}
			// GC leaves a deleting checkpoint's files to ResumeDeletions.
			if removed, err := g.CollectGarbage(ctx, job); err != nil || len(removed) != 0 {
				t.Fatalf("GC removed %v, %v", removed, err)
			}
			done, err := g.ResumeDeletions(ctx, job)
			if err != nil || !reflect.DeepEqual(done, []int64{1}) {
				t.Fatalf("ResumeDeletions = %v, %v", done, err)
			}
			if keys, _ := st.List(ctx, checkpoint.StepPrefix(job, 1)); len(keys) != 0 {
				t.Fatalf("files left: %v", keys)
			}
			if d, _ := cat.Deleting(ctx, job); len(d) != 0 {
				t.Fatalf("Deleting = %v", d)
			}
			checkInvariants(t, st, cat)
		})
	}
	// Deleting what is not there is fine.
	g := checkpoint.NewManager(checkpoint.NewMemStorage(), checkpoint.NewMemCatalogue(), nil)
	if err := g.Delete(ctx, job, 99); err != nil {
		t.Fatalf("Delete missing: %v", err)
	}
}

func TestCollectGarbage(t *testing.T) {
	ctx := context.Background()
	st := checkpoint.NewMemStorage()
	cat := checkpoint.NewMemCatalogue()
	g := checkpoint.NewManager(st, cat, nil)
	save(t, g, 10, 1)
	put := func(k string) {
		if _, _, err := st.Put(ctx, k, strings.NewReader("junk")); err != nil {
			t.Fatal(err)
		}
	}
	put(checkpoint.ShardKey(job, 20, "rank-0000/params.bin"))    // crashed save
	put(checkpoint.ShardKey(job, 10, "rank-0000/stray.bin"))     // stray file in a committed step
	put(job + "/catalogue.json")                                 // not in a step directory: not a shard (a storage catalogue keeps its file here)
	put(checkpoint.ShardKey(job, 30, "rank-0000/params.bin"))    // save in flight
	put(checkpoint.ShardKey("job-b", 5, "rank-0000/params.bin")) // another job
	end := g.BeginSave(job, 30)
	removed, err := g.CollectGarbage(ctx, job)
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(removed)
	want := []string{job + "/step-000000000010/rank-0000/stray.bin", job + "/step-000000000020/rank-0000/params.bin"}
	if !reflect.DeepEqual(removed, want) {
		t.Fatalf("removed %v, want %v", removed, want)
	}
	end()
	removed, _ = g.CollectGarbage(ctx, job)
	if len(removed) != 1 || !strings.Contains(removed[0], "step-000000000030") {
		t.Fatalf("after the save ended, removed %v", removed)
	}
	if keys, _ := st.List(ctx, "job-b/"); len(keys) != 1 {
		t.Fatalf("GC touched another job: %v", keys)
	}
	checkInvariants(t, st, cat)
}

func TestRetain(t *testing.T) {
	ctx := context.Background()
	st := checkpoint.NewMemStorage()
	cat := checkpoint.NewMemCatalogue()
	g := checkpoint.NewManager(st, cat, nil)
	losses := map[int64]float64{1: 3.0, 2: 1.0, 3: 2.5, 4: 0.5, 5: 2.0, 6: 2.2}
	for s := int64(1); s <= 6; s++ {
		save(t, g, s, losses[s])
	}
	valLoss := func(m checkpoint.Manifest) (float64, bool) {
		v, err := strconv.ParseFloat(m.Meta["val-loss"], 64)
		return v, err == nil
	}
	deleted, err := g.Retain(ctx, job, 2, 2, valLoss)
	if err != nil {
		t.Fatal(err)
	}
	// Keep the last two (6, 5) and the best two (4, 2).
	if !reflect.DeepEqual(deleted, []int64{1, 3}) {
		t.Fatalf("deleted %v, want [1 3]", deleted)
	}
	if got := liveSteps(t, cat); !reflect.DeepEqual(got, []int64{6, 5, 4, 2}) {
		t.Fatalf("live = %v", got)
	}
	deleted, err = g.Retain(ctx, job, 1, 0, nil)
	if err != nil || !reflect.DeepEqual(deleted, []int64{2, 4, 5}) {
		t.Fatalf("Retain(1, 0) = %v, %v", deleted, err)
	}
	checkInvariants(t, st, cat)
	if _, err := g.Retain(ctx, job, 0, 0, nil); err == nil {
		t.Fatal("Retain(keepLast 0) succeeded")
	}
	if _, err := g.Retain(ctx, job, 1, 1, nil); err == nil {
		t.Fatal("Retain(keepBest without valLoss) succeeded")
	}
}

// TestGCRacesSaves runs garbage collection in a loop while saves and
// retention run: no save may lose a shard to GC (Commit re-verifies every
// shard, so it would fail), and at the end every file belongs to a live
// checkpoint.
func TestGCRacesSaves(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := checkpoint.NewDirStorage(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cat := checkpoint.NewMemCatalogue()
	g := checkpoint.NewManager(st, cat, nil)
	gcDone := make(chan error, 1)
	go func() {
		for ctx.Err() == nil {
			if _, err := g.CollectGarbage(ctx, job); err != nil && ctx.Err() == nil {
				gcDone <- err
				return
			}
		}
		gcDone <- nil
	}()
	for s := int64(1); s <= 20; s++ {
		save(t, g, s, 1)
		if _, err := g.Retain(ctx, job, 3, 0, nil); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	if err := <-gcDone; err != nil {
		t.Fatal(err)
	}
	if got := liveSteps(t, cat); !reflect.DeepEqual(got, []int64{20, 19, 18}) {
		t.Fatalf("live = %v", got)
	}
	checkInvariants(t, st, cat)
}
