package router

// Shapes: scoresTE [T][E], biasE [E] (optional), idxTK [T][k].

import (
	"fmt"
	"math"
)

// TopK writes into idxTK, for every token t, the k experts with the largest
// scoresTE[t][e] + biasE[e], in decreasing order of that value. biasE may be
// nil; it only influences which experts are selected, never any weight.
// Ties go to the lower expert index; NaN ranks below every number.
// TopK does not allocate.
func TopK(scoresTE []float32, T, E, k int, biasE []float32, idxTK []int32) {
	checkTEK("TopK", T, E, k)
	need(len(scoresTE), T*E, "TopK", "scoresTE")
	need(len(idxTK), T*k, "TopK", "idxTK")
	if biasE != nil {
		need(len(biasE), E, "TopK", "biasE")
	}
	for t := 0; t < T; t++ {
		row := scoresTE[t*E : (t+1)*E]
		out := idxTK[t*k : (t+1)*k]
		n := 0            // experts held in out, sorted best first
		var worst float32 // score of out[k-1] once n == k
		for e := 0; e < E; e++ {
			v := selectionScore(row, biasE, e)
			if n == k && !(v > worst) {
				continue // not strictly better than the worst kept: ties keep the lower index
			}
			j := n
			if n < k {
				n++
			} else {
				j = k - 1
			}
			// Shift strictly worse experts down; an equal earlier expert stays ahead.
			for j > 0 && v > selectionScore(row, biasE, int(out[j-1])) {
				out[j] = out[j-1]
				j--
			}
			out[j] = int32(e)
			if n == k {
				worst = selectionScore(row, biasE, int(out[k-1]))
			}
		}
	}
}

// selectionScore is the value TopK ranks by, with NaN mapped to -Inf so the
// order is total.
func selectionScore(row, biasE []float32, e int) float32 {
	v := row[e]
	if biasE != nil {
		v += biasE[e]
	}
	if v != v {
		return float32(math.Inf(-1))
	}
	return v
}

func checkTEK(fn string, T, E, k int) {
	if T < 0 || E <= 0 || k <= 0 || k > E {
		panic(fmt.Sprintf("router: %s: need T >= 0 and 1 <= k <= E, got T=%d E=%d k=%d", fn, T, E, k))
	}
}

func need(have, want int, fn, name string) {
	if have < want {
		panic(fmt.Sprintf("router: %s: %s has %d elements, need %d", fn, name, have, want))
	}
}
