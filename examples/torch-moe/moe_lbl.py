"""Load-balancing loss (LBL) for token-choice top-k Mixture-of-Experts routers.

All three variants share one formula per MoE layer and micro-batch:

    LBL = E * sum_e f_e * p_e

    p_e  mean over this rank's micro-batch tokens of the router's softmax
         probability of expert e (carries the gradient);
    f_e  share of the top-k selections that went to expert e, computed from
         counts (a constant: the top-k choice has no gradient),
         f_e = counts_e / (k * tokens).

The variants differ only in which tokens' counts make up f:

    (a) micro     this rank's micro-batch                    -> micro_lbl
    (b) global    every micro-batch of every rank of the     -> global_batch_lbl
                  optimizer step (needs all of them first)
    (c) buffered  a running buffer of the all-reduced counts -> BufferedGlobalLBL
                  of micro-batches 0..m of the current step,
                  reset at every optimizer step (the global-batch
                  LBL a gradient-accumulation loop can compute:
                  the paper's Algorithm 1, Megatron's global LBL)

Nothing here touches torch.distributed. Wherever counts must be summed over
the data-parallel ranks the caller passes ``all_reduce``: a callable that takes
a 1-D int64 tensor and returns the element-wise sum of that tensor over all
ranks (it may reduce in place and return its argument). In a single process it
is the identity; tests simulate several ranks by adding the other ranks'
contributions.

The exact formulas, and golden vectors for all three variants, are in
testdata/lbl.json (its "spec" field).
"""
from typing import Callable, List, Sequence, Tuple

import torch
import torch.nn.functional as F

AllReduce = Callable[[torch.Tensor], torch.Tensor]


def expert_counts(topk_idx: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Number of tokens that selected each expert: int64 tensor [n_experts].

    topk_idx holds expert ids of shape [..., k], distinct within a token. Uses a
    one-hot sum rather than bincount, which has no deterministic CUDA kernel.
    """
    return F.one_hot(topk_idx.reshape(-1), n_experts).sum(dim=0)


def selection_fraction(counts: torch.Tensor, n_tokens, top_k: int,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """f_e = counts_e / (k * n_tokens): each expert's share of the selections (sums to 1).

    n_tokens may be an int or a 0-d integer tensor (no host sync on a GPU).
    """
    return counts.to(dtype) / (top_k * n_tokens)


def balance_loss(f: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """E * sum_e f_e * p_e with p_e = probs[:, e].mean(); f is treated as a constant.

    probs: router softmax probabilities [tokens, E] of this rank's micro-batch.
    """
    p = probs.mean(dim=0)
    return probs.shape[-1] * torch.sum(f.detach().to(p.dtype) * p)


def micro_lbl(probs: torch.Tensor, topk_idx: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Variant (a): f from this micro-batch on this rank. Returns (loss, local counts)."""
    n_tokens, n_experts = probs.shape
    counts = expert_counts(topk_idx, n_experts)
    f = selection_fraction(counts, n_tokens, topk_idx.shape[-1], probs.dtype)
    return balance_loss(f, probs), counts


def _counts_and_tokens(topk_idx: torch.Tensor, n_experts: int) -> torch.Tensor:
    """[counts_0, ..., counts_{E-1}, tokens] as one int64 tensor, so one all-reduce sums both."""
    n_tokens = topk_idx.reshape(-1, topk_idx.shape[-1]).shape[0]
    tokens = torch.tensor([n_tokens], dtype=torch.int64, device=topk_idx.device)
    return torch.cat([expert_counts(topk_idx, n_experts), tokens])


def global_batch_lbl(probs_mbs: Sequence[torch.Tensor], topk_mbs: Sequence[torch.Tensor],
                     all_reduce: AllReduce) -> List[torch.Tensor]:
    """Variant (b): f from every micro-batch of every rank of the optimizer step.

    probs_mbs / topk_mbs: this rank's micro-batches, in order. Sums their counts
    locally, all-reduces once, and returns one loss per micro-batch. Needs the
    router outputs of the whole step before any loss exists, so a training loop
    that accumulates gradients micro-batch by micro-batch uses
    BufferedGlobalLBL instead; this function defines what that approximates.
    """
    n_experts = probs_mbs[0].shape[-1]
    top_k = topk_mbs[0].shape[-1]
    local = torch.stack([_counts_and_tokens(t, n_experts) for t in topk_mbs]).sum(dim=0)
    total = all_reduce(local)
    f = selection_fraction(total[:-1], total[-1], top_k, probs_mbs[0].dtype)
    return [balance_loss(f, probs) for probs in probs_mbs]


class BufferedGlobalLBL:
    """Variant (c): global-batch LBL with an accumulation buffer, for one MoE layer.

    Call once per micro-batch, in order, on every rank (each call is one
    collective); call reset() after every optimizer step. After micro-batch m
    the buffer holds the selection counts and token counts of micro-batches
    0..m of all ranks, and f = buffer_counts / (k * buffer_tokens).
    """

    def __init__(self, n_experts: int, top_k: int, all_reduce: AllReduce):
        self.n_experts = n_experts
        self.top_k = top_k
        self.all_reduce = all_reduce
        self.buffer = None  # int64 [E + 1]: counts, then tokens; None = empty

    def reset(self) -> None:
        """Empty the buffer (start of an optimizer step)."""
        self.buffer = None

    def __call__(self, probs: torch.Tensor, topk_idx: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Loss of this rank's micro-batch, and its local counts [E] (for metrics)."""
        local = _counts_and_tokens(topk_idx, self.n_experts)
        total = self.all_reduce(local.clone())  # a copy: all_reduce may work in place
        self.buffer = total if self.buffer is None else self.buffer + total
        f = selection_fraction(self.buffer[:-1], self.buffer[-1], self.top_k, probs.dtype)
        return balance_loss(f, probs), local[:-1]
