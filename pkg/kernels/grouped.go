package kernels

// Grouped SGEMM: many independent problems of different m (tokens per
// expert) solved in one call. The cores split the total work, not each
// problem, so small experts are not padded and no core idles.

import "runtime"

// Gemm is one problem of a grouped call:
// C (M x N) = Alpha * op(A) (M x K) * op(B) (K x N) + Beta * C, row-major.
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
}

func (g *Gemm) args() gemmArgs {
	return gemmArgs{g.TransA, g.TransB, g.M, g.N, g.K, g.Alpha, g.A, g.Lda, g.B, g.Ldb, g.Beta, g.C, g.Ldc}
}

// rowCost is the work of one row of C, in multiply-adds (at least 1 per
// element so that k == 0 problems still get their C scaled).
func (g *Gemm) rowCost() int64 { return int64(g.N) * int64(max(g.K, 1)) }

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
		b.Sgemm(g.TransA, g.TransB, g.M, g.N, g.K, g.Alpha, g.A, g.Lda, g.B, g.Ldb, g.Beta, g.C, g.Ldc)
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
		a := g.args()
		a.check()
		total += int64(g.M) * g.rowCost()
	}
	if total == 0 {
		return
	}
	p := int64(min(runtime.GOMAXPROCS(0), maxWorkers+1))
	if total < int64(f.minParallel) || p <= 1 {
		f.groupRange(groups, 0, total)
		return
	}
	j := getJob()
	j.begin(int(p - 1))
	for i := int64(1); i < p; i++ {
		submit(task{f: f, groups: groups, lo: total * i / p, hi: total * (i + 1) / p, job: j})
	}
	f.groupRange(groups, 0, total/p)
	j.wait()
	putJob(j)
}

// groupRange solves the rows of the groups whose work falls in [lo, hi).
// Row boundaries are rounded to the micro-tile height so that neighbouring
// ranges split a problem on tile edges.
func (f *Fast) groupRange(groups []Gemm, lo, hi int64) {
	var off int64
	for i := range groups {
		g := &groups[i]
		if g.M <= 0 || g.N <= 0 {
			continue
		}
		rc := g.rowCost()
		r0 := f.rowAt(g, rc, lo-off)
		r1 := f.rowAt(g, rc, hi-off)
		off += int64(g.M) * rc
		if r0 >= r1 {
			continue
		}
		a := g.args()
		a.m = r1 - r0
		if a.k > 0 && a.alpha != 0 {
			if a.transA {
				a.a = a.a[r0:]
			} else {
				a.a = a.a[r0*a.lda:]
			}
		}
		a.c = a.c[r0*a.ldc:]
		f.run(a)
	}
}

// rowAt maps a work offset inside problem g to a row boundary.
func (f *Fast) rowAt(g *Gemm, rc, x int64) int {
	if x <= 0 {
		return 0
	}
	r := (x + rc - 1) / rc
	r = int64(roundUp(int(r), f.t.mr))
	return int(min(r, int64(g.M)))
}
