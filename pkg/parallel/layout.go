package parallel

import (
	"errors"
	"fmt"
)

// ErrLayout is wrapped by every error from NewLayout and the layout's
// expert placement; the message after it names the rule broken.
var ErrLayout = errors.New("parallel: layout")

// Balance names the group of ranks whose expert counts are summed for the
// global-batch load-balancing loss.
type Balance string

const (
	// BalanceDP sums counts over all data-parallel ranks of the same tensor
	// rank (the global batch). The default.
	BalanceDP Balance = "dp"
	// BalanceNode sums counts over the data-parallel ranks of the same tensor
	// rank that run on the same host.
	BalanceNode Balance = "node"
	// BalanceNone keeps counts local: micro-batch LBL.
	BalanceNone Balance = "none"
)

// Layout is a validated placement of a job's ranks on the tensor-, data- and
// expert-parallel dimensions. Build it with NewLayout; the zero value is not
// valid. Rank order is tensor-parallel fastest:
//
//	rank    = dpRank*TP + tpRank
//	dpRank  = replica*EP + epRank     (expert-parallel ranks are adjacent)
//
// A Layout is immutable and safe to share.
type Layout struct {
	world, tp, dp, ep int
	balance           Balance
	hosts             []string
}

// Coord is a rank's position on every parallel dimension.
type Coord struct {
	TP      int // rank inside the tensor-parallel group
	DP      int // rank inside the data-parallel group
	EP      int // rank inside the expert-parallel group (which experts it holds)
	Replica int // which expert-data-parallel replica of the experts
}

// LayoutOption changes an optional setting of NewLayout.
type LayoutOption func(*Layout)

// WithBalance sets the load-balancing group (default BalanceDP).
func WithBalance(b Balance) LayoutOption { return func(l *Layout) { l.balance = b } }

// WithHosts gives the host of every rank (len(hosts) == world); needed by
// BalanceNode.
func WithHosts(hosts []string) LayoutOption {
	return func(l *Layout) { l.hosts = append([]string(nil), hosts...) }
}

// NewLayout validates world = tp*dp, ep | dp and the options.
func NewLayout(world, tp, dp, ep int, opts ...LayoutOption) (Layout, error) {
	l := Layout{world: world, tp: tp, dp: dp, ep: ep, balance: BalanceDP}
	for _, o := range opts {
		o(&l)
	}
	switch {
	case world < 1:
		return Layout{}, fmt.Errorf("%w: world %d < 1", ErrLayout, world)
	case tp < 1 || dp < 1 || ep < 1:
		return Layout{}, fmt.Errorf("%w: degrees must be >= 1 (tp %d, dp %d, ep %d)", ErrLayout, tp, dp, ep)
	case tp*dp != world:
		return Layout{}, fmt.Errorf("%w: tp*dp = %d != world %d", ErrLayout, tp*dp, world)
	case dp%ep != 0:
		return Layout{}, fmt.Errorf("%w: ep %d does not divide dp %d", ErrLayout, ep, dp)
	}
	switch l.balance {
	case BalanceDP, BalanceNone:
	case BalanceNode:
		if l.hosts == nil {
			return Layout{}, fmt.Errorf("%w: balance %q needs the host of every rank", ErrLayout, l.balance)
		}
	default:
		return Layout{}, fmt.Errorf("%w: balance %q is not one of dp, node, none", ErrLayout, l.balance)
	}
	if l.hosts != nil {
		if len(l.hosts) != world {
			return Layout{}, fmt.Errorf("%w: %d hosts for world %d", ErrLayout, len(l.hosts), world)
		}
		for r, h := range l.hosts {
			if h == "" {
				return Layout{}, fmt.Errorf("%w: rank %d has an empty host", ErrLayout, r)
			}
		}
	}
	return l, nil
}

func (l Layout) World() int { return l.world }
func (l Layout) TP() int    { return l.tp }
func (l Layout) DP() int    { return l.dp }
func (l Layout) EP() int    { return l.ep }

// Replicas is the number of expert-data-parallel replicas, DP/EP.
func (l Layout) Replicas() int { return l.dp / l.ep }

// Balance is the load-balancing group kind.
func (l Layout) Balance() Balance { return l.balance }

// String is a short description such as "world=8 tp=2 dp=4 ep=2 balance=dp".
func (l Layout) String() string {
	return fmt.Sprintf("world=%d tp=%d dp=%d ep=%d balance=%s", l.world, l.tp, l.dp, l.ep, l.balance)
}

// Coord returns rank's coordinates. It panics if rank is outside the world.
func (l Layout) Coord(rank int) Coord {
	l.check(rank)
	dpRank := rank / l.tp
	return Coord{TP: rank % l.tp, DP: dpRank, EP: dpRank % l.ep, Replica: dpRank / l.ep}
}

// Rank is the inverse of Coord (Coord.DP is ignored in favour of EP and Replica).
func (l Layout) Rank(c Coord) int { return (c.Replica*l.ep+c.EP)*l.tp + c.TP }

func (l Layout) check(rank int) {
	if rank < 0 || rank >= l.world {
		panic(fmt.Sprintf("parallel: rank %d outside world %d", rank, l.world))
	}
}

// TPGroup is the tensor-parallel group of rank: the ranks that hold the same
// tokens and split the dense weights.
func (l Layout) TPGroup(rank int) []int {
	c := l.Coord(rank)
	g := make([]int, l.tp)
	for t := range g {
		g[t] = c.DP*l.tp + t
	}
	return g
}

// DPGroup is the data-parallel group of rank: the ranks with the same tensor
// rank, which all-reduce dense gradients.
func (l Layout) DPGroup(rank int) []int {
	c := l.Coord(rank)
	g := make([]int, l.dp)
	for d := range g {
		g[d] = d*l.tp + c.TP
	}
	return g
}

// EPGroup is the expert-parallel group of rank: the ranks of one replica (and
// the same tensor rank) that together hold every expert; token dispatch and
// combine all-to-alls run over it. Index i of the group holds EP rank i.
func (l Layout) EPGroup(rank int) []int {
	c := l.Coord(rank)
	g := make([]int, l.ep)
	for e := range g {
		g[e] = l.Rank(Coord{TP: c.TP, EP: e, Replica: c.Replica})
	}
	return g
}

// ExpertDPGroup is the expert-data-parallel group of rank: the ranks that hold
// the same experts (one per replica), which all-reduce expert gradients.
func (l Layout) ExpertDPGroup(rank int) []int {
	c := l.Coord(rank)
	g := make([]int, l.Replicas())
	for r := range g {
		g[r] = l.Rank(Coord{TP: c.TP, EP: c.EP, Replica: r})
	}
	return g
}

// BalanceGroup is the group whose expert counts rank sums for the
// load-balancing loss: its DP group (BalanceDP), the DP ranks on its host
// (BalanceNode) or only itself (BalanceNone). Tensor-parallel peers are never
// in one balance group, so their identical tokens are counted once.
func (l Layout) BalanceGroup(rank int) []int {
	switch l.balance {
	case BalanceNone:
		l.check(rank)
		return []int{rank}
	case BalanceNode:
		var g []int
		for _, r := range l.DPGroup(rank) {
			if l.hosts[r] == l.hosts[rank] {
				g = append(g, r)
			}
		}
		return g
	default:
		return l.DPGroup(rank)
	}
}

// GroupKind names one family of process groups.
type GroupKind string

const (
	GroupTP       GroupKind = "tp"
	GroupDP       GroupKind = "dp"
	GroupEP       GroupKind = "ep"
	GroupExpertDP GroupKind = "expert-dp"
	GroupBalance  GroupKind = "balance"
)

// GroupKinds lists every kind, in a fixed order.
var GroupKinds = []GroupKind{GroupTP, GroupDP, GroupEP, GroupExpertDP, GroupBalance}

// Group returns rank's group of the given kind.
func (l Layout) Group(kind GroupKind, rank int) []int {
	switch kind {
	case GroupTP:
		return l.TPGroup(rank)
	case GroupDP:
		return l.DPGroup(rank)
	case GroupEP:
		return l.EPGroup(rank)
	case GroupExpertDP:
		return l.ExpertDPGroup(rank)
	case GroupBalance:
		return l.BalanceGroup(rank)
	}
	panic(fmt.Sprintf("parallel: unknown group kind %q", kind))
}

// Groups returns every distinct group of the kind, ordered by first rank;
// together they partition the world.
func (l Layout) Groups(kind GroupKind) [][]int {
	var gs [][]int
	seen := make([]bool, l.world)
	for r := 0; r < l.world; r++ {
		if seen[r] {
			continue
		}
		g := l.Group(kind, r)
		for _, m := range g {
			seen[m] = true
		}
		gs = append(gs, g)
	}
	return gs
}

// ExpertsOf returns the contiguous range [lo, hi) of the numExperts experts
// held by EP rank epRank. EP must divide numExperts.
func (l Layout) ExpertsOf(epRank, numExperts int) (lo, hi int, err error) {
	if numExperts < 1 || numExperts%l.ep != 0 {
		return 0, 0, fmt.Errorf("%w: ep %d does not divide experts %d", ErrLayout, l.ep, numExperts)
	}
	if epRank < 0 || epRank >= l.ep {
		return 0, 0, fmt.Errorf("%w: ep rank %d outside ep %d", ErrLayout, epRank, l.ep)
	}
	per := numExperts / l.ep
	return epRank * per, (epRank + 1) * per, nil
}

// ExpertOwner returns the EP rank that holds expert e of numExperts.
func (l Layout) ExpertOwner(e, numExperts int) (int, error) {
	if numExperts < 1 || numExperts%l.ep != 0 {
		return 0, fmt.Errorf("%w: ep %d does not divide experts %d", ErrLayout, l.ep, numExperts)
	}
	if e < 0 || e >= numExperts {
		return 0, fmt.Errorf("%w: expert %d outside %d experts", ErrLayout, e, numExperts)
	}
	return e / (numExperts / l.ep), nil
}
