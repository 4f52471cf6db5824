package model

// Batch is one micro-batch of B sequences of S tokens, sequence-major
// (token t belongs to sequence t / S at position t % S).
//
//	Tokens  [T] input byte tokens
//	Targets [T] next-token targets; -1 marks padding (never counted)
//	Valid   [T] Targets[t] >= 0
//	Domain  [B] domain id of each sequence (-1 for an empty filler sequence)
type Batch struct {
	B, S    int
	Tokens  []int32
	Targets []int32
	Valid   []bool
	Domain  []int
}

// NewBatch allocates a batch of b sequences of s tokens.
func NewBatch(b, s int) *Batch {
	return &Batch{B: b, S: s, Tokens: make([]int32, b*s), Targets: make([]int32, b*s), Valid: make([]bool, b*s), Domain: make([]int, b)}
}

// T is the number of token positions B*S.
func (b *Batch) T() int { return b.B * b.S }

// SetValid recomputes Valid from Targets and returns the valid count.
func (b *Batch) SetValid() int {
	n := 0
	for i, t := range b.Targets {
		b.Valid[i] = t >= 0
		if t >= 0 {
			n++
		}
	}
	return n
}
