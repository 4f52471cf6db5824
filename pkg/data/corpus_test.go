package data

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// randomDocs returns documents of several domains with sizes in [1, maxLen]
// and some multi-byte runes.
func randomDocs(seed uint64, perDomain map[string]int, maxLen int) []Document {
	r := rand.New(rand.NewPCG(seed, 7))
	alphabet := []rune("abcdefgh \nxyzé€😀")
	var docs []Document
	for _, dom := range slices.Sorted(func(yield func(string) bool) {
		for k := range perDomain {
			if !yield(k) {
				return
			}
		}
	}) {
		for range perDomain[dom] {
			n := 1 + r.IntN(maxLen)
			var b strings.Builder
			for b.Len() < n {
				b.WriteRune(alphabet[r.IntN(len(alphabet))])
			}
			docs = append(docs, Document{Domain: dom, Text: b.String()})
		}
	}
	r.Shuffle(len(docs), func(i, j int) { docs[i], docs[j] = docs[j], docs[i] })
	return docs
}

// checkPacking verifies the packing invariants of c against the input docs.
func checkPacking(t *testing.T, c *Corpus, docs []Document, cfg BuildConfig) {
	t.Helper()
	L := cfg.SeqLen
	inputs, targets := make([]int32, L), make([]int32, L)
	for s := range c.splits {
		sd := &c.splits[s]
		if len(sd.seqStart) != len(c.Domains)+1 || len(sd.tokStart) != len(c.Domains)+1 {
			t.Fatalf("%v: bad index lengths", Split(s))
		}
		if sd.tokStart[len(c.Domains)] != int64(len(sd.tokens)) || sd.seqStart[len(c.Domains)] != len(sd.seqs) {
			t.Fatalf("%v: domain regions do not cover the split", Split(s))
		}
		total := 0
		for d := range c.Domains {
			region := sd.tokens[sd.tokStart[d]:sd.tokStart[d+1]]
			seqs := c.Seqs(Split(s), d)
			total += len(seqs)
			if len(region) > 0 && region[len(region)-1] != DocSep {
				t.Errorf("%v/%s: stream does not end with DocSep", Split(s), c.Domains[d])
			}
			// Targets of consecutive windows, concatenated, are the region
			// minus its first byte: every byte predicted once, in order.
			var ins, tgts []byte
			for k, i := range seqs {
				win, dom := c.Window(Split(s), i)
				if dom != d {
					t.Fatalf("%v seq %d: domain %d, want %d", Split(s), i, dom, d)
				}
				valid, dom2 := c.Fill(Split(s), i, inputs, targets)
				if dom2 != d || valid != len(win)-1 {
					t.Fatalf("Fill(%v, %d) = (%d, %d), want (%d, %d)", Split(s), i, valid, dom2, len(win)-1, d)
				}
				if valid < 1 || valid > L || (valid < L && k != len(seqs)-1) {
					t.Fatalf("%v seq %d (%d of %d in domain): valid length %d", Split(s), i, k, len(seqs), valid)
				}
				for j := range L {
					switch {
					case j < valid && (inputs[j] != int32(win[j]) || targets[j] != int32(win[j+1])):
						t.Fatalf("%v seq %d pos %d: Fill disagrees with Window", Split(s), i, j)
					case j >= valid && (inputs[j] != PadInput || targets[j] != PadTarget):
						t.Fatalf("%v seq %d pos %d: padding (%d, %d)", Split(s), i, j, inputs[j], targets[j])
					}
				}
				ins = append(ins, win[:valid]...)
				tgts = append(tgts, win[1:]...)
			}
			if len(region) == 0 {
				if len(seqs) != 0 {
					t.Errorf("%v/%s: %d seqs over an empty region", Split(s), c.Domains[d], len(seqs))
				}
				continue
			}
			if !bytes.Equal(ins, region[:len(region)-1]) || !bytes.Equal(tgts, region[1:]) {
				t.Errorf("%v/%s: windows do not tile the stream", Split(s), c.Domains[d])
			}
		}
		if total != c.NumSeqs(Split(s)) {
			t.Errorf("%v: per-domain counts sum to %d, NumSeqs = %d", Split(s), total, c.NumSeqs(Split(s)))
		}
	}
	// Train and val pieces of a domain together are its documents (a cut
	// document shows up as head in val and tail in train).
	for d, name := range c.Domains {
		var want []string
		for _, doc := range docs {
			if doc.Domain == name {
				want = append(want, doc.Text)
			}
		}
		pieces := func(s Split) []string {
			sd := &c.splits[s]
			region := string(sd.tokens[sd.tokStart[d]:sd.tokStart[d+1]])
			if region == "" {
				return nil
			}
			return strings.Split(strings.TrimSuffix(region, "\xff"), "\xff")
		}
		tr, va := pieces(Train), pieces(Val)
		got := append(slices.Clone(tr), va...)
		if len(got) != len(want) {
			// The cut case: one document split in two.
			if len(got) != len(want)+1 || len(want) < 1 {
				t.Fatalf("%s: %d pieces for %d documents", name, len(got), len(want))
			}
			joined := va[0] + tr[0]
			got = append([]string{joined}, append(tr[1:], va[1:]...)...)
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s: train+val pieces are not the domain's documents", name)
		}
	}
}

func TestBuildPackingInvariants(t *testing.T) {
	docs := randomDocs(1, map[string]int{"code": 40, "math": 25, "prose": 60, "tiny": 3}, 300)
	// "tiny" must still hold a training sequence.
	docs = append(docs, Document{Domain: "tiny", Text: strings.Repeat("t", 70)})
	for _, cfg := range []BuildConfig{
		{SeqLen: 16, ValFraction: 0.1, Seed: 1},
		{SeqLen: 64, ValFraction: 0.05, Seed: 2},
		{SeqLen: 1, ValFraction: 0.5, Seed: 3},
		{SeqLen: 33, ValFraction: 0, Seed: 4},
	} {
		t.Run(fmt.Sprintf("L%d_v%v", cfg.SeqLen, cfg.ValFraction), func(t *testing.T) {
			c, err := Build(docs, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(c.Domains, []string{"code", "math", "prose", "tiny"}) {
				t.Fatalf("domains %v", c.Domains)
			}
			checkPacking(t, c, docs, cfg)
			for d, st := range c.Stats() {
				if st.TrainSeqs < 1 {
					t.Errorf("%s: no train sequence", st.Domain)
				}
				total := st.TrainTokens + st.ValTokens
				switch {
				case cfg.ValFraction == 0 && st.ValSeqs != 0:
					t.Errorf("%s: %d val seqs with ValFraction 0", st.Domain, st.ValSeqs)
				case cfg.ValFraction > 0 && total >= 2*(cfg.SeqLen+1) && st.ValSeqs < 1:
					t.Errorf("%s: no val seq out of %d tokens", st.Domain, total)
				}
				if len(c.ValSeqs(d)) != st.ValSeqs {
					t.Errorf("%s: ValSeqs has %d, stats say %d", st.Domain, len(c.ValSeqs(d)), st.ValSeqs)
				}
				if cfg.ValFraction > 0 && total >= 2*(cfg.SeqLen+1) {
					// Whole documents of at most ~300 bytes: the split is off by
					// less than one document, or holds one full sequence.
					frac := float64(st.ValTokens) / float64(total)
					slack := 320 / float64(total)
					if frac < cfg.ValFraction-slack || frac > max(cfg.ValFraction, float64(cfg.SeqLen+1)/float64(total))+slack {
						t.Errorf("%s: val fraction %.3f, want about %.3f", st.Domain, frac, cfg.ValFraction)
					}
				}
			}
		})
	}
}

func TestBuildCutsSingleDocument(t *testing.T) {
	docs := []Document{
		{Domain: "one", Text: strings.Repeat("héllo wörld ", 100)},
		{Domain: "many", Text: strings.Repeat("a", 500)},
		{Domain: "many", Text: strings.Repeat("b", 500)},
	}
	cfg := BuildConfig{SeqLen: 32, ValFraction: 0.1, Seed: 9}
	c, err := Build(docs, cfg)
	if err != nil {
		t.Fatal(err)
	}
	checkPacking(t, c, docs, cfg)
	for _, st := range c.Stats() {
		if st.ValSeqs < 1 || st.TrainSeqs < 1 {
			t.Errorf("%s: %d train, %d val seqs", st.Domain, st.TrainSeqs, st.ValSeqs)
		}
	}
}

func TestBuildIndependentOfDocumentOrder(t *testing.T) {
	docs := randomDocs(2, map[string]int{"x": 30, "y": 30}, 200)
	cfg := BuildConfig{SeqLen: 24, ValFraction: 0.2, Seed: 5}
	a, err := Build(docs, cfg)
	if err != nil {
		t.Fatal(err)
	}
	shuffled := slices.Clone(docs)
	slices.Reverse(shuffled)
	b, err := Build(shuffled, cfg)
	if err != nil {
		t.Fatal(err)
	}
	for s := range a.splits {
		if !bytes.Equal(a.splits[s].tokens, b.splits[s].tokens) || !slices.Equal(a.splits[s].seqs, b.splits[s].seqs) {
			t.Errorf("%v split depends on document order", Split(s))
		}
	}
	cfg.Seed = 6
	c, err := Build(docs, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(a.splits[Val].tokens, c.splits[Val].tokens) {
		t.Error("a different seed gave the same validation split")
	}
}

func TestBuildErrors(t *testing.T) {
	ok := Document{Domain: "big", Text: strings.Repeat("z", 1000)}
	cases := []struct {
		name     string
		docs     []Document
		cfg      BuildConfig
		sentinel error
		contains string
	}{
		{"no docs", nil, DefaultBuildConfig(), ErrEmptyCorpus, ""},
		{"small domain", []Document{ok, {Domain: "small", Text: "short"}}, BuildConfig{SeqLen: 16}, ErrDomainTooSmall,
			`data: domain "small" has 6 tokens (with separators) but one training sequence needs 17: domain too small`},
		{"empty domain", []Document{ok, {Text: "x"}}, BuildConfig{SeqLen: 4}, ErrMissingDomain, "document 1"},
		{"empty text", []Document{{Domain: "a"}}, BuildConfig{SeqLen: 4}, ErrMissingText, `document 0 (domain "a")`},
		{"bad utf8", []Document{{Domain: "a", Text: "\xff"}}, BuildConfig{SeqLen: 4}, ErrInvalidUTF8, ""},
		{"zero SeqLen", []Document{ok}, BuildConfig{}, ErrInvalidConfig, "SeqLen 0"},
		{"val too big", []Document{ok}, BuildConfig{SeqLen: 4, ValFraction: 0.9}, ErrInvalidConfig, "ValFraction"},
		{"val NaN", []Document{ok}, BuildConfig{SeqLen: 4, ValFraction: math.NaN()}, ErrInvalidConfig, "ValFraction"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Build(tc.docs, tc.cfg)
			if !errors.Is(err, tc.sentinel) {
				t.Fatalf("got %v, want %v", err, tc.sentinel)
			}
			if !strings.Contains(err.Error(), tc.contains) {
				t.Errorf("message %q lacks %q", err, tc.contains)
			}
		})
	}
	if err := DefaultBuildConfig().Validate(); err != nil {
		t.Errorf("default config: %v", err)
	}
}

func TestUnigramEntropy(t *testing.T) {
	all := make([]byte, 0, 256*3)
	for range 3 {
		for b := range 256 {
			all = append(all, byte(b))
		}
	}
	cases := []struct {
		in   []byte
		want float64
	}{
		{nil, 0},
		{[]byte("aaaa"), 0},
		{[]byte("abab"), 1},
		{[]byte("aabc"), 1.5},
		{[]byte("abcdefgh"), 3},
		{all, 8},
	}
	for _, tc := range cases {
		if got := UnigramEntropyBits(tc.in); math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("UnigramEntropyBits(%.20q) = %v, want %v", tc.in, got, tc.want)
		}
	}
	// Corpus entropy covers the train stream, separators included: one
	// document "aaabbbcc" + DocSep has counts {3, 3, 2, 1}.
	c, err := Build([]Document{{Domain: "d", Text: "aaabbbcc"}}, BuildConfig{SeqLen: 4})
	if err != nil {
		t.Fatal(err)
	}
	want := 0.0
	for _, k := range []float64{3, 3, 2, 1} {
		want -= k / 9 * math.Log2(k/9)
	}
	if got := c.Entropy(0); math.Abs(got-want) > 1e-12 {
		t.Errorf("Entropy = %v, want %v", got, want)
	}
	if id, ok := c.DomainID("d"); !ok || id != 0 {
		t.Errorf("DomainID(d) = %d, %v", id, ok)
	}
	if _, ok := c.DomainID("nope"); ok {
		t.Error("DomainID(nope) found")
	}
}

func TestFillPanicsOnShortBuffers(t *testing.T) {
	c, err := Build([]Document{{Domain: "d", Text: "abcdefgh"}}, BuildConfig{SeqLen: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if recover() == nil {
			t.Error("no panic")
		}
	}()
	c.Fill(Train, 0, make([]int32, 3), make([]int32, 4))
}
