package lbl

import "context"

// Reducer sums a vector in place across a group of processes: after
// AllReduceSum returns nil, every member holds the element-wise sum of the
// vectors all members passed. Every member must call it the same number of
// times with vectors of the same length. The parallel runtime provides the
// real implementation over the data-parallel group.
type Reducer interface {
	AllReduceSum(ctx context.Context, v []float64) error
}

// Identity is the Reducer of a group of one process: the sum is the vector.
type Identity struct{}

// AllReduceSum implements Reducer; it leaves v unchanged.
func (Identity) AllReduceSum(context.Context, []float64) error { return nil }
