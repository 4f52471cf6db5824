package router

// Shapes: probsTE [T][E], idxTK [T][k], wTK [T][k], dwTK [T][k],
// dProbsTE [T][E].

// Weights writes the combine weights of the selected experts:
// wTK[t][j] = probsTE[t][idxTK[t][j]], divided by sum_j of those values
// when renormalize is true (a token whose selected probabilities sum to
// zero gets zero weights). The selection bias plays no part here.
func Weights(probsTE []float32, T, E, k int, idxTK []int32, renormalize bool, wTK []float32) {
	checkTEK("Weights", T, E, k)
	need(len(probsTE), T*E, "Weights", "probsTE")
	need(len(idxTK), T*k, "Weights", "idxTK")
	need(len(wTK), T*k, "Weights", "wTK")
	for t := 0; t < T; t++ {
		row := probsTE[t*E : (t+1)*E]
		idx := idxTK[t*k : (t+1)*k]
		w := wTK[t*k : (t+1)*k]
		var sum float64
		for j, e := range idx {
			w[j] = row[e]
			sum += float64(row[e])
		}
		if !renormalize {
			continue
		}
		if sum == 0 {
			clear(w)
			continue
		}
		for j := range w {
			w[j] = float32(float64(w[j]) / sum)
		}
	}
}

// WeightsBackward ADDS d(loss)/d(probsTE) into dProbsTE given
// dwTK = d(loss)/d(wTK), for the wTK that Weights computed from the same
// probsTE, idxTK and renormalize. Only the selected entries of each row
// receive gradient. With renormalisation, w_j = p_j / s and s = sum_l p_l, so
//
//	d loss / d p_{idx_j} = (dw_j - sum_l dw_l w_l) / s.
func WeightsBackward(probsTE []float32, T, E, k int, idxTK []int32, wTK, dwTK []float32, renormalize bool, dProbsTE []float32) {
	checkTEK("WeightsBackward", T, E, k)
	need(len(probsTE), T*E, "WeightsBackward", "probsTE")
	need(len(idxTK), T*k, "WeightsBackward", "idxTK")
	need(len(wTK), T*k, "WeightsBackward", "wTK")
	need(len(dwTK), T*k, "WeightsBackward", "dwTK")
	need(len(dProbsTE), T*E, "WeightsBackward", "dProbsTE")
	for t := 0; t < T; t++ {
		idx := idxTK[t*k : (t+1)*k]
		dw := dwTK[t*k : (t+1)*k]
		dp := dProbsTE[t*E : (t+1)*E]
		if !renormalize {
			for j, e := range idx {
				dp[e] += dw[j]
			}
			continue
		}
		row := probsTE[t*E : (t+1)*E]
		w := wTK[t*k : (t+1)*k]
		var sum, dot float64
		for j, e := range idx {
			sum += float64(row[e])
			dot += float64(dw[j]) * float64(w[j])
		}
		if sum == 0 {
			continue // Weights gave zeros here; treat the renormalisation as constant.
		}
		for j, e := range idx {
			dp[e] += float32((float64(dw[j]) - dot) / sum)
		}
	}
}
