package data

import (
	"fmt"
	"math/bits"
	"math/rand/v2"
)

// Position is where a Loader stands: Offset sequences into the order of
// epoch Epoch. It is a plain value: store it in a checkpoint (it marshals to
// {"epoch":E,"offset":O}) and give it back to Seek to continue exactly.
type Position struct {
	Epoch  int64 `json:"epoch"`
	Offset int64 `json:"offset"`
}

// Loader is the deterministic stream of training sequence indices. Epoch e
// visits every one of the n sequences once, in the order Permutation(n,
// seed, e); epochs follow each other without a gap. A Loader is not safe for
// concurrent use.
type Loader struct {
	n    int
	seed int64
	pos  Position

	perm      []int // order of epoch permEpoch
	permEpoch int64

	// domainSeqs and block: a domain-blocked loader (NewDomainLoader)
	domainSeqs [][]int
	block      int
}

// NewLoader returns a Loader over numSeqs sequences (usually
// c.NumSeqs(Train)) at Position{0, 0}.
func NewLoader(numSeqs int, seed int64) (*Loader, error) {
	if numSeqs < 1 {
		return nil, errorf(ErrInvalidConfig, nil, "loader over %d sequences", numSeqs)
	}
	return &Loader{n: numSeqs, seed: seed, permEpoch: -1}, nil
}

// NewDomainLoader returns a Loader whose sequences come in blocks of block
// sequences of one domain: each epoch permutes every domain's sequences
// (domainSeqs[d], e.g. c.Seqs(Train, d)), cuts them into blocks of block
// (the remainder of a domain sits the epoch out) and permutes the blocks
// (BlockedPermutation). Read a block per micro-batch and data-parallel rank
// (block = micro_batch), every micro-batch holds one domain while the
// global batch mixes them: as when each rank or micro-batch reads a source
// of its own, the setting in which balancing experts per micro-batch and
// over the global batch part ways (the micro-batch LBL pushes every domain
// to use all experts alike).
func NewDomainLoader(domainSeqs [][]int, block int, seed int64) (*Loader, error) {
	if block < 1 {
		return nil, errorf(ErrInvalidConfig, nil, "domain blocks of %d sequences", block)
	}
	n := 0
	for _, seqs := range domainSeqs {
		n += len(seqs) / block * block
	}
	if n == 0 {
		return nil, errorf(ErrInvalidConfig, nil, "no domain has %d training sequences for a block", block)
	}
	return &Loader{n: n, seed: seed, permEpoch: -1, domainSeqs: domainSeqs, block: block}, nil
}

// Len returns the number of sequences in one epoch.
func (l *Loader) Len() int { return l.n }

// Pos returns the current position.
func (l *Loader) Pos() Position { return l.pos }

// Seek moves to p, which must satisfy Epoch >= 0 and 0 <= Offset < Len().
func (l *Loader) Seek(p Position) error {
	if p.Epoch < 0 || p.Offset < 0 || p.Offset >= int64(l.n) {
		return errorf(ErrInvalidConfig, nil, "position %+v outside a loader of %d sequences", p, l.n)
	}
	l.pos = p
	return nil
}

// Consumed returns the number of sequences handed out from Position{0, 0}
// to the current position.
func (l *Loader) Consumed() int64 { return l.pos.Epoch*int64(l.n) + l.pos.Offset }

// SeekConsumed moves to the position reached after k sequences, so step s
// of a run with global batch B is at SeekConsumed(s*B).
func (l *Loader) SeekConsumed(k int64) error {
	if k < 0 {
		return errorf(ErrInvalidConfig, nil, "consumed count %d", k)
	}
	return l.Seek(Position{Epoch: k / int64(l.n), Offset: k % int64(l.n)})
}

// Next returns the next n sequence indices, crossing into the next epoch
// when one ends, and advances the position. The result reuses dst's storage
// (dst[:0]) when it is large enough.
func (l *Loader) Next(n int, dst []int) []int {
	dst = dst[:0]
	for len(dst) < n {
		if l.permEpoch != l.pos.Epoch {
			if l.block > 0 {
				l.perm = appendBlocked(l.perm[:0], l.domainSeqs, l.block, l.seed, l.pos.Epoch)
			} else {
				l.perm = appendPermutation(l.perm[:0], l.n, l.seed, l.pos.Epoch)
			}
			l.permEpoch = l.pos.Epoch
		}
		take := min(n-len(dst), l.n-int(l.pos.Offset))
		dst = append(dst, l.perm[l.pos.Offset:l.pos.Offset+int64(take)]...)
		l.pos.Offset += int64(take)
		if l.pos.Offset == int64(l.n) {
			l.pos = Position{Epoch: l.pos.Epoch + 1}
		}
	}
	return dst
}

// Permutation returns the order of epoch epoch over n sequences. It is
// fixed here, not left to math/rand/v2's helpers, so that it never changes
// with the Go version: src = rand.NewPCG(uint64(seed), uint64(epoch)); start
// from 0..n-1 and, for i = n-1 down to 1, swap element i with element
// j = uniform(src, i+1), where uniform(src, m) draws x = src.Uint64(),
// forms the 128-bit product x*m and returns its high word, redrawing while
// the low word is below (2^64 - m) mod m (Lemire's method).
func Permutation(n int, seed, epoch int64) []int {
	return appendPermutation(nil, n, seed, epoch)
}

func appendPermutation(dst []int, n int, seed, epoch int64) []int {
	for i := range n {
		dst = append(dst, i)
	}
	src := rand.NewPCG(uint64(seed), uint64(epoch))
	for i := n - 1; i > 0; i-- {
		j := uniform(src, uint64(i+1))
		dst[i], dst[j] = dst[j], dst[i]
	}
	return dst
}

// BlockedPermutation returns the order of epoch epoch of a domain-blocked
// loader (NewDomainLoader): src = rand.NewPCG(uint64(seed),
// uint64(epoch)); each domain's sequences, in domain order, are permuted
// as Permutation permutes 0..n-1 (drawing from src) and cut into blocks of
// block; the blocks (domain by domain, in order) are then permuted the
// same way, still drawing from src.
func BlockedPermutation(domainSeqs [][]int, block int, seed, epoch int64) []int {
	return appendBlocked(nil, domainSeqs, block, seed, epoch)
}

func appendBlocked(dst []int, domainSeqs [][]int, block int, seed, epoch int64) []int {
	src := rand.NewPCG(uint64(seed), uint64(epoch))
	shuffle := func(xs []int) {
		for i := len(xs) - 1; i > 0; i-- {
			j := uniform(src, uint64(i+1))
			xs[i], xs[j] = xs[j], xs[i]
		}
	}
	var blocks [][]int
	for _, seqs := range domainSeqs {
		own := append([]int(nil), seqs...)
		shuffle(own)
		for i := 0; i+block <= len(own); i += block {
			blocks = append(blocks, own[i:i+block])
		}
	}
	order := make([]int, len(blocks))
	for i := range order {
		order[i] = i
	}
	shuffle(order)
	for _, b := range order {
		dst = append(dst, blocks[b]...)
	}
	return dst
}

// DealStep permutes seqs, the sequences of optimizer step step, in place,
// so that cutting them into micro-batches deals them out at random: src =
// rand.NewPCG(uint64(seed), uint64(step) | 1<<63) (a stream no epoch's
// permutation uses), then the swaps of Permutation. Every data-parallel
// rank deals the same step the same way, so the ranks' shards stay
// disjoint.
func DealStep(seqs []int, seed, step int64) {
	src := rand.NewPCG(uint64(seed), uint64(step)|1<<63)
	for i := len(seqs) - 1; i > 0; i-- {
		j := uniform(src, uint64(i+1))
		seqs[i], seqs[j] = seqs[j], seqs[i]
	}
}

// uniform returns a uniform value in [0, m) for m > 0.
func uniform(src *rand.PCG, m uint64) uint64 {
	hi, lo := bits.Mul64(src.Uint64(), m)
	if lo < m {
		thresh := -m % m
		for lo < thresh {
			hi, lo = bits.Mul64(src.Uint64(), m)
		}
	}
	return hi
}

// Shard returns rank's part of a global batch: the contiguous slice
// global[rank*k : (rank+1)*k] with k = len(global)/world, aliasing global.
// Every data-parallel rank runs its own Loader with the same seed and
// position, draws the same global batch and keeps its shard, so the ranks
// together see exactly the batch one process would. It panics unless world
// >= 1, 0 <= rank < world and world divides len(global); the layout should
// guarantee that the global batch is a multiple of the data-parallel degree.
func Shard(global []int, rank, world int) []int {
	if world < 1 || rank < 0 || rank >= world {
		panic(fmt.Sprintf("data: Shard: rank %d of world %d", rank, world))
	}
	if len(global)%world != 0 {
		panic(fmt.Sprintf("data: Shard: global batch of %d not divisible by world %d", len(global), world))
	}
	k := len(global) / world
	return global[rank*k : (rank+1)*k : (rank+1)*k]
}
