package data

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"
)

func isPermutation(p []int, n int) bool {
	if len(p) != n {
		return false
	}
	seen := make([]bool, n)
	for _, x := range p {
		if x < 0 || x >= n || seen[x] {
			return false
		}
		seen[x] = true
	}
	return true
}

func TestPermutation(t *testing.T) {
	for _, n := range []int{1, 2, 3, 10, 1000} {
		if p := Permutation(n, 42, 3); !isPermutation(p, n) {
			t.Errorf("Permutation(%d) = %v is not a permutation", n, p)
		}
	}
	a, b := Permutation(1000, 42, 0), Permutation(1000, 42, 0)
	if !slices.Equal(a, b) {
		t.Error("same (seed, epoch) gave different orders")
	}
	if slices.Equal(a, Permutation(1000, 42, 1)) {
		t.Error("epochs 0 and 1 have the same order")
	}
	if slices.Equal(a, Permutation(1000, 43, 0)) {
		t.Error("seeds 42 and 43 have the same order")
	}
	// Pinned: the order is part of the checkpoint contract and must not
	// change with the Go version or a refactor. The values come from an
	// independent Python implementation of PCG-DXSM, Lemire's bounded draw
	// and the Fisher-Yates loop documented on Permutation.
	for _, tc := range []struct {
		n           int
		seed, epoch int64
		want        []int
	}{
		{10, 1, 0, []int{7, 6, 1, 3, 2, 4, 8, 9, 0, 5}},
		{12, -3, 5, []int{11, 2, 5, 6, 4, 1, 3, 0, 7, 10, 9, 8}},
	} {
		if got := Permutation(tc.n, tc.seed, tc.epoch); !slices.Equal(got, tc.want) {
			t.Errorf("Permutation(%d, %d, %d) = %v, want %v", tc.n, tc.seed, tc.epoch, got, tc.want)
		}
	}
}

func TestLoaderCrossesEpochs(t *testing.T) {
	const n = 10
	l, err := NewLoader(n, 7)
	if err != nil {
		t.Fatal(err)
	}
	var got []int
	var buf []int
	for range 5 {
		buf = l.Next(7, buf)
		if len(buf) != 7 {
			t.Fatalf("Next(7) returned %d", len(buf))
		}
		got = append(got, buf...)
	}
	want := append(append(Permutation(n, 7, 0), Permutation(n, 7, 1)...), Permutation(n, 7, 2)...)
	want = append(want, Permutation(n, 7, 3)...)[:35]
	if !slices.Equal(got, want) {
		t.Errorf("stream\n got %v\nwant %v", got, want)
	}
	if p := l.Pos(); p != (Position{Epoch: 3, Offset: 5}) {
		t.Errorf("Pos = %+v", p)
	}
	if l.Consumed() != 35 {
		t.Errorf("Consumed = %d", l.Consumed())
	}
	// A batch larger than an epoch spans several epochs.
	l2, _ := NewLoader(3, 7)
	if got := l2.Next(7, nil); !isPermutation(got[:3], 3) || !isPermutation(got[3:6], 3) || l2.Pos() != (Position{2, 1}) {
		t.Errorf("Next(7) over 3 sequences = %v at %+v", got, l2.Pos())
	}
}

func TestLoaderResume(t *testing.T) {
	const n, batch = 37, 8
	a, _ := NewLoader(n, 99)
	for range 11 {
		a.Next(batch, nil)
	}
	saved, err := json.Marshal(a.Pos())
	if err != nil {
		t.Fatal(err)
	}
	if string(saved) != `{"epoch":2,"offset":14}` {
		t.Errorf("saved position %s", saved)
	}
	var cont []int
	for range 20 {
		cont = append(cont, a.Next(batch, nil)...)
	}

	var p Position
	if err := json.Unmarshal(saved, &p); err != nil {
		t.Fatal(err)
	}
	b, _ := NewLoader(n, 99)
	b.Next(5, nil) // state before Seek must not matter
	if err := b.Seek(p); err != nil {
		t.Fatal(err)
	}
	c, _ := NewLoader(n, 99)
	if err := c.SeekConsumed(11 * batch); err != nil {
		t.Fatal(err)
	}
	if c.Pos() != p {
		t.Errorf("SeekConsumed(88) at %+v, want %+v", c.Pos(), p)
	}
	var gotB, gotC []int
	for range 20 {
		gotB = append(gotB, b.Next(batch, nil)...)
		gotC = append(gotC, c.Next(batch, nil)...)
	}
	if !slices.Equal(cont, gotB) || !slices.Equal(cont, gotC) {
		t.Error("restored loader does not continue identically")
	}
}

func TestLoaderErrors(t *testing.T) {
	if _, err := NewLoader(0, 1); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("NewLoader(0): %v", err)
	}
	l, _ := NewLoader(5, 1)
	for _, p := range []Position{{-1, 0}, {0, -1}, {0, 5}} {
		if err := l.Seek(p); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("Seek(%+v): %v", p, err)
		}
	}
	if err := l.SeekConsumed(-1); err == nil {
		t.Error("SeekConsumed(-1) accepted")
	}
	if l.Pos() != (Position{}) {
		t.Errorf("failed Seek moved the loader to %+v", l.Pos())
	}
}

func TestShard(t *testing.T) {
	global := make([]int, 24)
	for i := range global {
		global[i] = 100 + i
	}
	for _, world := range []int{1, 2, 3, 4, 6, 8, 24} {
		var union []int
		for rank := range world {
			s := Shard(global, rank, world)
			if len(s) != len(global)/world {
				t.Fatalf("world %d rank %d: %d items", world, rank, len(s))
			}
			union = append(union, s...)
		}
		// Contiguous shards in rank order: the union is the global batch,
		// so the shards are disjoint.
		if !slices.Equal(union, global) {
			t.Errorf("world %d: shards %v", world, union)
		}
	}
	for _, bad := range [][2]int{{0, 5}, {-1, 2}, {2, 2}, {0, 0}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Shard(rank %d, world %d) did not panic", bad[0], bad[1])
				}
			}()
			Shard(global, bad[0], bad[1])
		}()
	}
}

// Data-parallel ranks, each with its own loader, together consume exactly
// the batches of a single process.
func TestShardedLoadersMatchSingleProcess(t *testing.T) {
	const n, batch, world, steps = 50, 12, 4, 13
	single, _ := NewLoader(n, 5)
	ranks := make([]*Loader, world)
	for r := range ranks {
		ranks[r], _ = NewLoader(n, 5)
	}
	for step := range steps {
		want := single.Next(batch, nil)
		var got []int
		for r, l := range ranks {
			got = append(got, Shard(l.Next(batch, nil), r, world)...)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("step %d: ranks saw %v, single process %v", step, got, want)
		}
	}
}

func ExampleShard() {
	l, _ := NewLoader(100, 1)
	global := l.Next(8, nil)
	fmt.Println(len(Shard(global, 1, 4)), l.Pos())
	// Output: 2 {0 8}
}

// TestDomainLoader: every block-aligned read of a domain-blocked loader
// holds one domain; an epoch visits each domain's sequences at most once
// (all but the remainder), epochs differ, and a seek continues exactly.
func TestDomainLoader(t *testing.T) {
	domainOf := map[int]int{}
	var domains [][]int
	next := 0
	for d, n := range []int{10, 7, 5} {
		var seqs []int
		for range n {
			seqs = append(seqs, next)
			domainOf[next] = d
			next++
		}
		domains = append(domains, seqs)
	}
	l, err := NewDomainLoader(domains, 2, 9)
	if err != nil {
		t.Fatal(err)
	}
	if l.Len() != 10+6+4 {
		t.Fatalf("epoch of %d sequences, want 20", l.Len())
	}
	var first []int
	perDomain := map[int]int{}
	for range 15 { // crosses into the second epoch: 30 = 20 + 10
		b := l.Next(2, nil)
		if domainOf[b[0]] != domainOf[b[1]] {
			t.Fatalf("block %v mixes domains %d and %d", b, domainOf[b[0]], domainOf[b[1]])
		}
		if len(first) < 20 {
			first = append(first, b...)
			perDomain[domainOf[b[0]]]++
		}
	}
	seen := map[int]bool{}
	for _, s := range first {
		if seen[s] {
			t.Fatalf("sequence %d twice in one epoch", s)
		}
		seen[s] = true
	}
	if perDomain[0] != 5 || perDomain[1] != 3 || perDomain[2] != 2 {
		t.Errorf("blocks per domain %v, want 5, 3, 2", perDomain)
	}
	if slices.Equal(BlockedPermutation(domains, 2, 9, 0), BlockedPermutation(domains, 2, 9, 1)) {
		t.Error("two epochs in the same order")
	}
	if !slices.Equal(BlockedPermutation(domains, 2, 9, 0), first) {
		t.Error("the loader's first epoch is not BlockedPermutation's")
	}
	// a loader sought to where this one stands reads what it reads
	again, _ := NewDomainLoader(domains, 2, 9)
	if err := again.Seek(l.Pos()); err != nil {
		t.Fatal(err)
	}
	if a, b := l.Next(6, nil), again.Next(6, nil); !slices.Equal(a, b) {
		t.Errorf("after a seek %v, want %v", b, a)
	}
	for _, bad := range []struct {
		domains [][]int
		block   int
	}{{domains, 0}, {domains, 11}, {nil, 1}} {
		if _, err := NewDomainLoader(bad.domains, bad.block, 1); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("block %d over %d domains: %v", bad.block, len(bad.domains), err)
		}
	}
}

// TestDealStep: a step's deal is a permutation of its sequences, fixed
// by (seed, step) and pinned (a resumed run must deal its steps as the
// first run did), and differs from step to step.
func TestDealStep(t *testing.T) {
	deal := func(seed, step int64) []int {
		xs := []int{10, 11, 12, 13, 14, 15, 16, 17}
		DealStep(xs, seed, step)
		return xs
	}
	a := deal(7, 3)
	if got := slices.Sorted(slices.Values(a)); !slices.Equal(got, []int{10, 11, 12, 13, 14, 15, 16, 17}) {
		t.Fatalf("not a permutation: %v", a)
	}
	if !slices.Equal(a, deal(7, 3)) || slices.Equal(a, deal(7, 4)) || slices.Equal(a, deal(8, 3)) {
		t.Errorf("deal(7,3) %v, again %v, step 4 %v, seed 8 %v", a, deal(7, 3), deal(7, 4), deal(8, 3))
	}
	if want := []int{13, 10, 11, 12, 14, 16, 15, 17}; !slices.Equal(a, want) {
		t.Errorf("deal(7, 3) = %v, pinned %v: the deal changed", a, want)
	}
}
