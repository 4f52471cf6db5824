package train

import (
	"context"
	"math"

	"github.com/switchyard-ml/switchyard/pkg/data"
	"github.com/switchyard-ml/switchyard/pkg/model"
)

// Eval is one pass over the validation split.
type Eval struct {
	BitsPerByte []float64 // per domain: mean NLL / ln 2 (one token is one byte)
	Tokens      []int64   // per domain: valid tokens scored
	Stats       *model.ExpertStats
}

// Evaluate scores up to Data.EvalSeqs validation sequences of every domain
// and records expert selections per domain.
func (t *Trainer) Evaluate(ctx context.Context) (*Eval, error) {
	nd := len(t.Corpus.Domains)
	ev := &Eval{BitsPerByte: make([]float64, nd), Tokens: make([]int64, nd)}
	pr := t.Model.Eval
	pr.Stats.Reset()
	b := pr.Batch
	S := b.S
	var queue []int
	for dom := 0; dom < nd; dom++ {
		seqs := t.Corpus.ValSeqs(dom)
		if n := t.Cfg.Data.EvalSeqs; n > 0 && len(seqs) > n {
			seqs = seqs[:n]
		}
		queue = append(queue, seqs...)
	}
	nll := make([]float64, nd)
	for i := 0; i < len(queue); i += b.B {
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
		out, err := t.Model.Forward()
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
	for dom := range nll {
		if ev.Tokens[dom] > 0 {
			ev.BitsPerByte[dom] = nll[dom] / float64(ev.Tokens[dom]) / math.Ln2
		}
	}
	ev.Stats = pr.Stats
	return ev, nil
}
