package yamlcheck

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// typeEntry is one entry of a yaml.v3 *yaml.TypeError (v3.0.1's
// decode.go): "line 4: cannot unmarshal !!str `2` into int".
var typeEntry = regexp.MustCompile("^line (\\d+): cannot unmarshal (!!\\w+)(?: `(.*)`)? into (.+)$")

// TypeErrors names the field of each entry of err, a *yaml.TypeError from
// decoding doc into v (a pointer to or a value of the decoded type), and
// says in words what was given and what the field takes: "line 4: cannot
// unmarshal !!str `2` into int" becomes `ranks (line 4): "2" is a string;
// want an integer (write it without quotes)`. An entry whose field is not
// found, and any other error, pass as they are.
func TypeErrors(doc []byte, v any, err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return err
	}
	var root yaml.Node
	if yaml.Unmarshal(doc, &root) != nil || len(root.Content) == 0 {
		return err
	}
	var nodes []located
	locate(root.Content[0], reflect.TypeOf(v), "", &nodes)
	entries := make([]string, len(te.Errors))
	changed := false
	for i, e := range te.Errors {
		entries[i] = e
		m := typeEntry.FindStringSubmatch(e)
		if m == nil {
			continue
		}
		line, _ := strconv.Atoi(m[1])
		if n, ok := find(nodes, line, m[2], m[3], m[4]); ok {
			entries[i] = fmt.Sprintf("%s (line %d): %s; want %s", n.path, line, given(n.node), want(n.t, n.node))
			changed = true
		}
	}
	if !changed {
		return err
	}
	return &typeErrors{msg: "yaml: wrong types:\n  " + strings.Join(entries, "\n  "), err: err}
}

// typeErrors is a *yaml.TypeError with its fields named; it unwraps to it.
type typeErrors struct {
	msg string
	err error
}

func (e *typeErrors) Error() string { return e.msg }
func (e *typeErrors) Unwrap() error { return e.err }

// located is a node of the document with its dotted path and the Go type
// it decodes into.
type located struct {
	node *yaml.Node
	path string
	t    reflect.Type
}

// locate lists every node under n that decodes into a field, map value
// or list item of t (an unknown key's node is not listed).
func locate(n *yaml.Node, t reflect.Type, path string, out *[]located) {
	n, t, ok := resolve(n, t)
	if !ok {
		return
	}
	if path != "" {
		*out = append(*out, located{n, path, t})
	}
	switch {
	case t.Kind() == reflect.Struct && n.Kind == yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			if f, ok := field(t, n.Content[i].Value); ok {
				locate(n.Content[i+1], f.Type, join(path, n.Content[i].Value), out)
			}
		}
	case t.Kind() == reflect.Map && n.Kind == yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			locate(n.Content[i+1], t.Elem(), join(path, n.Content[i].Value), out)
		}
	case (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) && n.Kind == yaml.SequenceNode:
		for i, c := range n.Content {
			locate(c, t.Elem(), path+"["+strconv.Itoa(i)+"]", out)
		}
	}
}

// find is the node of an entry: on its line, with its tag and (for a
// scalar) its value, which yaml.v3 cuts to 7 bytes and "..." when longer
// than 10; of those, the first that decodes into the entry's Go type
// (into), else the first.
func find(nodes []located, line int, tag, value, into string) (located, bool) {
	var first *located
	for i, n := range nodes {
		if n.node.Line != line || n.node.ShortTag() != tag {
			continue
		}
		v := n.node.Value
		if len(v) > 10 {
			v = v[:7] + "..."
		}
		if n.node.Kind == yaml.ScalarNode && v != value {
			continue
		}
		if n.t.String() == into {
			return n, true
		}
		if first == nil {
			first = &nodes[i]
		}
	}
	if first == nil {
		return located{}, false
	}
	return *first, true
}

// given says what a node is: `"2" is a string`, "a list".
func given(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping is given"
	case yaml.SequenceNode:
		return "a list is given"
	}
	what := map[string]string{"!!str": "a string", "!!int": "an integer", "!!float": "a number", "!!bool": "true/false", "!!null": "empty"}[n.ShortTag()]
	if what == "" {
		what = "a " + strings.TrimPrefix(n.ShortTag(), "!!")
	}
	v := n.Value
	if len(v) > 40 {
		v = v[:40] + "..."
	}
	return fmt.Sprintf("%q is %s", v, what)
}

// want says what a Go type takes, and how to write a quoted value that
// would be one.
func want(t reflect.Type, n *yaml.Node) string {
	var w string
	var parses bool
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if t.PkgPath() == "time" && t.Name() == "Duration" {
			return "a duration such as 90s or 5m"
		}
		_, err := strconv.ParseInt(n.Value, 10, 64)
		w, parses = "an integer", err == nil
	case reflect.Float32, reflect.Float64:
		_, err := strconv.ParseFloat(n.Value, 64)
		w, parses = "a number", err == nil
	case reflect.Bool:
		_, err := strconv.ParseBool(n.Value)
		w, parses = "true or false", err == nil
	case reflect.String:
		w = "a string"
	case reflect.Slice, reflect.Array:
		w = "a list"
	case reflect.Map, reflect.Struct:
		w = "a mapping"
	default:
		w = t.String()
	}
	if parses && n.Kind == yaml.ScalarNode && n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) != 0 {
		w += " (write it without quotes)"
	}
	return w
}
