package lbl

// Shapes: per layer l < L, logitsTE/probsTE/dLogitsTE [T][E], idxTK [T][k],
// validT [T]; countsLE/bufLE/biasLE [L][E] flattened; the reduce vector is
// [L*E + 1] (all layers' counts, then the valid-token count).

import (
	"context"
	"errors"
	"fmt"
	"math"
)

var (
	// ErrInvalidConfig is wrapped by every *ConfigError.
	ErrInvalidConfig = errors.New("lbl: invalid config")
	// ErrNotRecorded: Sync or Backward found a layer without a Record in the
	// current micro-batch (or no micro-batch in flight at all).
	ErrNotRecorded = errors.New("lbl: layer not recorded in this micro-batch")
	// ErrTokenMismatch: the layers of one micro-batch recorded different
	// numbers of valid tokens.
	ErrTokenMismatch = errors.New("lbl: layers recorded different valid-token counts")
	// ErrState: SetState got a State of another shape or with bad values.
	ErrState = errors.New("lbl: state does not fit the balancer")
)

// ConfigError names the Config field (or NewBalancer argument) that is wrong.
type ConfigError struct {
	Field  string
	Reason string
}

func (e *ConfigError) Error() string {
	return "lbl: invalid config: " + e.Field + ": " + e.Reason
}

// Unwrap makes errors.Is(err, ErrInvalidConfig) true.
func (e *ConfigError) Unwrap() error { return ErrInvalidConfig }

// Config sets the coefficients of the auxiliary losses. The total aux loss
// of layer l for one micro-batch is
//
//	LayerCoef[l] * (GlobalCoef*Global + MicroCoef*Micro + SeqCoef*Seq + ZCoef*Z)
//
// with the terms of LayerLosses. A mix of global and micro LBL is, e.g.,
// GlobalCoef = c and MicroCoef = 0.01*c.
type Config struct {
	GlobalCoef float64   // global-batch LBL with the step's accumulation buffer
	MicroCoef  float64   // micro-batch LBL (f from this micro-batch on this rank)
	SeqCoef    float64   // sequence-level LBL (f and p per sequence, averaged over sequences)
	ZCoef      float64   // router z-loss: mean over valid tokens of logsumexp(z)^2
	LayerCoef  []float64 // per-layer multipliers (len = layers); nil means all 1
	// BiasRate enables the aux-loss-free expert bias: after each optimizer
	// step, bias_e += BiasRate * sign(mean_i count_i - count_e) from the
	// step's global counts. 0 turns it off.
	BiasRate float64
	// Window is how many micro-batches the global LBL's counts cover: the
	// buffer starts again after every Window micro-batches of the step
	// (0: the whole step). With micro-batches of m sequences synchronised
	// over R ranks, the balance batch is m*Window*R sequences (up to the
	// step's), so one global batch can be balanced over 1, several or all
	// of its micro-batches.
	Window int
}

// DefaultConfig is global-batch LBL with coefficient 0.01 and nothing else.
func DefaultConfig() Config { return Config{GlobalCoef: 0.01} }

// Validate checks that every coefficient is finite and non-negative.
func (c Config) Validate() error {
	for _, f := range []struct {
		name string
		v    float64
	}{
		{"GlobalCoef", c.GlobalCoef}, {"MicroCoef", c.MicroCoef}, {"SeqCoef", c.SeqCoef},
		{"ZCoef", c.ZCoef}, {"BiasRate", c.BiasRate},
	} {
		if err := checkCoef(f.name, f.v); err != nil {
			return err
		}
	}
	for i, v := range c.LayerCoef {
		if err := checkCoef(fmt.Sprintf("LayerCoef[%d]", i), v); err != nil {
			return err
		}
	}
	if c.Window < 0 {
		return &ConfigError{Field: "Window", Reason: fmt.Sprintf("must be >= 0, got %d", c.Window)}
	}
	return nil
}

func checkCoef(name string, v float64) error {
	if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
		return &ConfigError{Field: name, Reason: fmt.Sprintf("must be finite and >= 0, got %v", v)}
	}
	return nil
}

// LayerLosses are the unweighted values of one layer's aux-loss terms for
// one micro-batch on this rank, and their weighted sum.
type LayerLosses struct {
	Global   float64 // E * sum f_buf p: f from the step's buffered global counts, p local
	Micro    float64 // E * sum f p with f and p from this micro-batch on this rank
	Seq      float64 // sequence-level LBL
	Z        float64 // z-loss (0 when Record got no logits)
	Weighted float64 // LayerCoef[l] * (coefficient-weighted sum of the four)
}

// Losses are the aux losses of the last synchronised micro-batch.
type Losses struct {
	Layers []LayerLosses // [L]
	Total  float64       // sum of Layers[l].Weighted
}

// State is everything a checkpoint needs to restore a Balancer exactly. It is
// the same on every data-parallel rank (it depends only on global counts),
// so one copy serves any layout.
type State struct {
	Layers, Experts, K int
	BiasLE             []float64 // [L*E] expert selection bias
	BufferLE           []float64 // [L*E] global counts of the step so far
	BufferTokens       float64   // global valid tokens of the step so far
	MicroBatches       int       // micro-batches in the buffer
}

// Balancer computes the auxiliary balancing losses of all MoE layers of a
// model. Per micro-batch: Record every layer in the forward pass, then Sync
// (or let the first Backward do it), then Backward every layer. After the
// optimizer step call StepDone. One micro-batch is in flight at a time: the
// first Record after a Sync starts the next one, so activation
// recomputation must not call Record again. Record keeps references to
// logitsTE, probsTE and validT until the micro-batch's Backward calls are
// done; the caller must not change them in between. A Balancer is not safe
// for concurrent use.
type Balancer struct {
	cfg       Config
	L, E, K   int
	r         Reducer
	layerCoef []float64 // [L]

	rec           []layerRecord // [L]
	localCountsLE []float64     // [L*E] this rank's counts of this micro-batch
	vec           []float64     // [L*E+1] reduce vector
	inFlight      bool          // a micro-batch has been recorded since the last Sync/StepDone
	synced        bool          // the in-flight micro-batch has been synchronised
	// pending carries the result of an all-reduce StartSync began in the
	// background (nil: none running); it writes vec.
	pending chan error

	bufLE        []float64 // [L*E]
	bufTokens    float64
	microBatches int
	// the window's counts (Config.Window > 0; else the step's buffer is it)
	winLE     []float64 // [L*E]
	winTokens float64
	winMicro  int

	biasLE   []float64 // [L*E] master copy
	bias32LE []float32 // [L*E] what TopK reads

	losses []LayerLosses // [L] of the last synced micro-batch
	total  float64

	fE, countsE, scratchE []float64 // [E] scratch
}

type layerRecord struct {
	recorded  bool
	logitsTE  []float32
	probsTE   []float32
	idxTK     []int32
	validT    []bool
	T, S      int
	tokens    int
	sequences int       // RecordSummary only
	summary   bool      // recorded by RecordSummary (no tables held)
	pE        []float64 // [E] mean probabilities over valid tokens
	fMicroE   []float64 // [E]
	fBufE     []float64 // [E]
	micro     float64
	seq       float64
	z         float64
}

// NewBalancer returns a Balancer for layers MoE layers of E experts with
// top-k routing, synchronising counts through r (Identity{} for one
// process).
func NewBalancer(cfg Config, layers, E, k int, r Reducer) (*Balancer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	switch {
	case layers <= 0:
		return nil, &ConfigError{Field: "layers", Reason: fmt.Sprintf("must be > 0, got %d", layers)}
	case E <= 0:
		return nil, &ConfigError{Field: "E", Reason: fmt.Sprintf("must be > 0, got %d", E)}
	case k <= 0 || k > E:
		return nil, &ConfigError{Field: "k", Reason: fmt.Sprintf("must be in 1..E=%d, got %d", E, k)}
	case cfg.LayerCoef != nil && len(cfg.LayerCoef) != layers:
		return nil, &ConfigError{Field: "LayerCoef", Reason: fmt.Sprintf("has %d entries for %d layers", len(cfg.LayerCoef), layers)}
	case r == nil:
		return nil, &ConfigError{Field: "Reducer", Reason: "is nil (use Identity{} for one process)"}
	}
	b := &Balancer{
		cfg: cfg, L: layers, E: E, K: k, r: r,
		layerCoef:     make([]float64, layers),
		rec:           make([]layerRecord, layers),
		localCountsLE: make([]float64, layers*E),
		vec:           make([]float64, layers*E+1),
		bufLE:         make([]float64, layers*E),
		winLE:         make([]float64, layers*E),
		biasLE:        make([]float64, layers*E),
		bias32LE:      make([]float32, layers*E),
		losses:        make([]LayerLosses, layers),
		fE:            make([]float64, E),
		countsE:       make([]float64, E),
		scratchE:      make([]float64, E),
	}
	b.cfg.LayerCoef = nil // b.layerCoef is the copy used
	for l := range b.layerCoef {
		b.layerCoef[l] = 1
		if cfg.LayerCoef != nil {
			b.layerCoef[l] = cfg.LayerCoef[l]
		}
		b.rec[l] = layerRecord{pE: make([]float64, E), fMicroE: make([]float64, E), fBufE: make([]float64, E)}
	}
	return b, nil
}

// Record registers the forward pass of MoE layer l for the current
// micro-batch: T tokens (B sequences of S tokens, sequence-major; S <= 0
// means one sequence of T), router logits (needed only for the z-loss; may be
// nil when ZCoef == 0), softmax probabilities, the top-k experts chosen and
// the valid-token mask (nil = all valid). It computes the local counts, p,
// and the micro, sequence and z terms.
func (b *Balancer) Record(l int, logitsTE, probsTE []float32, idxTK []int32, T, S int, validT []bool) {
	if l < 0 || l >= b.L {
		panic(fmt.Sprintf("lbl: Record: layer %d outside 0..%d", l, b.L-1))
	}
	if S <= 0 {
		S = T
	}
	if T > 0 {
		checkSeq("Record", T, S)
	}
	need(len(probsTE), T*b.E, "Record", "probsTE")
	if logitsTE == nil && b.cfg.ZCoef != 0 {
		panic("lbl: Record: logitsTE is required when ZCoef != 0")
	}
	if logitsTE != nil {
		need(len(logitsTE), T*b.E, "Record", "logitsTE")
	}
	if !b.inFlight || b.synced {
		b.drain()
		for i := range b.rec {
			b.rec[i].recorded = false
		}
		b.inFlight, b.synced = true, false
	}
	E, k := b.E, b.K
	countsE := b.localCountsLE[l*E : (l+1)*E]
	Counts(idxTK, T, E, k, validT, countsE) // also checks idxTK and validT
	rec := &b.rec[l]
	rec.recorded, rec.summary = true, false
	rec.logitsTE, rec.probsTE, rec.idxTK, rec.validT = logitsTE, probsTE, idxTK, validT
	rec.T, rec.S = T, S
	rec.tokens = ValidTokens(T, validT)
	MeanProbs(probsTE, T, E, validT, rec.pE)
	rec.micro = LossFromCounts(countsE, float64(rec.tokens), k, rec.pE, rec.fMicroE)
	rec.seq, rec.z = 0, 0
	if T > 0 {
		rec.seq = SeqLoss(probsTE, idxTK, T, S, E, k, validT, b.countsE, b.fE, b.scratchE)
	}
	if logitsTE != nil {
		rec.z = ZLoss(logitsTE, T, E, validT)
	}
}

// Sync ends the forward pass of the current micro-batch: it all-reduces the
// expert counts of every layer and the valid-token count in ONE Reducer
// call, adds them to the step's buffer and computes every loss. A second
// call for the same micro-batch does nothing. If the Reducer fails, nothing
// is changed and Sync may be retried.
func (b *Balancer) Sync(ctx context.Context) error {
	if b.inFlight && b.synced {
		return nil
	}
	if !b.inFlight {
		return fmt.Errorf("%w: Sync with no micro-batch recorded", ErrNotRecorded)
	}
	n := b.L * b.E
	if b.pending != nil {
		err := <-b.pending
		b.pending = nil
		if err != nil {
			return fmt.Errorf("lbl: all-reduce of expert counts: %w", err)
		}
	} else {
		tokens, err := b.recordedTokens()
		if err != nil {
			return err
		}
		copy(b.vec, b.localCountsLE)
		b.vec[n] = float64(tokens)
		if err := b.r.AllReduceSum(ctx, b.vec); err != nil {
			return fmt.Errorf("lbl: all-reduce of expert counts: %w", err)
		}
	}
	for i, c := range b.vec[:n] {
		b.bufLE[i] += c
	}
	b.bufTokens += b.vec[n]
	b.microBatches++
	winLE, winTokens := b.bufLE, b.bufTokens
	if b.cfg.Window > 0 {
		if b.winMicro == b.cfg.Window {
			clear(b.winLE)
			b.winTokens, b.winMicro = 0, 0
		}
		for i, c := range b.vec[:n] {
			b.winLE[i] += c
		}
		b.winTokens += b.vec[n]
		b.winMicro++
		winLE, winTokens = b.winLE, b.winTokens
	}
	b.total = 0
	cfg := &b.cfg
	for l := range b.rec {
		rec := &b.rec[l]
		g := LossFromCounts(winLE[l*b.E:(l+1)*b.E], winTokens, b.K, rec.pE, rec.fBufE)
		w := b.layerCoef[l] * (cfg.GlobalCoef*g + cfg.MicroCoef*rec.micro + cfg.SeqCoef*rec.seq + cfg.ZCoef*rec.z)
		b.losses[l] = LayerLosses{Global: g, Micro: rec.micro, Seq: rec.seq, Z: rec.z, Weighted: w}
		b.total += w
	}
	b.synced = true
	return nil
}

// recordedTokens checks that every layer recorded the micro-batch and
// that they agree on its valid tokens.
func (b *Balancer) recordedTokens() (int, error) {
	tokens := -1
	for l := range b.rec {
		rec := &b.rec[l]
		if !rec.recorded {
			return 0, fmt.Errorf("%w: layer %d", ErrNotRecorded, l)
		}
		if tokens >= 0 && rec.tokens != tokens {
			return 0, fmt.Errorf("%w: layer 0 has %d, layer %d has %d", ErrTokenMismatch, tokens, l, rec.tokens)
		}
		tokens = rec.tokens
	}
	return tokens, nil
}

// drain waits for a background sync nobody collected (a step abandoned
// between forward and backward) so that it no longer writes vec.
func (b *Balancer) drain() {
	if b.pending != nil {
		<-b.pending
		b.pending = nil
	}
}

// StartSync begins the count all-reduce of the current micro-batch in the
// background as soon as every layer has recorded it (the last MoE layer's
// forward calls it), so that the rest of the forward pass and the start
// of the backward overlap the meeting point with the other ranks; Sync
// then only waits for it. It does nothing before the last layer recorded,
// after Sync, or when a sync is already running; problems are left for
// Sync to report. The result is the same as Sync's, bit for bit.
func (b *Balancer) StartSync(ctx context.Context) {
	if !b.inFlight || b.synced || b.pending != nil {
		return
	}
	tokens, err := b.recordedTokens()
	if err != nil {
		return
	}
	n := b.L * b.E
	copy(b.vec, b.localCountsLE)
	b.vec[n] = float64(tokens)
	done := make(chan error, 1)
	b.pending = done
	go func() { done <- b.r.AllReduceSum(ctx, b.vec) }()
}

// Backward ADDS scale * d(aux loss of layer l)/d(logits) into dLogitsTE
// ([T][E] of layer l's Record): the global, micro, sequence and z terms,
// each with its coefficient and the layer's coefficient. It calls Sync first
// if the micro-batch has not been synchronised. With gradient accumulation
// over M micro-batches the usual scale is 1/M; the data-parallel gradient
// average then supplies the 1/R.
func (b *Balancer) Backward(ctx context.Context, l int, scale float64, dLogitsTE []float32) error {
	if l < 0 || l >= b.L {
		return fmt.Errorf("%w: layer %d outside 0..%d", ErrNotRecorded, l, b.L-1)
	}
	if !b.inFlight || !b.rec[l].recorded {
		return fmt.Errorf("%w: Backward of layer %d", ErrNotRecorded, l)
	}
	if b.rec[l].summary {
		return fmt.Errorf("%w: Backward of layer %d, which was recorded as a summary (use GradTerms)", ErrNotRecorded, l)
	}
	if err := b.Sync(ctx); err != nil {
		return err
	}
	rec := &b.rec[l]
	T, E, k := rec.T, b.E, b.K
	need(len(dLogitsTE), T*E, "Backward", "dLogitsTE")
	c := scale * b.layerCoef[l]
	cfg := &b.cfg
	if cfg.GlobalCoef != 0 || cfg.MicroCoef != 0 {
		// The LBL gradient is linear in f: one pass for both terms.
		for e := range b.fE {
			b.fE[e] = cfg.GlobalCoef*rec.fBufE[e] + cfg.MicroCoef*rec.fMicroE[e]
		}
		AddGrad(rec.probsTE, T, E, rec.validT, b.fE, c, dLogitsTE)
	}
	if cfg.SeqCoef != 0 && T > 0 {
		AddSeqGrad(rec.probsTE, rec.idxTK, T, rec.S, E, k, rec.validT, c*cfg.SeqCoef, dLogitsTE, b.countsE, b.fE)
	}
	if cfg.ZCoef != 0 {
		AddZGrad(rec.logitsTE, T, E, rec.validT, c*cfg.ZCoef, dLogitsTE)
	}
	return nil
}

// Losses returns a copy of the losses of the last synchronised micro-batch.
func (b *Balancer) Losses() Losses {
	return Losses{Layers: append([]LayerLosses(nil), b.losses...), Total: b.total}
}

// StepDone ends the optimizer step: with BiasRate != 0 it moves each
// layer's expert bias by BiasRate * sign(mean count - count_e) using the
// step's global counts, then empties the buffer.
func (b *Balancer) StepDone() {
	b.drain()
	if b.cfg.BiasRate != 0 && b.microBatches > 0 {
		for l := 0; l < b.L; l++ {
			countsE := b.bufLE[l*b.E : (l+1)*b.E]
			var mean float64
			for _, c := range countsE {
				mean += c
			}
			mean /= float64(b.E)
			for e, c := range countsE {
				i := l*b.E + e
				switch {
				case c < mean:
					b.biasLE[i] += b.cfg.BiasRate
				case c > mean:
					b.biasLE[i] -= b.cfg.BiasRate
				}
				b.bias32LE[i] = float32(b.biasLE[i])
			}
		}
	}
	clear(b.bufLE)
	b.bufTokens, b.microBatches = 0, 0
	clear(b.winLE)
	b.winTokens, b.winMicro = 0, 0
	b.inFlight, b.synced = false, false
}

// Bias returns layer l's expert selection bias ([E], zeros when BiasRate is
// 0), to pass as router.TopK's biasE. The slice belongs to the Balancer:
// read it, do not write it; it changes only in StepDone and SetState.
func (b *Balancer) Bias(l int) []float32 { return b.bias32LE[l*b.E : (l+1)*b.E] }

// StepCounts returns a copy of layer l's global expert counts of the
// current optimizer step so far (all ranks, all synchronised micro-batches).
func (b *Balancer) StepCounts(l int) []float64 {
	return append([]float64(nil), b.bufLE[l*b.E:(l+1)*b.E]...)
}

// StepTokens returns the global valid tokens of the current step so far.
func (b *Balancer) StepTokens() float64 { return b.bufTokens }

// State returns a deep copy of the state a checkpoint must keep.
func (b *Balancer) State() State {
	return State{
		Layers: b.L, Experts: b.E, K: b.K,
		BiasLE:       append([]float64(nil), b.biasLE...),
		BufferLE:     append([]float64(nil), b.bufLE...),
		BufferTokens: b.bufTokens,
		MicroBatches: b.microBatches,
	}
}

// SetState restores a State taken by State from a Balancer of the same
// shape. Any micro-batch in flight is discarded.
func (b *Balancer) SetState(s State) error {
	b.drain()
	if s.Layers != b.L || s.Experts != b.E || s.K != b.K {
		return fmt.Errorf("%w: state is L=%d E=%d k=%d, balancer is L=%d E=%d k=%d",
			ErrState, s.Layers, s.Experts, s.K, b.L, b.E, b.K)
	}
	n := b.L * b.E
	if len(s.BiasLE) != n || len(s.BufferLE) != n {
		return fmt.Errorf("%w: BiasLE has %d and BufferLE %d values, want %d", ErrState, len(s.BiasLE), len(s.BufferLE), n)
	}
	if s.MicroBatches < 0 || !finiteNonNeg(s.BufferTokens) {
		return fmt.Errorf("%w: MicroBatches %d, BufferTokens %v", ErrState, s.MicroBatches, s.BufferTokens)
	}
	for i := range n {
		if math.IsNaN(s.BiasLE[i]) || math.IsInf(s.BiasLE[i], 0) || !finiteNonNeg(s.BufferLE[i]) {
			return fmt.Errorf("%w: bad value at %d (bias %v, count %v)", ErrState, i, s.BiasLE[i], s.BufferLE[i])
		}
	}
	copy(b.biasLE, s.BiasLE)
	for i, v := range b.biasLE {
		b.bias32LE[i] = float32(v)
	}
	if b.cfg.Window > 0 && s.MicroBatches > 0 {
		return fmt.Errorf("%w: a state taken within a step (%d micro-batches buffered) does not hold the counts of a balance window", ErrState, s.MicroBatches)
	}
	copy(b.bufLE, s.BufferLE)
	b.bufTokens, b.microBatches = s.BufferTokens, s.MicroBatches
	clear(b.winLE)
	b.winTokens, b.winMicro = 0, 0
	b.inFlight, b.synced = false, false
	return nil
}

func finiteNonNeg(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) && v >= 0 }

// LayerSummary is one MoE layer's routing statistics of the current
// micro-batch on this rank, computed where the router ran (the GPU
// engine computes them on the device and sends only these E-length
// vectors to the host): what Record would derive from the full tables.
type LayerSummary struct {
	CountsE   []float64 // [E] valid tokens whose top-k contains each expert
	MeanProbE []float64 // [E] mean router probability over valid tokens
	Tokens    int       // valid tokens
	Sequences int       // sequences with at least one valid token
	Seq       float64   // sequence-level LBL (0 when SeqCoef is 0)
	Z         float64   // z-loss: mean of logsumexp(logits)^2 over valid tokens
}

// RecordSummary is Record for a backend that computes the statistics
// itself. Backward cannot be used for such a layer (the balancer holds no
// probabilities): the backend applies GradTerms instead.
func (b *Balancer) RecordSummary(l int, s LayerSummary) {
	if l < 0 || l >= b.L {
		panic(fmt.Sprintf("lbl: RecordSummary: layer %d outside 0..%d", l, b.L-1))
	}
	need(len(s.CountsE), b.E, "RecordSummary", "CountsE")
	need(len(s.MeanProbE), b.E, "RecordSummary", "MeanProbE")
	if !b.inFlight || b.synced {
		b.drain()
		for i := range b.rec {
			b.rec[i].recorded = false
		}
		b.inFlight, b.synced = true, false
	}
	E := b.E
	countsE := b.localCountsLE[l*E : (l+1)*E]
	copy(countsE, s.CountsE[:E])
	rec := &b.rec[l]
	rec.recorded = true
	rec.logitsTE, rec.probsTE, rec.idxTK, rec.validT = nil, nil, nil, nil
	rec.T, rec.S, rec.summary = 0, 0, true
	rec.tokens = s.Tokens
	rec.sequences = s.Sequences
	copy(rec.pE, s.MeanProbE[:E])
	rec.micro = LossFromCounts(countsE, float64(rec.tokens), b.K, rec.pE, rec.fMicroE)
	rec.seq, rec.z = s.Seq, s.Z
}

// GradTerms are the auxiliary losses' gradient with respect to one MoE
// layer's router logits, for a backend that applies it itself. For a
// valid token t of sequence b and expert j, with P = softmax(logits[t]):
//
//	dz[t][j] += P[j] * ( C*(F[j] - F.P)
//	                   + SeqScale*E/S_b * (f_b[j] - f_b.P)
//	                   + ZC*lse[t] )
//
// where f_b is the sequence's own f (its counts / (k * S_b), S_b its valid
// tokens) and lse[t] = logsumexp(logits[t]). This is exactly what
// Backward adds (the global, micro, sequence and z terms with every
// coefficient and the given scale).
type GradTerms struct {
	F        []float64 // [E] GlobalCoef * f(buffer) + MicroCoef * f(micro-batch)
	C        float64   // scale * layer coefficient * E / valid tokens (0: no LBL term)
	SeqScale float64   // scale * layer coefficient * SeqCoef / sequences
	ZC       float64   // 2 * scale * layer coefficient * ZCoef / valid tokens
}

// GradTerms synchronises the micro-batch (like Backward) and returns layer
// l's gradient terms for the given scale (1 / micro-batches per step).
func (b *Balancer) GradTerms(ctx context.Context, l int, scale float64) (GradTerms, error) {
	if l < 0 || l >= b.L {
		return GradTerms{}, fmt.Errorf("%w: layer %d outside 0..%d", ErrNotRecorded, l, b.L-1)
	}
	if !b.inFlight || !b.rec[l].recorded {
		return GradTerms{}, fmt.Errorf("%w: GradTerms of layer %d", ErrNotRecorded, l)
	}
	if err := b.Sync(ctx); err != nil {
		return GradTerms{}, err
	}
	rec := &b.rec[l]
	cfg := &b.cfg
	c := scale * b.layerCoef[l]
	g := GradTerms{F: make([]float64, b.E)}
	if rec.tokens > 0 {
		if cfg.GlobalCoef != 0 || cfg.MicroCoef != 0 {
			for e := range g.F {
				g.F[e] = cfg.GlobalCoef*rec.fBufE[e] + cfg.MicroCoef*rec.fMicroE[e]
			}
			g.C = c * float64(b.E) / float64(rec.tokens)
		}
		g.ZC = 2 * c * cfg.ZCoef / float64(rec.tokens)
	}
	if rec.sequences > 0 {
		g.SeqScale = c * cfg.SeqCoef / float64(rec.sequences)
	}
	return g, nil
}
