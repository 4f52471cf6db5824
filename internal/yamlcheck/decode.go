package yamlcheck

import (
	"fmt"

	"gopkg.in/yaml.v3"
)

// Decode is dec.Decode(v) that returns an error where yaml.v3 panics. It
// does on some documents a user can write: a merge key ("<<") next to a
// mapping used as a key, decoded into a map, panics with "hash of
// unhashable type" (yaml.v3 v3.0.1), and a job spec, a worker config or
// an experiment is input from anyone who may submit.
func Decode(dec *yaml.Decoder, v any) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("yaml: a document the decoder cannot take (%v): is a mapping used as a key?", p)
		}
	}()
	return dec.Decode(v)
}

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
