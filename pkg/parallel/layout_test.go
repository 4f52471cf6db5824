package parallel

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

func TestNewLayoutErrors(t *testing.T) {
	cases := []struct {
		world, tp, dp, ep int
		opts              []LayoutOption
		want              string
	}{
		{8, 2, 3, 1, nil, "parallel: layout: tp*dp = 6 != world 8"},
		{8, 2, 4, 3, nil, "parallel: layout: ep 3 does not divide dp 4"},
		{0, 1, 1, 1, nil, "parallel: layout: world 0 < 1"},
		{4, 0, 4, 1, nil, "parallel: layout: degrees must be >= 1 (tp 0, dp 4, ep 1)"},
		{4, 1, 4, 1, []LayoutOption{WithBalance("global")}, `parallel: layout: balance "global" is not one of dp, node, none`},
		{4, 1, 4, 1, []LayoutOption{WithBalance(BalanceNode)}, `parallel: layout: balance "node" needs the host of every rank`},
		{4, 1, 4, 1, []LayoutOption{WithHosts([]string{"a", "b"})}, "parallel: layout: 2 hosts for world 4"},
	}
	for _, c := range cases {
		_, err := NewLayout(c.world, c.tp, c.dp, c.ep, c.opts...)
		if err == nil || err.Error() != c.want || !errors.Is(err, ErrLayout) {
			t.Errorf("NewLayout(%d,%d,%d,%d) = %v, want %q", c.world, c.tp, c.dp, c.ep, err, c.want)
		}
	}
	l, err := NewLayout(8, 2, 4, 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := l.ExpertsOf(0, 7); err == nil || err.Error() != "parallel: layout: ep 2 does not divide experts 7" {
		t.Errorf("ExpertsOf(0, 7) = %v", err)
	}
}

func TestLayoutExample(t *testing.T) {
	hosts := []string{"a", "a", "a", "a", "b", "b", "b", "b"}
	l, err := NewLayout(8, 2, 4, 2, WithBalance(BalanceNode), WithHosts(hosts))
	if err != nil {
		t.Fatal(err)
	}
	// rank 5: dp rank 2, tp rank 1, replica 1, ep rank 0.
	if got, want := l.Coord(5), (Coord{TP: 1, DP: 2, EP: 0, Replica: 1}); got != want {
		t.Errorf("Coord(5) = %+v, want %+v", got, want)
	}
	check := func(name string, got, want []int) {
		if !slices.Equal(got, want) {
			t.Errorf("%s(5) = %v, want %v", name, got, want)
		}
	}
	check("TPGroup", l.TPGroup(5), []int{4, 5})
	check("DPGroup", l.DPGroup(5), []int{1, 3, 5, 7})
	check("EPGroup", l.EPGroup(5), []int{5, 7})
	check("ExpertDPGroup", l.ExpertDPGroup(5), []int{1, 5})
	check("BalanceGroup", l.BalanceGroup(5), []int{5, 7})
}

// randomLayout draws a valid layout with world <= 16.
func randomLayout(rng *rand.Rand) Layout {
	for {
		world := 1 + rng.IntN(16)
		var divs []int
		for d := 1; d <= world; d++ {
			if world%d == 0 {
				divs = append(divs, d)
			}
		}
		tp := divs[rng.IntN(len(divs))]
		dp := world / tp
		var eps []int
		for e := 1; e <= dp; e++ {
			if dp%e == 0 {
				eps = append(eps, e)
			}
		}
		ep := eps[rng.IntN(len(eps))]
		bal := []Balance{BalanceDP, BalanceNode, BalanceNone}[rng.IntN(3)]
		nhosts := 1 + rng.IntN(3)
		hosts := make([]string, world)
		for r := range hosts {
			hosts[r] = fmt.Sprintf("h%d", rng.IntN(nhosts))
		}
		l, err := NewLayout(world, tp, dp, ep, WithBalance(bal), WithHosts(hosts))
		if err != nil {
			panic(err)
		}
		return l
	}
}

func TestLayoutProperties(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 500; i++ {
		l := randomLayout(rng)
		for _, kind := range GroupKinds {
			// Every rank is in exactly one group of each kind; groups are
			// sorted and partition the world; a rank's group contains it
			// and is the same group for all its members.
			count := make([]int, l.World())
			for _, g := range l.Groups(kind) {
				if !slices.IsSorted(g) {
					t.Fatalf("%v: %s group %v not sorted", l, kind, g)
				}
				for _, r := range g {
					count[r]++
					if !slices.Equal(l.Group(kind, r), g) {
						t.Fatalf("%v: %s group of %d = %v, want %v", l, kind, r, l.Group(kind, r), g)
					}
				}
			}
			for r, n := range count {
				if n != 1 {
					t.Fatalf("%v: rank %d in %d %s groups", l, r, n, kind)
				}
			}
		}
		for r := 0; r < l.World(); r++ {
			c := l.Coord(r)
			if l.Rank(c) != r {
				t.Fatalf("%v: Rank(Coord(%d)) = %d", l, r, l.Rank(c))
			}
			for _, p := range l.TPGroup(r) { // TP peers share the dp rank
				if l.Coord(p).DP != c.DP {
					t.Fatalf("%v: tp peer %d of %d has dp %d != %d", l, p, r, l.Coord(p).DP, c.DP)
				}
			}
			for _, p := range l.BalanceGroup(r) { // TP peers (same tokens) never share a balance group
				if l.Coord(p).TP != c.TP {
					t.Fatalf("%v: balance group of %d mixes tp ranks", l, r)
				}
			}
		}
		// Every expert sits on exactly one EP rank of each replica.
		for _, e := range []int{l.EP(), 2 * l.EP(), 4 * l.EP()} {
			for _, epg := range l.Groups(GroupEP) {
				owner := make([]int, e)
				for i, r := range epg {
					if l.Coord(r).EP != i {
						t.Fatalf("%v: EP group %v index %d holds ep rank %d", l, epg, i, l.Coord(r).EP)
					}
					lo, hi, err := l.ExpertsOf(l.Coord(r).EP, e)
					if err != nil {
						t.Fatal(err)
					}
					for x := lo; x < hi; x++ {
						owner[x]++
						if o, _ := l.ExpertOwner(x, e); o != i {
							t.Fatalf("%v: ExpertOwner(%d, %d) = %d, want %d", l, x, e, o, i)
						}
					}
				}
				for x, n := range owner {
					if n != 1 {
						t.Fatalf("%v: expert %d of %d held %d times in EP group %v", l, x, e, n, epg)
					}
				}
			}
		}
	}
}
