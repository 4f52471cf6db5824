package parallel

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// One member's schedule, written out: three members, three one-byte chunks,
// whole-chunk segments, all-reduce (steps 0..3, k = 0) as member 0 runs it.
func TestRingScheduleTable(t *testing.T) {
	sends, recvs := ringSchedule(3, 0, 0, 4, 0, []int{0, 1, 2, 3}, 1)
	wantSends := []ringOp{
		{lo: 0, hi: 1, after: 0}, // t0: chunk 0, own data
		{lo: 2, hi: 3, after: 1}, // t1: chunk 2, received at t0
		{lo: 1, hi: 2, after: 2}, // t2: chunk 1, reduced at t1
		{lo: 0, hi: 1, after: 3}, // t3: chunk 0, copied at t2
	}
	wantRecvs := []ringOp{
		{lo: 2, hi: 3, after: 0, reduce: true},  // t0: chunk 2, never sent yet
		{lo: 1, hi: 2, after: 0, reduce: true},  // t1: chunk 1, never sent yet
		{lo: 0, hi: 1, after: 1, reduce: false}, // t2: chunk 0 after its t0 send
		{lo: 2, hi: 3, after: 2, reduce: false}, // t3: chunk 2 after its t1 send
	}
	if !slices.Equal(sends, wantSends) || !slices.Equal(recvs, wantRecvs) {
		t.Fatalf("sends %+v\nrecvs %+v\nwant %+v\n     %+v", sends, recvs, wantSends, wantRecvs)
	}
}

// ringSim runs every member's schedule together, without a network: links
// are FIFO queues, a send copies its bytes when it runs, and each step runs
// one op, chosen at random among those whose dependencies are met, so many
// interleavings are tried. Element values are bit masks of the members whose
// input they hold; reducing adds them, so a value counted twice shows.
type ringSim struct {
	data         [][]uint64
	sends, recvs [][]ringOp
	sent, recvd  []int
	link         [][][]uint64 // link[r]: messages from r to r+1
}

func runRingSim(t *testing.T, rng *rand.Rand, w, t0, t1, k int, offs []int, seg int, init func(r, i int) uint64) [][]uint64 {
	t.Helper()
	n := offs[w]
	s := &ringSim{data: make([][]uint64, w), sends: make([][]ringOp, w), recvs: make([][]ringOp, w),
		sent: make([]int, w), recvd: make([]int, w), link: make([][][]uint64, w)}
	for r := range w {
		s.data[r] = make([]uint64, n)
		for i := range n {
			s.data[r][i] = init(r, i)
		}
		s.sends[r], s.recvs[r] = ringSchedule(w, r, t0, t1, k, offs, seg)
	}
	for {
		var ready []func()
		for r := range w {
			if i := s.sent[r]; i < len(s.sends[r]) && s.recvd[r] >= s.sends[r][i].after {
				ready = append(ready, func() { s.send(r) })
			}
			prev := (r + w - 1) % w
			if i := s.recvd[r]; i < len(s.recvs[r]) && s.sent[r] >= s.recvs[r][i].after && len(s.link[prev]) > 0 {
				ready = append(ready, func() { s.recv(t, r, prev) })
			}
		}
		if len(ready) == 0 {
			break
		}
		ready[rng.IntN(len(ready))]()
	}
	for r := range w {
		if s.sent[r] != len(s.sends[r]) || s.recvd[r] != len(s.recvs[r]) || len(s.link[r]) != 0 {
			t.Fatalf("member %d stuck: %d/%d sends, %d/%d receives, %d messages in flight",
				r, s.sent[r], len(s.sends[r]), s.recvd[r], len(s.recvs[r]), len(s.link[r]))
		}
	}
	return s.data
}

func (s *ringSim) send(r int) {
	op := s.sends[r][s.sent[r]]
	s.link[r] = append(s.link[r], slices.Clone(s.data[r][op.lo:op.hi]))
	s.sent[r]++
}

func (s *ringSim) recv(t *testing.T, r, prev int) {
	op := s.recvs[r][s.recvd[r]]
	m := s.link[prev][0]
	s.link[prev] = s.link[prev][1:]
	if len(m) != op.hi-op.lo {
		t.Fatalf("member %d expects a %d-element segment, member %d sent %d", r, op.hi-op.lo, prev, len(m))
	}
	for i, v := range m {
		if op.reduce {
			s.data[r][op.lo+i] += v
		} else {
			s.data[r][op.lo+i] = v
		}
	}
	s.recvd[r]++
}

func TestRingScheduleCollectives(t *testing.T) {
	chunks := func(sizes ...int) []int {
		offs := []int{0}
		for _, n := range sizes {
			offs = append(offs, offs[len(offs)-1]+n)
		}
		return offs
	}
	for _, tc := range []struct {
		sizes []int
		seg   int
	}{
		{[]int{1, 1}, 1}, {[]int{3, 2}, 2}, {[]int{4, 4, 4}, 1}, {[]int{5, 0, 3}, 2},
		{[]int{7, 7, 6, 6}, 3}, {[]int{2, 9, 1, 4, 3}, 4}, {[]int{8, 8, 8, 8, 8, 8, 8, 8}, 3},
	} {
		w, offs := len(tc.sizes), chunks(tc.sizes...)
		all := uint64(1)<<w - 1
		own := func(r, _ int) uint64 { return 1 << r }
		for seed := range uint64(20) {
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			name := fmt.Sprintf("w%d sizes %v seg %d seed %d", w, tc.sizes, tc.seg, seed)

			got := runRingSim(t, rng, w, 0, 2*w-2, 0, offs, tc.seg, own)
			for r := range w {
				for i, v := range got[r] {
					if v != all {
						t.Fatalf("%s: all-reduce: member %d element %d holds %b, want %b", name, r, i, v, all)
					}
				}
			}

			got = runRingSim(t, rng, w, 0, w-1, -1, offs, tc.seg, own)
			for r := range w {
				for i := offs[r]; i < offs[r+1]; i++ {
					if got[r][i] != all {
						t.Fatalf("%s: reduce-scatter: member %d element %d of its chunk holds %b, want %b", name, r, i, got[r][i], all)
					}
				}
			}

			// all-gather: member r starts with its chunk (value r+1 there)
			chunkOf := func(i int) int {
				c := 0
				for i >= offs[c+1] {
					c++
				}
				return c
			}
			mine := func(r, i int) uint64 {
				if chunkOf(i) == r {
					return uint64(r + 1)
				}
				return 0
			}
			got = runRingSim(t, rng, w, w-1, 2*w-2, -1, offs, tc.seg, mine)
			for r := range w {
				for i, v := range got[r] {
					if want := uint64(chunkOf(i) + 1); v != want {
						t.Fatalf("%s: all-gather: member %d element %d holds %d, want %d", name, r, i, v, want)
					}
				}
			}
		}
	}
}
