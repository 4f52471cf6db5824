// Package model owns the decoder-only Mixture-of-Experts transformer:
// its configuration and presets, its parameters (one flat, Go-owned float32
// buffer with a gradient buffer beside it) and its forward and backward
// passes. It knows nothing about parallelism, processes or optimizers.
//
// Architecture: byte vocabulary, token embedding, L pre-norm blocks of
// RMSNorm -> causal multi-head attention with RoPE (rotate-half) -> residual,
// RMSNorm -> feed-forward -> residual, then a final RMSNorm and an untied
// output head. The feed-forward is an MoE layer (router Linear(d,E) without
// bias, softmax over all E, top-k, combine with the selected probabilities,
// optionally renormalised; SwiGLU experts; optional shared experts; dropless
// or capacity-limited) in every MoEEvery-th layer and a dense SwiGLU
// otherwise.
//
// # What runs as a gorgonia graph and what is hand-written
//
// gorgonia (gorgonia.org/gorgonia) holds the model as one expression graph
// per micro-batch shape and differentiates it symbolically (G.Grad); a
// TapeMachine runs forward and backward together (it cannot run them
// separately, so the whole model is one graph). Parameters are graph nodes
// whose tensors are views of Params.Data, so the optimizer updates them in
// place without copies.
//
// Graph ops (gorgonia's own, differentiated by gorgonia): the q/k/v and
// output projections and the head (G.Mul, whose GEMMs go through
// kernels.Default() via G.Use), the residual additions (G.Add) and the
// accumulation of gradients of nodes used twice.
//
// Custom ops (a gorgonia Op whose Do runs a hand-written kernel and whose
// SymDiff returns a hand-written gradient op):
//   - embedding gather / scatter-add: gorgonia has no scatter-add;
//   - RMSNorm: gorgonia's InverseSqrt gradient is wrong and building the norm
//     from primitive nodes costs several full-size temporaries; one fused
//     kernel with saved 1/rms is exact and cheaper. Its gain gradient is a
//     second op that hands over what the dx op computed (one output per op);
//   - attention core (RoPE, q k^T, causal softmax, P v): per-(sequence, head)
//     GEMMs over strided views of the fused qkv tensor, no mask tensor, and
//     the softmax kept for backward; expressing it with gorgonia primitives
//     needs reshapes, slicing per head and a mask add per step;
//   - the MoE feed-forward: one op from [T,d] to [T,d] whose inside is
//     hand-written as four stages, each a forward/backward pair over
//     explicit buffers (moe_stages.go): router (matmul, softmax, top-k,
//     combine weights, dispatch plan, the load-balancing statistics),
//     dispatch (tokens sorted by expert), experts (one GEMM per expert, no
//     padding; local or over the expert-parallel group, ep.go) and combine;
//     gorgonia has no top-k and no scatter-add, and a GShard-style dense
//     dispatch/combine inside the graph measured about 4.6x slower. Router
//     and expert parameters are not graph nodes: the backward op accumulates
//     their gradients straight into Params.Grad. The auxiliary losses (LBL,
//     z-loss) enter through the router logits' gradient (pkg/lbl), so the
//     graph's cost is the cross-entropy alone;
//   - dense SwiGLU feed-forward (the same kernels as one expert);
//   - cross-entropy over the head logits, with padding masked and the
//     per-token NLL kept for per-domain evaluation.
//
// Every custom op returns tensors that view buffers it allocated once, and
// every call site has a unique tag, because gorgonia merges nodes with the
// same op and inputs.
//
// # One run's environment
//
// The ops of a model share its runEnv (env.go): the context of the Step or
// Forward that runs them, which every collective (tensor-parallel
// all-reduce and all-gather, expert all-to-all, the LBL count all-reduce)
// receives, so cancelling a step interrupts a stuck peer; the first error
// an op hit, which Step reports instead of gorgonia's wrapping of it; the
// gradient scale; and the model's step profile (Model.EnableProfile,
// Model.Profile), one per model so ranks sharing a process do not mix or
// race on it. Graph construction reports errors (a sticky-error builder);
// nothing panics and nothing is recovered.
package model
