package jobspec

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// An experiment is a base job spec and axes: every combination of the
// axes' values is one variant, an ordinary job. The file:
//
//	name: lbl-sweep             # 1-40 of [a-z0-9-]
//	base:                       # a job spec without its name
//	  model: {preset: science}
//	  data: {corpus: /data/corpus.jsonl, order: domain}
//	  accumulation: 4
//	  steps: 300
//	axes:                       # dotted spec paths, each with its values
//	  lbl.mode: [micro, global]
//	  seed: [1, 2]
//
// Variants are numbered in the order of the axes as written (the last
// axis varies fastest); a variant's job id is the experiment's name, its
// number and a hash of its spec, so submitting the same file twice
// submits nothing new and a changed file gives new ids.
type Experiment struct {
	Name     string
	Axes     []Axis
	Variants []Variant
}

// Axis is one dotted spec path and its values.
type Axis struct {
	Path   string
	Values []any
}

// Variant is one combination of the axes' values.
type Variant struct {
	Index  int
	JobID  string
	Values []any // one per axis
	Spec   []byte
	Parsed *Spec
}

// Label is the variant's values as "path=value" pairs, skipping the axes
// named in except.
func (v Variant) Label(axes []Axis, except ...string) string {
	var parts []string
	for i, a := range axes {
		if !slices.Contains(except, a.Path) {
			parts = append(parts, fmt.Sprintf("%s=%v", a.Path, v.Values[i]))
		}
	}
	return strings.Join(parts, " ")
}

// Limits of an experiment file.
const (
	MaxVariants = 256
	maxExpName  = 40
)

var (
	expNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)
	axisRE    = regexp.MustCompile(`^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*$`)
)

type experimentFile struct {
	Name string    `yaml:"name"`
	Base yaml.Node `yaml:"base"`
	Axes yaml.Node `yaml:"axes"`
}

// ParseExperiment reads an experiment file and expands it into its
// variants, each a valid job spec; errors name the field, or the variant
// and the spec's field.
func ParseExperiment(raw []byte) (*Experiment, error) {
	if len(raw) > MaxSize {
		return nil, fmt.Errorf("experiment: %d bytes, the limit is %d", len(raw), MaxSize)
	}
	var f experimentFile
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("experiment: empty file")
		}
		return nil, fmt.Errorf("experiment: %w", err)
	}
	if len(f.Name) > maxExpName || !expNameRE.MatchString(f.Name) {
		return nil, fmt.Errorf("experiment: name = %q: want 1-%d of [a-z0-9-], starting and ending with a letter or digit", f.Name, maxExpName)
	}
	var base map[string]any
	if f.Base.Kind != yaml.MappingNode {
		return nil, errors.New("experiment: base: want a job spec (a mapping)")
	}
	if err := f.Base.Decode(&base); err != nil {
		return nil, fmt.Errorf("experiment: base: %w", err)
	}
	if _, ok := base["name"]; ok {
		return nil, errors.New("experiment: base.name: leave it out (each variant is named after the experiment)")
	}
	axes, err := parseAxes(&f.Axes)
	if err != nil {
		return nil, err
	}
	e := &Experiment{Name: f.Name, Axes: axes}
	n := 1
	for _, a := range axes {
		n *= len(a.Values)
		if n > MaxVariants {
			return nil, fmt.Errorf("experiment: axes: more than %d variants", MaxVariants)
		}
	}
	for i := range n {
		v, err := e.variant(base, i)
		if err != nil {
			return nil, err
		}
		e.Variants = append(e.Variants, v)
	}
	return e, nil
}

func parseAxes(node *yaml.Node) ([]Axis, error) {
	if node.Kind != yaml.MappingNode || len(node.Content) == 0 {
		return nil, errors.New("experiment: axes: want at least one spec path with its values (e.g. lbl.mode: [micro, global])")
	}
	var axes []Axis
	for i := 0; i+1 < len(node.Content); i += 2 {
		path := node.Content[i].Value
		if !axisRE.MatchString(path) || path == "name" {
			return nil, fmt.Errorf("experiment: axes: %q is not a spec path (dotted field names, e.g. lbl.mode; not name)", path)
		}
		for _, a := range axes {
			if a.Path == path {
				return nil, fmt.Errorf("experiment: axes: %s twice", path)
			}
		}
		vals := node.Content[i+1]
		if vals.Kind != yaml.SequenceNode || len(vals.Content) == 0 {
			return nil, fmt.Errorf("experiment: axes.%s: want a non-empty list of values", path)
		}
		a := Axis{Path: path}
		for _, vn := range vals.Content {
			if vn.Kind != yaml.ScalarNode {
				return nil, fmt.Errorf("experiment: axes.%s: values must be scalars (line %d)", path, vn.Line)
			}
			var v any
			if err := vn.Decode(&v); err != nil {
				return nil, fmt.Errorf("experiment: axes.%s: %w", path, err)
			}
			a.Values = append(a.Values, v)
		}
		axes = append(axes, a)
	}
	return axes, nil
}

// variant builds variant i: the base with each axis's value set at its
// path and the experiment's name, checked as a job spec.
func (e *Experiment) variant(base map[string]any, i int) (Variant, error) {
	spec := deepCopy(base).(map[string]any)
	spec["name"] = e.Name
	v := Variant{Index: i, Values: make([]any, len(e.Axes))}
	rest := i
	for k := len(e.Axes) - 1; k >= 0; k-- {
		a := e.Axes[k]
		v.Values[k] = a.Values[rest%len(a.Values)]
		rest /= len(a.Values)
		if err := setPath(spec, strings.Split(a.Path, "."), v.Values[k]); err != nil {
			return Variant{}, fmt.Errorf("experiment: axes.%s: %w", a.Path, err)
		}
	}
	raw, err := yaml.Marshal(spec)
	if err != nil {
		return Variant{}, fmt.Errorf("experiment: variant %d: %w", i, err)
	}
	if v.Parsed, err = Parse(raw); err != nil {
		return Variant{}, fmt.Errorf("experiment: variant %d (%s): %w", i, v.Label(e.Axes), err)
	}
	v.Spec = raw
	sum := sha256.Sum256(raw)
	v.JobID = fmt.Sprintf("%s-%02d-%s", e.Name, i, hex.EncodeToString(sum[:3]))
	return v, nil
}

// setPath sets m[p0][p1]... = v, creating the mappings on the way.
func setPath(m map[string]any, path []string, v any) error {
	for _, p := range path[:len(path)-1] {
		next, ok := m[p]
		if !ok || next == nil {
			child := map[string]any{}
			m[p] = child
			m = child
			continue
		}
		child, ok := next.(map[string]any)
		if !ok {
			return fmt.Errorf("%s is not a mapping in base", p)
		}
		m = child
	}
	m[path[len(path)-1]] = v
	return nil
}

func deepCopy(v any) any {
	switch t := v.(type) {
	case map[string]any:
		c := make(map[string]any, len(t))
		for k, x := range t {
			c[k] = deepCopy(x)
		}
		return c
	case []any:
		c := make([]any, len(t))
		for i, x := range t {
			c[i] = deepCopy(x)
		}
		return c
	default:
		return v
	}
}
