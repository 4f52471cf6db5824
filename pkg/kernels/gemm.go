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
	"sync/atomic"
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

var wsPool = sync.Pool{New: func() any { return new(workspace) }}

// grow sizes the buffers for an m x n x k problem (at most one block).
func (w *workspace) grow(t *tuning, m, n, k int) {
	kc := min(t.kc, k)
	na := roundUp(min(t.mc, m), t.mr) * kc
	nb := roundUp(min(t.nc, n), t.nr) * kc
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

// parallel runs one problem on p goroutines (the caller and p-1 pool
// workers). For each (nc, kc) block of B the participants pack B's panels
// into one shared buffer, then take (row block x column chunk) units of C
// from a shared counter, each packing its own A block. Taking units
// dynamically keeps both cores busy when one of them is slowed down (these
// VMs share their cores), and B is packed once, not once per core.
func (f *Fast) parallel(g gemmArgs, p int) {
	t := &f.t
	w := wsPool.Get().(*workspace)
	w.grow(t, g.m, g.n, g.k)
	sh := parPool.Get().(*parShared)
	sh.f, sh.g = f, g
	// Row blocks: at most mc, at least ~4 units per participant.
	sh.mb = max(t.mr, min(t.mc, roundUp((g.m+4*p-1)/(4*p), t.mr)))
	rowBlocks := (g.m + sh.mb - 1) / sh.mb
	for jc := 0; jc < g.n; jc += t.nc {
		nb := min(t.nc, g.n-jc)
		panels := (nb + t.nr - 1) / t.nr
		// Column chunks (in panels) when there are too few row blocks.
		chunks := min(panels, max(1, (4*p+rowBlocks-1)/rowBlocks))
		for pc := 0; pc < g.k; pc += t.kc {
			sh.jc, sh.pc, sh.nb, sh.kb = jc, pc, nb, min(t.kc, g.k-pc)
			sh.beta = g.beta
			if pc > 0 {
				sh.beta = 1
			}
			sh.b = w.b
			sh.panels, sh.rowBlocks, sh.chunks = int32(panels), int32(rowBlocks), int32(chunks)
			sh.panelsPerChunk = (panels + chunks - 1) / chunks
			sh.nextB.Store(0)
			sh.doneB.Store(0)
			sh.nextU.Store(0)
			j := getJob()
			j.begin(p - 1)
			for i := 1; i < p; i++ {
				submit(task{f: f, sh: sh, job: j})
			}
			sh.work(w)
			j.wait()
			putJob(j)
		}
	}
	sh.f, sh.g, sh.b = nil, gemmArgs{}, nil
	parPool.Put(sh)
	wsPool.Put(w)
}

// parShared is the state of one parallel block, shared by its participants.
type parShared struct {
	f                   *Fast
	g                   gemmArgs
	b                   []float32 // packed B of the block
	jc, pc, nb, kb, mb  int
	beta                float32
	panels, rowBlocks   int32
	chunks              int32
	panelsPerChunk      int
	nextB, doneB, nextU atomic.Int32
}

var parPool = sync.Pool{New: func() any { return new(parShared) }}

// work is one participant's share: pack B panels until none is left, wait
// for the others' panels, then compute units until none is left. w must
// have A and tile buffers for this problem.
func (sh *parShared) work(w *workspace) {
	t, g := &sh.f.t, &sh.g
	kb := sh.kb
	for {
		i := sh.nextB.Add(1) - 1
		if i >= sh.panels {
			break
		}
		c0 := int(i) * t.nr
		packBPanel(sh.b[c0*kb:c0*kb+t.nr*kb], g.transB, g.b, g.ldb, sh.pc, sh.jc+c0, kb, min(t.nr, sh.nb-c0), t.nr)
		sh.doneB.Add(1)
	}
	for sh.doneB.Load() < sh.panels {
		runtime.Gosched()
	}
	lastRow := -1
	for {
		u := sh.nextU.Add(1) - 1
		if u >= sh.rowBlocks*sh.chunks {
			return
		}
		rb, ch := int(u/sh.chunks), int(u%sh.chunks)
		ic := rb * sh.mb
		mb := min(sh.mb, g.m-ic)
		if rb != lastRow {
			packA(w.a, g.transA, g.a, g.lda, ic, sh.pc, mb, kb, t.mr)
			lastRow = rb
		}
		p0 := ch * sh.panelsPerChunk
		if p0 >= int(sh.panels) {
			continue
		}
		j0 := p0 * t.nr
		nb := min(sh.panelsPerChunk*t.nr, sh.nb-j0)
		sh.f.macro(w, sh.b[j0*kb:], mb, nb, kb, g.alpha, sh.beta, g.c[ic*g.ldc+sh.jc+j0:], g.ldc)
	}
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
	w.grow(&f.t, g.m, g.n, g.k)
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
