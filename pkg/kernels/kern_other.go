//go:build !amd64 || purego

package kernels

const hasAsm = false

var (
	kernAVX512 microKernel = kernGeneric
	kernAVX2   microKernel = kernGeneric
)

func packStrided(dst, src []float32, ld, kb, rows, w int) bool { return false }

func packContig(dst, src []float32, ld, kb, cols, w int) bool { return false }

func packContigPanels(dst, src []float32, ld, kb, w, np int) bool { return false }
