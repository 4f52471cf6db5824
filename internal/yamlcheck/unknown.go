package yamlcheck

// Unknown keys: yaml.v3's strict decoding (Decoder.KnownFields) refuses a
// key the Go type has no field for as "line 9: field cof not found in type
// runconfig.LBL", naming a Go type the user never wrote. UnknownKey finds
// the same key by walking the document beside the type and names it the
// way the user writes it: "lbl.cof (line 9): unknown key; lbl has coef,
// mode, window; did you mean "coef"?".

import (
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// UnknownKeyError is a mapping key that the type decoded into has no field
// for.
type UnknownKeyError struct {
	Path       string   // the key's dotted path, list items as [i]: "lbl.cof", "servers[1].addr"
	Key        string   // the key as written: "cof"
	Line       int      // the key's line in the document (0: not known)
	In         string   // the path of the mapping holding the key ("": the top level)
	Known      []string // the keys that mapping takes, sorted
	Suggestion string   // the known key the key was likely meant to be; "" when none is close
}

func (e *UnknownKeyError) Error() string {
	var b strings.Builder
	b.WriteString(e.Path)
	if e.Line > 0 {
		fmt.Fprintf(&b, " (line %d)", e.Line)
	}
	b.WriteString(": unknown key; ")
	in := e.In
	if in == "" {
		in = "the top level"
	}
	if len(e.Known) == 0 {
		fmt.Fprintf(&b, "%s takes no keys", in)
	} else {
		fmt.Fprintf(&b, "%s has %s", in, strings.Join(e.Known, ", "))
	}
	if e.Suggestion != "" {
		fmt.Fprintf(&b, "; did you mean %q?", e.Suggestion)
	}
	return b.String()
}

// Within is e for a document that sits at path prefix of a larger one (an
// experiment's base: "base").
func (e *UnknownKeyError) Within(prefix string) *UnknownKeyError {
	c := *e
	c.Path = join(prefix, e.Path)
	c.In = prefix
	if e.In != "" {
		c.In = join(prefix, e.In)
	}
	return &c
}

// UnknownKey is the first key, in document order, of doc's first document
// that the Go value v (a pointer or a value of the decoded type) has no
// field for; nil when there is none or doc does not parse (the strict
// decode reports that).
func UnknownKey(doc []byte, v any) *UnknownKeyError {
	var root yaml.Node
	if yaml.Unmarshal(doc, &root) != nil {
		return nil
	}
	return FirstUnknown(&root, v)
}

// FirstUnknown is UnknownKey for a parsed node: a document, or any node
// of one (an experiment's base).
//
// The walk follows yaml.v3's decoding: yaml tags (a name, "-", inline
// structs and pointers to them, an inline map taking every other key),
// untagged fields under their lowercased names (an embedded struct
// without ",inline" included), pointers, slices and arrays of structs,
// maps' values, aliases and merge keys ("<<"). It stops at a value
// yaml.v3 hands over whole: a type implementing yaml.Unmarshaler, a
// yaml.Node, an interface. Each node is walked once per type, so aliases
// cost no more than their anchors and a node that holds itself ends.
func FirstUnknown(n *yaml.Node, v any) *UnknownKeyError {
	if n != nil && n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return nil
		}
		n = n.Content[0]
	}
	w := walker{seen: map[visit]bool{}}
	return w.walk(n, reflect.TypeOf(v), "")
}

// UnknownInPath is the first segment of a dotted path (["lbl", "mode"])
// that is not a key of the mapping it names in v's type, with Line 0; nil
// when every segment is a key, or the path goes on into a value that is
// not a struct (a map takes any key; the decode reports a scalar given
// keys).
func UnknownInPath(v any, path []string) *UnknownKeyError {
	t := reflect.TypeOf(v)
	for i, key := range path {
		t = target(t)
		if t == nil {
			return nil
		}
		switch t.Kind() {
		case reflect.Struct:
			keys := keysOf(t)
			if ft, ok := keys.fields[key]; ok {
				t = ft
			} else if keys.rest != nil {
				t = keys.rest
			} else {
				return keys.unknown(strings.Join(path[:i], "."), key, 0)
			}
		case reflect.Map:
			t = t.Elem()
		default:
			return nil
		}
	}
	return nil
}

type visit struct {
	n *yaml.Node
	t reflect.Type
}

type walker struct {
	// seen holds the (node, type) pairs walked or being walked: a pair
	// walked again finds nothing new (the walk stops at the first
	// unknown key).
	seen map[visit]bool
}

func (w *walker) walk(n *yaml.Node, t reflect.Type, path string) *UnknownKeyError {
	t = target(t)
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n == nil || t == nil || w.seen[visit{n, t}] {
		return nil
	}
	w.seen[visit{n, t}] = true
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind == yaml.MappingNode {
			return w.mapping(n, t, keysOf(t), path)
		}
	case reflect.Map:
		if n.Kind == yaml.MappingNode {
			return w.mapping(n, t, structKeys{rest: t.Elem()}, path)
		}
	case reflect.Slice, reflect.Array:
		if n.Kind == yaml.SequenceNode {
			for i, c := range n.Content {
				if u := w.walk(c, t.Elem(), path+"["+strconv.Itoa(i)+"]"); u != nil {
					return u
				}
			}
		}
	}
	return nil
}

// mapping walks the mapping n decoded into t (a struct or a map) whose
// keys are keys.
func (w *walker) mapping(n *yaml.Node, t reflect.Type, keys structKeys, path string) *UnknownKeyError {
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if isMerge(k) {
			// yaml.v3 decodes each merged mapping into the same value
			if u := w.merged(val, t, path); u != nil {
				return u
			}
			continue
		}
		key, ok := keyText(k)
		if !ok {
			continue // yaml.v3 reports a key that is not a scalar and skips a null one
		}
		ft, ok := keys.fields[key]
		if !ok {
			ft = keys.rest
		}
		if ft == nil {
			return keys.unknown(path, key, k.Line)
		}
		if u := w.walk(val, ft, join(path, key)); u != nil {
			return u
		}
	}
	return nil
}

// merged walks the value of a merge key: a mapping, or a list of them.
func (w *walker) merged(n *yaml.Node, t reflect.Type, path string) *UnknownKeyError {
	if n.Kind == yaml.SequenceNode {
		for _, c := range n.Content {
			if u := w.walk(c, t, path); u != nil {
				return u
			}
		}
		return nil
	}
	return w.walk(n, t, path)
}

// isMerge is yaml.v3's test for a merge key.
func isMerge(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Value == "<<" && (n.Tag == "" || n.Tag == "!" || n.Tag == "!!merge" || n.Tag == "tag:yaml.org,2002:merge")
}

// keyText is the string yaml.v3 decodes the key k into; false for a key
// that is not a scalar, or null.
func keyText(k *yaml.Node) (string, bool) {
	for k.Kind == yaml.AliasNode && k.Alias != nil {
		k = k.Alias
	}
	if k.Kind != yaml.ScalarNode {
		return "", false
	}
	// yaml.v3 skips a null key: it does not decode into a string
	return k.Value, k.ShortTag() != "!!null"
}

var (
	nodeType        = reflect.TypeFor[yaml.Node]()
	unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()
	// obsoleteUnmarshalerType is yaml.v2's interface, which yaml.v3 still
	// calls.
	obsoleteUnmarshalerType = reflect.TypeFor[interface {
		UnmarshalYAML(unmarshal func(any) error) error
	}]()
)

// target is the type yaml.v3 decodes a node into for t: t without its
// pointers; nil where yaml.v3 hands the node over whole (an Unmarshaler,
// a yaml.Node, an interface) or t is nil.
func target(t reflect.Type) reflect.Type {
	for t != nil {
		if t == nodeType || t.Kind() == reflect.Interface {
			return nil
		}
		if p := reflect.PointerTo(t); p.Implements(unmarshalerType) || p.Implements(obsoleteUnmarshalerType) {
			return nil
		}
		if t.Kind() != reflect.Pointer {
			return t
		}
		t = t.Elem()
	}
	return nil
}

// structKeys is what a mapping decoded into a struct may hold: its keys
// with their fields' types, and the value type of an inline map that
// takes every other key (nil: none).
type structKeys struct {
	fields map[string]reflect.Type
	rest   reflect.Type
}

// keysOf is t's keys as yaml.v3's getStructInfo finds them.
func keysOf(t reflect.Type) structKeys {
	keys := structKeys{fields: map[string]reflect.Type{}}
	addKeys(t, &keys, 0)
	return keys
}

func addKeys(t reflect.Type, keys *structKeys, depth int) {
	if depth > 32 {
		return // yaml.v3 recurses without end on a struct inlining itself; so would this
	}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() && !f.Anonymous {
			continue
		}
		tag := f.Tag.Get("yaml")
		if tag == "" && !strings.Contains(string(f.Tag), ":") {
			tag = string(f.Tag)
		}
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if slices.Contains(strings.Split(opts, ","), "inline") {
			switch ft := f.Type; ft.Kind() {
			case reflect.Map:
				keys.rest = ft.Elem()
			case reflect.Struct, reflect.Pointer:
				for ft.Kind() == reflect.Pointer {
					ft = ft.Elem()
				}
				// an inline Unmarshaler gets the whole mapping and adds no keys
				if ft.Kind() == reflect.Struct && !reflect.PointerTo(ft).Implements(unmarshalerType) {
					addKeys(ft, keys, depth+1)
				}
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		keys.fields[name] = f.Type
	}
}

// unknown is the error for key, not one of keys, in the mapping at path.
func (keys structKeys) unknown(path, key string, line int) *UnknownKeyError {
	known := make([]string, 0, len(keys.fields))
	for k := range keys.fields {
		known = append(known, k)
	}
	slices.Sort(known)
	return &UnknownKeyError{Path: join(path, key), Key: key, Line: line, In: path, Known: known, Suggestion: suggest(key, known)}
}

// synonyms are keys of other tools (torchrun, Hugging Face, Kubernetes,
// Compose) for what the keys they map to mean here, folded (see fold).
var synonyms = map[string]string{
	"workdir": "working_dir", "cwd": "working_dir", "workingdirectory": "working_dir", "chdir": "working_dir",
	"environment": "env", "cmd": "command", "entrypoint": "command", "program": "command",
	"arguments": "args", "argv": "args",
	"nprocpernode": "ranks", "nproc": "ranks", "numranks": "ranks", "worldsize": "ranks", "nprocs": "ranks",
	"maxsteps": "steps", "trainsteps": "steps", "totalsteps": "steps", "iterations": "steps",
	"learningrate": "lr", "batchsize": "micro_batch", "microbatchsize": "micro_batch",
	"gradientaccumulationsteps": "accumulation", "gradaccum": "accumulation",
	"maxrestarts": "max_restarts", "restarts": "max_restarts",
}

// suggest is the key of known that key was likely meant to be: one equal
// to it but for case, '_' and '-', or another tool's name for it (see
// synonyms), else the closest within two edits (a transposition counts
// one) that leaves most of the longer one standing (not "port" for
// "host"); "" when none is.
func suggest(key string, known []string) string {
	for _, k := range known {
		if fold(k) == fold(key) {
			return k
		}
	}
	if s, ok := synonyms[fold(key)]; ok && slices.Contains(known, s) {
		return s
	}
	// up to 2 edits; 3 in a key of 10 or more letters (lease_ttl_secs)
	best, bestD := "", 3
	if utf8.RuneCountInString(key) >= 10 {
		bestD = 4
	}
	for _, k := range known {
		d := distance(strings.ToLower(key), strings.ToLower(k), bestD)
		if d < bestD && 2*d < max(utf8.RuneCountInString(key), utf8.RuneCountInString(k)) {
			best, bestD = k, d
		}
	}
	return best
}

// fold is s lowercased without '_' and '-'.
func fold(s string) string {
	return strings.ToLower(strings.NewReplacer("_", "", "-", "").Replace(s))
}

// distance is the optimal string alignment distance between a and b
// (insertions, deletions, substitutions and transpositions of adjacent
// runes), or limit when it is limit or more.
func distance(a, b string, limit int) int {
	if d := utf8.RuneCountInString(a) - utf8.RuneCountInString(b); d >= limit || -d >= limit {
		return limit
	}
	ra, rb := []rune(a), []rune(b)
	// rows i-2, i-1 and i of the table
	prev2, prev, cur := make([]int, len(rb)+1), make([]int, len(rb)+1), make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return min(prev[len(rb)], limit)
}
