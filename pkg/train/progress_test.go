package train

import (
	"bytes"
	"testing"
)

// TestProgressEvalNamesDomains: the evaluation line names each domain.
func TestProgressEvalNamesDomains(t *testing.T) {
	var b bytes.Buffer
	newProgress(&b, 10).eval(4, &Eval{BitsPerByte: []float64{2.5, 3.25, 1}}, []string{"go", "maths"})
	// a domain past the names (not expected) keeps its number
	if got, want := b.String(), "eval at step 4: val bits/byte by domain go:2.500 maths:3.250 2:1.000\n"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
