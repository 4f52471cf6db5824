package kernels

// Fast SGEMM: packed panels, cache blocking and a register-blocked
// micro-kernel (Go assembly on amd64), partitioned over cores.
//
// Shapes: C (m x n) = alpha * op(A) (m x k) * op(B) (k x n) + beta * C.
// Packed A: panels of mr rows, element (r, p) of a panel at p*mr + r.
// Packed B: panels of nr columns, element (p, c) of a panel at p*nr + c.
// Panels past the matrix edge are zero-padded; edge tiles of C are computed
// into a scratch tile and merged with alpha/beta in Go.

import "runtime"

// microKernel computes the mr x nr tile t = sum_p Apanel[:,p] * Bpanel[p,:]
// over k steps and stores c = alpha*t (beta == 0, C not read) or
// c = alpha*t + beta*c. c has row stride ldc (in elements).
type microKernel func(k int, a, b, c *float32, ldc int, alpha, beta float32)

// tuning holds the blocking of one code path.
type tuning struct {
	mr, nr     int
	kc, mc, nc int
	kern       microKernel
}

// Fast is the production BLAS. The zero value is not usable; use NewFast.
// It is safe for concurrent use: scratch buffers come from a pool and the
// worker goroutines are shared.
type Fast struct {
	t tuning
	// minParallel is the multiply-add count (m*n*k) under which a call
	// stays on the calling goroutine: 160^3 takes ~50 us on one core, and
	// handing half of it to a parked worker costs ~4-20 us here
	// (BenchmarkHandoff).
	minParallel int
}

// NewFast returns the SGEMM for the active code path (see Name).
func NewFast() *Fast {
	return &Fast{t: tuningFor(path), minParallel: 160 * 160 * 160}
}

func tuningFor(p int) tuning {
	switch p {
	case pathAVX512:
		return tuning{mr: 12, nr: 32, kc: 1024, mc: 96, nc: 2048, kern: kernAVX512}
	case pathAVX2:
		return tuning{mr: 6, nr: 16, kc: 512, mc: 96, nc: 2048, kern: kernAVX2}
	}
	return tuning{mr: 4, nr: 4, kc: 256, mc: 128, nc: 1024, kern: kernGeneric}
}

// workspace is the per-goroutine packing scratch.
type workspace struct {
	a, b []float32
	tile []float32
}

// Workspaces are kept on a free list that the GC does not empty (a
// sync.Pool would drop the multi-megabyte panels at every collection and
// the next step would fault them in again).
var wsFree = make(chan *workspace, 4*(maxWorkers+1))

func getWorkspace() *workspace {
	select {
	case w := <-wsFree:
		return w
	default:
		return new(workspace)
	}
}

func putWorkspace(w *workspace) {
	select {
	case wsFree <- w:
	default:
	}
}

// grow sizes the buffers for an m x n x k problem (at most one block).
func (w *workspace) grow(t *tuning, m, n, k int) {
	kc := min(t.kc, k)
	w.growA(t, m, k)
	nb := roundUp(min(t.nc, n), t.nr) * kc
	if cap(w.b) < nb {
		w.b = make([]float32, nb)
	}
	w.b = w.b[:nb]
}

// growA sizes the A block and the edge tile only.
func (w *workspace) growA(t *tuning, m, k int) {
	kc := min(t.kc, k)
	na := roundUp(min(t.mc, m), t.mr) * kc
	if cap(w.a) < na {
		w.a = make([]float32, na)
	}
	if cap(w.tile) < t.mr*t.nr {
		w.tile = make([]float32, t.mr*t.nr)
	}
	w.a, w.tile = w.a[:na], w.tile[:t.mr*t.nr]
}

func roundUp(x, m int) int { return (x + m - 1) / m * m }

// gemmArgs is one SGEMM problem, passed by value to workers.
type gemmArgs struct {
	transA, transB bool
	m, n, k        int
	alpha          float32
	a              []float32
	lda            int
	b              []float32
	ldb            int
	beta           float32
	c              []float32
	ldc            int
}

// Sgemm implements BLAS.
func (f *Fast) Sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	g := gemmArgs{transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc}
	if m <= 0 || n <= 0 {
		return
	}
	g.check()
	p := f.threads(m, n, k)
	if p <= 1 {
		f.run(g)
		return
	}
	f.parallel(g, p)
}

func (f *Fast) threads(m, n, k int) int {
	if m*n*k < f.minParallel {
		return 1
	}
	p := min(runtime.GOMAXPROCS(0), maxWorkers+1)
	// Each part must get at least a couple of tiles.
	if m < 2*f.t.mr*p && n < 2*f.t.nr*p {
		return 1
	}
	return p
}

// parallel splits C into p blocks of rows (or of columns) and runs one on
// the calling goroutine and the rest on the worker pool. Each block packs
// all of the other operand, so the split is along the larger of m and n:
// the duplicated packing is then the smaller operand's.
//
// A dynamic split (shared packed B, row blocks taken from a counter) was
// measured slower here: its barrier after packing B spins, and on these
// shared 2-vCPU machines a spinning participant takes the CPU time its
// partner needs.
func (f *Fast) parallel(g gemmArgs, p int) {
	var buf [maxWorkers + 1]gemmArgs
	parts := buf[:0]
	splitM := g.m >= 2*f.t.mr*p && (g.m >= g.n || g.n < 2*f.t.nr*p)
	if splitM {
		step := roundUp((g.m+p-1)/p, f.t.mr)
		for i0 := 0; i0 < g.m; i0 += step {
			s := g
			s.m = min(step, g.m-i0)
			if g.k > 0 && g.alpha != 0 {
				if g.transA {
					s.a = g.a[i0:]
				} else {
					s.a = g.a[i0*g.lda:]
				}
			}
			s.c = g.c[i0*g.ldc:]
			parts = append(parts, s)
		}
	} else {
		step := roundUp((g.n+p-1)/p, f.t.nr)
		for j0 := 0; j0 < g.n; j0 += step {
			s := g
			s.n = min(step, g.n-j0)
			if g.k > 0 && g.alpha != 0 {
				if g.transB {
					s.b = g.b[j0*g.ldb:]
				} else {
					s.b = g.b[j0:]
				}
			}
			s.c = g.c[j0:]
			parts = append(parts, s)
		}
	}
	j := getJob()
	j.begin(len(parts) - 1)
	for _, s := range parts[1:] {
		submit(task{f: f, g: s, job: j})
	}
	f.run(parts[0])
	j.wait()
	putJob(j)
}

// run computes one problem single-threaded.
func (f *Fast) run(g gemmArgs) {
	if g.m <= 0 || g.n <= 0 {
		return
	}
	if g.k <= 0 || g.alpha == 0 {
		scaleC(g.m, g.n, g.beta, g.c, g.ldc)
		return
	}
	w := getWorkspace()
	w.grow(&f.t, g.m, g.n, g.k)
	f.blocked(w, g)
	putWorkspace(w)
}

// scaleC sets C = beta*C (C = 0 without reading it when beta == 0).
func scaleC(m, n int, beta float32, c []float32, ldc int) {
	for i := 0; i < m; i++ {
		row := c[i*ldc : i*ldc+n]
		if beta == 0 {
			clear(row)
		} else if beta != 1 {
			Scale(beta, row)
		}
	}
}

func (f *Fast) blocked(w *workspace, g gemmArgs) {
	t := &f.t
	for jc := 0; jc < g.n; jc += t.nc {
		nb := min(t.nc, g.n-jc)
		for pc := 0; pc < g.k; pc += t.kc {
			kb := min(t.kc, g.k-pc)
			packB(w.b, g.transB, g.b, g.ldb, pc, jc, kb, nb, t.nr)
			beta := g.beta
			if pc > 0 {
				beta = 1
			}
			for ic := 0; ic < g.m; ic += t.mc {
				mb := min(t.mc, g.m-ic)
				packA(w.a, g.transA, g.a, g.lda, ic, pc, mb, kb, t.mr)
				f.macro(w, w.b, mb, nb, kb, g.alpha, beta, g.c[ic*g.ldc+jc:], g.ldc)
			}
		}
	}
}

// macro runs the micro-kernel over an mb x nb block of C from packed panels.
// pb holds the packed panels of the nb columns, w.a the packed A block.
func (f *Fast) macro(w *workspace, pb []float32, mb, nb, kb int, alpha, beta float32, c []float32, ldc int) {
	t := &f.t
	mr, nr := t.mr, t.nr
	for jr := 0; jr < nb; jr += nr {
		pb := &pb[jr*kb]
		nn := min(nr, nb-jr)
		for ir := 0; ir < mb; ir += mr {
			pa := &w.a[ir*kb]
			mm := min(mr, mb-ir)
			if mm == mr && nn == nr {
				t.kern(kb, pa, pb, &c[ir*ldc+jr], ldc, alpha, beta)
				continue
			}
			t.kern(kb, pa, pb, &w.tile[0], nr, 1, 0)
			mergeTile(w.tile, nr, mm, nn, alpha, beta, c[ir*ldc+jr:], ldc)
		}
	}
}

// mergeTile writes c = alpha*tile + beta*c for the valid mm x nn corner.
func mergeTile(tile []float32, ldt, mm, nn int, alpha, beta float32, c []float32, ldc int) {
	for i := 0; i < mm; i++ {
		tr := tile[i*ldt : i*ldt+nn]
		cr := c[i*ldc : i*ldc+nn]
		if beta == 0 {
			for j, v := range tr {
				cr[j] = alpha * v
			}
		} else {
			for j, v := range tr {
				cr[j] = alpha*v + beta*cr[j]
			}
		}
	}
}

// packA packs op(A)[ic:ic+mb, pc:pc+kb] into panels of mr rows.
func packA(dst []float32, trans bool, a []float32, lda, ic, pc, mb, kb, mr int) {
	start := 0
	if trans && packContigPanels(dst, a[pc*lda+ic:], lda, kb, mr, mb/mr) {
		// All full panels at once, reading A's rows in order.
		start = mb / mr * mr
	}
	for r0 := start; r0 < mb; r0 += mr {
		d := dst[r0*kb : r0*kb+mr*kb]
		rows := min(mr, mb-r0)
		if trans {
			// op(A)(i, p) = a[p*lda + i]: each p is a contiguous run of rows.
			if packContig(d, a[pc*lda+ic+r0:], lda, kb, rows, mr) {
				continue
			}
			for p := 0; p < kb; p++ {
				src := a[(pc+p)*lda+ic+r0:]
				dp := d[p*mr : p*mr+mr]
				copy(dp, src[:rows])
				clear(dp[rows:])
			}
			continue
		}
		if packStrided(d, a[(ic+r0)*lda+pc:], lda, kb, rows, mr) {
			continue
		}
		if rows < mr {
			clear(d)
		}
		for r := 0; r < rows; r++ {
			src := a[(ic+r0+r)*lda+pc:]
			src = src[:kb]
			for p, v := range src {
				d[p*mr+r] = v
			}
		}
	}
}

// packB packs op(B)[pc:pc+kb, jc:jc+nb] into panels of nr columns.
func packB(dst []float32, trans bool, b []float32, ldb, pc, jc, kb, nb, nr int) {
	start := 0
	if !trans && packContigPanels(dst, b[pc*ldb+jc:], ldb, kb, nr, nb/nr) {
		start = nb / nr * nr
	}
	for c0 := start; c0 < nb; c0 += nr {
		packBPanel(dst[c0*kb:c0*kb+nr*kb], trans, b, ldb, pc, jc+c0, kb, min(nr, nb-c0), nr)
	}
}

// packBPanel packs op(B)[pc:pc+kb, j0:j0+cols] as one panel of nr columns.
func packBPanel(d []float32, trans bool, b []float32, ldb, pc, j0, kb, cols, nr int) {
	{
		if !trans {
			if packContig(d, b[pc*ldb+j0:], ldb, kb, cols, nr) {
				return
			}
			for p := 0; p < kb; p++ {
				src := b[(pc+p)*ldb+j0:]
				dp := d[p*nr : p*nr+nr]
				copy(dp, src[:cols])
				clear(dp[cols:])
			}
			return
		}
		// op(B)(p, j) = b[j*ldb + p].
		if packStrided(d, b[j0*ldb+pc:], ldb, kb, cols, nr) {
			return
		}
		if cols < nr {
			clear(d)
		}
		for cc := 0; cc < cols; cc++ {
			src := b[(j0+cc)*ldb+pc:]
			src = src[:kb]
			for p, v := range src {
				d[p*nr+cc] = v
			}
		}
	}
}

// check panics when a slice is too short for its shape and stride: the
// assembly kernels write C without bounds checks.
func (g *gemmArgs) check() {
	need := func(name string, s []float32, rows, cols, ld int) {
		if rows <= 0 || cols <= 0 {
			return
		}
		if ld < cols {
			panic("kernels: sgemm: " + name + " stride smaller than row length")
		}
		if len(s) < (rows-1)*ld+cols {
			panic("kernels: sgemm: " + name + " slice too short")
		}
	}
	if g.m < 0 || g.n < 0 || g.k < 0 {
		panic("kernels: sgemm: negative dimension")
	}
	need("C", g.c, g.m, g.n, g.ldc)
	if g.k == 0 || g.alpha == 0 {
		return
	}
	if g.transA {
		need("A", g.a, g.k, g.m, g.lda)
	} else {
		need("A", g.a, g.m, g.k, g.lda)
	}
	if g.transB {
		need("B", g.b, g.n, g.k, g.ldb)
	} else {
		need("B", g.b, g.k, g.n, g.ldb)
	}
}
