package train

import (
	"context"
	"fmt"
	"math"

	"github.com/switchyard-ml/switchyard/pkg/data"
	"github.com/switchyard-ml/switchyard/pkg/model"
	"github.com/switchyard-ml/switchyard/pkg/parallel"
)

// reduceEval sums the per-rank NLL, token counts and expert selections over
// the data-parallel group (one message).
func (t *Trainer) reduceEval(ctx context.Context, nll []float64, ev *Eval, st *model.ExpertStats) error {
	if t.Dist == nil || t.Dist.World.Size() == 1 {
		return nil
	}
	// NLL and token counts: tensor-parallel peers scored the same tokens,
	// so they are summed over DP; expert selections: each TP peer saw its
	// own token slice, so they are summed over every rank.
	v := append([]float64(nil), nll...)
	for _, n := range ev.Tokens {
		v = append(v, float64(n))
	}
	if err := t.Dist.sumDP(ctx, v); err != nil {
		return err
	}
	i := copy(nll, v)
	for d := range ev.Tokens {
		ev.Tokens[d] = int64(v[i])
		i++
	}
	v = v[:0]
	for l := range st.Counts {
		v = append(v, st.Tokens[l]...)
		for d := range st.Counts[l] {
			v = append(v, st.Counts[l][d]...)
		}
	}
	if err := t.Dist.sumAll(ctx, v); err != nil {
		return err
	}
	i = 0
	for l := range st.Counts {
		i += copy(st.Tokens[l], v[i:])
		for d := range st.Counts[l] {
			i += copy(st.Counts[l][d], v[i:])
		}
	}
	return nil
}

// Eval is one pass over the validation split.
type Eval struct {
	BitsPerByte []float64 // per domain: mean NLL / ln 2 (one token is one byte)
	Tokens      []int64   // per domain: valid tokens scored
	Stats       *model.ExpertStats
}

// Evaluate scores up to Data.EvalSeqs validation sequences of every domain
// and records expert selections per domain.
func (t *Trainer) Evaluate(ctx context.Context) (_ *Eval, err error) {
	defer t.failedIf(&err)
	nd := len(t.Corpus.Domains)
	ev := &Eval{BitsPerByte: make([]float64, nd), Tokens: make([]int64, nd)}
	stats := t.eng.evalStats()
	stats.Reset()
	b := t.eng.evalBatch()
	S := b.S
	var queue []int
	for dom := 0; dom < nd; dom++ {
		seqs := t.Corpus.ValSeqs(dom)
		if n := t.Cfg.Data.EvalSeqs; n > 0 && len(seqs) > n {
			seqs = seqs[:n]
		}
		queue = append(queue, seqs...)
	}
	// data-parallel ranks score disjoint shares and sum the results
	if dp := t.Dist.dpSize(); dp > 1 {
		mine := queue[:0:0]
		for i := t.Dist.dpRank; i < len(queue); i += dp {
			mine = append(mine, queue[i])
		}
		queue = mine
	}
	// every rank runs the same number of forward passes
	passes := (len(queue) + b.B - 1) / b.B
	nll := make([]float64, nd)
	if dp := t.Dist.dpSize(); dp > 1 {
		v := []float64{float64(passes)}
		if err := t.Dist.dp.AllReduceF64(ctx, v, parallel.Max); err != nil {
			return nil, fmt.Errorf("train: eval: %w", err)
		}
		passes = int(v[0])
	}
	for i := 0; i < passes*b.B; i += b.B {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		for j := 0; j < b.B; j++ {
			tok, tgt := b.Tokens[j*S:(j+1)*S], b.Targets[j*S:(j+1)*S]
			if i+j >= len(queue) {
				for k := range tok {
					tok[k], tgt[k] = 0, -1
				}
				b.Domain[j] = -1
				continue
			}
			_, b.Domain[j] = t.Corpus.Fill(data.Val, queue[i+j], tok, tgt)
		}
		out, err := t.eng.forward(ctx)
		if err != nil {
			return nil, err
		}
		for j := 0; j < b.B; j++ {
			dom := b.Domain[j]
			if dom < 0 {
				continue
			}
			for k := j * S; k < (j+1)*S; k++ {
				if b.Valid[k] {
					nll[dom] += float64(out[k])
					ev.Tokens[dom]++
				}
			}
		}
	}
	if err := t.reduceEval(ctx, nll, ev, stats); err != nil {
		return nil, err
	}
	for dom := range nll {
		if ev.Tokens[dom] > 0 {
			ev.BitsPerByte[dom] = nll[dom] / float64(ev.Tokens[dom]) / math.Ln2
		}
	}
	ev.Stats = stats
	return ev, nil
}
