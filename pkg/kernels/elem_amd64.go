//go:build amd64 && !purego

package kernels

// AVX-512F element-wise kernels (elem_amd64.s). n is the element count;
// callers check that every slice holds n values.

//go:noescape
func dotAVX512(a, b *float32, n int) float32

//go:noescape
func sumSqAVX512(x *float32, n int) float32

//go:noescape
func dot3AVX512(x, y, z *float32, n int) float32

//go:noescape
func maxAVX512(x *float32, n int) float32

//go:noescape
func axpyAVX512(alpha float32, x, y *float32, n int)

//go:noescape
func scaleAVX512(alpha float32, x *float32, n int)

//go:noescape
func mulScaleAVX512(y, x, gain *float32, s float32, n int)

//go:noescape
func rmsBwdAVX512(dx, dg, dy, x, gain *float32, rs, c float32, n int)

//go:noescape
func expSubSumAVX512(x *float32, mx float32, n int) float32

//go:noescape
func swigluAVX512(h, a, b *float32, n int)

//go:noescape
func swigluBwdAVX512(da, db, dh, a, b *float32, n int)

//go:noescape
func ropeAVX512(v1, v2, c, s *float32, sign float32, n int)

//go:noescape
func adamwAVX512(p, grad, m, v *float32, n int, k *[9]float32)
