package parallel

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

// onAll runs f for every rank concurrently and returns the errors by rank.
func onAll(n int, f func(r int) error) []error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := 0; r < n; r++ {
		wg.Add(1)
		go func() { defer wg.Done(); errs[r] = f(r) }()
	}
	wg.Wait()
	return errs
}

func mustAll(t testing.TB, errs []error) {
	t.Helper()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

func worldComms(t testing.TB, ts []Transport, opts CommOptions) []*Comm {
	all := make([]int, len(ts))
	for i := range all {
		all[i] = i
	}
	cs := make([]*Comm, len(ts))
	for r, tr := range ts {
		c, err := NewComm(tr, all, opts)
		if err != nil {
			t.Fatal(err)
		}
		cs[r] = c
	}
	return cs
}

// Small thresholds so that small test buffers exercise the ring and the
// segment pipeline.
var testComm = CommOptions{SmallBytes: 256, Segment: 4 << 10}

func inputs(rng *rand.Rand, w, n int) [][]float32 {
	xs := make([][]float32, w)
	for r := range xs {
		xs[r] = make([]float32, n)
		for i := range xs[r] {
			xs[r][i] = float32(rng.NormFloat64())
		}
	}
	return xs
}

// refAllReduce is the serial model of the algorithms' summation order.
func refAllReduce(xs [][]float32, opts CommOptions) []float32 {
	w, n := len(xs), len(xs[0])
	out := make([]float32, n)
	if n*4 <= opts.SmallBytes { // direct: group order
		copy(out, xs[0])
		for r := 1; r < w; r++ {
			for i := range out {
				out[i] += xs[r][i]
			}
		}
		return out
	}
	offs := blockOffsets(n, w, 1)
	for c := 0; c < w; c++ { // ring: chunk c summed starting at member c
		for i := offs[c]; i < offs[c+1]; i++ {
			acc := xs[c][i]
			for s := 1; s < w; s++ {
				acc = xs[(c+s)%w][i] + acc
			}
			out[i] = acc
		}
	}
	return out
}

func TestAllReduce(t *testing.T) {
	forTransports(t, func(t *testing.T, k transportKind) {
		rng := rand.New(rand.NewPCG(5, 6))
		for w := 1; w <= 5; w++ {
			ts := k.make(t, w, testOptions())
			cs := worldComms(t, ts, testComm)
			for _, n := range []int{0, 1, 3, 64, 65, 1000, 4099, 30001} {
				xs := inputs(rng, w, n)
				want := refAllReduce(xs, testComm)
				bufs := make([][]float32, w)
				mustAll(t, onAll(w, func(r int) error {
					bufs[r] = slices.Clone(xs[r])
					return cs[r].AllReduce(context.Background(), bufs[r], Sum)
				}))
				for r := range bufs {
					for i := range want { // bitwise: same order as the model
						if math.Float32bits(bufs[r][i]) != math.Float32bits(want[i]) {
							t.Fatalf("w=%d n=%d rank %d [%d] = %v, want %v", w, n, r, i, bufs[r][i], want[i])
						}
					}
				}
				// Max, and float64.
				mustAll(t, onAll(w, func(r int) error {
					bufs[r] = slices.Clone(xs[r])
					return cs[r].AllReduce(context.Background(), bufs[r], Max)
				}))
				for i := 0; i < n; i++ {
					m := xs[0][i]
					for r := 1; r < w; r++ {
						m = max(m, xs[r][i])
					}
					for r := range bufs {
						if bufs[r][i] != m {
							t.Fatalf("max w=%d n=%d rank %d [%d] = %v, want %v", w, n, r, i, bufs[r][i], m)
						}
					}
				}
				f64 := make([][]float64, w)
				mustAll(t, onAll(w, func(r int) error {
					f64[r] = make([]float64, n)
					for i := range f64[r] {
						f64[r][i] = float64(r*n + i)
					}
					return cs[r].AllReduceF64(context.Background(), f64[r], Sum)
				}))
				for r := range f64 {
					for i := range f64[r] {
						if want := float64(w*i + n*w*(w-1)/2); f64[r][i] != want {
							t.Fatalf("f64 w=%d n=%d rank %d [%d] = %v, want %v", w, n, r, i, f64[r][i], want)
						}
					}
				}
			}
		}
	})
}

// Determinism: fresh transports and comms, same inputs, bitwise-identical
// results on every rank and every run, with the default thresholds.
func TestAllReduceDeterministic(t *testing.T) {
	forTransports(t, func(t *testing.T, k transportKind) {
		const w = 3
		rng := rand.New(rand.NewPCG(7, 8))
		for _, n := range []int{100, 300001} {
			xs := inputs(rng, w, n)
			var first []float32
			for run := 0; run < 3; run++ {
				ts := k.make(t, w, testOptions())
				cs := worldComms(t, ts, CommOptions{Segment: 64 << 10})
				bufs := make([][]float32, w)
				mustAll(t, onAll(w, func(r int) error {
					bufs[r] = slices.Clone(xs[r])
					return cs[r].AllReduce(context.Background(), bufs[r], Sum)
				}))
				if first == nil {
					first = bufs[0]
				}
				for r := range bufs {
					if !slices.EqualFunc(bufs[r], first, func(a, b float32) bool { return math.Float32bits(a) == math.Float32bits(b) }) {
						t.Fatalf("n=%d run %d rank %d differs from run 0 rank 0", n, run, r)
					}
				}
				closeAll(ts)
			}
		}
	})
}

func TestReduceScatterAllGather(t *testing.T) {
	forTransports(t, func(t *testing.T, k transportKind) {
		rng := rand.New(rand.NewPCG(9, 10))
		for w := 1; w <= 5; w++ {
			ts := k.make(t, w, testOptions())
			cs := worldComms(t, ts, testComm)
			for _, n := range []int{0, 2, 17, 5003} {
				counts := make([]int, w)
				left := n
				for i := 0; i < w-1; i++ {
					counts[i] = rng.IntN(left + 1)
					left -= counts[i]
				}
				counts[w-1] = left
				offs, _ := countOffsets(counts, 1)
				xs := inputs(rng, w, n)
				want := make([]float64, n)
				for r := range xs {
					for i, v := range xs[r] {
						want[i] += float64(v)
					}
				}
				blocks := make([][]float32, w)
				mustAll(t, onAll(w, func(r int) error {
					var err error
					blocks[r], err = cs[r].ReduceScatter(context.Background(), slices.Clone(xs[r]), counts, Sum)
					return err
				}))
				for r, b := range blocks {
					if len(b) != counts[r] {
						t.Fatalf("w=%d rank %d block len %d, want %d", w, r, len(b), counts[r])
					}
					for i, v := range b {
						if d := math.Abs(float64(v) - want[offs[r]+i]); d > 1e-5*(1+math.Abs(want[offs[r]+i])) {
							t.Fatalf("reduce-scatter w=%d rank %d [%d] = %v, want %v", w, r, i, v, want[offs[r]+i])
						}
					}
				}
				// All-gather the blocks back.
				full := make([][]float32, w)
				mustAll(t, onAll(w, func(r int) error {
					full[r] = make([]float32, n)
					copy(full[r][offs[r]:], blocks[r])
					return cs[r].AllGather(context.Background(), full[r], counts)
				}))
				for r := range full {
					for q := range blocks {
						if !slices.Equal(full[r][offs[q]:offs[q+1]], blocks[q]) {
							t.Fatalf("all-gather w=%d rank %d block %d differs", w, r, q)
						}
					}
				}
			}
		}
	})
}

func TestAllToAllBroadcastBarrier(t *testing.T) {
	forTransports(t, func(t *testing.T, k transportKind) {
		for w := 1; w <= 5; w++ {
			ts := k.make(t, w, testOptions())
			cs := worldComms(t, ts, testComm)
			ctx := context.Background()
			// Variable-count all-to-all: member r sends (r+1)*(i+1)-1 floats to i.
			cnt := func(from, to int) int { return (from+1)*(to+1) - 1 + (from*7+to)%3*1000 }
			val := func(from, to, j int) float32 { return float32(from*1000000 + to*10000 + j) }
			mustAll(t, onAll(w, func(r int) error {
				sc, rc := make([]int, w), make([]int, w)
				var send []float32
				for i := 0; i < w; i++ {
					sc[i], rc[i] = cnt(r, i), cnt(i, r)
					for j := 0; j < sc[i]; j++ {
						send = append(send, val(r, i, j))
					}
				}
				recv := make([]float32, 0)
				for _, c := range rc {
					recv = append(recv, make([]float32, c)...)
				}
				if err := cs[r].AllToAllVF32(ctx, send, sc, recv, rc); err != nil {
					return err
				}
				off := 0
				for i := 0; i < w; i++ {
					for j := 0; j < rc[i]; j++ {
						if recv[off+j] != val(i, r, j) {
							return fmt.Errorf("rank %d: from %d [%d] = %v", r, i, j, recv[off+j])
						}
					}
					off += rc[i]
				}
				// Bytes flavour and all-gather of bytes.
				sb := make([][]byte, w)
				for i := range sb {
					sb[i] = []byte(fmt.Sprintf("%d->%d", r, i))
				}
				got, err := cs[r].AllToAllV(ctx, sb)
				if err != nil {
					return err
				}
				for i, m := range got {
					if string(m) != fmt.Sprintf("%d->%d", i, r) {
						return fmt.Errorf("rank %d: all-to-all from %d = %q", r, i, m)
					}
				}
				all, err := cs[r].AllGatherBytes(ctx, []byte(fmt.Sprint(r)))
				if err != nil {
					return err
				}
				for i, m := range all {
					if string(m) != fmt.Sprint(i) {
						return fmt.Errorf("rank %d: all-gather from %d = %q", r, i, m)
					}
				}
				// Broadcast, small (direct) and large (chain), from every root.
				for root := 0; root < w; root++ {
					for _, n := range []int{0, 10, 50000} {
						buf := make([]byte, n)
						if r == root {
							for i := range buf {
								buf[i] = byte(i*31 + root)
							}
						}
						if err := cs[r].Broadcast(ctx, buf, root); err != nil {
							return err
						}
						for i := range buf {
							if buf[i] != byte(i*31+root) {
								return fmt.Errorf("rank %d: broadcast from %d [%d] = %d", r, root, i, buf[i])
							}
						}
					}
				}
				return cs[r].Barrier(ctx)
			}))
		}
	})
}

// Sub-communicators of different groups over one transport run concurrently
// without mixing messages.
func TestSubComms(t *testing.T) {
	forTransports(t, func(t *testing.T, k transportKind) {
		l, err := NewLayout(4, 2, 2, 1)
		if err != nil {
			t.Fatal(err)
		}
		ts := k.make(t, 4, testOptions())
		mustAll(t, onAll(4, func(r int) error {
			world, err := NewComm(ts[r], []int{0, 1, 2, 3}, testComm)
			if err != nil {
				return err
			}
			tp, err := world.Sub("tp", l.TPGroup(r))
			if err != nil {
				return err
			}
			dp, err := world.Sub("dp", l.DPGroup(r))
			if err != nil {
				return err
			}
			var wg sync.WaitGroup
			errs := make([]error, 2)
			res := make([][]float32, 2)
			for i, c := range []*Comm{tp, dp} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for it := 0; it < 5 && errs[i] == nil; it++ {
						res[i] = []float32{float32(r), float32(r), float32(r)}
						errs[i] = c.AllReduce(context.Background(), res[i], Sum)
					}
				}()
			}
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				return err
			}
			wantTP := float32(l.TPGroup(r)[0] + l.TPGroup(r)[1])
			wantDP := float32(l.DPGroup(r)[0] + l.DPGroup(r)[1])
			if res[0][0] != wantTP || res[1][2] != wantDP {
				return fmt.Errorf("rank %d: tp sum %v (want %v), dp sum %v (want %v)", r, res[0][0], wantTP, res[1][2], wantDP)
			}
			return nil
		}))
	})
}

func TestCommErrors(t *testing.T) {
	opts := testOptions()
	opts.Timeout = 300 * time.Millisecond
	ts := NewMemTransports(2, opts)
	if _, err := NewComm(ts[0], []int{1}, CommOptions{}); err == nil {
		t.Error("NewComm without own rank succeeded")
	}
	if _, err := NewComm(ts[0], []int{0, 0, 1}, CommOptions{}); err == nil {
		t.Error("NewComm with a duplicate rank succeeded")
	}
	if _, err := NewComm(ts[0], []int{0, 2}, CommOptions{}); !errors.Is(err, ErrBadRank) {
		t.Errorf("NewComm with rank 2 of 2 = %v", err)
	}
	// Mismatched lengths are an error on both sides (ErrMismatch where it is
	// seen, a timeout on a rank left waiting), never a hang or corruption.
	cs := worldComms(t, []Transport{ts[0], ts[1]}, testComm)
	errs := onAll(2, func(r int) error {
		return cs[r].AllReduce(context.Background(), make([]float32, 1000+r*10), Sum)
	})
	if errs[0] == nil || errs[1] == nil || !errors.Is(errors.Join(errs...), ErrMismatch) {
		t.Errorf("mismatched all-reduce = %v, want errors on both ranks, one ErrMismatch", errs)
	}
}

// A peer that dies mid-collective turns into an error on every other rank
// within the timeout.
func TestPeerDiesMidAllReduce(t *testing.T) {
	forTransports(t, func(t *testing.T, k transportKind) {
		const w = 4
		opts := testOptions()
		opts.Timeout = time.Second
		ts := k.make(t, w, opts)
		cs := worldComms(t, ts, CommOptions{Segment: 16 << 10})
		start := time.Now()
		errs := onAll(w, func(r int) error {
			buf := make([]float32, 1<<16)
			for it := 0; ; it++ {
				if r == 2 && it == 3 {
					ts[r].Close() // dies between collectives; its peers are mid-way
					return nil
				}
				if err := cs[r].AllReduce(context.Background(), buf, Sum); err != nil {
					return err
				}
			}
		})
		elapsed := time.Since(start)
		for r, err := range errs {
			if r != 2 && err == nil {
				t.Errorf("rank %d: no error after rank 2 died", r)
			}
		}
		t.Logf("errors after %v: %v", elapsed, errs)
		if elapsed > opts.Timeout+3*time.Second {
			t.Fatalf("ranks took %v to fail (timeout %v)", elapsed, opts.Timeout)
		}
	})
}
