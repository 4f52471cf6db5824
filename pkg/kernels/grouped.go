package kernels

// Grouped SGEMM: many independent problems of different m (tokens per
// expert) solved in one call. The cores split the total work, not each
// problem, so small experts are not padded and no core idles.
//
// Scheduling: the problems are cut into units (a whole problem, or a block
// of its rows or of its columns when one problem is a large share of the
// call). Each participant (the caller and p-1 pool workers) starts on its
// own contiguous run of units, balanced by work, so that consecutive
// problems sharing an operand (x W1, x W3) stay on one core's caches; when
// its run is done it takes the units still unclaimed in the other runs.
// Claims are one atomic add, nothing spins, and a participant that the OS
// has not scheduled yet simply finds nothing left: the caller returns as
// soon as every unit is done, without waiting for late workers.

import (
	"runtime"
	"sync/atomic"
)

// Gemm is one problem of a grouped call:
// C (M x N) = Alpha * op(A) (M x K) * op(B) (K x N) + Beta * C, row-major.
//
// With K2 > 0 a second product is added in the same problem (one unit of
// work, C updated while it is still in cache):
// C = Alpha * (op(A) op(B) + op(A2) (M x K2) * op(B2) (K2 x N)) + Beta * C,
// A2 and B2 transposed like A and B.
type Gemm struct {
	TransA, TransB bool
	M, N, K        int
	Alpha          float32
	A              []float32
	Lda            int
	B              []float32
	Ldb            int
	Beta           float32
	C              []float32
	Ldc            int

	K2   int
	A2   []float32
	Lda2 int
	B2   []float32
	Ldb2 int

	// Pre and Post, when set, are element-wise SwiGLUs over rows of
	// Row elements, run for the rows of each block of C just before
	// (Pre: producing rows of A, say) and just after (Post: consuming
	// rows of C) the block is computed, while they are in cache. The
	// problem is then only ever cut by rows, so each row's op runs once.
	Pre, Post *SwiGLUOp
}

func (g *Gemm) args() gemmArgs {
	return gemmArgs{g.TransA, g.TransB, g.M, g.N, g.K, g.Alpha, g.A, g.Lda, g.B, g.Ldb, g.Beta, g.C, g.Ldc}
}

// args2 is the second product (beta 1: it adds to the first's result).
func (g *Gemm) args2() gemmArgs {
	return gemmArgs{g.TransA, g.TransB, g.M, g.N, g.K2, g.Alpha, g.A2, g.Lda2, g.B2, g.Ldb2, 1, g.C, g.Ldc}
}

// check panics on a bad shape or short slice (see gemmArgs.check).
func (g *Gemm) check() {
	a := g.args()
	a.check()
	if g.K2 < 0 {
		panic("kernels: sgemm: negative dimension")
	}
	if g.K2 > 0 {
		a2 := g.args2()
		a2.check()
	}
}

// run computes rows [r0, r1) and columns [c0, c1) of the problem (all
// columns when Pre or Post is set).
func (g *Gemm) run(f *Fast, r0, r1, c0, c1 int) {
	if g.Pre != nil {
		g.Pre.rows(r0, r1)
	}
	f.run(g.args().sub(r0, r1, c0, c1))
	if g.K2 > 0 {
		f.run(g.args2().sub(r0, r1, c0, c1))
	}
	if g.Post != nil {
		g.Post.rows(r0, r1)
	}
}

// sub is the block rows [r0, r1) x columns [c0, c1) of the problem.
func (a gemmArgs) sub(r0, r1, c0, c1 int) gemmArgs {
	a.m, a.n = r1-r0, c1-c0
	if a.k > 0 && a.alpha != 0 {
		if a.transA {
			a.a = a.a[r0:]
		} else {
			a.a = a.a[r0*a.lda:]
		}
		if a.transB {
			a.b = a.b[c0*a.ldb:]
		} else {
			a.b = a.b[c0:]
		}
	}
	a.c = a.c[r0*a.ldc+c0:]
	return a
}

// cost is the work of the problem in multiply-adds (at least 1 per element
// so that k == 0 problems still get their C scaled).
func (g *Gemm) cost() int64 { return int64(g.M) * int64(g.N) * int64(max(g.K, 1)+max(g.K2, 0)) }

// GroupedSgemm solves every problem in groups with the default BLAS: in
// parallel over the whole list when it is a *Fast, one by one otherwise.
func GroupedSgemm(groups []Gemm) {
	if f, ok := Default().(*Fast); ok {
		f.GroupedSgemm(groups)
		return
	}
	b := Default()
	for i := range groups {
		g := &groups[i]
		if g.M <= 0 || g.N <= 0 {
			continue
		}
		if g.Pre != nil {
			g.Pre.rows(0, g.M)
		}
		b.Sgemm(g.TransA, g.TransB, g.M, g.N, g.K, g.Alpha, g.A, g.Lda, g.B, g.Ldb, g.Beta, g.C, g.Ldc)
		if g.K2 > 0 {
			b.Sgemm(g.TransA, g.TransB, g.M, g.N, g.K2, g.Alpha, g.A2, g.Lda2, g.B2, g.Ldb2, 1, g.C, g.Ldc)
		}
		if g.Post != nil {
			g.Post.rows(0, g.M)
		}
	}
}

// unit is a block of one problem: rows [r0, r1) and columns [c0, c1) of C.
type unit struct {
	g              int32
	r0, r1, c0, c1 int32
	cost           int64
}

// gjob is the shared state of one parallel grouped call. It is recycled by
// whichever participant drops the last reference.
type gjob struct {
	f      *Fast
	groups []Gemm     // a grouped GEMM, or
	swiglu []SwiGLUOp // a grouped SwiGLU (units are element ranges)
	units  []unit
	np     int
	// Participant i owns units [lo[i], hi[i]); next[i] is the next one
	// to claim there.
	lo, hi [maxWorkers + 1]int32
	next   [maxWorkers + 1]paddedInt32
	left   atomic.Int32 // units not finished
	refs   atomic.Int32 // participants still holding the job
	done   chan struct{}
}

type paddedInt32 struct {
	atomic.Int32
	_ [60]byte
}

// gjobFree keeps jobs (and their unit lists) across garbage collections.
var gjobFree = make(chan *gjob, 4*(maxWorkers+1))

func getGJob() *gjob {
	select {
	case j := <-gjobFree:
		return j
	default:
		return &gjob{done: make(chan struct{}, 1)}
	}
}

func (j *gjob) release() {
	if j.refs.Add(-1) != 0 {
		return
	}
	j.f, j.groups, j.swiglu = nil, nil, nil
	select {
	case gjobFree <- j:
	default:
	}
}

// GroupedSgemm solves every problem in groups. The problems must not write
// overlapping parts of C.
func (f *Fast) GroupedSgemm(groups []Gemm) {
	var total int64
	for i := range groups {
		g := &groups[i]
		if g.M <= 0 || g.N <= 0 {
			continue
		}
		g.check()
		for _, o := range [2]*SwiGLUOp{g.Pre, g.Post} {
			if o != nil {
				if o.Row <= 0 {
					panic("kernels: grouped sgemm: SwiGLU row width not set")
				}
				o.check(g.M * o.Row)
			}
		}
		total += g.cost()
	}
	if total == 0 {
		return
	}
	p := min(runtime.GOMAXPROCS(0), maxWorkers+1)
	if total < int64(f.minParallel) || p <= 1 {
		for i := range groups {
			g := &groups[i]
			if g.M > 0 && g.N > 0 {
				g.run(f, 0, g.M, 0, g.N)
			}
		}
		return
	}
	j := getGJob()
	j.f, j.groups, j.np = f, groups, p
	j.units = f.makeUnits(j.units[:0], groups, total, p)
	j.start(total)
}

// start partitions the units over the participants, runs them and returns
// when all are done.
func (j *gjob) start(total int64) {
	j.partition(total)
	if j.np <= 1 {
		// One unit only: no help needed.
		for i := range j.units {
			j.runUnit(&j.units[i])
		}
		j.refs.Store(1)
		j.release()
		return
	}
	j.left.Store(int32(len(j.units)))
	j.refs.Store(int32(j.np))
	for i := 1; i < j.np; i++ {
		submit(task{gj: j, part: i})
	}
	if !j.work(0) {
		<-j.done
	}
	j.release()
}

// unitsPerCore sets the largest unit to 1/(unitsPerCore*p) of the call:
// small enough that the last unit of a phase leaves the other cores little
// idle time when the experts are uneven, large enough that split problems
// re-pack little (an equal-sized expert layer is not split at all).
const unitsPerCore = 8

// makeUnits cuts the problems into units: a problem larger than
// 1/(unitsPerCore*p) of the total is split (along its longer side, so that
// the operand each unit packs again is the smaller one) into blocks of
// whole micro-tiles.
func (f *Fast) makeUnits(us []unit, groups []Gemm, total int64, p int) []unit {
	mr, nr := f.t.mr, f.t.nr
	for i := range groups {
		g := &groups[i]
		if g.M <= 0 || g.N <= 0 {
			continue
		}
		c := g.cost()
		s := int((c*int64(unitsPerCore*p) + total - 1) / total)
		if g.M >= g.N || g.Pre != nil || g.Post != nil {
			step := roundUp((g.M+s-1)/s, mr)
			for r := 0; r < g.M; r += step {
				r1 := min(r+step, g.M)
				us = append(us, unit{g: int32(i), r0: int32(r), r1: int32(r1), c1: int32(g.N), cost: c * int64(r1-r) / int64(g.M)})
			}
		} else {
			step := roundUp((g.N+s-1)/s, nr)
			for cc := 0; cc < g.N; cc += step {
				c1 := min(cc+step, g.N)
				us = append(us, unit{g: int32(i), r1: int32(g.M), c0: int32(cc), c1: int32(c1), cost: c * int64(c1-cc) / int64(g.N)})
			}
		}
	}
	return us
}

// partition gives participant i the units whose work midpoint falls in
// [total*i/np, total*(i+1)/np); participants left without units are dropped.
func (j *gjob) partition(total int64) {
	np := min(j.np, len(j.units))
	var off int64
	u := 0
	parts := 0
	for i := 0; i < np; i++ {
		lo := u
		end := total * int64(i+1) / int64(np)
		for u < len(j.units) && (i == np-1 || off+j.units[u].cost/2 < end) {
			off += j.units[u].cost
			u++
		}
		if u > lo {
			j.lo[parts], j.hi[parts] = int32(lo), int32(u)
			j.next[parts].Store(int32(lo))
			parts++
		}
	}
	j.np = parts
}

// work runs participant i: its own units, then any left in the others'.
// It reports whether this participant finished the last unit.
func (j *gjob) work(i int) bool {
	last := false
	for k := 0; k < j.np; k++ {
		q := (i + k) % j.np
		for {
			u := j.next[q].Add(1) - 1
			if u >= j.hi[q] {
				break
			}
			j.runUnit(&j.units[u])
			if j.left.Add(-1) == 0 {
				last = true
			}
		}
	}
	return last
}

// runUnit computes one unit single-threaded.
func (j *gjob) runUnit(u *unit) {
	if j.swiglu != nil {
		j.swiglu[u.g].run(int(u.r0), int(u.r1))
		return
	}
	j.groups[u.g].run(j.f, int(u.r0), int(u.r1), int(u.c0), int(u.c1))
}

// SwiGLUOp is one element-wise SwiGLU of a grouped call. Forward
// (Backward false): H = silu(A) * B, len(H) elements. Backward: DA, DB =
// the gradients through H = silu(A) * B given DH, len(DH) elements.
type SwiGLUOp struct {
	Backward            bool
	H, A, B, DA, DB, DH []float32
	Row                 int // elements per row, for Gemm.Pre and Post
}

// rows runs the op on rows [r0, r1) of Row elements.
func (o *SwiGLUOp) rows(r0, r1 int) {
	if r1 > r0 && o.Row > 0 {
		o.run(r0*o.Row, r1*o.Row)
	}
}

// check panics when a slice is shorter than n elements.
func (o *SwiGLUOp) check(n int) {
	if n <= 0 {
		return
	}
	if o.Backward {
		_, _, _, _, _ = o.DA[:n], o.DB[:n], o.DH[:n], o.A[:n], o.B[:n]
	} else {
		_, _, _ = o.H[:n], o.A[:n], o.B[:n]
	}
}

func (o *SwiGLUOp) len() int {
	if o.Backward {
		return len(o.DH)
	}
	return len(o.H)
}

func (o *SwiGLUOp) run(lo, hi int) {
	if o.Backward {
		SwiGLUBackward(o.DA[lo:hi], o.DB[lo:hi], o.DH[lo:hi], o.A[lo:hi], o.B[lo:hi])
	} else {
		SwiGLU(o.H[lo:hi], o.A[lo:hi], o.B[lo:hi])
	}
}

// swigluChunk is the element count of one unit of a grouped SwiGLU, and
// swigluMinParallel the total under which it stays on the caller.
const (
	swigluChunk       = 1 << 15
	swigluMinParallel = 1 << 16
)

// GroupedSwiGLU runs every op, split over the cores.
func GroupedSwiGLU(ops []SwiGLUOp) {
	var total int64
	for i := range ops {
		o := &ops[i]
		n := o.len()
		if o.Backward {
			_, _, _, _ = o.DA[:n], o.DB[:n], o.A[:n], o.B[:n]
		} else {
			_, _ = o.A[:n], o.B[:n]
		}
		total += int64(n)
	}
	p := min(runtime.GOMAXPROCS(0), maxWorkers+1)
	if total < swigluMinParallel || p <= 1 || total >= 1<<31 {
		for i := range ops {
			ops[i].run(0, ops[i].len())
		}
		return
	}
	j := getGJob()
	j.swiglu, j.np = ops, p
	us := j.units[:0]
	for i := range ops {
		n := ops[i].len()
		for lo := 0; lo < n; lo += swigluChunk {
			hi := min(lo+swigluChunk, n)
			us = append(us, unit{g: int32(i), r0: int32(lo), r1: int32(hi), cost: int64(hi - lo)})
		}
	}
	j.units = us
	j.start(total)
}
