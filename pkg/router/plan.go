package router

// Shapes: idxTK [T][k]; Offsets [E+1]; Token, Choice [S] (S kept slots,
// grouped by expert); SlotOf [T][k]; DemandE [E].

import (
	"errors"
	"fmt"
	"math"
)

// ErrExpertRange is returned by Plan.Build when idxTK names an expert
// outside 0..E-1.
var ErrExpertRange = errors.New("router: expert index out of range")

// Plan is a dispatch plan: the (token, choice) pairs of idxTK grouped by
// expert. Slots Offsets[e]..Offsets[e+1]-1 belong to expert e and are sorted
// by token index (then by choice). A zero Plan is ready to use; Build reuses
// its slices, so a Plan kept across steps does not allocate once its
// buffers have grown to the largest T*k and E seen.
type Plan struct {
	T, E, K  int
	Capacity int // slots per expert; <= 0 means dropless

	Offsets []int32 // [E+1] slot range of each expert; Offsets[E] = kept slots
	Token   []int32 // [S] token of each slot
	Choice  []int32 // [S] which of the token's k choices (0..k-1) the slot is
	SlotOf  []int32 // [T*k] slot of (t, j) at t*k+j, or -1 when dropped
	DemandE []int32 // [E] pairs routed to each expert before capacity (histogram of idxTK)
	Dropped int     // (token, choice) pairs dropped by the capacity

	cursor []int32 // [E] scratch: next free slot of each expert
}

// Slots returns the number of kept slots (Offsets[E]).
func (p *Plan) Slots() int { return int(p.Offsets[p.E]) }

// Kept reports whether choice j of token t has a slot.
func (p *Plan) Kept(t, j int) bool { return p.SlotOf[t*p.K+j] >= 0 }

// Build fills the plan from idxTK (T tokens, k choices each, E experts).
// With capacity > 0 each expert keeps at most capacity slots, first come in
// token order: the pairs of the latest tokens beyond the capacity are dropped
// and marked -1 in SlotOf. With capacity <= 0 nothing is dropped.
// On error the plan is left empty-shaped and must not be used.
func (p *Plan) Build(idxTK []int32, T, E, k, capacity int) error {
	checkTEK("Plan.Build", T, E, k)
	need(len(idxTK), T*k, "Plan.Build", "idxTK")
	n := T * k
	p.T, p.E, p.K, p.Capacity, p.Dropped = T, E, k, capacity, 0
	p.Offsets = grow(p.Offsets, E+1)
	p.DemandE = grow(p.DemandE, E)
	p.cursor = grow(p.cursor, E)
	p.SlotOf = grow(p.SlotOf, n)
	clear(p.DemandE)
	for i, e := range idxTK[:n] {
		if e < 0 || int(e) >= E {
			clear(p.Offsets)
			p.Token, p.Choice = p.Token[:0], p.Choice[:0]
			return fmt.Errorf("%w: idxTK[%d] = %d with E = %d", ErrExpertRange, i, e, E)
		}
		p.DemandE[e]++
	}
	p.Offsets[0] = 0
	for e := 0; e < E; e++ {
		kept := p.DemandE[e]
		if capacity > 0 && int(kept) > capacity {
			kept = int32(capacity)
		}
		p.cursor[e] = p.Offsets[e]
		p.Offsets[e+1] = p.Offsets[e] + kept
	}
	S := int(p.Offsets[E])
	p.Token = grow(p.Token, S)
	p.Choice = grow(p.Choice, S)
	for t := 0; t < T; t++ {
		for j := 0; j < k; j++ {
			i := t*k + j
			e := idxTK[i]
			s := p.cursor[e]
			if s == p.Offsets[e+1] {
				p.SlotOf[i] = -1
				p.Dropped++
				continue
			}
			p.cursor[e] = s + 1
			p.Token[s] = int32(t)
			p.Choice[s] = int32(j)
			p.SlotOf[i] = s
		}
	}
	return nil
}

// grow returns s resliced to n elements, reallocating only when its
// capacity is too small. The contents are not preserved or cleared.
func grow(s []int32, n int) []int32 {
	if cap(s) < n {
		return make([]int32, n)
	}
	return s[:n]
}

// Capacity returns the per-expert slot capacity ceil(factor*T*k/E) for a
// capacity factor, or 0 (dropless) when factor <= 0. Products that are
// integers up to floating-point rounding (1.1*100/10) are not rounded up.
func Capacity(T, E, k int, factor float64) int {
	if factor <= 0 || E <= 0 {
		return 0
	}
	x := factor * float64(T) * float64(k) / float64(E)
	if r := math.Round(x); math.Abs(x-r) <= 1e-9*math.Max(1, r) {
		return int(r)
	}
	return int(math.Ceil(x))
}
