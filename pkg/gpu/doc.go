// Package gpu is the MoE engine on one NVIDIA GPU: the model of pkg/model
// (same architecture, same flat parameter layout, same losses, same
// global-batch LBL through pkg/lbl) trained with kernels that run on the
// device and GEMMs through cuBLASLt/cuBLAS (pkg/cuda).
//
// It owns: the device buffers of one rank (buffers.go, laid out by one
// function that both allocates and counts them, so Estimate is exactly
// what New allocates and a run that does not fit is refused before any
// allocation), the forward and backward passes (forward.go, moe.go,
// backward.go), the optimizer update (update.go), the kernel launchers
// and their launch configurations (kern.go) and the step profile
// (profile.go). The kernels are CUDA C in kernels/ (kernels.h), compiled
// to PTX by clang-16 without the CUDA SDK and loaded by the driver.
//
// It does not own: the training loop, data, checkpoints or metrics
// (pkg/train drives a Model through the same engine interface as the CPU
// engine), the LBL mathematics (pkg/lbl: the device computes the router
// statistics, the host balancer synchronises the counts and returns the
// gradient coefficients, GradTerms), or the GPU libraries (pkg/cuda).
//
// # Why an explicit forward and backward instead of gorgonia's graph
//
// The CPU engine runs a gorgonia expression graph whose custom ops call
// Go kernels over host buffers. gorgonia's GPU support (gorgonia.org/cu)
// needs cgo and the CUDA toolkit at build time, its TapeMachine executes
// op by op with host-side values, and the MoE layer's shapes depend on the
// data (tokens per expert) — so the GPU step is written out llm.c style:
// one function per layer pair (forward/backward) over explicit device
// buffers, in the same order as the graph, checked against the graph
// (engine_test.go: losses, every gradient tensor, the AdamW trajectory and
// the evaluation statistics agree to float32 rounding in fp32).
//
// # The step on the device
//
// Per micro-batch the host uploads the tokens and targets (and the
// embedding backward's token order); everything else stays on the device.
// In each MoE layer the router's statistics (per-sequence expert counts,
// probability sums, valid tokens, logsumexp^2) and the dispatch plan's
// slot offsets come back in one round trip: the offsets size the grouped
// expert GEMMs (each expert over its own tokens, no padding) and the
// statistics go to the balancer, which starts the count all-reduce after
// the last MoE layer. The backward asks the balancer for each layer's
// gradient terms (E coefficients and three scalars) and applies them in
// the router backward kernel. Losses (per-token NLL) come back once per
// micro-batch, the gradient norm (float64 partials) once per step.
//
// Every reduction has a fixed order (no floating-point atomics): a step
// gives the same bits each time it runs.
//
// # Expert parallelism
//
// With Options.Experts the routed experts of every MoE layer are split
// over a group (ep.go): each rank holds E/P experts (their parameters,
// gradients and moments only: the CPU engine's layout for that rank, so
// checkpoints reshard as on the CPU), sends each slot row to the rank
// that owns its expert and gets the outputs back, with one all-to-all-v
// of device rows each way (pkg/devcomm: NCCL, or host-staged) and the
// per-expert row counts exchanged on the host. Backward mirrors it. The
// buffers for the rows a rank may receive (P*T*k, or E*capacity with a
// capacity) are part of the layout, so EstimateEP is what New allocates.
//
// # Tensor parallelism
//
// With Options.Tensor the engine is one rank of a tensor-parallel group
// of tp ranks, as pkg/model's tp.go is on the CPU (the same parameter
// layout: this rank's columns of wqkv, its rows of wo): the attention runs
// this rank's H/tp heads and its output projection gives a partial sum
// (rank 0's includes the residual) that an all-reduce completes; in the
// backward the attention's input gradient is all-reduced the same way.
// Each MoE layer runs on this rank's 1/tp of the micro-batch's sequences
// (router, LBL statistics, dispatch, experts, expert parallelism) and an
// all-gather gives every rank the whole output, and in the backward the
// whole input gradient; the MoE parameters' gradients are partial sums
// that pkg/train sums over the group. Every collective is on float32
// device buffers through pkg/devcomm.
//
// # Precision
//
// FP32: float32 everywhere, GEMMs in true fp32 (CUBLAS_COMPUTE_32F, never
// TF32) — the equivalence mode. BF16: activations and GEMM operands in
// bfloat16 with float32 accumulation; the residual stream, attention
// scores, router logits and probabilities, losses, master weights,
// gradients and AdamW moments stay float32; the expert weight gradients
// come out of cuBLAS's grouped GEMM in bf16 (as autocast's weight
// gradients do) and are added into the float32 gradients.
//
// # Attention
//
// Batched GEMMs over (sequence, head) with a fused causal softmax kernel,
// by chunks of 128 queries (Options.AttnChunk): a chunk needs keys up to
// its last query only, so the masked part of the score matrix beyond the
// chunk is neither computed nor stored (9/16 of the full work at 1024
// positions). The scores are float32, the probabilities are kept for the
// backward. A fused flash-style kernel is the next step for long
// sequences.
//
// # Testing without a GPU
//
// pkg/gpu/emu (build tag cudaemu) runs the same kernel source on the CPU
// (every GPU thread a fiber, real barriers and warp exchanges) with a
// float64 reference GEMM, so every test of this package — each kernel
// against the CPU kernels, the engine against the CPU engine — also runs
// in CI; on a machine with a GPU the same tests run on it.
package gpu
