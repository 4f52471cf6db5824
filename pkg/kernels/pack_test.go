package kernels

import (
	"math/rand/v2"
	"testing"
)

// TestPackStrided checks the transposing pack (16x16 in-register
// transposes plus the gather tail) against a plain loop for every panel
// width, full and partial panels and k around the 16-block edges.
func TestPackStrided(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 9))
	for _, w := range []int{12, 16, 32} {
		for _, rows := range []int{w, w - 1, 1} {
			for _, kb := range []int{1, 15, 16, 17, 32, 47, 100} {
				for _, pad := range []int{0, 3} {
					ld := kb + pad
					src := randSlice(r, (rows-1)*ld+kb)
					dst := randSlice(r, kb*w)
					if !packStrided(dst, src, ld, kb, rows, w) {
						t.Skip("no vector pack on this path")
					}
					for p := 0; p < kb; p++ {
						for c := 0; c < w; c++ {
							want := float32(0)
							if c < rows {
								want = src[c*ld+p]
							}
							if got := dst[p*w+c]; got != want {
								t.Fatalf("w %d rows %d kb %d ld %d: dst[%d,%d] = %g want %g", w, rows, kb, ld, p, c, got, want)
							}
						}
					}
				}
			}
		}
	}
}
