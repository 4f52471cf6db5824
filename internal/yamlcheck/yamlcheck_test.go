package yamlcheck

import (
	"slices"
	"testing"

	"gopkg.in/yaml.v3"
)

type inner struct {
	Count int     `yaml:"count"`
	Rate  float64 `yaml:"rate"`
}

type outer struct {
	Steps  int              `yaml:"steps"`
	Seed   uint64           `yaml:"seed,omitempty"`
	Inner  inner            `yaml:"inner"`
	Ptr    *inner           `yaml:"ptr"`
	List   []inner          `yaml:"list"`
	Ints   []int            `yaml:"ints"`
	ByName map[string]int32 `yaml:"by_name"`
	Name   string           `yaml:"name"`
	Plain  int
}

func TestFractional(t *testing.T) {
	doc := `
steps: 2.7
seed: 3.0
inner: {count: 1.5, rate: 0.5}
ptr: {count: 2e-1}
list: [{count: 4}, {count: 4.25}]
ints: [1, 2.5, 3]
by_name: {a: 1, b: 0.5}
name: 1.5
plain: 7.5
unknown: 1.5
`
	var got []string
	for _, s := range Fractional([]byte(doc), &outer{}) {
		got = append(got, s.Path+"="+s.Value)
	}
	want := []string{"steps=2.7", "inner.count=1.5", "ptr.count=2e-1", "list[1].count=4.25", "ints[1]=2.5", "by_name.b=0.5", "plain=7.5"}
	if !slices.Equal(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	if got := Fractional([]byte("steps: 2\ninner: {rate: 1.5}\n"), outer{}); got != nil {
		t.Errorf("whole numbers and float fields: %q", got)
	}
	if got := Fractional([]byte("steps: [unclosed"), outer{}); got != nil {
		t.Errorf("a document that does not parse: %q", got)
	}
}

// TestExpandedSize: aliases count as their anchors' nodes, the count
// stops past the limit, and a node holding itself ends.
func TestExpandedSize(t *testing.T) {
	size := func(doc string, limit int) int {
		var n yaml.Node
		if err := yaml.Unmarshal([]byte(doc), &n); err != nil {
			t.Fatal(err)
		}
		return ExpandedSize(&n, limit)
	}
	// document, mapping, key "a" (1 + 1), value "xy" (1 + 2)
	if got := size("a: xy\n", 100); got != 7 {
		t.Fatalf("a: xy: %d, want 7", got)
	}
	if got := size("a: &x xy\nb: *x\n", 100); got != 7+2+(1+3) {
		t.Fatalf("one alias: %d, want 13", got)
	}
	laughs := "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
	for i := 'b'; i <= 'i'; i++ {
		p := string(i - 1)
		laughs += string(i) + ": &" + string(i) + " [*" + p + ", *" + p + ", *" + p + ", *" + p + ", *" + p + ", *" + p + ", *" + p + ", *" + p + ", *" + p + ", *" + p + "]\n"
	}
	if got := size(laughs, 1<<20); got <= 1<<20 || got > 1<<20+100 {
		t.Fatalf("a billion laughs: %d, want just past the limit", got)
	}
	if got := size("a: &a [*a, *a]\n", 1000); got <= 1000 {
		t.Fatalf("a node that holds itself: %d, want past the limit", got)
	}
}
