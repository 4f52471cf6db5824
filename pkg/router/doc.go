// Package router owns the routing decisions of a Mixture-of-Experts layer
// that come after the router's scores are known:
//
//   - TopK picks each token's k experts (with an optional selection-only
//     bias, the aux-loss-free balancing bias of pkg/lbl);
//   - Weights and WeightsBackward turn the selected probabilities into
//     combine weights (optionally renormalised over the top k) and carry
//     the gradient back to the probabilities;
//   - Plan is the dispatch plan: the (token, choice) pairs grouped by expert,
//     with an optional per-expert capacity and a record of what was dropped.
//
// Everything here is a pure function of its inputs over caller-owned,
// row-major float32/int32 buffers; nothing allocates after warm-up. The
// package does not compute the router scores, the softmax, the
// load-balancing losses (pkg/lbl) or move tokens between ranks.
//
// Shape legend: T tokens, E experts, k experts chosen per token, S slots
// (kept (token, choice) pairs, S <= T*k). Suffixes name the shape:
// scoresTE is [T][E], idxTK is [T][k].
//
// Shape errors (buffers too short, k outside 1..E) are programming errors
// and panic with a message that starts with "router:".
package router
