package lbl

// Shapes: idxTK [T][k], probsTE/logitsTE/dLogitsTE [T][E], validT [T]
// (nil = all valid), countsE/pE/fE [E]. Sequences: T = B*S, sequence-major.

import (
	"fmt"
	"math"
)

// Float is the element type of probabilities, logits and their gradients:
// float32 in training, float64 in reference computations and tests.
type Float interface{ ~float32 | ~float64 }

// Counts overwrites countsE with the number of valid tokens whose top-k
// (idxTK) contains each expert. Padding tokens never count.
func Counts(idxTK []int32, T, E, k int, validT []bool, countsE []float64) {
	checkTEK("Counts", T, E, k)
	need(len(idxTK), T*k, "Counts", "idxTK")
	need(len(countsE), E, "Counts", "countsE")
	checkValid("Counts", validT, T)
	clear(countsE[:E])
	for t := 0; t < T; t++ {
		if validT != nil && !validT[t] {
			continue
		}
		for _, e := range idxTK[t*k : (t+1)*k] {
			if e < 0 || int(e) >= E {
				panic(fmt.Sprintf("lbl: Counts: idxTK[%d] = %d outside 0..%d", t, e, E-1))
			}
			countsE[e]++
		}
	}
}

// ValidTokens returns the number of valid tokens among T.
func ValidTokens(T int, validT []bool) int {
	if validT == nil {
		return T
	}
	n := 0
	for _, v := range validT[:T] {
		if v {
			n++
		}
	}
	return n
}

// MeanProbs overwrites pE with the mean over valid tokens of probsTE
// (zeros when no token is valid).
func MeanProbs[F Float](probsTE []F, T, E int, validT []bool, pE []float64) {
	checkTE("MeanProbs", T, E)
	need(len(probsTE), T*E, "MeanProbs", "probsTE")
	need(len(pE), E, "MeanProbs", "pE")
	checkValid("MeanProbs", validT, T)
	clear(pE[:E])
	n := 0
	for t := 0; t < T; t++ {
		if validT != nil && !validT[t] {
			continue
		}
		n++
		for e, p := range probsTE[t*E : (t+1)*E] {
			pE[e] += float64(p)
		}
	}
	if n == 0 {
		return
	}
	inv := 1 / float64(n)
	for e := range pE[:E] {
		pE[e] *= inv
	}
}

// LossFromCounts writes f_e = countsE[e] / (k*tokens) into fE (len E =
// len(countsE)) and returns LBL = E * sum_e f_e * pE[e]. tokens is the number
// of valid tokens the counts were taken over; with tokens <= 0, f and the
// loss are zero.
func LossFromCounts(countsE []float64, tokens float64, k int, pE, fE []float64) float64 {
	E := len(countsE)
	need(len(pE), E, "LossFromCounts", "pE")
	need(len(fE), E, "LossFromCounts", "fE")
	if tokens <= 0 {
		clear(fE[:E])
		return 0
	}
	inv := 1 / (float64(k) * tokens)
	var s float64
	for e, c := range countsE {
		fE[e] = c * inv
		s += fE[e] * pE[e]
	}
	return float64(E) * s
}

// AddGrad ADDS scale * d(E * sum_i f_i p_i)/d(logits) into dLogitsTE, where
// p is the mean over the valid tokens of probsTE = softmax(logits) and fE is
// a constant. For valid token t and expert j the term is
//
//	scale * (E/Tvalid) * P[t][j] * (f_j - sum_i f_i P[t][i]);
//
// padding tokens get nothing. Because the gradient is linear in f, several
// LBL terms over the same probabilities can be added with one call by
// passing the coefficient-weighted sum of their f vectors.
func AddGrad[F Float](probsTE []F, T, E int, validT []bool, fE []float64, scale float64, dLogitsTE []F) {
	checkTE("AddGrad", T, E)
	need(len(probsTE), T*E, "AddGrad", "probsTE")
	need(len(fE), E, "AddGrad", "fE")
	need(len(dLogitsTE), T*E, "AddGrad", "dLogitsTE")
	checkValid("AddGrad", validT, T)
	n := ValidTokens(T, validT)
	if n == 0 || scale == 0 {
		return
	}
	c := scale * float64(E) / float64(n)
	for t := 0; t < T; t++ {
		if validT != nil && !validT[t] {
			continue
		}
		addTokenGrad(probsTE[t*E:(t+1)*E], fE[:E], c, dLogitsTE[t*E:(t+1)*E])
	}
}

// addTokenGrad adds c * P_j * (f_j - sum_i f_i P_i) for one token.
func addTokenGrad[F Float](pE []F, fE []float64, c float64, dE []F) {
	var dot float64
	for i, p := range pE {
		dot += fE[i] * float64(p)
	}
	for j, p := range pE {
		dE[j] += F(c * float64(p) * (fE[j] - dot))
	}
}

// SeqLoss returns the sequence-level LBL of a micro-batch of T = B*S tokens
// (sequence-major): for each sequence b with at least one valid token, f_b
// and p_b are computed over its valid tokens as in the micro-batch LBL, and
// the loss is the mean over those sequences of E * sum_i f_bi p_bi. countsE,
// fE and pE are scratch of length E.
func SeqLoss[F Float](probsTE []F, idxTK []int32, T, S, E, k int, validT []bool, countsE, fE, pE []float64) float64 {
	checkSeq("SeqLoss", T, S)
	var sum float64
	nseq := 0
	for b := 0; b < T/S; b++ {
		v := seqValid(validT, b, S)
		nv := ValidTokens(S, v)
		if nv == 0 {
			continue
		}
		nseq++
		Counts(idxTK[b*S*k:(b+1)*S*k], S, E, k, v, countsE)
		MeanProbs(probsTE[b*S*E:(b+1)*S*E], S, E, v, pE)
		sum += LossFromCounts(countsE[:E], float64(nv), k, pE, fE)
	}
	if nseq == 0 {
		return 0
	}
	return sum / float64(nseq)
}

// AddSeqGrad ADDS scale * d(SeqLoss)/d(logits) into dLogitsTE: for a valid
// token t of sequence b, scale * (1/B') * (E/S_b) * P[t][j] *
// (f_bj - sum_i f_bi P[t][i]), with B' the sequences that have a valid token
// and S_b the valid tokens of sequence b. countsE and fE are scratch of
// length E.
func AddSeqGrad[F Float](probsTE []F, idxTK []int32, T, S, E, k int, validT []bool, scale float64, dLogitsTE []F, countsE, fE []float64) {
	checkSeq("AddSeqGrad", T, S)
	need(len(dLogitsTE), T*E, "AddSeqGrad", "dLogitsTE")
	B := T / S
	nseq := 0
	for b := 0; b < B; b++ {
		if ValidTokens(S, seqValid(validT, b, S)) > 0 {
			nseq++
		}
	}
	if nseq == 0 || scale == 0 {
		return
	}
	for b := 0; b < B; b++ {
		v := seqValid(validT, b, S)
		nv := ValidTokens(S, v)
		if nv == 0 {
			continue
		}
		Counts(idxTK[b*S*k:(b+1)*S*k], S, E, k, v, countsE)
		inv := 1 / (float64(k) * float64(nv))
		for e := range fE[:E] {
			fE[e] = countsE[e] * inv
		}
		AddGrad(probsTE[b*S*E:(b+1)*S*E], S, E, v, fE, scale/float64(nseq), dLogitsTE[b*S*E:(b+1)*S*E])
	}
}

// ZLoss returns the router z-loss: the mean over valid tokens of
// logsumexp(logits[t][:])^2 (zero when no token is valid).
func ZLoss[F Float](logitsTE []F, T, E int, validT []bool) float64 {
	checkTE("ZLoss", T, E)
	need(len(logitsTE), T*E, "ZLoss", "logitsTE")
	checkValid("ZLoss", validT, T)
	var sum float64
	n := 0
	for t := 0; t < T; t++ {
		if validT != nil && !validT[t] {
			continue
		}
		n++
		lse, _ := logSumExp(logitsTE[t*E : (t+1)*E])
		sum += lse * lse
	}
	if n == 0 {
		return 0
	}
	return sum / float64(n)
}

// AddZGrad ADDS scale * d(ZLoss)/d(logits) into dLogitsTE: for a valid token,
// scale * (2/Tvalid) * lse_t * softmax(logits[t])[j].
func AddZGrad[F Float](logitsTE []F, T, E int, validT []bool, scale float64, dLogitsTE []F) {
	checkTE("AddZGrad", T, E)
	need(len(logitsTE), T*E, "AddZGrad", "logitsTE")
	need(len(dLogitsTE), T*E, "AddZGrad", "dLogitsTE")
	checkValid("AddZGrad", validT, T)
	n := ValidTokens(T, validT)
	if n == 0 || scale == 0 {
		return
	}
	c := 2 * scale / float64(n)
	for t := 0; t < T; t++ {
		if validT != nil && !validT[t] {
			continue
		}
		row := logitsTE[t*E : (t+1)*E]
		lse, _ := logSumExp(row)
		d := dLogitsTE[t*E : (t+1)*E]
		for j, z := range row {
			d[j] += F(c * lse * math.Exp(float64(z)-lse))
		}
	}
}

// logSumExp returns log(sum_j exp(z_j)) computed stably, and max_j z_j.
func logSumExp[F Float](zE []F) (lse, maxZ float64) {
	maxZ = math.Inf(-1)
	for _, z := range zE {
		maxZ = math.Max(maxZ, float64(z))
	}
	var s float64
	for _, z := range zE {
		s += math.Exp(float64(z) - maxZ)
	}
	return maxZ + math.Log(s), maxZ
}

func seqValid(validT []bool, b, S int) []bool {
	if validT == nil {
		return nil
	}
	return validT[b*S : (b+1)*S]
}

func checkTE(fn string, T, E int) {
	if T < 0 || E <= 0 {
		panic(fmt.Sprintf("lbl: %s: need T >= 0 and E > 0, got T=%d E=%d", fn, T, E))
	}
}

func checkTEK(fn string, T, E, k int) {
	if T < 0 || E <= 0 || k <= 0 || k > E {
		panic(fmt.Sprintf("lbl: %s: need T >= 0 and 1 <= k <= E, got T=%d E=%d k=%d", fn, T, E, k))
	}
}

func checkSeq(fn string, T, S int) {
	if S <= 0 || T%S != 0 {
		panic(fmt.Sprintf("lbl: %s: sequence length S=%d must be positive and divide T=%d", fn, S, T))
	}
}

func checkValid(fn string, validT []bool, T int) {
	if validT != nil {
		need(len(validT), T, fn, "validT")
	}
}

func need(have, want int, fn, name string) {
	if have < want {
		panic(fmt.Sprintf("lbl: %s: %s has %d elements, need %d", fn, name, have, want))
	}
}
