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

	"github.com/switchyard-ml/switchyard/internal/yamlcheck"
	"github.com/switchyard-ml/switchyard/pkg/fsutil"
	"github.com/switchyard-ml/switchyard/pkg/runconfig"
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
// Where a sweep is not a grid (the micro-batch LBL has no window; a
// control changes two fields at once), named variants overlay the base,
// crossed with the axes:
//
//	axes:
//	  seed: [1, 2]
//	variants:                   # name: fields merged into base (not an axis's field)
//	  micro-8:   {lbl: {mode: micro}}
//	  global-32: {lbl: {mode: global, window: 4}}
//	  random-8:  {lbl: {mode: micro}, data: {order: domain_mixed}}
//
// The variants are one more axis, "variant", after the others. Variants are
// numbered in the order of the axes as written (the last axis varies
// fastest); a variant's job id is the experiment's name, its number and a
// hash of its spec, so submitting the same file twice submits nothing new
// and a changed file gives new ids.
//
// Keys are checked against the job spec in the file (base, each axis's
// path, each variant), so an unknown one is named with its line there; an
// axis listing a value twice, a variant setting the field of an axis of
// several values, or two variants that are the same job, are refused.
type Experiment struct {
	Name     string
	Axes     []Axis
	Variants []Variant
}

// Axis is one dotted spec path and its values, or (Path "variant") the
// named variants: Values their names, Overlays their fields.
type Axis struct {
	Path     string
	Values   []any
	Overlays []map[string]any // the "variant" axis only
}

// VariantAxis is the Path of the named variants' axis.
const VariantAxis = "variant"

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

// Limits of an experiment file: its variants, and their specs' bytes
// together (a file of MaxSize bytes would otherwise make 256 specs of
// nearly MaxSize each, all submitted).
const (
	MaxVariants        = 256
	MaxExperimentBytes = 4 * MaxSize
	maxExpName         = 40
)

var (
	expNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)
	varNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,39}$`)
	axisRE    = regexp.MustCompile(`^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*$`)
)

type experimentFile struct {
	Name     string    `yaml:"name"`
	Base     yaml.Node `yaml:"base"`
	Axes     yaml.Node `yaml:"axes"`
	Variants yaml.Node `yaml:"variants"`
}

// ParseExperiment reads an experiment file and expands it into its
// variants, each a valid job spec; errors name the field, or the variant
// and the spec's field.
func ParseExperiment(raw []byte) (*Experiment, error) {
	if len(raw) > MaxSize {
		return nil, fmt.Errorf("experiment: %d bytes, the limit is %d", len(raw), MaxSize)
	}
	if _, err := checkExpanded(raw, "experiment", maxExpanded); err != nil {
		return nil, err
	}
	var f experimentFile
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := yamlcheck.Decode(dec, &f); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("experiment: empty file")
		}
		if u := yamlcheck.UnknownKey(raw, &f); u != nil {
			return nil, fmt.Errorf("experiment: %w", u)
		}
		return nil, fmt.Errorf("experiment: %w", yamlcheck.TypeErrors(raw, &f, err))
	}
	if len(f.Name) > maxExpName || !expNameRE.MatchString(f.Name) {
		return nil, fmt.Errorf("experiment: name = %q: want 1-%d of [a-z0-9-], starting and ending with a letter or digit", f.Name, maxExpName)
	}
	var base map[string]any
	if f.Base.Kind != yaml.MappingNode {
		return nil, errors.New("experiment: base: want a job spec (a mapping)")
	}
	// unknown keys are found here, in the file, not in the generated
	// variants (whose lines are no lines of the file)
	if u := yamlcheck.FirstUnknown(&f.Base, &Spec{}); u != nil {
		return nil, fmt.Errorf("experiment: %w", u.Within("base"))
	}
	if err := f.Base.Decode(&base); err != nil {
		return nil, fmt.Errorf("experiment: base: %w", err)
	}
	if _, ok := base["name"]; ok {
		return nil, errors.New("experiment: base.name: leave it out (each variant is named after the experiment)")
	}
	var axes []Axis
	if f.Axes.Kind != 0 || f.Variants.Kind == 0 {
		a, err := parseAxes(&f.Axes)
		if err != nil {
			return nil, err
		}
		axes = a
	}
	if f.Variants.Kind != 0 {
		va, err := parseVariants(&f.Variants)
		if err != nil {
			return nil, err
		}
		// a variant setting the field of an axis of several values
		// overrides them all: its combinations would be one job again
		for _, a := range axes {
			for k, o := range va.Overlays {
				if len(a.Values) > 1 && hasPath(o, strings.Split(a.Path, ".")) {
					return nil, fmt.Errorf("experiment: variants.%s sets %s, which is an axis of %d values: the variant would override them all (set it in the axis or in the variants, not both)", va.Values[k], a.Path, len(a.Values))
				}
			}
		}
		axes = append(axes, va)
	}
	e := &Experiment{Name: f.Name, Axes: axes}
	n := 1
	var sizes []string
	for _, a := range axes {
		n = min(n*len(a.Values), MaxSize*MaxSize) // each axis has fewer values than the file has bytes
		sizes = append(sizes, fmt.Sprint(len(a.Values)))
	}
	if n > MaxVariants {
		return nil, fmt.Errorf("experiment: axes: %d variants (%s); the limit is %d", n, strings.Join(sizes, " x "), MaxVariants)
	}
	seen := map[string]int{} // a variant's parsed spec: its index
	total := 0
	for i := range n {
		v, err := e.variant(base, i)
		if err != nil {
			return nil, err
		}
		if total += len(v.Spec); total > MaxExperimentBytes {
			return nil, fmt.Errorf("experiment: its %d variants' specs are more than %s together (the limit)", n, fsutil.Size(MaxExperimentBytes))
		}
		// the same job twice: equal values the axes' checks do not see
		// ("1" and 1 for a string field, two variants with equal fields)
		canon, err := v.Parsed.Marshal()
		if err != nil {
			return nil, fmt.Errorf("experiment: variant %d: %w", i, err)
		}
		if j, ok := seen[string(canon)]; ok {
			return nil, fmt.Errorf("experiment: variant %d (%s) is variant %d (%s) again: the same job spec", i, v.Label(axes), j, e.Variants[j].Label(axes))
		}
		seen[string(canon)] = i
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
		if !axisRE.MatchString(path) || path == "name" || path == VariantAxis {
			return nil, fmt.Errorf("experiment: axes: %q is not a spec path (dotted field names, e.g. lbl.mode; not name or variant)", path)
		}
		for _, a := range axes {
			if a.Path == path {
				return nil, fmt.Errorf("experiment: axes: %s twice", path)
			}
		}
		if u := yamlcheck.UnknownInPath(&Spec{}, strings.Split(path, ".")); u != nil {
			u.Path, u.Line = "axes."+u.Path, node.Content[i].Line
			if u.In == "" {
				u.In = "a job spec"
			}
			return nil, fmt.Errorf("experiment: %w", u)
		}
		vals := node.Content[i+1]
		if vals.Kind != yaml.SequenceNode || len(vals.Content) == 0 {
			return nil, fmt.Errorf("experiment: axes.%s: want a non-empty list of values", path)
		}
		a := Axis{Path: path}
		lines := map[string]int{} // a value, as YAML writes it again: its line
		for _, vn := range vals.Content {
			if vn.Kind != yaml.ScalarNode {
				return nil, fmt.Errorf("experiment: axes.%s: values must be scalars (line %d)", path, vn.Line)
			}
			var v any
			if err := vn.Decode(&v); err != nil {
				return nil, fmt.Errorf("experiment: axes.%s: %w", path, err)
			}
			if err := typeCheck(vn, strings.Split(path, ".")...); err != nil {
				return nil, fmt.Errorf("experiment: axes.%s: %w", path, err)
			}
			// 1 and 1.0 alike: two variants would be one job twice
			canon, err := yaml.Marshal(v)
			if err != nil {
				return nil, fmt.Errorf("experiment: axes.%s: %w", path, err)
			}
			if line, ok := lines[string(canon)]; ok {
				return nil, fmt.Errorf("experiment: axes.%s (line %d): %s is a value twice (first on line %d): its variants would be the same job", path, vn.Line, vn.Value, line)
			}
			lines[string(canon)] = vn.Line
			a.Values = append(a.Values, v)
		}
		axes = append(axes, a)
	}
	return axes, nil
}

// typeCheck decodes n, set at path in an otherwise empty spec, into a
// Spec: a value of the wrong type is named on its line of the file (the
// generated variants' lines are no lines of the file).
func typeCheck(n *yaml.Node, path ...string) error {
	for i := len(path) - 1; i >= 0; i-- {
		key := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: path[i]}
		n = &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Content: []*yaml.Node{key, n}}
	}
	var s Spec
	err := n.Decode(&s)
	if te, ok := err.(*yaml.TypeError); ok {
		return errors.New(strings.Join(te.Errors, "; "))
	}
	return err
}

// parseVariants reads the named variants into the "variant" axis.
func parseVariants(node *yaml.Node) (Axis, error) {
	a := Axis{Path: VariantAxis}
	if node.Kind != yaml.MappingNode || len(node.Content) == 0 {
		return a, errors.New("experiment: variants: want named overlays of base (e.g. micro-8: {lbl: {mode: micro}})")
	}
	for i := 0; i+1 < len(node.Content); i += 2 {
		name := node.Content[i].Value
		if !varNameRE.MatchString(name) {
			return a, fmt.Errorf("experiment: variants: name %q: want 1-40 of [a-z0-9._-], starting with a letter or digit", name)
		}
		if slices.Contains(a.Values, any(name)) {
			return a, fmt.Errorf("experiment: variants: %s twice", name)
		}
		var o map[string]any
		if node.Content[i+1].Kind != yaml.MappingNode {
			return a, fmt.Errorf("experiment: variants.%s: want spec fields (a mapping)", name)
		}
		if u := yamlcheck.FirstUnknown(node.Content[i+1], &Spec{}); u != nil {
			return a, fmt.Errorf("experiment: %w", u.Within("variants."+name))
		}
		if err := node.Content[i+1].Decode(&o); err != nil {
			return a, fmt.Errorf("experiment: variants.%s: %w", name, err)
		}
		if err := typeCheck(node.Content[i+1]); err != nil {
			return a, fmt.Errorf("experiment: variants.%s: %w", name, err)
		}
		if _, ok := o["name"]; ok {
			return a, fmt.Errorf("experiment: variants.%s.name: leave it out (each variant is named after the experiment)", name)
		}
		a.Values = append(a.Values, name)
		a.Overlays = append(a.Overlays, o)
	}
	return a, nil
}

// hasPath says whether m sets the field at path.
func hasPath(m map[string]any, path []string) bool {
	for _, p := range path[:len(path)-1] {
		child, ok := m[p].(map[string]any)
		if !ok {
			return false
		}
		m = child
	}
	_, ok := m[path[len(path)-1]]
	return ok
}

// merge sets over's fields in m, merging mappings into mappings.
func merge(m, over map[string]any, path string) error {
	for k, v := range over {
		sub, isMap := v.(map[string]any)
		if !isMap {
			m[k] = deepCopy(v)
			continue
		}
		switch cur := m[k].(type) {
		case nil:
			m[k] = deepCopy(sub)
		case map[string]any:
			if err := merge(cur, sub, path+k+"."); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s%s is not a mapping in base", path, k)
		}
	}
	return nil
}

// variant builds variant i: the base with each axis's value set at its
// path and the experiment's name, checked as a job spec.
func (e *Experiment) variant(base map[string]any, i int) (Variant, error) {
	spec := deepCopy(base).(map[string]any)
	spec["name"] = e.Name
	v := Variant{Index: i, Values: make([]any, len(e.Axes))}
	pick := make([]int, len(e.Axes))
	rest := i
	for k := len(e.Axes) - 1; k >= 0; k-- {
		pick[k] = rest % len(e.Axes[k].Values)
		v.Values[k] = e.Axes[k].Values[pick[k]]
		rest /= len(e.Axes[k].Values)
	}
	// in the axes' order: the variant axis, last, wins
	for k, a := range e.Axes {
		if a.Overlays != nil {
			if err := merge(spec, a.Overlays[pick[k]], ""); err != nil {
				return Variant{}, fmt.Errorf("experiment: variants.%s: %w", v.Values[k], err)
			}
			continue
		}
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

// BalanceBatch is how many sequences the statistics of s's
// load-balancing loss cover, and whether they are a random sample of the
// global batch rather than a contiguous part of the stream: the
// micro-batch LBL covers one rank's micro-batch; the global LBL covers
// lbl.window micro-batches (all of the step's for 0) of every rank in its
// balance group (parallel.balance: dp counts the DP degree, node is
// bounded by it, none is one rank). data.order domain_mixed deals each
// step's sequences to its micro-batches at random, so a micro-batch's
// statistics are a random sample of the global batch.
func (s *Spec) BalanceBatch() (seqs int, random bool) {
	random = s.Data.Order == runconfig.OrderMixed || s.Data.Order == runconfig.OrderShuffled
	if s.LBL.Mode != "global" {
		return s.MicroBatch, random
	}
	w := s.Accumulation
	if s.LBL.Window > 0 && s.LBL.Window < w {
		w = s.LBL.Window
	}
	ranks := max(s.Parallel.DP, 1)
	if s.Parallel.Balance == "none" {
		ranks = 1
	}
	seqs = s.MicroBatch * w * ranks
	// the whole global batch is no sample
	return seqs, random && seqs < s.MicroBatch*s.Accumulation*max(s.Parallel.DP, 1)
}
