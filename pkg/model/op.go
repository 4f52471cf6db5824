package model

import (
	"fmt"
	"hash"
	"hash/fnv"
	"runtime"
	"sync"

	"github.com/chewxy/hm"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// opBase carries what every custom gorgonia op of this package shares: a
// unique tag (gorgonia merges identical op+input nodes, so every call site
// gets its own), the model's run environment, the input ranks and the
// static output shape.
type opBase struct {
	tag    string
	env    *runEnv
	inDims []int
	out    tensor.Shape // nil: scalar
	// forwardOnly: the op is in a program without a backward (evaluation),
	// whose layers share their forward buffers (fwdBuf).
	forwardOnly bool
}

// fwdBuf is a buffer of n floats that the op's forward writes and the
// ops after it read: its own in a program with a backward (which reads it
// again), the one every layer shares in a forward-only program.
func (o opBase) fwdBuf(name string, n int) []float32 {
	if o.forwardOnly {
		return o.env.shared("forward."+name, n)
	}
	return make([]float32, n)
}

// shaped returns o with its input ranks and output shape set.
func (o opBase) shaped(inDims []int, out tensor.Shape) opBase {
	o.inDims, o.out = inDims, out
	return o
}

// derive is the base of an op computed from o (its gradient): the tag
// with suffix, the same environment.
func (o *opBase) derive(suffix string, inDims []int, out tensor.Shape) opBase {
	return opBase{tag: o.tag + suffix, env: o.env, inDims: inDims, out: out}
}

func (o *opBase) Arity() int { return len(o.inDims) }

func (o *opBase) Type() hm.Type {
	ts := make([]hm.Type, 0, len(o.inDims)+1)
	for _, d := range o.inDims {
		if d == 0 {
			ts = append(ts, tensor.Float32)
			continue
		}
		ts = append(ts, G.TensorType{Dims: d, Of: tensor.Float32})
	}
	if o.out == nil {
		ts = append(ts, tensor.Float32)
	} else {
		ts = append(ts, G.TensorType{Dims: len(o.out), Of: tensor.Float32})
	}
	return hm.NewFnType(ts...)
}

func (o *opBase) InferShape(...G.DimSizer) (tensor.Shape, error) {
	if o.out == nil {
		return tensor.ScalarShape(), nil
	}
	return o.out.Clone(), nil
}

func (o *opBase) ReturnsPtr() bool      { return false }
func (o *opBase) CallsExtern() bool     { return false }
func (o *opBase) OverwritesInput() int  { return -1 }
func (o *opBase) WriteHash(h hash.Hash) { fmt.Fprintf(h, "switchyard/%s", o.tag) }
func (o *opBase) Hashcode() uint32 {
	h := fnv.New32a()
	o.WriteHash(h)
	return h.Sum32()
}
func (o *opBase) String() string { return o.tag }

// f32 returns the float32 backing of a gorgonia value.
func f32(v G.Value) []float32 {
	switch t := v.(type) {
	case *tensor.Dense:
		return t.Data().([]float32)
	case *G.F32:
		return []float32{float32(*t)}
	}
	panic(fmt.Sprintf("model: unexpected value %T", v))
}

// dense is a tensor header over a Go-owned buffer, made once and returned by
// every run so no op allocates per step.
func dense(buf []float32, shape ...int) *tensor.Dense {
	return tensor.New(tensor.WithShape(shape...), tensor.WithBacking(buf))
}

// parallelFor runs fn(worker, i) for i in [0, n) on up to GOMAXPROCS
// goroutines; worker indexes per-worker scratch. It returns when all are done.
func parallelFor(n int, fn func(worker, i int)) {
	w := min(runtime.GOMAXPROCS(0), n)
	if w <= 1 {
		for i := 0; i < n; i++ {
			fn(0, i)
		}
		return
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	next := 0
	for k := 0; k < w; k++ {
		wg.Add(1)
		go func(worker int) {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= n {
					return
				}
				fn(worker, i)
			}
		}(k)
	}
	wg.Wait()
}
