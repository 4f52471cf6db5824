package gpu

import "github.com/switchyard-ml/switchyard/pkg/model"

// TokenOrder sorts token positions by token id (stably): positions
// order[start[v]:start[v+1]] hold token v, in increasing position. The
// embedding backward sums gradient rows in this order.
func TokenOrder(tok []int32, V int) (order, start []int32) {
	start = make([]int32, V+1)
	for _, v := range tok {
		start[v+1]++
	}
	for v := 0; v < V; v++ {
		start[v+1] += start[v]
	}
	order = make([]int32, len(tok))
	next := append([]int32(nil), start[:V]...)
	for p, v := range tok {
		order[next[v]] = int32(p)
		next[v]++
	}
	return order, start
}

func ropeTables(S, hd int, base float64) (cos, sin []float32) { return model.RopeTables(S, hd, base) }
