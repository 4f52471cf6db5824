package yamlcheck

import (
	"bytes"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// A syntax error names the line an editor shows it on: yaml.v3's parser
// errors count from 0, its scanner errors from 1.
func TestDecodeSyntaxLine(t *testing.T) {
	for _, tc := range []struct{ doc, want string }{
		{"name: a\nmodel:\n  preset: tiny\n  d: [1, 2\nsteps: 3\n", "yaml: line 4: did not find expected ',' or ']'"},
		{"name: a\nmodel:\n  preset: tiny\n bad: 1\nsteps: 3\n", "yaml: line 4: did not find expected key"},
		{"a: 1\n- b\n", "yaml: line 2: did not find expected key"},
		{"- a\nb: 1\n", "yaml: line 2: did not find expected '-' indicator"},
		{"!x!y a: 1\n", "yaml: line 1: found undefined tag handle"},
		// scanner errors were right already
		{"name: a\nmodel:\n  preset: \"tiny\nsteps: 3\n", "yaml: line 3: found unexpected end of stream"},
		{"name: a\nsteps: 3\n  bad: 1\n", "yaml: line 3: mapping values are not allowed in this context"},
	} {
		var v any
		err := Decode(yaml.NewDecoder(bytes.NewReader([]byte(tc.doc))), &v)
		if err == nil || err.Error() != tc.want {
			t.Errorf("%q: %v, want %s", tc.doc, err, tc.want)
		}
	}
	// other errors pass as they are
	var n int
	err := Decode(yaml.NewDecoder(strings.NewReader("a: 1\n")), &n)
	if _, ok := err.(*yaml.TypeError); !ok {
		t.Errorf("a type error became %T: %v", err, err)
	}
}
