// Package yamlcheck finds what gopkg.in/yaml.v3 accepts silently when it
// decodes a document into a Go value but a user would want refused: a
// number with a fraction given for an integer field (yaml.v3 decodes
// "steps: 2.7" as 2).
package yamlcheck

import (
	"reflect"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Scalar is one scalar of a document: its dotted path (list items as
// [i]) and its text.
type Scalar struct {
	Path, Value string
}

// Fractional returns the scalars of doc that are floats with a fraction
// where the Go value v (a pointer or a value of the decoded type) has an
// integer; nil when there are none or the document does not parse (the
// strict decode reports that).
func Fractional(doc []byte, v any) []Scalar {
	var root yaml.Node
	if yaml.Unmarshal(doc, &root) != nil || len(root.Content) == 0 {
		return nil
	}
	var out []Scalar
	walk(root.Content[0], reflect.TypeOf(v), "", &out)
	return out
}

func walk(n *yaml.Node, t reflect.Type, path string, out *[]Scalar) {
	n, t, ok := resolve(n, t)
	if !ok {
		return
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if n.Kind == yaml.ScalarNode && n.Tag == "!!float" {
			if f, err := strconv.ParseFloat(strings.ReplaceAll(n.Value, "_", ""), 64); err != nil || f != float64(int64(f)) {
				*out = append(*out, Scalar{path, n.Value})
			}
		}
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			if f, ok := field(t, n.Content[i].Value); ok {
				walk(n.Content[i+1], f.Type, join(path, n.Content[i].Value), out)
			}
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			walk(n.Content[i+1], t.Elem(), join(path, n.Content[i].Value), out)
		}
	case reflect.Slice, reflect.Array:
		if n.Kind != yaml.SequenceNode {
			return
		}
		for i, c := range n.Content {
			walk(c, t.Elem(), path+"["+strconv.Itoa(i)+"]", out)
		}
	}
}

// resolve is the node n stands for (an alias's anchor) and the type t
// decodes into (pointers followed); false when either is missing.
func resolve(n *yaml.Node, t reflect.Type) (*yaml.Node, reflect.Type, bool) {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n, t, n != nil && t != nil
}

// field is t's field that key decodes into (its yaml tag's name, else
// the lowercased field name, as yaml.v3 does), inline structs included.
func field(t reflect.Type, key string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		if strings.Contains(opts, "inline") {
			it := f.Type
			for it.Kind() == reflect.Pointer {
				it = it.Elem()
			}
			if it.Kind() == reflect.Struct {
				if g, ok := field(it, key); ok {
					return g, true
				}
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		if name == key {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}
