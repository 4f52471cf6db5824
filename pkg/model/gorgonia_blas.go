package model

import (
	"sync"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/gonum"
	G "gorgonia.org/gorgonia"

	"github.com/switchyard-ml/switchyard/pkg/kernels"
)

// graphBLAS routes gorgonia's (and its tensor package's) float32 GEMMs to
// the engine's pluggable kernels.BLAS; the other routines stay gonum's.
type graphBLAS struct{ gonum.Implementation }

func (graphBLAS) Sgemm(tA, tB blas.Transpose, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	kernels.Default().Sgemm(tA != blas.NoTrans, tB != blas.NoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}

var useOnce sync.Once

// useEngineBLAS installs graphBLAS into gorgonia once per process.
func useEngineBLAS() { useOnce.Do(func() { G.Use(graphBLAS{}) }) }
