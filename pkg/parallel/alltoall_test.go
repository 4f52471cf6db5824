package parallel

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// refAllToAllV is the plain model of AllToAllVF32: member r's block j of
// recv is member j's block r of send.
func refAllToAllV(sends [][]float32, counts [][]int) [][]float32 {
	w := len(sends)
	off := func(r, j int) int {
		o := 0
		for i := 0; i < j; i++ {
			o += counts[r][i]
		}
		return o
	}
	out := make([][]float32, w)
	for r := range out {
		for j := 0; j < w; j++ {
			o := off(j, r)
			out[r] = append(out[r], sends[j][o:o+counts[j][r]]...)
		}
	}
	return out
}

// AllToAllVF32 matches the reference over random counts (zeros, blocks
// under and over SmallBytes, all of them in one call) for W = 1..5, several
// calls back to back, on every transport: small exchanges, the rendezvous
// of large messages, and the two mixed.
func TestAllToAllVMatchesReference(t *testing.T) {
	forTransports(t, func(t *testing.T, k transportKind) {
		rng := rand.New(rand.NewPCG(7, uint64(len(k.name))))
		for w := 1; w <= 5; w++ {
			ts := k.make(t, w, testOptions())
			cs := worldComms(t, ts, testComm) // SmallBytes 256: 64 floats
			for call := 0; call < 6; call++ {
				counts := make([][]int, w) // counts[from][to]
				for r := range counts {
					counts[r] = make([]int, w)
					for j := range counts[r] {
						switch rng.IntN(4) {
						case 0: // nothing
						case 1:
							counts[r][j] = 1 + rng.IntN(64) // small
						default:
							counts[r][j] = 65 + rng.IntN(3000) // over SmallBytes
						}
					}
				}
				if call == 0 { // all large, every pair
					for r := range counts {
						for j := range counts[r] {
							counts[r][j] = 100 + r*10 + j
						}
					}
				}
				sends := make([][]float32, w)
				for r := range sends {
					n := 0
					for _, c := range counts[r] {
						n += c
					}
					sends[r] = make([]float32, n)
					for i := range sends[r] {
						sends[r][i] = float32(rng.NormFloat64())
					}
				}
				want := refAllToAllV(sends, counts)
				got := make([][]float32, w)
				mustAll(t, onAll(w, func(r int) error {
					rc := make([]int, w)
					for j := range rc {
						rc[j] = counts[j][r]
					}
					got[r] = make([]float32, len(want[r]))
					for i := range got[r] {
						got[r][i] = float32(-1e30) // must be overwritten
					}
					return cs[r].AllToAllVF32(context.Background(), sends[r], counts[r], got[r], rc)
				}))
				for r := range got {
					for i := range got[r] {
						if got[r][i] != want[r][i] {
							t.Fatalf("W=%d call %d counts %v: rank %d [%d] = %v, want %v", w, call, counts, r, i, got[r][i], want[r][i])
						}
					}
				}
			}
		}
	})
}

// postCheck is a transport that records every message over min bytes sent
// before its receiver had posted the receive (a MemTransport underneath,
// whose mailboxes it can see).
type postCheck struct {
	*MemTransport
	min  int
	mu   *sync.Mutex
	late *[]string
}

func (p postCheck) Send(ctx context.Context, to int, tag uint64, payload []byte) error {
	if len(payload) > p.min && tag>>32 != abortSpace {
		box := p.hub.eps[to].boxes[p.rank]
		box.mu.Lock()
		posted := box.posted[tag] != nil
		box.mu.Unlock()
		if !posted {
			p.mu.Lock()
			*p.late = append(*p.late, fmt.Sprintf("%d->%d tag %#x", p.rank, to, tag))
			p.mu.Unlock()
		}
	}
	return p.MemTransport.Send(ctx, to, tag, payload)
}

// A large all-to-all sends no message before its receiver has posted the
// receive, however late the receiver comes (rendezvous): otherwise the
// message would be queued in a pooled buffer and copied again.
func TestAllToAllVWaitsForReceiver(t *testing.T) {
	const w = 4
	var mu sync.Mutex
	var late []string
	eps := NewMemTransports(w, testOptions())
	ts := make([]Transport, w)
	for r, e := range eps {
		ts[r] = postCheck{MemTransport: e, min: testComm.SmallBytes, mu: &mu, late: &late}
	}
	t.Cleanup(func() { closeAll(ts) })
	cs := worldComms(t, ts, testComm)
	const per = 1000 // floats per pair, over SmallBytes
	counts := []int{per, per, per, per}
	for call := 0; call < 3; call++ {
		mustAll(t, onAll(w, func(r int) error {
			time.Sleep(time.Duration((r+call)%w) * 20 * time.Millisecond) // arrive one after another
			send := make([]float32, w*per)
			for i := range send {
				send[i] = float32(r*w*per + i)
			}
			recv := make([]float32, w*per)
			if err := cs[r].AllToAllVF32(context.Background(), send, counts, recv, counts); err != nil {
				return err
			}
			for j := 0; j < w; j++ {
				for i := 0; i < per; i++ {
					if want := float32(j*w*per + r*per + i); recv[j*per+i] != want {
						return fmt.Errorf("rank %d: from %d [%d] = %v, want %v", r, j, i, recv[j*per+i], want)
					}
				}
			}
			return nil
		}))
	}
	if len(late) > 0 {
		t.Fatalf("%d large messages sent before their receive was posted: %v", len(late), late)
	}
}

// Counts that disagree between a pair of members fail the all-to-all on
// both sides (ErrMismatch where it is seen), never a hang or corruption;
// and a cancelled context ends an all-to-all waiting for a member that never
// comes.
func TestAllToAllVMismatchAndCancel(t *testing.T) {
	forTransports(t, func(t *testing.T, k transportKind) {
		opts := testOptions()
		opts.Timeout = 2 * time.Second
		ts := k.make(t, 2, opts)
		cs := worldComms(t, ts, testComm)
		// Member 0 sends 1000 floats to 1, which expects 900: both large.
		errs := onAll(2, func(r int) error {
			sc, rc := []int{10, 1000}, []int{10, 900}
			if r == 1 {
				sc, rc = []int{900, 10}, []int{900, 10}
			}
			send, recv := make([]float32, sc[0]+sc[1]), make([]float32, rc[0]+rc[1])
			return cs[r].AllToAllVF32(context.Background(), send, sc, recv, rc)
		})
		if errs[0] == nil || errs[1] == nil || !errors.Is(errors.Join(errs...), ErrMismatch) {
			t.Errorf("mismatched all-to-all = %v, want errors on both ranks, one ErrMismatch", errs)
		}

		ts = k.make(t, 3, opts)
		cs = worldComms(t, ts, testComm)
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		errs = onAll(2, func(r int) error { // member 2 never comes
			counts := []int{1000, 1000, 1000}
			return cs[r].AllToAllVF32(ctx, make([]float32, 3000), counts, make([]float32, 3000), counts)
		})
		for r, err := range errs {
			if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, ErrAborted) {
				t.Errorf("rank %d: %v, want the deadline or an abort", r, err)
			}
		}
		if took := time.Since(start); took > time.Second {
			t.Errorf("cancelled all-to-all took %v", took)
		}
	})
}
