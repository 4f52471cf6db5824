// Package lbl owns the auxiliary losses that balance a Mixture-of-Experts
// router, and their gradients with respect to the router logits:
//
//   - the load-balancing loss LBL = E * sum_i f_i p_i, where f_i is the
//     share of top-k selections that went to expert i (no gradient) and
//     p_i the mean softmax probability of expert i;
//   - in its micro-batch, global-batch and buffered global-batch variants
//     (f from one micro-batch on one rank, from every data-parallel rank, or
//     from every rank and every micro-batch so far in the optimizer step);
//   - the sequence-level LBL (f and p per sequence, averaged over sequences)
//     and the router z-loss (mean of logsumexp(z)^2 over tokens);
//   - the aux-loss-free expert bias (a selection-only bias moved by the sign
//     of each expert's deviation from the mean global load).
//
// The pure functions (Counts, MeanProbs, LossFromCounts, AddGrad, SeqLoss,
// AddSeqGrad, ZLoss, AddZGrad) define the mathematics and accumulate in
// float64. Balancer is the stateful piece a model holds: one per model,
// covering all its MoE layers, it records each layer's routing in the
// forward pass, synchronises the expert counts of all layers with ONE
// Reducer call per micro-batch, keeps the accumulation buffer of the
// optimizer step, and adds the gradients in the backward pass.
//
// The package does not compute the router scores, the softmax or the top-k
// (pkg/router), and knows nothing about transports: the data-parallel
// all-reduce is plugged in through Reducer. The Reducer must span exactly
// the ranks that hold distinct tokens (the data-parallel group): tensor-
// parallel peers see the same tokens and must not be counted twice.
// Padding tokens (validT[t] == false) never count anywhere.
//
// Shape legend: T tokens of a micro-batch on this rank (B sequences of S
// tokens, sequence-major), E experts, k experts chosen per token, L MoE
// layers. Suffixes name the shape: probsTE is [T][E], idxTK is [T][k],
// countsE is [E]. Buffers are row-major and caller-owned.
//
// Shape errors (buffers too short, k outside 1..E) are programming errors
// and panic with a message that starts with "lbl:"; everything that can go
// wrong at run time is an error value.
package lbl
