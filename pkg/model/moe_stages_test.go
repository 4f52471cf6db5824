package model

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/router"
)

func randVec(rng *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.NormFloat64())
	}
	return v
}

func dot64(a, b []float32) float64 {
	var s float64
	for i := range a {
		s += float64(a[i]) * float64(b[i])
	}
	return s
}

// The dispatch and combine stages are linear maps (combine in ye and in w
// separately), so each backward must be its forward's adjoint:
// <F(x), dy> = <x, F^T(dy)>. Checked with and without capacity drops.
func TestDispatchCombineAdjoint(t *testing.T) {
	for _, tc := range []struct {
		name        string
		T, E, k, d  int
		capacity    int
		wantDropped bool
	}{
		{"dropless", 13, 4, 2, 5, 0, false},
		{"capacity drops", 13, 4, 2, 5, 3, true},
		{"top-1", 7, 3, 1, 4, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(3, uint64(tc.T)))
			idx := make([]int32, tc.T*tc.k)
			for tok := 0; tok < tc.T; tok++ {
				perm := rng.Perm(tc.E)
				for c := 0; c < tc.k; c++ {
					idx[tok*tc.k+c] = int32(perm[c])
				}
			}
			var p router.Plan
			if err := p.Build(idx, tc.T, tc.E, tc.k, tc.capacity); err != nil {
				t.Fatal(err)
			}
			if (p.Dropped > 0) != tc.wantDropped {
				t.Fatalf("dropped %d slots, want drops: %v", p.Dropped, tc.wantDropped)
			}
			S, d, k := p.Slots(), tc.d, tc.k

			x, dxe := randVec(rng, tc.T*d), randVec(rng, S*d)
			xe, dx := make([]float32, S*d), make([]float32, tc.T*d)
			dispatchForward(&p, x, xe, d)
			dispatchBackward(&p, dxe, dx, d)
			checkAdjoint(t, "dispatch", dot64(xe, dxe), dot64(x, dx))

			ye, w, dy := randVec(rng, S*d), randVec(rng, tc.T*k), randVec(rng, tc.T*d)
			y, dye, dw := make([]float32, tc.T*d), make([]float32, S*d), make([]float32, tc.T*k)
			combineForward(&p, w, ye, y, d, k)
			combineBackward(&p, w, ye, dy, dye, dw, d, k)
			checkAdjoint(t, "combine in ye", dot64(y, dy), dot64(ye, dye))
			checkAdjoint(t, "combine in w", dot64(y, dy), dot64(w, dw))
			for tok := 0; tok < tc.T; tok++ {
				for c := 0; c < k; c++ {
					if !p.Kept(tok, c) && dw[tok*k+c] != 0 {
						t.Fatalf("dropped choice (%d,%d) has weight gradient %g", tok, c, dw[tok*k+c])
					}
				}
			}
		})
	}
}

func checkAdjoint(t *testing.T, what string, fwd, bwd float64) {
	t.Helper()
	if math.Abs(fwd-bwd) > 1e-4*(1+math.Abs(fwd)) {
		t.Fatalf("%s: <F(x), dy> = %g but <x, F^T(dy)> = %g", what, fwd, bwd)
	}
}
