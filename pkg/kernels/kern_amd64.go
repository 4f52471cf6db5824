//go:build amd64 && !purego

package kernels

const hasAsm = true

// sgemmKern12x32AVX512 is the AVX-512 12x32 micro-kernel (see microKernel).
//
//go:noescape
func sgemmKern12x32AVX512(k int, a, b, c *float32, ldc int, alpha, beta float32)

// sgemmKern6x16AVX2 is the AVX2+FMA 6x16 micro-kernel (see microKernel).
//
//go:noescape
func sgemmKern6x16AVX2(k int, a, b, c *float32, ldc int, alpha, beta float32)

var (
	kernAVX512 microKernel = sgemmKern12x32AVX512
	kernAVX2   microKernel = sgemmKern6x16AVX2
)

// packGatherAVX512: for p in [0, k), dst[p*w+r] = src[idx[r]+p] for rows r
// in rowMask (zero for the others); w lanes are stored as given by the low
// run of bits in storeMask. Callers check the bounds.
//
//go:noescape
func packGatherAVX512(dst, src *float32, idx *[32]int32, k int, rowMask, storeMask uint32)

// packStrided packs rows strided rows of src (row stride ld, kb values
// each) transposed into dst: dst[p*w + r] = src[r*ld + p], zero-padding
// rows..w-1. It reports false when it cannot (the caller falls back).
func packStrided(dst, src []float32, ld, kb, rows, w int) bool {
	if path != pathAVX512 || w > 32 || 31*ld >= 1<<31-1 || kb == 0 {
		return false
	}
	// Bounds: the last row read ends at (rows-1)*ld + kb.
	_ = src[(rows-1)*ld+kb-1]
	_ = dst[kb*w-1]
	p0 := 0
	if rows == w && (w == 12 || w == 16 || w == 32) && kb >= 16 {
		// Full panels: 16x16 in-register transposes for whole blocks
		// of 16 p, the gather below for the rest.
		nb := kb / 16
		for r0 := 0; r0 < rows; r0 += 16 {
			rr := min(16, rows-r0)
			packT16AVX512(&dst[r0], &src[r0*ld], ld, nb, w, rr, uint32(1)<<rr-1)
		}
		p0 = nb * 16
		if p0 == kb {
			return true
		}
	}
	var idx [32]int32
	for r := 0; r < rows; r++ {
		idx[r] = int32(r * ld)
	}
	packGatherAVX512(&dst[p0*w], &src[p0], &idx, kb-p0, uint32(1)<<rows-1, uint32(uint64(1)<<w-1))
	return true
}

// packT16AVX512: for p in [0, 16*nblk), dst[p*w+r] = src[r*ld+p] for r
// below rows (12 or 16), zero up to 16, storing the lanes in mask.
// Callers check the bounds.
//
//go:noescape
func packT16AVX512(dst, src *float32, ld, nblk, w, rows int, mask uint32)

// packRowsAVX512: dst[p*w+c] = src[p*ld+c] for columns in mask, zero for
// the others below w (w <= 16 or w == 32). Callers check the bounds.
//
//go:noescape
func packRowsAVX512(dst, src *float32, ld, k int, mask uint32, w int)

// packContig packs kb rows of cols contiguous values (row stride ld) into
// dst with row width w, zero-padding columns cols..w-1. It reports false
// when it cannot (the caller falls back).
func packContig(dst, src []float32, ld, kb, cols, w int) bool {
	if path != pathAVX512 || !(w <= 16 || w == 32) || kb == 0 {
		return false
	}
	_ = src[(kb-1)*ld+cols-1]
	_ = dst[kb*w-1]
	packRowsAVX512(&dst[0], &src[0], ld, kb, uint32(uint64(1)<<cols-1), w)
	return true
}

// packRowsMultiAVX512: np full panels of w columns at once, reading the
// source rows in order. Callers check the bounds.
//
//go:noescape
func packRowsMultiAVX512(dst, src *float32, ld, k, w, np, pstride int)

// packContigPanels packs np full panels of w contiguous columns each (row
// stride ld, kb rows) into dst, panel q at q*kb*w. It reports false when
// it cannot (the caller falls back to one panel at a time).
func packContigPanels(dst, src []float32, ld, kb, w, np int) bool {
	if path != pathAVX512 || !(w <= 16 || w == 32) || kb == 0 || np == 0 {
		return false
	}
	_ = src[(kb-1)*ld+np*w-1]
	_ = dst[np*kb*w-1]
	packRowsMultiAVX512(&dst[0], &src[0], ld, kb, w, np, kb*w)
	return true
}
