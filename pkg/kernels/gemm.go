package kernels

// Fast SGEMM: packed panels, cache blocking and a register-blocked
// micro-kernel (Go assembly on amd64), partitioned over cores.
//
// Shapes: C (m x n) = alpha * op(A) (m x k) * op(B) (k x n) + beta * C.
// Packed A: panels of mr rows, element (r, p) of a panel at p*mr + r.
// Packed B: panels of nr columns, element (p, c) of a panel at p*nr + c.
// Panels past the matrix edge are zero-padded; edge tiles of C are computed
// into a scratch tile and merged with alpha/beta in Go.

import (
	"runtime"
	"sync"
)

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
	// minParallel is the flop count (m*n*k) under which a call stays on the
	// calling goroutine.
	minParallel int
}

// NewFast returns the SGEMM for the active code path (see Name).
func NewFast() *Fast {
	return &Fast{t: tuningFor(path), minParallel: 48 * 48 * 48}
}

func tuningFor(p int) tuning {
	switch p {
	case pathAVX512:
		return tuning{mr: 12, nr: 32, kc: 256, mc: 288, nc: 4096, kern: kernAVX512}
	case pathAVX2:
		return tuning{mr: 6, nr: 16, kc: 256, mc: 144, nc: 4096, kern: kernAVX2}
	}
	return tuning{mr: 4, nr: 4, kc: 256, mc: 128, nc: 1024, kern: kernGeneric}
}

// workspace is the per-goroutine packing scratch.
type workspace struct {
	a, b []float32
	tile []float32
}

var wsPool = sync.Pool{New: func() any { return new(workspace) }}

func (w *workspace) grow(t *tuning) {
	na := roundUp(t.mc, t.mr) * t.kc
	nb := roundUp(t.nc, t.nr) * t.kc
	if cap(w.a) < na {
		w.a = make([]float32, na)
	}
	if cap(w.b) < nb {
		w.b = make([]float32, nb)
	}
	if cap(w.tile) < t.mr*t.nr {
		w.tile = make([]float32, t.mr*t.nr)
	}
	w.a, w.b, w.tile = w.a[:na], w.b[:nb], w.tile[:t.mr*t.nr]
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

// parallel splits C into p blocks of rows (or columns when m is small) and
// runs one on the calling goroutine and the rest on the worker pool.
func (f *Fast) parallel(g gemmArgs, p int) {
	var buf [maxWorkers + 1]gemmArgs
	parts := buf[:0]
	// Each part packs all of the other operand: split the larger of m and n
	// so that the duplicated packing is the smaller one.
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
	for _, s := range parts[1:] {
		j.wg.Add(1)
		submit(task{f: f, g: s, job: j})
	}
	f.run(parts[0])
	j.wg.Wait()
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
	w := wsPool.Get().(*workspace)
	w.grow(&f.t)
	f.blocked(w, g)
	wsPool.Put(w)
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
				f.macro(w, mb, nb, kb, g.alpha, beta, g.c[ic*g.ldc+jc:], g.ldc)
			}
		}
	}
}

// macro runs the micro-kernel over an mb x nb block of C from packed panels.
func (f *Fast) macro(w *workspace, mb, nb, kb int, alpha, beta float32, c []float32, ldc int) {
	t := &f.t
	mr, nr := t.mr, t.nr
	for jr := 0; jr < nb; jr += nr {
		pb := &w.b[jr*kb]
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
	for r0 := 0; r0 < mb; r0 += mr {
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
	for c0 := 0; c0 < nb; c0 += nr {
		d := dst[c0*kb : c0*kb+nr*kb]
		cols := min(nr, nb-c0)
		if !trans {
			if packContig(d, b[pc*ldb+jc+c0:], ldb, kb, cols, nr) {
				continue
			}
			for p := 0; p < kb; p++ {
				src := b[(pc+p)*ldb+jc+c0:]
				dp := d[p*nr : p*nr+nr]
				copy(dp, src[:cols])
				clear(dp[cols:])
			}
			continue
		}
		// op(B)(p, j) = b[j*ldb + p].
		if packStrided(d, b[(jc+c0)*ldb+pc:], ldb, kb, cols, nr) {
			continue
		}
		if cols < nr {
			clear(d)
		}
		for cc := 0; cc < cols; cc++ {
			src := b[(jc+c0+cc)*ldb+pc:]
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
