package checkpoint_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
	"github.com/switchyard-ml/switchyard/pkg/checkpoint/checkpointtest"
	"github.com/switchyard-ml/switchyard/pkg/devcluster"
)

var etcdPrefixes atomic.Int64

// startEtcd starts an embedded etcd for the test and returns a function
// that connects a new client to it (closed at the end of the test).
func startEtcd(t *testing.T) func(t *testing.T) *clientv3.Client {
	t.Helper()
	if testing.Short() {
		t.Skip("embedded etcd in -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := devcluster.StartEtcd(ctx, t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return func(t *testing.T) *clientv3.Client {
		cli, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints, DialTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cli.Close() })
		return cli
	}
}

// freshPrefix gives each catalogue of a test its own key space.
func freshPrefix() string { return fmt.Sprintf("/test/cat-%d", etcdPrefixes.Add(1)) }

func etcdManifest(job string, step int64) checkpoint.Manifest {
	h := sha256.Sum256([]byte(fmt.Sprint(job, step)))
	return checkpoint.Manifest{
		Job: job, Step: step, CreatedUnixNano: 7 + step,
		Layout: checkpoint.Layout{TP: 1, DP: 1, EP: 1},
		Shards: []checkpoint.ShardInfo{{Name: "rank-0000/params.bin", Size: 1, SHA256: hex.EncodeToString(h[:]), Kind: checkpoint.KindParams}},
	}
}

func TestEtcdCatalogue(t *testing.T) {
	connect := startEtcd(t)
	cli := connect(t)
	ctx := context.Background()

	t.Run("Contract", func(t *testing.T) {
		checkpointtest.Catalogue(t, func(t *testing.T) checkpoint.Catalogue {
			return checkpoint.NewEtcdCatalogue(cli, freshPrefix())
		})
	})

	t.Run("Fencing", func(t *testing.T) {
		checkpointtest.Fencing(t, func(t *testing.T) checkpoint.Fencing {
			return checkpoint.NewEtcdCatalogue(cli, freshPrefix())
		})
	})

	t.Run("Keys", func(t *testing.T) {
		p := freshPrefix()
		c := checkpoint.NewEtcdCatalogue(cli, p+"/") // trailing slash ignored
		if err := c.Commit(ctx, etcdManifest("j", 1200)); err != nil {
			t.Fatal(err)
		}
		if err := c.MarkDeleting(ctx, "j", 1200); err != nil {
			t.Fatal(err)
		}
		resp, err := cli.Get(ctx, p+"/", clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, kv := range resp.Kvs {
			got[string(kv.Key)] = string(kv.Value)
		}
		if got[p+"/j/max-step"] != "00000000000000001200" || len(got) != 2 {
			t.Fatalf("keys = %v", got)
		}
		var e struct {
			State    string              `json:"state"`
			Manifest checkpoint.Manifest `json:"manifest"`
		}
		if err := json.Unmarshal([]byte(got[p+"/j/00000000000000001200"]), &e); err != nil {
			t.Fatal(err)
		}
		if e.State != "deleting" || !reflect.DeepEqual(e.Manifest, etcdManifest("j", 1200)) {
			t.Fatalf("entry = %+v", e)
		}
	})

	// Removing the greatest entry lowers max-step to the next entry, as the
	// contract's "greater than every entry" requires.
	t.Run("RemoveLowersMaxStep", func(t *testing.T) {
		p := freshPrefix()
		c := checkpoint.NewEtcdCatalogue(cli, p)
		for _, s := range []int64{1, 2, 3} {
			if err := c.Commit(ctx, etcdManifest("j", s)); err != nil {
				t.Fatal(err)
			}
		}
		for _, s := range []int64{2, 3} {
			if err := c.MarkDeleting(ctx, "j", s); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.Remove(ctx, "j", 2); err != nil {
			t.Fatal(err)
		}
		if err := c.Commit(ctx, etcdManifest("j", 2)); !errors.Is(err, checkpoint.ErrStale) {
			t.Fatalf("Commit 2 with 3 deleting: %v, want ErrStale", err)
		}
		if err := c.Remove(ctx, "j", 3); err != nil {
			t.Fatal(err)
		}
		if err := c.Commit(ctx, etcdManifest("j", 2)); err != nil {
			t.Fatalf("Commit 2 after 3 was removed: %v", err)
		}
		for _, s := range []int64{1, 2} {
			if err := c.MarkDeleting(ctx, "j", s); err != nil {
				t.Fatal(err)
			}
			if err := c.Remove(ctx, "j", s); err != nil {
				t.Fatal(err)
			}
		}
		if resp, err := cli.Get(ctx, p+"/", clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || resp.Count != 0 {
			t.Fatalf("an emptied job left %v keys (%v)", resp.Count, err)
		}
		if err := c.Commit(ctx, etcdManifest("j", 0)); err != nil {
			t.Fatalf("Commit 0 into an emptied job: %v", err)
		}
	})

	// Random operations agree with MemCatalogue, the reference.
	t.Run("MatchesMemCatalogue", func(t *testing.T) {
		c := checkpoint.NewEtcdCatalogue(cli, freshPrefix())
		ref := checkpoint.NewMemCatalogue()
		rng := rand.New(rand.NewSource(1))
		class := func(err error) string {
			for _, e := range []error{checkpoint.ErrStale, checkpoint.ErrNotFound, checkpoint.ErrNotDeleting, checkpoint.ErrNoCheckpoint} {
				if errors.Is(err, e) {
					return e.Error()
				}
			}
			if err != nil {
				return "other: " + err.Error()
			}
			return "ok"
		}
		for i := 0; i < 300; i++ {
			job := []string{"a", "b"}[rng.Intn(2)]
			step := int64(rng.Intn(12))
			var op string
			var got, want string
			switch rng.Intn(4) {
			case 0:
				op = "Commit"
				got, want = class(c.Commit(ctx, etcdManifest(job, step))), class(ref.Commit(ctx, etcdManifest(job, step)))
			case 1:
				op = "MarkDeleting"
				got, want = class(c.MarkDeleting(ctx, job, step)), class(ref.MarkDeleting(ctx, job, step))
			case 2:
				op = "Remove"
				got, want = class(c.Remove(ctx, job, step)), class(ref.Remove(ctx, job, step))
			case 3:
				op = "Get"
				gm, gerr := c.Get(ctx, job, step)
				wm, werr := ref.Get(ctx, job, step)
				got, want = class(gerr), class(werr)
				if gerr == nil && werr == nil && !reflect.DeepEqual(gm, wm) {
					t.Fatalf("#%d Get(%s, %d) = %+v, want %+v", i, job, step, gm, wm)
				}
			}
			if got != want {
				t.Fatalf("#%d %s(%s, %d) = %s, want %s", i, op, job, step, got, want)
			}
			gl, err1 := c.List(ctx, job)
			wl, err2 := ref.List(ctx, job)
			gd, err3 := c.Deleting(ctx, job)
			wd, err4 := ref.Deleting(ctx, job)
			if err := errors.Join(err1, err2, err3, err4); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(gl, wl) || !reflect.DeepEqual(gd, wd) {
				t.Fatalf("#%d after %s(%s, %d): List %v Deleting %v, want %v %v", i, op, job, step, gl, gd, wl, wd)
			}
			gL, gerr := c.Latest(ctx, job)
			wL, werr := ref.Latest(ctx, job)
			if class(gerr) != class(werr) || !reflect.DeepEqual(gL, wL) {
				t.Fatalf("#%d Latest = %+v, %v; want %+v, %v", i, gL, gerr, wL, werr)
			}
		}
	})

	// Clients in several "processes" commit increasing steps and remove
	// old ones at once: every successful commit was newer than all the
	// job's entries at the time, so the successful steps of each client
	// rise, and the survivors are consistent.
	t.Run("ConcurrentClients", func(t *testing.T) {
		p := freshPrefix()
		var wg sync.WaitGroup
		errs := make(chan error, 100)
		for w := 0; w < 4; w++ {
			c := checkpoint.NewEtcdCatalogue(connect(t), p)
			wg.Add(1)
			go func() {
				defer wg.Done()
				for s := int64(1); s <= 25; s++ {
					err := c.Commit(ctx, etcdManifest("j", s))
					if err != nil && !errors.Is(err, checkpoint.ErrStale) {
						errs <- err
						return
					}
					old := s - 3
					if err := c.MarkDeleting(ctx, "j", old); err != nil && !errors.Is(err, checkpoint.ErrNotFound) {
						errs <- err
						return
					}
					if err := c.Remove(ctx, "j", old); err != nil {
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
		c := checkpoint.NewEtcdCatalogue(cli, p)
		l, err := c.Latest(ctx, "j")
		if err != nil || l.Step != 25 {
			t.Fatalf("Latest = %d, %v; want 25", l.Step, err)
		}
		if err := c.Commit(ctx, etcdManifest("j", 25)); !errors.Is(err, checkpoint.ErrStale) {
			t.Fatalf("Commit 25 again: %v", err)
		}
		if err := c.Commit(ctx, etcdManifest("j", 26)); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("CorruptEntry", func(t *testing.T) {
		p := freshPrefix()
		c := checkpoint.NewEtcdCatalogue(cli, p)
		if _, err := cli.Put(ctx, p+"/j/00000000000000000005", `{"state":"live","manifest":{"job":"j","step":6}}`); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Get(ctx, "j", 5); err == nil {
			t.Fatal("Get of a corrupt entry succeeded")
		}
		if _, err := c.List(ctx, "j"); err == nil {
			t.Fatal("List with a corrupt entry succeeded")
		}
	})

	t.Run("BadJobAndCancelled", func(t *testing.T) {
		c := checkpoint.NewEtcdCatalogue(cli, freshPrefix())
		if _, err := c.List(ctx, "a/b"); err == nil {
			t.Fatal("List of job a/b succeeded")
		}
		if err := c.Remove(ctx, "", 1); err == nil {
			t.Fatal("Remove of job \"\" succeeded")
		}
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if err := c.Commit(cctx, etcdManifest("j", 1)); err == nil {
			t.Fatal("Commit with a cancelled context succeeded")
		}
		if _, err := c.Get(ctx, "j", 1); !errors.Is(err, checkpoint.ErrNotFound) {
			t.Fatalf("cancelled Commit left an entry: %v", err)
		}
	})
}

// TestEtcdCommitWithEtcdDownFails: a commit begun while etcd is down fails
// (a transient failure its caller retries) instead of waiting for etcd
// for as long as its context allows, which for a rank's commit is for
// good.
func TestEtcdCommitWithEtcdDownFails(t *testing.T) {
	if testing.Short() {
		t.Skip("embedded etcd in -short")
	}
	defer checkpoint.SetEtcdCommitTimeout(500 * time.Millisecond)()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := devcluster.StartEtcd(ctx, t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		e.Close()
		t.Fatal(err)
	}
	defer cli.Close()
	c := checkpoint.NewEtcdCatalogue(cli, freshPrefix())
	if err := c.Commit(ctx, etcdManifest("j", 10)); err != nil {
		t.Fatal(err)
	}
	e.Close()
	done := make(chan error, 1)
	go func() { done <- c.Commit(context.Background(), etcdManifest("j", 20)) }()
	select {
	case err := <-done:
		if err == nil || !checkpoint.Transient(err) {
			t.Fatalf("commit with etcd down: %v, want a transient failure", err)
		}
	case <-ctx.Done():
		t.Fatal("a commit with etcd down still waits after 30s")
	}
}
