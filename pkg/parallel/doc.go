// Package parallel owns Switchyard's parallel runtime below the model: the
// parallel layout and its process groups, the transport that moves bytes
// between ranks, and the collectives built on it.
//
//   - Layout (layout.go): a validated TP x DP world with EP dividing DP, the
//     rank order (tensor-parallel fastest), every process group (tp, dp, ep,
//     expert-dp, the LBL balance group: dp, node or none) and the expert
//     placement (contiguous ranges per EP rank).
//   - Transport (transport.go): ordered, tagged, context-aware point-to-point
//     messages with a timeout (Options.Timeout) after which a dead or stalled
//     peer is an error, never a hang. MemTransport is the in-process
//     implementation for tests; GRPCTransport (grpc.go) is the one between
//     processes: one bidirectional gRPC stream per pair of ranks
//     (proto/parallel/v1), messages chunked, memory bounded by HTTP/2 flow
//     control plus Options.MaxPending, frames encoded by a hand-written codec
//     that is wire-compatible with the proto (codec.go) and avoids copies.
//     One contract test suite runs against both.
//   - Comm (comm.go): all-reduce (direct exchange for small buffers, a
//     pipelined ring for large ones; deterministic summation order),
//     reduce-scatter, all-gather, all-to-all with variable counts,
//     broadcast and barrier over a group of ranks, with a tag space per
//     group so communicators of different groups share one transport.
//   - BenchCollectives (bench.go): latency and bus bandwidth of the
//     collectives over gRPC on loopback with ranks as separate processes,
//     plus the loopback TCP ceiling. A program that calls it must call
//     BenchChildMain first thing in main: the ranks are that program
//     re-executed with SWITCHYARD_BENCH_RANK set.
//
// It must not know about the model, the router or the training loop: those
// packages call collectives with plain float32/float64/byte buffers.
package parallel
