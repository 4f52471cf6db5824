package data

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math"
	"slices"
	"unicode/utf8"
)

// DocSep ends every document in a packed stream. UTF-8 text never contains
// this byte, so it is an unambiguous end-of-document token.
const DocSep byte = 0xFF

// PadTarget is the target written for positions beyond a sequence's valid
// length; such positions must not count in the loss or expert statistics.
const PadTarget int32 = -1

// PadInput is the input token written for positions beyond a sequence's
// valid length.
const PadInput = int32(DocSep)

// Split selects the training or validation part of a Corpus.
type Split int

// The two splits of a Corpus.
const (
	Train Split = iota
	Val
)

func (s Split) String() string {
	switch s {
	case Train:
		return "train"
	case Val:
		return "val"
	}
	return fmt.Sprintf("Split(%d)", int(s))
}

// BuildConfig says how Build packs documents into sequences.
type BuildConfig struct {
	// SeqLen is the number of input tokens per sequence. A sequence is a
	// window of SeqLen+1 tokens: inputs are [0:SeqLen], targets [1:SeqLen+1].
	SeqLen int
	// ValFraction is the share of each domain's tokens held out for
	// validation, in [0, 0.5]. Zero means no validation split.
	ValFraction float64
	// Seed orders each domain's documents before the split (see Build).
	Seed int64
}

// DefaultBuildConfig returns the defaults: 256-token sequences, 5% of each
// domain held out, seed 1.
func DefaultBuildConfig() BuildConfig {
	return BuildConfig{SeqLen: 256, ValFraction: 0.05, Seed: 1}
}

// Validate reports a config Build cannot use.
func (c BuildConfig) Validate() error {
	if c.SeqLen < 1 || c.SeqLen > 1<<30 {
		return errorf(ErrInvalidConfig, nil, "SeqLen %d not in [1, 2^30]", c.SeqLen)
	}
	if !(c.ValFraction >= 0 && c.ValFraction <= 0.5) {
		return errorf(ErrInvalidConfig, nil, "ValFraction %v not in [0, 0.5]", c.ValFraction)
	}
	return nil
}

// seqRef locates one sequence: its window is tokens[off : off+valid+1] of
// the split's backing array, inside the region of domain dom.
type seqRef struct {
	off   int64
	dom   int32
	valid int32
}

type splitData struct {
	tokens   []byte   // every domain's stream, one after another
	seqs     []seqRef // grouped by domain, in stream order
	seqStart []int    // seqs of domain d are [seqStart[d], seqStart[d+1])
	tokStart []int64  // tokens of domain d are [tokStart[d], tokStart[d+1])
	docs     []int    // documents (or parts of one) per domain
}

// DomainStats summarises one domain of a Corpus.
type DomainStats struct {
	Domain      string
	TrainDocs   int // documents in the train stream (a split document counts in both)
	ValDocs     int
	TrainTokens int // bytes of the train stream, DocSep included
	ValTokens   int
	TrainSeqs   int
	ValSeqs     int
	// EntropyBits is the unigram byte entropy of the train stream in
	// bits/byte: the loss of the best model that ignores context.
	EntropyBits float64
}

// Corpus is a packed, split corpus. It is read-only after Build and safe for
// concurrent use.
type Corpus struct {
	// Domains lists the domain names in sorted order; a domain id is an
	// index into it.
	Domains []string
	// SeqLen is the number of input tokens per sequence.
	SeqLen int

	splits  [2]splitData
	entropy []float64
}

// Build packs docs into sequences. Per domain (domains are sorted by name):
//
//  1. Documents are ordered by FNV-1a-64 of (Seed as 8 little-endian bytes,
//     text), so the result does not depend on the order of docs.
//  2. Walking that order, a document goes to validation if validation
//     still stays within max(ceil(ValFraction*n), SeqLen+1) of the domain's
//     n tokens (DocSep included); the rest go to train. If that leaves
//     validation empty, the first document that leaves train SeqLen+1
//     tokens goes to validation; failing that, the first document is cut
//     at a rune boundary and its head goes to validation. So a domain gets
//     validation data whenever ValFraction > 0 and n >= 2*(SeqLen+1).
//  3. Each split's documents are concatenated, each followed by DocSep, and
//     cut into windows of SeqLen+1 tokens with stride SeqLen (consecutive
//     windows share one token), so every transition of the stream is
//     predicted exactly once. The last window of a domain may be short: its
//     valid length is below SeqLen and Fill pads it.
//
// No window crosses a domain boundary. A domain with fewer than SeqLen+1
// tokens gives ErrDomainTooSmall naming it.
func Build(docs []Document, cfg BuildConfig) (*Corpus, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if len(docs) == 0 {
		return nil, ErrEmptyCorpus
	}
	byDomain := map[string][]int{}
	for i, d := range docs {
		switch {
		case d.Domain == "":
			return nil, errorf(ErrMissingDomain, nil, "document %d", i)
		case d.Text == "":
			return nil, errorf(ErrMissingText, nil, "document %d (domain %q)", i, d.Domain)
		case !utf8.ValidString(d.Text):
			return nil, errorf(ErrInvalidUTF8, nil, "document %d (domain %q)", i, d.Domain)
		}
		byDomain[d.Domain] = append(byDomain[d.Domain], i)
	}
	c := &Corpus{SeqLen: cfg.SeqLen}
	for name := range byDomain {
		c.Domains = append(c.Domains, name)
	}
	slices.Sort(c.Domains)
	for s := range c.splits {
		c.splits[s].seqStart = []int{0}
		c.splits[s].tokStart = []int64{0}
	}
	c.entropy = make([]float64, len(c.Domains))
	for id, name := range c.Domains {
		train, val, err := splitDomain(docs, byDomain[name], name, cfg)
		if err != nil {
			return nil, err
		}
		c.appendDomain(Train, id, train)
		c.appendDomain(Val, id, val)
		tr := &c.splits[Train]
		c.entropy[id] = UnigramEntropyBits(tr.tokens[tr.tokStart[id]:tr.tokStart[id+1]])
	}
	return c, nil
}

func splitDomain(docs []Document, idx []int, name string, cfg BuildConfig) (train, val []string, err error) {
	type keyed struct {
		key uint64
		i   int
	}
	var seed [8]byte
	binary.LittleEndian.PutUint64(seed[:], uint64(cfg.Seed))
	ks := make([]keyed, len(idx))
	total := 0
	for k, i := range idx {
		h := fnv.New64a()
		h.Write(seed[:])
		h.Write([]byte(docs[i].Text))
		ks[k] = keyed{h.Sum64(), i}
		total += len(docs[i].Text) + 1
	}
	slices.SortFunc(ks, func(a, b keyed) int {
		if c := cmp.Compare(a.key, b.key); c != 0 {
			return c
		}
		return cmp.Compare(a.i, b.i)
	})
	order := make([]int, len(ks))
	for k := range ks {
		order[k] = ks[k].i
	}
	window := cfg.SeqLen + 1
	if total < window {
		return nil, nil, errorf(ErrDomainTooSmall, nil,
			"domain %q has %d tokens (with separators) but one training sequence needs %d", name, total, window)
	}
	valTarget, valMax := 0, 0
	if cfg.ValFraction > 0 && total >= 2*window {
		valTarget = max(int(math.Ceil(cfg.ValFraction*float64(total))), window)
		valMax = total - window
	}
	valBytes := 0
	inVal := make([]bool, len(order))
	for k, i := range order {
		if n := len(docs[i].Text) + 1; valBytes+n <= valTarget {
			inVal[k] = true
			valBytes += n
		}
	}
	for k, i := range order {
		if n := len(docs[i].Text) + 1; valTarget > 0 && valBytes == 0 && n <= valMax {
			inVal[k] = true
			valBytes += n
		}
	}
	if valTarget > 0 && valBytes == 0 {
		// Every document is too large to hold out whole: cut the first.
		text := docs[order[0]].Text
		cut := min(valTarget, valMax) - 1
		for cut > 0 && !utf8.RuneStart(text[cut]) {
			cut--
		}
		if cut > 0 {
			val = append(val, text[:cut])
			train = append(train, text[cut:])
			order = order[1:]
			inVal = inVal[1:]
		}
	}
	for k, i := range order {
		if inVal[k] {
			val = append(val, docs[i].Text)
		} else {
			train = append(train, docs[i].Text)
		}
	}
	return train, val, nil
}

// appendDomain appends domain id's stream and its windows to split s.
func (c *Corpus) appendDomain(s Split, id int, texts []string) {
	sd := &c.splits[s]
	start := int64(len(sd.tokens))
	for _, t := range texts {
		sd.tokens = append(sd.tokens, t...)
		sd.tokens = append(sd.tokens, DocSep)
	}
	end := int64(len(sd.tokens))
	stride := int64(c.SeqLen)
	for off := start; off+1 < end; off += stride {
		valid := min(stride, end-1-off)
		sd.seqs = append(sd.seqs, seqRef{off: off, dom: int32(id), valid: int32(valid)})
	}
	sd.seqStart = append(sd.seqStart, len(sd.seqs))
	sd.tokStart = append(sd.tokStart, end)
	sd.docs = append(sd.docs, len(texts))
}

// NumSeqs returns the number of sequences in split s.
func (c *Corpus) NumSeqs(s Split) int { return len(c.splits[s].seqs) }

// Count returns the number of sequences of domain in split s.
func (c *Corpus) Count(s Split, domain int) int {
	sd := &c.splits[s]
	return sd.seqStart[domain+1] - sd.seqStart[domain]
}

// Seqs returns the indices of domain's sequences in split s, in stream order.
func (c *Corpus) Seqs(s Split, domain int) []int {
	sd := &c.splits[s]
	out := make([]int, 0, sd.seqStart[domain+1]-sd.seqStart[domain])
	for i := sd.seqStart[domain]; i < sd.seqStart[domain+1]; i++ {
		out = append(out, i)
	}
	return out
}

// ValSeqs returns the indices of domain's validation sequences in stream
// order; evaluating all of them covers the domain's validation text once.
func (c *Corpus) ValSeqs(domain int) []int { return c.Seqs(Val, domain) }

// DomainID returns the id of the named domain.
func (c *Corpus) DomainID(name string) (int, bool) {
	i, ok := slices.BinarySearch(c.Domains, name)
	return i, ok
}

// Entropy returns the unigram byte entropy of domain's train stream in
// bits/byte.
func (c *Corpus) Entropy(domain int) float64 { return c.entropy[domain] }

// Stats returns one summary per domain, in domain id order.
func (c *Corpus) Stats() []DomainStats {
	out := make([]DomainStats, len(c.Domains))
	tr, va := &c.splits[Train], &c.splits[Val]
	for d, name := range c.Domains {
		out[d] = DomainStats{
			Domain:      name,
			TrainDocs:   tr.docs[d],
			ValDocs:     va.docs[d],
			TrainTokens: int(tr.tokStart[d+1] - tr.tokStart[d]),
			ValTokens:   int(va.tokStart[d+1] - va.tokStart[d]),
			TrainSeqs:   c.Count(Train, d),
			ValSeqs:     c.Count(Val, d),
			EntropyBits: c.entropy[d],
		}
	}
	return out
}

// Window returns sequence i of split s as its validLen+1 tokens (inputs are
// [0:validLen], targets [1:validLen+1]) and its domain id. The slice aliases
// the corpus and must not be modified.
func (c *Corpus) Window(s Split, i int) (tokens []byte, domain int) {
	r := c.splits[s].seqs[i]
	return c.splits[s].tokens[r.off : r.off+int64(r.valid)+1 : r.off+int64(r.valid)+1], int(r.dom)
}

// Fill copies sequence seqIdx of split into the first SeqLen entries of
// inputs and targets and returns its valid length and domain id. Positions
// at and beyond validLen get PadInput and PadTarget (-1). It panics if a
// buffer is shorter than SeqLen or seqIdx is out of range.
func (c *Corpus) Fill(split Split, seqIdx int, inputs, targets []int32) (validLen, domain int) {
	if len(inputs) < c.SeqLen || len(targets) < c.SeqLen {
		panic(fmt.Sprintf("data: Fill: buffers of %d and %d tokens, need %d", len(inputs), len(targets), c.SeqLen))
	}
	win, dom := c.Window(split, seqIdx)
	n := len(win) - 1
	for j := 0; j < n; j++ {
		inputs[j] = int32(win[j])
		targets[j] = int32(win[j+1])
	}
	for j := n; j < c.SeqLen; j++ {
		inputs[j] = PadInput
		targets[j] = PadTarget
	}
	return n, dom
}

// UnigramEntropyBits returns the entropy in bits/byte of the byte frequency
// distribution of b (0 for empty input).
func UnigramEntropyBits(b []byte) float64 {
	if len(b) == 0 {
		return 0
	}
	var counts [256]int
	for _, x := range b {
		counts[x]++
	}
	n := float64(len(b))
	h := 0.0
	for _, k := range counts {
		if k > 0 {
			p := float64(k) / n
			h -= p * math.Log2(p)
		}
	}
	return h
}
