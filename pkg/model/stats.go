package model

// ExpertStats counts, on evaluation data, how often each expert of each MoE
// layer is among a token's top-k, per domain.
//
//	Counts[layer][domain][expert]   selections
//	Tokens[layer][domain]           valid tokens seen
type ExpertStats struct {
	Experts int
	Counts  [][][]float64
	Tokens  [][]float64
}

// NewExpertStats sizes the tables for moeLayers x domains x experts.
func NewExpertStats(moeLayers, domains, experts int) *ExpertStats {
	s := &ExpertStats{Experts: experts}
	s.Counts = make([][][]float64, moeLayers)
	s.Tokens = make([][]float64, moeLayers)
	for l := range s.Counts {
		s.Counts[l] = make([][]float64, domains)
		s.Tokens[l] = make([]float64, domains)
		for d := range s.Counts[l] {
			s.Counts[l][d] = make([]float64, experts)
		}
	}
	return s
}

// Reset clears the counts.
func (s *ExpertStats) Reset() {
	for l := range s.Counts {
		clear(s.Tokens[l])
		for d := range s.Counts[l] {
			clear(s.Counts[l][d])
		}
	}
}

// Record counts the selections of every token of b in MoE layer l (idxTK
// holds their k choices each): what a backend that routes elsewhere (the
// GPU engine) reports after copying the choices back.
func (s *ExpertStats) Record(l int, b *Batch, idxTK []int32, k int) {
	s.record(l, b, 0, b.T(), idxTK, k)
}

// RecordRange is Record for tokens [off, off+n) of b only (a tensor-
// parallel rank's slice).
func (s *ExpertStats) RecordRange(l int, b *Batch, off, n int, idxTK []int32, k int) {
	s.record(l, b, off, n, idxTK, k)
}

// record counts the selections of tokens [off, off+n) of the batch (idxTK
// holds their k choices each).
func (s *ExpertStats) record(l int, b *Batch, off, n int, idxTK []int32, k int) {
	for i := 0; i < n; i++ {
		t := off + i
		dom := b.Domain[t/b.S]
		if !b.Valid[t] || dom < 0 || dom >= len(s.Tokens[l]) {
			continue
		}
		s.Tokens[l][dom]++
		for _, e := range idxTK[i*k : (i+1)*k] {
			s.Counts[l][dom][e]++
		}
	}
}

// Frequency returns the selection frequency of every expert in layer l for
// domain dom: counts / (tokens * k), which sums to 1 over experts.
func (s *ExpertStats) Frequency(l, dom, k int) []float64 {
	f := make([]float64, s.Experts)
	n := s.Tokens[l][dom] * float64(k)
	if n == 0 {
		return f
	}
	for e, c := range s.Counts[l][dom] {
		f[e] = c / n
	}
	return f
}
