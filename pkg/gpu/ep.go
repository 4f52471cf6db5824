package gpu

// Expert parallelism on the device, as pkg/model does it on the CPU:
// every rank routes its own tokens; the kept slots (grouped by expert by
// the dispatch plan, so by owner) go to the ranks that own their experts
// in one all-to-all-v of device rows, the owners run their El = E/P
// experts over the rows of every source, and a second all-to-all-v brings
// the outputs back into slot order. Backward mirrors it: slot output
// gradients out, slot input gradients back. Expert weights, their
// gradients and AdamW moments exist only on the owner.
//
// Per MoE layer and micro-batch the host exchanges the per-(peer, local
// expert) row counts (the EP group's transport; the plan's offsets are on
// the host already) and uploads two permutations: rows arrive
// source-major ([source][local expert][rows]) and the experts' grouped
// GEMMs need them expert-major ([local expert][source][rows]), so the
// weight gradients of one expert are one GEMM. Both reorderings are the
// row gather kernel (moe_gather) with perm (expert-major row i is
// received row perm[i]) or inv (received row j is expert-major row
// inv[j]).
//
// The rows travel as float32 words whatever the act type (bf16 rows of
// even width are d/2 words), so the collectives move bits, not values.

import (
	"context"
	"fmt"

	"github.com/switchyard-ml/switchyard/pkg/cuda"
	"github.com/switchyard-ml/switchyard/pkg/devcomm"
	"github.com/switchyard-ml/switchyard/pkg/model"
	"github.com/switchyard-ml/switchyard/pkg/router"
)

// ExpertGroup is expert parallelism for the GPU engine: the group over
// which every MoE layer's routed experts are split (expert e lives on
// rank e*Size()/E, as in pkg/model).
type ExpertGroup struct {
	// Counts exchanges the per-expert row counts on the host (the group's
	// transport).
	Counts model.ExpertExchange
	// Rows exchanges the expert rows on device buffers (the same group).
	Rows devcomm.Comm
}

// epState is the expert-parallel plan of a Model.
type epState struct {
	g         *ExpertGroup
	P, El, lo int
	rmax      int // rows a rank can receive in one layer
	elCounts  []int
	cntSend   []float32 // [P][El] rows this rank sends per (peer, expert)
	cntRecv   []float32 // [P][El] rows received
	layers    []epLayer // per MoE layer
	perm, inv []int32   // host scratch [rmax]
}

// epLayer is one MoE layer's exchange in the current micro-batch (the
// backward reuses the forward's).
type epLayer struct {
	sendW, recvW []int   // float32 words per peer
	offL         []int32 // [El+1] local expert row offsets, expert-major
	R            int     // rows received
}

// epRows is the most rows a rank receives in one layer: every source's
// kept slots of its experts, at most P*T*k, and with a capacity at most
// capacity rows per (source, expert), E*capacity in all.
func epRows(cfg model.Config, T, P int) int {
	n := P * T * cfg.TopK
	if cfg.CapacityFactor > 0 {
		n = min(n, cfg.Experts*router.Capacity(T, cfg.Experts, cfg.TopK, cfg.CapacityFactor))
	}
	return n
}

func newEPState(g *ExpertGroup, cfg model.Config, T, moeLayers int) (*epState, error) {
	P, r := g.Counts.Size(), g.Counts.Rank()
	if g.Rows == nil || g.Rows.Size() != P || g.Rows.Rank() != r {
		return nil, fmt.Errorf("%w: expert parallelism: the row and count exchanges must be over the same group", ErrConfig)
	}
	if cfg.Experts%P != 0 {
		return nil, fmt.Errorf("%w: experts = %d: expert parallelism over %d ranks needs a multiple of %d", ErrConfig, cfg.Experts, P, P)
	}
	s := &epState{g: g, P: P, El: cfg.Experts / P, lo: r * cfg.Experts / P, rmax: epRows(cfg, T, P)}
	s.elCounts = make([]int, P)
	for i := range s.elCounts {
		s.elCounts[i] = s.El
	}
	s.cntSend, s.cntRecv = make([]float32, P*s.El), make([]float32, P*s.El)
	s.perm, s.inv = make([]int32, s.rmax), make([]int32, s.rmax)
	s.layers = make([]epLayer, moeLayers)
	for i := range s.layers {
		s.layers[i] = epLayer{sendW: make([]int, P), recvW: make([]int, P), offL: make([]int32, s.El+1)}
	}
	return s, nil
}

// words is the float32 words of n rows of d act elements.
func (m *Model) words(n int) int { return n * m.Cfg.Dim * int(m.actSize()) / 4 }

// epDispatch plans layer mi's exchange from the plan's slot offsets off,
// sends the slot rows (L.xe) to their experts' owners and leaves the rows
// this rank's experts run, expert-major, in L.xl. A rank that fails here
// (counts no plan could give) leaves its peers waiting in the row
// exchange until the transport's timeout, or devcomm.NCCLTimeout.
func (m *Model) epDispatch(ctx context.Context, mi int, L *layerBufs, off []int32) error {
	s := m.ep
	P, El, d := s.P, s.El, m.Cfg.Dim
	pl := &s.layers[mi]
	for p := 0; p < P; p++ {
		elo, ehi := p*El, (p+1)*El
		pl.sendW[p] = m.words(int(off[ehi] - off[elo]))
		for e := elo; e < ehi; e++ {
			s.cntSend[p*El+e-elo] = float32(off[e+1] - off[e])
		}
	}
	if err := s.g.Counts.AllToAllVF32(ctx, s.cntSend, s.elCounts, s.cntRecv, s.elCounts); err != nil {
		return fmt.Errorf("gpu: expert count exchange: %w", err)
	}
	R := 0
	base := make([]int, P) // source-major start of each source's rows
	for p := 0; p < P; p++ {
		base[p] = R
		n := 0
		for e := 0; e < El; e++ {
			c := s.cntRecv[p*El+e]
			if c < 0 || c != float32(int(c)) {
				return fmt.Errorf("gpu: expert parallelism: rank %d announced %v rows for expert %d", p, c, s.lo+e)
			}
			n += int(c)
		}
		pl.recvW[p] = m.words(n)
		R += n
	}
	if R > s.rmax {
		return fmt.Errorf("gpu: expert parallelism: %d rows announced for this rank's experts, more than the %d possible", R, s.rmax)
	}
	pl.R = R
	i := 0
	for e := 0; e < El; e++ {
		pl.offL[e] = int32(i)
		for p := 0; p < P; p++ {
			start := base[p]
			for e2 := 0; e2 < e; e2++ {
				start += int(s.cntRecv[p*El+e2])
			}
			for r := 0; r < int(s.cntRecv[p*El+e]); r++ {
				s.perm[i] = int32(start + r)
				s.inv[start+r] = int32(i)
				i++
			}
		}
	}
	pl.offL[El] = int32(i)
	if err := upload(m.dev, L.perm, s.perm[:R]); err != nil {
		return err
	}
	if err := upload(m.dev, L.inv, s.inv[:R]); err != nil {
		return err
	}
	if err := s.g.Rows.AllToAllV(ctx, L.xe, pl.sendW, m.buf.epA, pl.recvW); err != nil {
		return fmt.Errorf("gpu: expert dispatch: %w", err)
	}
	return m.k.moeGather(L.xl, m.buf.epA, L.perm, R, d)
}

// epReturn sends rows computed expert-major (src, R rows) back to their
// sources, into slot order at dst.
func (m *Model) epReturn(ctx context.Context, mi int, L *layerBufs, src, dst cuda.DevPtr, what string) error {
	pl := &m.ep.layers[mi]
	if err := m.k.moeGather(m.buf.epB, src, L.inv, pl.R, m.Cfg.Dim); err != nil {
		return err
	}
	if err := m.ep.g.Rows.AllToAllV(ctx, m.buf.epB, pl.recvW, dst, pl.sendW); err != nil {
		return fmt.Errorf("gpu: %s: %w", what, err)
	}
	return nil
}

// epGradDispatch sends the slot output gradients (m.buf.dye) to the
// experts' owners and leaves them expert-major in m.buf.epB.
func (m *Model) epGradDispatch(ctx context.Context, mi int, L *layerBufs) error {
	pl := &m.ep.layers[mi]
	if err := m.ep.g.Rows.AllToAllV(ctx, m.buf.dye, pl.sendW, m.buf.epA, pl.recvW); err != nil {
		return fmt.Errorf("gpu: expert gradient dispatch: %w", err)
	}
	return m.k.moeGather(m.buf.epB, m.buf.epA, L.perm, pl.R, m.Cfg.Dim)
}

// expertRows is where a layer's experts find their rows: the slots
// themselves, or with expert parallelism the rows received.
type expertRows struct {
	x    cuda.DevPtr // act [rows][d] inputs (L.xe, or L.xl)
	off  []int32     // [n+1] row offsets of the n experts this rank runs
	n    int         // experts this rank runs
	rows int
}

func (m *Model) rowsOf(mi int, L *layerBufs) expertRows {
	if m.ep == nil {
		off := m.host.offsets[mi]
		E := m.Cfg.Experts
		return expertRows{x: L.xe, off: off, n: E, rows: int(off[E])}
	}
	pl := &m.ep.layers[mi]
	return expertRows{x: L.xl, off: pl.offL, n: m.ep.El, rows: pl.R}
}
