package yamlcheck

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// opaque decodes itself: yaml.v3 hands it the node whole.
type opaque struct{}

func (*opaque) UnmarshalYAML(*yaml.Node) error { return nil }

type Embedded struct {
	Depth int `yaml:"depth"`
}

type common struct {
	Region string `yaml:"region"`
	Zone   string `yaml:"zone"`
}

type server struct {
	Addr string `yaml:"addr"`
	Port int    `yaml:"port"`
}

type doc struct {
	Steps   int                `yaml:"steps"`
	Inner   inner              `yaml:"inner"`
	Ptr     *inner             `yaml:"ptr"`
	Servers []server           `yaml:"servers"`
	Pair    [2]server          `yaml:"pair"`
	ByName  map[string]*server `yaml:"by_name"`
	Nested  [][]server         `yaml:"nested"`
	Common  common             `yaml:",inline"`
	Secret  string             `yaml:"-"`
	Custom  opaque             `yaml:"custom"`
	Raw     yaml.Node          `yaml:"raw"`
	Free    any                `yaml:"free"`
	Labels  map[string]string  `yaml:"labels"`
	Plain   int
	Embedded
	hidden int //nolint:unused // unexported: not a key
}

type open struct {
	Name string         `yaml:"name"`
	Rest map[string]int `yaml:",inline"`
}

// refusedOtherwise are TestUnknownKey's cases that yaml.v3 refuses for
// another reason than an unknown key.
var refusedOtherwise = map[string]bool{
	"a node holding itself": true, "complex key": true, "scalar where a mapping is wanted": true,
	"scalar document": true, "syntax error": true,
}

func TestUnknownKey(t *testing.T) {
	top := "by_name, custom, embedded, free, inner, labels, nested, pair, plain, ptr, raw, region, servers, steps, zone"
	for _, tc := range []struct {
		name, doc string
		v         any
		want      string // "" : none
	}{
		{"known keys", "steps: 1\ninner: {count: 2}\nregion: eu\n", &doc{}, ""},
		{"top level, suggestion", "steps: 1\nstpes: 2\n", &doc{},
			`stpes (line 2): unknown key; the top level has ` + top + `; did you mean "steps"?`},
		{"nested", "inner:\n  count: 1\n  cuont: 2\n", &doc{},
			`inner.cuont (line 3): unknown key; inner has count, rate; did you mean "count"?`},
		{"pointer", "ptr: {rat: 1}\n", &doc{}, `ptr.rat (line 1): unknown key; ptr has count, rate; did you mean "rate"?`},
		{"slice element", "servers:\n  - addr: a\n  - adr: b\n", &doc{},
			`servers[1].adr (line 3): unknown key; servers[1] has addr, port; did you mean "addr"?`},
		{"array element", "pair: [{port: 1}, {prot: 2}]\n", &doc{}, `pair[1].prot (line 1): unknown key; pair[1] has addr, port; did you mean "port"?`},
		{"list of lists", "nested: [[], [{addr: a}, {host: b}]]\n", &doc{}, `nested[1][1].host (line 1): unknown key; nested[1][1] has addr, port`}, // not "port"
		{"map of struct pointers", "by_name:\n  a: {port: 1}\n  b: {Port: 2}\n", &doc{},
			`by_name.b.Port (line 3): unknown key; by_name.b has addr, port; did you mean "port"?`},
		{"inline struct's keys are the top level's", "zone: a\nregoin: b\n", &doc{}, `regoin (line 2): unknown key; the top level has ` + top + `; did you mean "region"?`},
		{"the inline field's own name is no key", "common: {region: a}\n", &doc{}, `common (line 1): unknown key; the top level has ` + top},
		{"dash field is no key", "secret: x\n", &doc{}, `secret (line 1): unknown key; the top level has ` + top},
		{"unexported field is no key", "hidden: 1\n", &doc{}, `hidden (line 1): unknown key; the top level has ` + top},
		{"untagged field, lowercased", "plain: 1\nembedded: {depth: 2}\n", &doc{}, ""},
		{"embedded struct without inline", "embedded: {deep: 2}\n", &doc{}, `embedded.deep (line 1): unknown key; embedded has depth`},
		{"unmarshaler, node, interface and map values are not walked", "custom: {x: 1}\nraw: {y: 2}\nfree: {z: 3}\nlabels: {w: v}\n", &doc{}, ""},
		{"inline map takes the rest", "name: a\nother: 1\n", &open{}, ""},
		{"first in document order", "inner: {size: 1}\nbogus: 2\n", &doc{}, `inner.size (line 1): unknown key; inner has count, rate`},
		{"no close key", "wibble: 1\n", &doc{}, `wibble (line 1): unknown key; the top level has ` + top},
		{"two letters are no typo of two others", "inner: {xy: 1}\n", &doc{}, `inner.xy (line 1): unknown key; inner has count, rate`},
		{"value type", "inner: {rte: 1}\n", doc{}, `inner.rte (line 1): unknown key; inner has count, rate; did you mean "rate"?`},
		{"alias to a walked anchor", "inner: &i {count: 1}\nptr: *i\n", &doc{}, ""},
		{"alias to an anchor that was not walked", "free: &i {cuont: 1}\nptr: *i\n", &doc{},
			`ptr.cuont (line 1): unknown key; ptr has count, rate; did you mean "count"?`},
		{"merge key", "free: &d {port: 1}\nservers: [{<<: *d, addr: a}]\n", &doc{}, ""},
		{"merged mapping's keys", "free: &d {prot: 1}\nservers: [{<<: [*d], addr: a}]\n", &doc{},
			`servers[0].prot (line 1): unknown key; servers[0] has addr, port; did you mean "port"?`},
		{"a node holding itself", "ptr: &p {<<: *p}\nservers: &s [*s]\n", &doc{}, ""},
		{"non-string key", "inner: {1: 2}\n", &doc{}, `inner.1 (line 1): unknown key; inner has count, rate`},
		{"complex key", "inner: {[a]: 2}\n", &doc{}, ""},
		{"null key: yaml.v3 skips it", "inner: {~: 2}\n", &doc{}, ""},
		{"quoted merge is a key", "inner: {\"<<\": 2}\n", &doc{}, `inner.<< (line 1): unknown key; inner has count, rate`},
		{"scalar where a mapping is wanted", "inner: 3\nsteps: {a: 1}\n", &doc{}, ""},
		{"empty document", "", &doc{}, ""},
		{"null document", "~\n", &doc{}, ""},
		{"scalar document", "hello\n", &doc{}, ""},
		{"syntax error", "inner: {count: [\n", &doc{}, ""},
		{"only the first document", "steps: 1\n---\nbogus: 2\n", &doc{}, ""},
		{"the first document", "stepz: 1\n---\nsteps: 2\n", &doc{}, `stepz (line 1): unknown key; the top level has ` + top + `; did you mean "steps"?`},
		{"struct without keys", "a: 1\n", &struct{}{}, `a (line 1): unknown key; the top level takes no keys`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := UnknownKey([]byte(tc.doc), tc.v)
			got := ""
			if u != nil {
				got = u.Error()
			}
			if got != tc.want {
				t.Fatalf("got  %s\nwant %s", got, tc.want)
			}
			// yaml.v3's strict decode refuses exactly these documents for
			// an unknown key (those it refuses for another reason aside)
			if refusedOtherwise[tc.name] {
				return
			}
			dec := yaml.NewDecoder(bytes.NewReader([]byte(tc.doc)))
			dec.KnownFields(true)
			err := dec.Decode(tc.v)
			if errors.Is(err, io.EOF) {
				err = nil
			}
			if (err != nil) != (u != nil) {
				t.Fatalf("yaml.v3: %v; UnknownKey: %v", err, u)
			}
		})
	}
}

func TestUnknownKeyFields(t *testing.T) {
	u := UnknownKey([]byte("servers:\n  - {addr: a}\n  - {adr: b}\n"), &doc{})
	if u == nil || u.Path != "servers[1].adr" || u.Key != "adr" || u.Line != 3 || u.In != "servers[1]" ||
		!slices.Equal(u.Known, []string{"addr", "port"}) || u.Suggestion != "addr" {
		t.Fatalf("%+v", u)
	}
	var err error = u.Within("base")
	if err.Error() != `base.servers[1].adr (line 3): unknown key; base.servers[1] has addr, port; did you mean "addr"?` {
		t.Errorf("within: %v", err)
	}
	if got := UnknownKey([]byte("bogus: 1\n"), &inner{}).Within("base").Error(); got != "base.bogus (line 1): unknown key; base has count, rate" {
		t.Errorf("within, top level: %s", got)
	}
}

func TestFirstUnknownOfANode(t *testing.T) {
	var root yaml.Node
	if err := yaml.Unmarshal([]byte("base:\n  steps: 1\n  inner: {rate: 1, cout: 2}\n"), &root); err != nil {
		t.Fatal(err)
	}
	base := root.Content[0].Content[1]
	if got := FirstUnknown(base, &doc{}).Error(); got != `inner.cout (line 3): unknown key; inner has count, rate; did you mean "count"?` {
		t.Errorf("got %s", got)
	}
	if FirstUnknown(nil, &doc{}) != nil || FirstUnknown(&yaml.Node{Kind: yaml.DocumentNode}, &doc{}) != nil {
		t.Error("a nil node or an empty document has unknown keys")
	}
}

func TestUnknownInPath(t *testing.T) {
	for _, tc := range []struct {
		path, want string
	}{
		{"inner.rate", ""},
		{"ptr.count", ""},
		{"region", ""},
		{"by_name.anything", ""},
		{"by_name.x.addr", ""},
		{"by_name.x.adr", `by_name.x.adr: unknown key; by_name.x has addr, port; did you mean "addr"?`},
		{"labels.any.thing", ""}, // a string given keys: the decode says so
		{"steps.more", ""},       // likewise
		{"servers.addr", ""},     // a list: likewise
		{"custom.anything", ""},  // an Unmarshaler
		{"inner.mode", `inner.mode: unknown key; inner has count, rate`},
		{"inner.Rate", `inner.Rate: unknown key; inner has count, rate; did you mean "rate"?`},
		{"iner.rate", `iner: unknown key; the top level has by_name, custom, embedded, free, inner, labels, nested, pair, plain, ptr, raw, region, servers, steps, zone; did you mean "inner"?`},
	} {
		u := UnknownInPath(&doc{}, strings.Split(tc.path, "."))
		got := ""
		if u != nil {
			got = u.Error()
		}
		if got != tc.want {
			t.Errorf("%s:\ngot  %s\nwant %s", tc.path, got, tc.want)
		}
	}
}

func TestSuggest(t *testing.T) {
	known := []string{"coef", "mode", "window", "z_coef", "bias_rate", "lr", "lease_ttl_seconds", "storage_path"}
	for key, want := range map[string]string{
		"cof":       "coef", // a deletion
		"moed":      "mode", // a transposition
		"Mode":      "mode", // case
		"WINDOW":    "window",
		"windw":     "window",
		"bias-rate": "bias_rate",
		"zcoef":     "z_coef", // before "coef", as close
		"biasRate":  "bias_rate",
		"cnt":       "",
		"mod":       "mode",
		"md":        "",
		"modes":     "mode",
		"lt":        "", // two letters: one of them is no typo
		"LR":        "lr",
		"l":         "",
		"xy":        "",
		"colour":    "",
		"":          "",
		// three edits in a long key
		"lease_ttl_secs": "lease_ttl_seconds",
		"storage_pth":    "storage_path",
		"storage_dir":    "", // four: not a typo of storage_path
		"cache_window":   "", // nothing close
		// another tool's name, where the key it means is known
		"learning_rate": "lr",
		"workdir":       "",
	} {
		if got := suggest(key, known); got != want {
			t.Errorf("suggest(%q) = %q, want %q", key, got, want)
		}
	}
	for key, want := range map[string]string{"workdir": "working_dir", "Working-Directory": "working_dir", "cwd": "working_dir",
		"nproc_per_node": "ranks", "max_steps": "steps", "environment": "env"} {
		if got := suggest(key, []string{"command", "env", "ranks", "steps", "working_dir"}); got != want {
			t.Errorf("suggest(%q) = %q, want %q", key, got, want)
		}
	}
	if got := distance("ca", "abc", 3); got != 3 {
		t.Errorf("optimal string alignment distance of ca, abc = %d, want 3", got)
	}
	if got := distance(strings.Repeat("x", 1<<20), "lr", 3); got != 3 {
		t.Errorf("a long key: %d", got)
	}
}

// FuzzUnknownKey: UnknownKey never panics, and a key it names is one
// yaml.v3's strict decode refuses too (it never refuses a document
// yaml.v3 accepts).
func FuzzUnknownKey(f *testing.F) {
	for _, seed := range []string{
		"steps: 1\ninner: {count: 2, rate: 1}\nregion: eu\nservers: [{addr: a, port: 1}]\n",
		"by_name: {a: {addr: x}}\nnested: [[{port: 1}]]\npair: [{}, {addr: b}]\nembedded: {depth: 1}\n",
		"free: &d {port: 1}\nservers: [{<<: *d, addr: a}, {<<: [*d, *d]}]\n",
		"ptr: &p {<<: *p}\nservers: &s [*s]\n",
		"a: &a [*a, *a]\nb: &b [*a, *a]\nc: [*b, *b]\n",
		"inner: {~: 1, [a]: 2, 1: 3, \"<<\": 4}\n",
		"custom: {x: 1}\nraw: {y: 2}\nlabels: {z: w}\n",
		"stpes: 1\n---\nsteps: 2\n",
		"~", "", "[1, 2]", "{",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		u := UnknownKey(raw, &doc{})
		if u == nil {
			return
		}
		if u.Line < 1 || !strings.HasSuffix(u.Path, u.Key) || u.Error() == "" {
			t.Fatalf("%+v", u)
		}
		dec := yaml.NewDecoder(bytes.NewReader(raw))
		dec.KnownFields(true)
		if err := Decode(dec, &doc{}); err == nil {
			t.Fatalf("yaml.v3 accepts what UnknownKey refuses: %v", u)
		}
	})
}

// TestDecodeDoesNotPanic: documents on which yaml.v3 panics (a merge key
// beside a mapping used as a key, decoded into a map) are an error.
func TestDecodeDoesNotPanic(t *testing.T) {
	type spec struct {
		Env map[string]string `yaml:"env"`
	}
	for _, in := range []string{
		"env: {<<: {a: 1}, ? {a: 1} : 2}\n",
		"labels: &d {a: b}\nenv: {<<: [*d], *d: 1}\n",
		"d: &d {a: 0}\nenv: {<<, *d}\n",
	} {
		dec := yaml.NewDecoder(strings.NewReader(in))
		if err := Decode(dec, &map[string]spec{}); err == nil {
			t.Errorf("%q decoded into a map of specs", in)
		}
		dec = yaml.NewDecoder(strings.NewReader(in))
		if err := Decode(dec, &spec{}); err == nil || !strings.Contains(err.Error(), "mapping used as a key") {
			t.Errorf("%q: %v", in, err)
		}
	}
}
