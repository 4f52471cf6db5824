package yamlcheck

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"

	"gopkg.in/yaml.v3"
)

// Decode is dec.Decode(v) that returns an error where yaml.v3 panics. It
// does on some documents a user can write: a merge key ("<<") next to a
// mapping used as a key, decoded into a map, panics with "hash of
// unhashable type" (yaml.v3 v3.0.1), and a job spec, a worker config or
// an experiment is input from anyone who may submit. A syntax error names
// the line as an editor numbers it (see SyntaxLine).
func Decode(dec *yaml.Decoder, v any) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("yaml: a document the decoder cannot take (%v): is a mapping used as a key?", p)
		}
	}()
	return SyntaxLine(dec.Decode(v))
}

// parserProblems are the problems yaml.v3's parser (not its scanner)
// reports. It names their line counted from 0 (v3.0.1, decode.go's
// fail adds 1 only to a scanner error's line), and none when that is 0.
var parserProblems = []string{
	"did not find expected key",
	"did not find expected node content",
	"did not find expected '-' indicator",
	"did not find expected ',' or ']'",
	"did not find expected ',' or '}'",
	"did not find expected <document start>",
	"did not find expected <stream-start>",
	"found incompatible YAML document",
	"found duplicate %YAML directive",
	"found duplicate %TAG directive",
	"found undefined tag handle",
}

var parserError = regexp.MustCompile(`^yaml: (?:line (\d+): )?(.*)$`)

// SyntaxLine corrects the line of a yaml.v3 parser error: "yaml: line 3:
// did not find expected key" about line 4 of the file becomes "yaml: line
// 4: ...", and one about line 1 gets its "line 1". Other errors pass as
// they are.
func SyntaxLine(err error) error {
	if err == nil {
		return nil
	}
	m := parserError.FindStringSubmatch(err.Error())
	if m == nil || !slices.Contains(parserProblems, m[2]) {
		return err
	}
	line := 0
	if m[1] != "" {
		line, _ = strconv.Atoi(m[1])
	}
	return &syntaxError{msg: "yaml: line " + strconv.Itoa(line+1) + ": " + m[2], err: err}
}

// syntaxError is a parser error with its line corrected; it unwraps to
// yaml.v3's error.
type syntaxError struct {
	msg string
	err error
}

func (e *syntaxError) Error() string { return e.msg }
func (e *syntaxError) Unwrap() error { return e.err }

// ExpandedSize is the size of the document or node n as decoding makes
// it, every alias replaced by its anchor's node: one for each node plus
// the bytes of each scalar. It stops counting once past limit (and then
// returns a number > limit): a few hundred bytes of aliases of aliases
// decode into gigabytes, and a node that holds itself into no end. yaml.v3
// refuses only a high ratio of aliases in documents of hundreds of
// thousands of nodes. A document without aliases counts at most 1.5 per
// byte of its text.
func ExpandedSize(n *yaml.Node, limit int) int {
	if n == nil {
		return 0
	}
	// a node counts when it is pushed, so the stack stays within limit
	size := 1
	stack := []*yaml.Node{n}
	for len(stack) > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if n.Kind == yaml.AliasNode {
			if n.Alias != nil {
				size++
				stack = append(stack, n.Alias)
			}
			continue
		}
		size += len(n.Value) + len(n.Content)
		if size > limit {
			return size
		}
		for i := len(n.Content) - 1; i >= 0; i-- {
			if c := n.Content[i]; c != nil {
				stack = append(stack, c)
			}
		}
	}
	return size
}
