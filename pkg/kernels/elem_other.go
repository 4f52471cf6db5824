//go:build !amd64 || purego

package kernels

// Never called: path is pathGeneric without assembly.

func dotAVX512(a, b *float32, n int) float32                          { panic("kernels: no asm") }
func sumSqAVX512(x *float32, n int) float32                           { panic("kernels: no asm") }
func dot3AVX512(x, y, z *float32, n int) float32                      { panic("kernels: no asm") }
func maxAVX512(x *float32, n int) float32                             { panic("kernels: no asm") }
func axpyAVX512(alpha float32, x, y *float32, n int)                  { panic("kernels: no asm") }
func scaleAVX512(alpha float32, x *float32, n int)                    { panic("kernels: no asm") }
func mulScaleAVX512(y, x, gain *float32, s float32, n int)            { panic("kernels: no asm") }
func rmsBwdAVX512(dx, dg, dy, x, gain *float32, rs, c float32, n int) { panic("kernels: no asm") }
func expSubSumAVX512(x *float32, mx float32, n int) float32           { panic("kernels: no asm") }
func swigluAVX512(h, a, b *float32, n int)                            { panic("kernels: no asm") }
func swigluBwdAVX512(da, db, dh, a, b *float32, n int)                { panic("kernels: no asm") }
func ropeAVX512(v1, v2, c, s *float32, sign float32, n int)           { panic("kernels: no asm") }
func adamwAVX512(p, grad, m, v *float32, n int, k *[9]float32)        { panic("kernels: no asm") }
