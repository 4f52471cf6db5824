package train

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// DomainReport is the validation result of one domain.
type DomainReport struct {
	Domain      string  `json:"domain"`
	BitsPerByte float64 `json:"val_bits_per_byte"`
	UnigramBits float64 `json:"unigram_bits_per_byte"` // entropy of the domain's byte distribution (a no-context baseline)
	Tokens      int64   `json:"tokens"`
}

// Specialisation summarises one MoE layer on one domain's validation tokens.
type Specialisation struct {
	Layer       int       `json:"layer"` // MoE layer index
	Domain      string    `json:"domain"`
	Frequency   []float64 `json:"frequency"` // selection frequency per expert (sums to 1)
	TopExpert   int       `json:"top_expert"`
	TopShare    float64   `json:"top_share"`    // frequency of the most selected expert
	EntropyBits float64   `json:"entropy_bits"` // of Frequency; log2(E) is uniform
}

// Report is the final summary of a run.
type Report struct {
	Preset     string  `json:"preset,omitempty"`
	LBLMode    string  `json:"lbl_mode"`
	Steps      int     `json:"steps"`
	Tokens     int64   `json:"tokens"`
	Seconds    float64 `json:"seconds"`      // this run's (since a resume, if any)
	TokensPerS float64 `json:"tokens_per_s"` // this run's steps' tokens over Seconds
	// ResumedFrom is the checkpoint step this run resumed from (0: it
	// began at the first step); Tokens counts every step, Seconds and
	// TokensPerS only this run's.
	ResumedFrom  int              `json:"resumed_from_step,omitempty"`
	FinalLoss    float64          `json:"final_train_loss"`
	Domains      []DomainReport   `json:"domains"`
	Experts      []Specialisation `json:"experts"`
	GlobalLoad   [][]float64      `json:"global_load"`    // per MoE layer, share of validation selections per expert (all domains)
	MeanTopShare float64          `json:"mean_top_share"` // mean over layers and domains of TopShare
	MaxLoad      float64          `json:"max_load"`       // largest GlobalLoad share (1/E is perfectly balanced)
	// The compute: "cpu" or the GPU's name, the precision, on a GPU the
	// device memory the engine's buffers hold, and with several GPU ranks
	// how their gradients were all-reduced (devcomm's description).
	Device       string  `json:"device"`
	Precision    string  `json:"precision"`
	DeviceMemGiB float64 `json:"device_mem_gib,omitempty"`
	Collectives  string  `json:"collectives,omitempty"`
	// Stopped says why the run ended before Steps ("" : it ran them all).
	Stopped string `json:"stopped,omitempty"`
}

func entropyBits(p []float64) float64 {
	var h float64
	for _, v := range p {
		if v > 0 {
			h -= v * math.Log2(v)
		}
	}
	return h
}

func (t *Trainer) report(ev *Eval, last StepMetrics, el time.Duration) *Report {
	k := t.MCfg.TopK
	perStep := int64(t.Cfg.Accumulation * t.Cfg.MicroBatch * t.Dist.dpSize() * t.MCfg.SeqLen)
	tokens := int64(t.step) * perStep
	// the rate of this run's own steps (a resumed run's earlier steps took
	// another run's time)
	r := &Report{Preset: t.Cfg.Preset, LBLMode: t.Cfg.LBL.Mode, Steps: t.step, Tokens: tokens, Seconds: el.Seconds(),
		TokensPerS: float64(int64(t.step-t.startStep)*perStep) / el.Seconds(), FinalLoss: last.Loss, Device: "cpu", Precision: t.Cfg.PrecisionOrDefault(),
		ResumedFrom: t.startStep}
	if t.GPU != nil {
		r.Device = t.GPU.Device().Name()
		r.DeviceMemGiB = float64(t.GPU.DeviceBytes()) / (1 << 30)
		r.Collectives = t.collectives
	}
	for dom, name := range t.Corpus.Domains {
		r.Domains = append(r.Domains, DomainReport{Domain: name, BitsPerByte: ev.BitsPerByte[dom], UnigramBits: t.Corpus.Entropy(dom), Tokens: ev.Tokens[dom]})
	}
	st := ev.Stats
	var shares []float64
	for l := range st.Counts {
		load := make([]float64, st.Experts)
		var n float64
		for dom, name := range t.Corpus.Domains {
			f := st.Frequency(l, dom, k)
			top := 0
			for e := range f {
				if f[e] > f[top] {
					top = e
				}
				load[e] += st.Counts[l][dom][e]
				n += st.Counts[l][dom][e]
			}
			r.Experts = append(r.Experts, Specialisation{Layer: l, Domain: name, Frequency: f, TopExpert: top, TopShare: f[top], EntropyBits: entropyBits(f)})
			shares = append(shares, f[top])
		}
		for e := range load {
			if n > 0 {
				load[e] /= n
			}
			r.MaxLoad = max(r.MaxLoad, load[e])
		}
		r.GlobalLoad = append(r.GlobalLoad, load)
	}
	for _, s := range shares {
		r.MeanTopShare += s / float64(len(shares))
	}
	return r
}

// DomainExpertMI is, per MoE layer, the mutual information between a
// validation token's domain and the experts that serve it, in bits:
// I(D;E) = sum_d w_d KL(f_d || sum_d' w_d' f_d'), with f_d the domain's
// selection frequencies and w_d its share of the validation tokens (equal
// shares when the report has no token counts). It is 0 when every domain
// routes alike, however unbalanced the experts, and log2(domains) at most,
// when the domains use disjoint experts: a measure of specialisation that
// load imbalance alone cannot raise (the top-expert share can).
func (r *Report) DomainExpertMI() []float64 {
	w := map[string]float64{}
	var total float64
	for _, d := range r.Domains {
		w[d.Domain] = float64(d.Tokens)
		total += float64(d.Tokens)
	}
	byLayer := map[int][]Specialisation{}
	layers := 0
	for _, s := range r.Experts {
		byLayer[s.Layer] = append(byLayer[s.Layer], s)
		layers = max(layers, s.Layer+1)
	}
	out := make([]float64, layers)
	for l := range out {
		ss := byLayer[l]
		if len(ss) == 0 {
			out[l] = math.NaN()
			continue
		}
		weights := make([]float64, len(ss))
		var sum float64
		for i, s := range ss {
			weights[i] = 1
			if total > 0 {
				weights[i] = w[s.Domain]
			}
			sum += weights[i]
		}
		if sum == 0 {
			out[l] = math.NaN()
			continue
		}
		mix := make([]float64, len(ss[0].Frequency))
		for i, s := range ss {
			for e, f := range s.Frequency {
				if e < len(mix) {
					mix[e] += weights[i] / sum * f
				}
			}
		}
		var mi float64
		for i, s := range ss {
			for e, f := range s.Frequency {
				if f > 0 && e < len(mix) && mix[e] > 0 {
					mi += weights[i] / sum * f * math.Log2(f/mix[e])
				}
			}
		}
		out[l] = max(mi, 0)
	}
	return out
}

// MeanBitsPerByte is the validation bits/byte, mean over domains (NaN
// without domains).
func (r *Report) MeanBitsPerByte() float64 {
	if len(r.Domains) == 0 {
		return math.NaN()
	}
	var s float64
	for _, d := range r.Domains {
		s += d.BitsPerByte
	}
	return s / float64(len(r.Domains))
}

// MeanDomainExpertMI is DomainExpertMI's mean over the MoE layers (NaN
// without expert statistics).
func (r *Report) MeanDomainExpertMI() float64 {
	mi := r.DomainExpertMI()
	if len(mi) == 0 {
		return math.NaN()
	}
	var s float64
	for _, v := range mi {
		s += v
	}
	return s / float64(len(mi))
}

// WriteJSON writes the report to path.
func (r *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("train: write report: %w", err)
	}
	return nil
}

// Print writes the report as tables: per-domain validation loss, then per
// layer x domain x expert selection frequencies with the specialisation
// summary, then the global expert load.
func (r *Report) Print(w io.Writer) {
	switch {
	case r.ResumedFrom > 0 && r.ResumedFrom >= r.Steps:
		fmt.Fprintf(w, "\n== report: %d steps, %d tokens, LBL mode %s; resumed at step %d: nothing left to train, the model evaluated as saved\n",
			r.Steps, r.Tokens, r.LBLMode, r.ResumedFrom)
	default:
		fmt.Fprintf(w, "\n== report: %d steps, %d tokens, %.1f s, %.0f tokens/s, LBL mode %s, final train loss %.4f nats\n",
			r.Steps, r.Tokens, r.Seconds, r.TokensPerS, r.LBLMode, r.FinalLoss)
		if r.ResumedFrom > 0 {
			fmt.Fprintf(w, "   resumed from step %d: the time and tokens/s are of steps %d to %d\n", r.ResumedFrom, r.ResumedFrom+1, r.Steps)
		}
	}
	if r.Device != "" && r.Device != "cpu" {
		fmt.Fprintf(w, "   on %s, %s, %.1f GiB of device memory\n", r.Device, r.Precision, r.DeviceMemGiB)
	}
	if r.Stopped != "" {
		fmt.Fprintf(w, "   stopped early: %s\n", r.Stopped)
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "domain\tval bits/byte\tunigram bits/byte\tgain\ttokens\t")
	for _, d := range r.Domains {
		fmt.Fprintf(tw, "%s\t%.3f\t%.3f\t%.3f\t%d\t\n", d.Domain, d.BitsPerByte, d.UnigramBits, d.UnigramBits-d.BitsPerByte, d.Tokens)
	}
	tw.Flush()
	if len(r.Experts) == 0 {
		return
	}
	E := len(r.Experts[0].Frequency)
	fmt.Fprintf(w, "\nexpert selection frequency per MoE layer and domain (validation tokens; uniform = %.3f)\n", 1/float64(E))
	tw = tabwriter.NewWriter(w, 2, 4, 1, ' ', tabwriter.AlignRight)
	hdr := []string{"layer", "domain"}
	for e := 0; e < E; e++ {
		hdr = append(hdr, fmt.Sprintf("e%d", e))
	}
	hdr = append(hdr, "top", "share", "H bits")
	fmt.Fprintln(tw, strings.Join(hdr, "\t")+"\t")
	sorted := append([]Specialisation(nil), r.Experts...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Layer < sorted[j].Layer })
	for _, s := range sorted {
		row := []string{fmt.Sprint(s.Layer), s.Domain}
		for _, f := range s.Frequency {
			row = append(row, fmt.Sprintf("%.2f", f))
		}
		row = append(row, fmt.Sprintf("e%d", s.TopExpert), fmt.Sprintf("%.3f", s.TopShare), fmt.Sprintf("%.2f", s.EntropyBits))
		fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
	}
	tw.Flush()
	fmt.Fprintf(w, "\nspecialisation: mean top-expert share %.3f (uniform %.3f); global load per layer (max %.3f):\n", r.MeanTopShare, 1/float64(E), r.MaxLoad)
	for l, load := range r.GlobalLoad {
		parts := make([]string, len(load))
		for e, v := range load {
			parts[e] = fmt.Sprintf("%.3f", v)
		}
		fmt.Fprintf(w, "  layer %d: %s\n", l, strings.Join(parts, " "))
	}
}
