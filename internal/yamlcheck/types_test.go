package yamlcheck

import (
	"errors"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

type typed struct {
	Steps  int           `yaml:"steps"`
	Rate   float64       `yaml:"rate"`
	On     bool          `yaml:"on"`
	Name   string        `yaml:"name"`
	Wait   time.Duration `yaml:"wait"`
	Nested struct {
		Sizes []int `yaml:"sizes"`
	} `yaml:"nested"`
	Env map[string]string `yaml:"env"`
}

// TestTypeErrors: each wrong type is named by its field's path and line,
// with what was given and what the field takes; a field yaml.v3 does not
// complain about is left alone.
func TestTypeErrors(t *testing.T) {
	doc := `steps: "2"
rate: fast
on: "true"
name: [a, b]
wait: 1 hour and more
nested: {sizes: [1, "x", 3]}
env: {A: {b: c}}
`
	var v typed
	err := yaml.Unmarshal([]byte(doc), &v)
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		t.Fatalf("yaml.v3 gave %v, want a *yaml.TypeError", err)
	}
	got := TypeErrors([]byte(doc), &v, err)
	if !errors.As(got, &te) {
		t.Fatalf("%v does not unwrap to the *yaml.TypeError", got)
	}
	for _, want := range []string{
		`steps (line 1): "2" is a string; want an integer (write it without quotes)`,
		`rate (line 2): "fast" is a string; want a number`,
		`on (line 3): "true" is a string; want true or false (write it without quotes)`,
		`name (line 4): a list is given; want a string`,
		`wait (line 5): "1 hour and more" is a string; want a duration such as 90s or 5m`,
		`nested.sizes[1] (line 6): "x" is a string; want an integer`,
		`env.A (line 7): a mapping is given; want a string`,
	} {
		if !strings.Contains(got.Error(), want) {
			t.Errorf("%q lacks %q", got, want)
		}
	}
	if n := strings.Count(got.Error(), "\n"); n != 7 {
		t.Errorf("%d entries in %q, want 7", n, got)
	}
}

// TestTypeErrorsPassOthers: an error that is no *yaml.TypeError, or whose
// entries name no field of the document, is returned as it is.
func TestTypeErrorsPassOthers(t *testing.T) {
	other := errors.New("yaml: line 2: mapping values are not allowed in this context")
	if got := TypeErrors([]byte("steps: 1\n"), &typed{}, other); got != other {
		t.Errorf("a syntax error became %v", got)
	}
	unmatched := &yaml.TypeError{Errors: []string{"line 9: cannot unmarshal !!str `2` into int"}}
	if got := TypeErrors([]byte("steps: 1\n"), &typed{}, unmatched); got != error(unmatched) {
		t.Errorf("an entry of no field became %v", got)
	}
	if got := TypeErrors([]byte(": : :"), &typed{}, unmatched); got != error(unmatched) {
		t.Errorf("with a document that does not parse: %v", got)
	}
}
