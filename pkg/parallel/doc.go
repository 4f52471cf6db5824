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
//     peer is an error, never a hang. Optional extensions: Releaser (hand a
//     received buffer back to the transport's pool) and RecvIntoer (post a
//     receive with its destination; a message that arrives after the post
//     is written straight into it). MemTransport is the in-process
//     implementation for tests; GRPCTransport (grpc.go) is the one between
//     processes: one bidirectional gRPC stream per pair of ranks
//     (proto/parallel/v1), messages chunked, memory bounded by HTTP/2 flow
//     control plus Options.MaxPending, frames encoded by a hand-written codec
//     that is wire-compatible with the proto (codec.go) and avoids copies.
//     With Options.DataPlane "tcp" (rawtcp.go) the gRPC stream still does
//     discovery and the handshake, but the messages travel over one plain
//     stream socket per pair (a Unix socket between ranks on one host, its
//     buffers raised to 4 MiB since Linux does not autotune them, else TCP
//     to the same port), written from and read into the callers' buffers:
//     gRPC-Go's 16 KiB HTTP/2 frames and its copies cap a stream at about
//     half of what the socket moves (see BenchmarkTransportStream).
//     Receive buffers come from bounded pools that survive garbage
//     collection (pool.go). One contract test suite runs against mem,
//     grpc and grpc with the tcp data plane.
//   - Comm (comm.go): all-reduce (direct exchange for small buffers, a
//     pipelined ring for large ones, received segments reduced with the
//     vectorised kernels.Axpy and copied segments received in place;
//     deterministic summation order), reduce-scatter, all-gather,
//     all-to-all with variable counts (all peers at once for small
//     messages; large ones sent in pairwise turns, each once its receiver
//     has posted the receive, so that it lands in place),
//     broadcast and barrier over a group of ranks, with a tag space per
//     group so communicators of different groups share one transport. A
//     member that fails a collective sends the others an abort notice, so
//     ranks not linked to a dead peer fail at once with ErrAborted instead
//     of waiting out the timeout.
//   - the ring collectives' schedule (ringSchedule: which segment each
//     member sends and receives at each step, and what each waits for) is
//     a pure function, tested for every member together without a
//     network; ringRun executes one member's part.
//
// The benchmark harness lives outside the library, in
// pkg/parallel/collbench:
//   - collbench.Collectives: latency and bus bandwidth of the
//     collectives over gRPC on loopback with ranks as separate processes,
//     plus the loopback TCP ceilings (one way, and both ways at once as a
//     ring loads a link); `switchyard bench collectives` prints them next
//     to the PyTorch/gloo reference (--repeat: alternating back-to-back
//     pairs, median ratios and their spread; the ranks' CPU time per
//     operation, steadier than latency on a shared machine). A program
//     that calls it must call collbench.ChildMain first thing in main: the
//     ranks are that program re-executed with SWITCHYARD_BENCH_RANK set.
//
// It must not know about the model, the router or the training loop: those
// packages call collectives with plain float32/float64/byte buffers.
package parallel
