package kernels

import "unsafe"

// kernGeneric is the portable 4x4 micro-kernel.
func kernGeneric(k int, a, b, c *float32, ldc int, alpha, beta float32) {
	pa := unsafe.Slice(a, 4*k)
	pb := unsafe.Slice(b, 4*k)
	var c00, c01, c02, c03, c10, c11, c12, c13 float32
	var c20, c21, c22, c23, c30, c31, c32, c33 float32
	for p := 0; p < k; p++ {
		av := pa[4*p : 4*p+4 : 4*p+4]
		bv := pb[4*p : 4*p+4 : 4*p+4]
		a0, a1, a2, a3 := av[0], av[1], av[2], av[3]
		b0, b1, b2, b3 := bv[0], bv[1], bv[2], bv[3]
		c00 += a0 * b0
		c01 += a0 * b1
		c02 += a0 * b2
		c03 += a0 * b3
		c10 += a1 * b0
		c11 += a1 * b1
		c12 += a1 * b2
		c13 += a1 * b3
		c20 += a2 * b0
		c21 += a2 * b1
		c22 += a2 * b2
		c23 += a2 * b3
		c30 += a3 * b0
		c31 += a3 * b1
		c32 += a3 * b2
		c33 += a3 * b3
	}
	t := [16]float32{c00, c01, c02, c03, c10, c11, c12, c13, c20, c21, c22, c23, c30, c31, c32, c33}
	cs := unsafe.Slice(c, 3*ldc+4)
	for i := 0; i < 4; i++ {
		row := cs[i*ldc : i*ldc+4]
		for j := range row {
			if beta == 0 {
				row[j] = alpha * t[i*4+j]
			} else {
				row[j] = alpha*t[i*4+j] + beta*row[j]
			}
		}
	}
}
