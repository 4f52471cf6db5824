package data

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

const testDemoBytes = 30_000

func demoSizes(docs []Document) map[string]int {
	sizes := map[string]int{}
	for _, d := range docs {
		sizes[d.Domain] += len(d.Text)
	}
	return sizes
}

func TestDemo(t *testing.T) {
	opts := DemoOptions{Seed: 3, BytesPerDomain: testDemoBytes}
	a, err := Demo(opts)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Demo(opts)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(a, b) {
		t.Error("Demo is not deterministic")
	}
	sizes := demoSizes(a)
	if len(sizes) < 3 || len(sizes) != len(DemoDomains()) {
		t.Fatalf("domains %v", sizes)
	}
	for _, dom := range DemoDomains() {
		if n := sizes[dom]; n < testDemoBytes || n >= testDemoBytes+maxDemoDoc {
			t.Errorf("%s: %d bytes, want [%d, %d)", dom, n, testDemoBytes, testDemoBytes+maxDemoDoc)
		}
	}
	for i, d := range a {
		if d.Text == "" || len(d.Text) > maxDemoDoc || !utf8.ValidString(d.Text) {
			t.Fatalf("doc %d (%s): %d bytes, valid UTF-8 %v", i, d.Domain, len(d.Text), utf8.ValidString(d.Text))
		}
	}

	c, err := Demo(DemoOptions{Seed: 4, BytesPerDomain: testDemoBytes})
	if err != nil {
		t.Fatal(err)
	}
	for _, dom := range DemoDomains() {
		if slices.Equal(byDomain(a, dom), byDomain(c, dom)) {
			t.Errorf("%s: seeds 3 and 4 gave the same documents", dom)
		}
	}

	cfg := BuildConfig{SeqLen: 64, ValFraction: 0.05, Seed: 1}
	corpus, err := Build(a, cfg)
	if err != nil {
		t.Fatal(err)
	}
	checkPacking(t, corpus, a, cfg)
	for _, st := range corpus.Stats() {
		if st.ValSeqs < 1 || st.TrainSeqs < 1 || st.EntropyBits < 2 || st.EntropyBits > 7 {
			t.Errorf("%+v", st)
		}
	}
}

func byDomain(docs []Document, dom string) []Document {
	var out []Document
	for _, d := range docs {
		if d.Domain == dom {
			out = append(out, d)
		}
	}
	return out
}

func TestDemoOptions(t *testing.T) {
	docs, err := Demo(DemoOptions{BytesPerDomain: 5000, Domains: []string{"records", "arith"}})
	if err != nil {
		t.Fatal(err)
	}
	if docs[0].Domain != "records" || docs[len(docs)-1].Domain != "arith" || len(demoSizes(docs)) != 2 {
		t.Errorf("domains not in the requested order: %v", demoSizes(docs))
	}
	if _, err := Demo(DemoOptions{Domains: []string{"arith", "poetry"}}); !errors.Is(err, ErrUnknownDomain) ||
		!strings.Contains(err.Error(), `"poetry"`) {
		t.Errorf("unknown domain: %v", err)
	}
	if _, err := Demo(DemoOptions{BytesPerDomain: -1}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("negative size: %v", err)
	}
	missing := filepath.Join(t.TempDir(), "no-go")
	_, err = Demo(DemoOptions{BytesPerDomain: 1000, Domains: []string{"go"}, GoRoot: missing})
	if !errors.Is(err, ErrNoGoSource) || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing GOROOT: %v", err)
	}
	// A tree with src/ but too little Go source.
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "src", "p"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "src", "p", "p.go"), []byte("package p\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = Demo(DemoOptions{BytesPerDomain: 1000, Domains: []string{"go"}, GoRoot: root})
	if !errors.Is(err, ErrNoGoSource) || !strings.Contains(err.Error(), "only 9 bytes") {
		t.Errorf("small GOROOT: %v", err)
	}
}

// Every worked step "a op b = c" in the arith domain is correct.
func TestDemoArithSteps(t *testing.T) {
	docs, err := Demo(DemoOptions{Seed: 11, BytesPerDomain: testDemoBytes, Domains: []string{"arith"}})
	if err != nil {
		t.Fatal(err)
	}
	step := regexp.MustCompile(`(?:^|[ ;:])(-?\d+)([-+*/])(\d+) = (-?\d+)`)
	checked := 0
	for _, d := range docs {
		for _, m := range step.FindAllStringSubmatch(d.Text, -1) {
			a, _ := strconv.Atoi(m[1])
			b, _ := strconv.Atoi(m[3])
			c, _ := strconv.Atoi(m[4])
			var want int
			switch m[2] {
			case "+":
				want = a + b
			case "-":
				want = a - b
			case "*":
				want = a * b
			case "/":
				if a%b != 0 {
					t.Errorf("inexact division %q", m[0])
				}
				want = a / b
			}
			if c != want {
				t.Errorf("wrong step %q", m[0])
			}
			checked++
		}
	}
	if checked < 500 {
		t.Errorf("only %d steps checked", checked)
	}
}

func TestChunkLines(t *testing.T) {
	text := "package p\n\nfunc a() {}\n\n" + strings.Repeat("x", 50) + "é" + strings.Repeat("y", 30) + "\n\nfunc b() {}\n"
	for _, max := range []int{4, 7, 16, 40, 1000} {
		pieces := chunkLines(text, max)
		var joined strings.Builder
		for _, p := range pieces {
			if len(p) > max || !utf8.ValidString(p) || strings.TrimSpace(p) == "" {
				t.Errorf("max %d: bad piece %q", max, p)
			}
			joined.WriteString(p)
		}
		if strings.ReplaceAll(joined.String(), "\n", "") != strings.ReplaceAll(text, "\n", "") {
			t.Errorf("max %d: pieces lost text: %q", max, pieces)
		}
	}
}

// TestCorpusFile reports on an external corpus when SWITCHYARD_CORPUS names
// one (for example the output of shared/corpus/build_corpus.sh).
func TestCorpusFile(t *testing.T) {
	path := os.Getenv("SWITCHYARD_CORPUS")
	if path == "" {
		t.Skip("SWITCHYARD_CORPUS not set")
	}
	docs, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultBuildConfig()
	c, err := Build(docs, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %d documents, SeqLen %d, ValFraction %v", path, len(docs), cfg.SeqLen, cfg.ValFraction)
	t.Logf("%-12s %6s %6s %10s %9s %8s %7s %8s", "domain", "docs", "valdoc", "trainbytes", "valbytes", "train", "val", "H(bits)")
	for _, st := range c.Stats() {
		t.Logf("%-12s %6d %6d %10d %9d %8d %7d %8.3f", st.Domain, st.TrainDocs, st.ValDocs,
			st.TrainTokens, st.ValTokens, st.TrainSeqs, st.ValSeqs, st.EntropyBits)
		if st.ValSeqs < 1 {
			t.Errorf("%s: no validation sequences", st.Domain)
		}
	}
}
