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
