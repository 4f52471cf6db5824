package train

import (
	"math"
	"testing"
)

// TestDomainExpertMI: disjoint experts per domain give log2(domains) bits,
// domains that route alike give 0 however unbalanced the experts, and the
// domains' token counts weight the mix (checked against the formula by
// hand for a 2-domain, 2-expert layer).
func TestDomainExpertMI(t *testing.T) {
	rep := func(tokens [2]int64, f [2][]float64) *Report {
		r := &Report{Domains: []DomainReport{{Domain: "a", Tokens: tokens[0]}, {Domain: "b", Tokens: tokens[1]}}}
		for d, name := range []string{"a", "b"} {
			r.Experts = append(r.Experts, Specialisation{Layer: 0, Domain: name, Frequency: f[d]})
		}
		return r
	}
	near := func(got, want float64) bool { return math.Abs(got-want) < 1e-12 }
	if got := rep([2]int64{5, 5}, [2][]float64{{1, 0}, {0, 1}}).DomainExpertMI(); len(got) != 1 || !near(got[0], 1) {
		t.Errorf("disjoint experts: %v bits, want 1", got)
	}
	if got := rep([2]int64{5, 5}, [2][]float64{{0.9, 0.1}, {0.9, 0.1}}).DomainExpertMI(); !near(got[0], 0) {
		t.Errorf("alike but unbalanced: %v bits, want 0", got)
	}
	// w = (0.75, 0.25), f_a = (0.8, 0.2), f_b = (0.2, 0.8): mix (0.65, 0.35)
	want := 0.75*(0.8*math.Log2(0.8/0.65)+0.2*math.Log2(0.2/0.35)) + 0.25*(0.2*math.Log2(0.2/0.65)+0.8*math.Log2(0.8/0.35))
	if got := rep([2]int64{3, 1}, [2][]float64{{0.8, 0.2}, {0.2, 0.8}}).DomainExpertMI(); !near(got[0], want) {
		t.Errorf("weighted: %v bits, want %v", got[0], want)
	}
	// no token counts: equal weights
	if got := rep([2]int64{0, 0}, [2][]float64{{1, 0}, {0, 1}}).DomainExpertMI(); !near(got[0], 1) {
		t.Errorf("no token counts: %v bits, want 1", got)
	}
}
