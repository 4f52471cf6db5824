package model

// Expert parallelism inside the MoE op. Every rank routes its own tokens;
// the kept slots (already grouped by expert, so by owner) go to the ranks
// that own their experts in one all-to-all, the owners run their experts
// over the rows of every source, and a second all-to-all brings the outputs
// back in slot order. Backward mirrors it: slot gradients out, input
// gradients back. Expert weights and their gradients exist only on the
// owner.
//
//	P ranks, El = E/P local experts, R received rows
//	xrRD   [R,d]  received rows, source-major: [source][local expert][rows]
//	xlRD   [R,d]  the same rows, expert-major: [local expert][source][rows]
//	permR  [R]    xl row i is xr row permR[i]
//	cnt    [P][El] rows per (peer, local expert) sent / received

import (
	"context"
	"fmt"
)

type epState struct {
	ex                 ExpertExchange
	P, El, lo          int
	elCounts           []int // El per peer (count exchange)
	cntSend, cntRecv   []float32
	sendCnt, recvCnt   []int // floats per peer (rows*d)
	sendRows, recvRows []int
	permR              []int32
	offL               []int32 // [El+1] local expert row offsets in xl
	R                  int
	xr, xl, yl, yr     []float32
	dyr, dyl, dxl, dxr []float32
	act, scratch       ffnAct
}

func newEPState(ex ExpertExchange, T, E, k, d, h int) *epState {
	P := ex.Size()
	s := &epState{ex: ex, P: P, El: E / P, lo: ex.Rank() * E / P}
	maxRows := P * T * k
	s.elCounts = make([]int, P)
	for i := range s.elCounts {
		s.elCounts[i] = s.El
	}
	s.cntSend = make([]float32, P*s.El)
	s.cntRecv = make([]float32, P*s.El)
	s.sendCnt, s.recvCnt = make([]int, P), make([]int, P)
	s.sendRows, s.recvRows = make([]int, P), make([]int, P)
	s.permR = make([]int32, maxRows)
	s.offL = make([]int32, s.El+1)
	for _, b := range []*[]float32{&s.xr, &s.xl, &s.yl, &s.yr} {
		*b = make([]float32, maxRows*d)
	}
	s.act = newFFNAct(maxRows, h)
	return s
}

func (s *epState) allocBackward(T, k, d, h int) {
	maxRows := s.P * T * k
	for _, b := range []*[]float32{&s.dyr, &s.dyl, &s.dxl, &s.dxr} {
		*b = make([]float32, maxRows*d)
	}
	s.scratch = newFFNAct(maxRows, h)
}

// plan computes the send counts from the dispatch plan, exchanges the
// per-expert counts and derives the receive layout and permutation.
func (s *epState) plan(ctx context.Context, offsets []int32, E, d int) error {
	P, El := s.P, s.El
	for p := 0; p < P; p++ {
		elo, ehi := p*E/P, (p+1)*E/P
		s.sendRows[p] = int(offsets[ehi] - offsets[elo])
		s.sendCnt[p] = s.sendRows[p] * d
		for e := elo; e < ehi; e++ {
			s.cntSend[p*El+e-elo] = float32(offsets[e+1] - offsets[e])
		}
	}
	if err := s.ex.AllToAllVF32(ctx, s.cntSend, s.elCounts, s.cntRecv, s.elCounts); err != nil {
		return fmt.Errorf("model: expert count exchange: %w", err)
	}
	// source-major offsets of (p, e) in xr
	R := 0
	srcBase := make([]int, P)
	for p := 0; p < P; p++ {
		srcBase[p] = R
		n := 0
		for e := 0; e < El; e++ {
			n += int(s.cntRecv[p*El+e])
		}
		s.recvRows[p] = n
		s.recvCnt[p] = n * d
		R += n
	}
	if R > len(s.permR) {
		return fmt.Errorf("model: expert parallelism received %d rows, more than the %d possible", R, len(s.permR))
	}
	s.R = R
	i := 0
	for e := 0; e < El; e++ {
		s.offL[e] = int32(i)
		for p := 0; p < P; p++ {
			start := srcBase[p]
			for e2 := 0; e2 < e; e2++ {
				start += int(s.cntRecv[p*El+e2])
			}
			for r := 0; r < int(s.cntRecv[p*El+e]); r++ {
				s.permR[i] = int32(start + r)
				i++
			}
		}
	}
	s.offL[El] = int32(i)
	return nil
}

// gather copies source-major rows into expert-major order; scatter undoes it.
func (s *epState) gather(dst, src []float32, d int) {
	for i := 0; i < s.R; i++ {
		j := int(s.permR[i])
		copy(dst[i*d:(i+1)*d], src[j*d:(j+1)*d])
	}
}

func (s *epState) scatter(dst, src []float32, d int) {
	for i := 0; i < s.R; i++ {
		j := int(s.permR[i])
		copy(dst[j*d:(j+1)*d], src[i*d:(i+1)*d])
	}
}

// forwardRemote runs the experts of this rank over every source's slots and
// leaves this rank's slot outputs in o.slots.yeSD.
func (o *moeOp) forwardRemote(ctx context.Context, slots int) error {
	s, d := o.ep, o.s.d
	if err := s.plan(ctx, o.r.plan.Offsets, o.s.E, d); err != nil {
		return err
	}
	if err := s.ex.AllToAllVF32(ctx, o.slots.xeSD[:slots*d], s.sendCnt, s.xr[:s.R*d], s.recvCnt); err != nil {
		return fmt.Errorf("model: expert dispatch: %w", err)
	}
	s.gather(s.xl, s.xr, d)
	o.bindLocal(false)
	o.experts.forward(0)
	s.scatter(s.yr, s.yl, d)
	if err := s.ex.AllToAllVF32(ctx, s.yr[:s.R*d], s.recvCnt, o.slots.yeSD[:slots*d], s.sendCnt); err != nil {
		return fmt.Errorf("model: expert combine: %w", err)
	}
	return nil
}

// backwardRemote sends the slot output gradients (o.slots.dyeSD) to the owners,
// accumulates the local experts' weight gradients and leaves the slot input
// gradients in o.slots.dxeSD.
func (o *moeOp) backwardRemote(ctx context.Context, slots int) error {
	s, d := o.ep, o.s.d
	if err := s.ex.AllToAllVF32(ctx, o.slots.dyeSD[:slots*d], s.sendCnt, s.dyr[:s.R*d], s.recvCnt); err != nil {
		return fmt.Errorf("model: expert gradient dispatch: %w", err)
	}
	s.gather(s.dyl, s.dyr, d)
	o.bindLocal(true)
	o.experts.backward(0)
	s.scatter(s.dxr, s.dxl, d)
	if err := s.ex.AllToAllVF32(ctx, s.dxr[:s.R*d], s.recvCnt, o.slots.dxeSD[:slots*d], s.sendCnt); err != nil {
		return fmt.Errorf("model: expert gradient combine: %w", err)
	}
	return nil
}

// bindLocal points the local expert blocks at their expert-major rows.
func (o *moeOp) bindLocal(backward bool) {
	s, d, h := o.ep, o.s.d, o.s.h
	for e := range o.experts.blocks {
		b := &o.experts.blocks[e]
		lo, hi := int(s.offL[e]), int(s.offL[e+1])
		b.n = hi - lo
		b.x, b.y = s.xl[lo*d:hi*d], s.yl[lo*d:hi*d]
		b.act = s.act.rows(lo, hi, h)
		if backward {
			b.dy, b.dx = s.dyl[lo*d:hi*d], s.dxl[lo*d:hi*d]
			b.scratch = s.scratch.rows(lo, hi, h)
		}
	}
}
