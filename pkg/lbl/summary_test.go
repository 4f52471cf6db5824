package lbl

import (
	"context"
	"math"
	"math/rand/v2"
	"testing"
)

// applyTerms is the GradTerms formula as a backend applies it (the GPU
// engine's router_bwd kernel does the same per token).
func applyTerms(g GradTerms, probsTE, logitsTE []float32, idxTK []int32, T, S, E, k int, validT []bool, dz []float64) {
	for t := 0; t < T; t++ {
		if !validT[t] {
			continue
		}
		p := probsTE[t*E : (t+1)*E]
		b := t / S
		nv, cnt := 0, make([]float64, E)
		for s := b * S; s < (b+1)*S; s++ {
			if validT[s] {
				nv++
				for _, e := range idxTK[s*k : (s+1)*k] {
					cnt[e]++
				}
			}
		}
		var fp, gp float64
		for e := range p {
			fp += g.F[e] * float64(p[e])
			gp += cnt[e] / float64(k*nv) * float64(p[e])
		}
		lse, _ := logSumExp(logitsTE[t*E : (t+1)*E])
		for j := range p {
			a := g.C*(g.F[j]-fp) + g.SeqScale*float64(E)/float64(nv)*(cnt[j]/float64(k*nv)-gp) + g.ZC*lse
			dz[t*E+j] += float64(p[j]) * a
		}
	}
}

// TestSummaryMatchesRecord: a layer recorded as a summary gives the same
// losses as Record, and GradTerms applied by a backend gives the gradient
// Backward adds, for every term (global with the buffer, micro, sequence,
// z) and per-layer coefficients, over several micro-batches.
func TestSummaryMatchesRecord(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 2))
	const L, E, k, B, S = 2, 6, 2, 3, 5
	T := B * S
	cfg := Config{GlobalCoef: 0.01, MicroCoef: 0.003, SeqCoef: 0.002, ZCoef: 0.001, LayerCoef: []float64{1, 0.5}}
	ref, err := NewBalancer(cfg, L, E, k, Identity{})
	if err != nil {
		t.Fatal(err)
	}
	sum, _ := NewBalancer(cfg, L, E, k, Identity{})
	for mb := 0; mb < 3; mb++ {
		type layer struct {
			logits, probs []float32
			idx           []int32
		}
		valid := make([]bool, T)
		for i := range valid {
			valid[i] = rng.IntN(4) != 0
		}
		for i := 0; i < S; i++ {
			valid[i] = false // one sequence without a valid token
		}
		ls := make([]layer, L)
		for l := range ls {
			ly := &ls[l]
			ly.logits, ly.probs, ly.idx = make([]float32, T*E), make([]float32, T*E), make([]int32, T*k)
			for t2 := 0; t2 < T; t2++ {
				z := ly.logits[t2*E : (t2+1)*E]
				for e := range z {
					z[e] = float32(rng.NormFloat64())
				}
				lse, _ := logSumExp(z)
				for e := range z {
					ly.probs[t2*E+e] = float32(math.Exp(float64(z[e]) - lse))
				}
				perm := rng.Perm(E)
				for j := 0; j < k; j++ {
					ly.idx[t2*k+j] = int32(perm[j])
				}
			}
			ref.Record(l, ly.logits, ly.probs, ly.idx, T, S, valid)
			s := LayerSummary{CountsE: make([]float64, E), MeanProbE: make([]float64, E), Tokens: ValidTokens(T, valid)}
			Counts(ly.idx, T, E, k, valid, s.CountsE)
			MeanProbs(ly.probs, T, E, valid, s.MeanProbE)
			for b := 0; b < B; b++ {
				if ValidTokens(S, valid[b*S:(b+1)*S]) > 0 {
					s.Sequences++
				}
			}
			s.Seq = SeqLoss(ly.probs, ly.idx, T, S, E, k, valid, make([]float64, E), make([]float64, E), make([]float64, E))
			s.Z = ZLoss(ly.logits, T, E, valid)
			sum.RecordSummary(l, s)
		}
		ctx := context.Background()
		for l := range ls {
			want := make([]float32, T*E)
			if err := ref.Backward(ctx, l, 0.25, want); err != nil {
				t.Fatal(err)
			}
			g, err := sum.GradTerms(ctx, l, 0.25)
			if err != nil {
				t.Fatal(err)
			}
			got := make([]float64, T*E)
			applyTerms(g, ls[l].probs, ls[l].logits, ls[l].idx, T, S, E, k, valid, got)
			for i := range want {
				if math.Abs(got[i]-float64(want[i])) > 1e-9 {
					t.Fatalf("micro-batch %d layer %d: dz[%d] = %g, Backward %g", mb, l, i, got[i], want[i])
				}
			}
			if err := sum.Backward(ctx, l, 0.25, want); err == nil {
				t.Fatal("Backward of a summary layer did not fail")
			}
		}
		a, b := ref.Losses(), sum.Losses()
		if math.Abs(a.Total-b.Total) > 1e-12 {
			t.Fatalf("micro-batch %d: losses %v vs %v", mb, a, b)
		}
	}
}
