"""Byte-level Mixture-of-Experts decoder language model (the architecture of moe_bench).

Per layer, pre-norm:

    x = x + Attn(RMSNorm(x))   causal multi-head self-attention, RoPE (rotate-half) on q and k
    x = x + MoE(RMSNorm(x))    router Linear(d -> E, no bias), softmax over all E experts, top-k,
                               combine weight = the selected softmax probability (no renormalising),
                               experts are SwiGLU MLPs  w2(silu(w1 x) * (w3 x))

Embedding: learned, vocabulary 256 (bytes); untied output head Linear(d -> 256, no bias);
initialisation N(0, 0.02) for every Linear and the embedding.

The model does not compute the load-balancing loss itself: each MoE layer hands its
router probabilities and top-k choice to a ``balance`` callable supplied by the
caller (see moe_lbl.py), which returns (loss, counts) for that layer. That keeps the
choice between micro-batch and global-batch LBL, and its collectives, in the trainer.

Dispatch uses only permutations and dense reductions (no scatter-add with repeated
indices), so forward and backward are deterministic on CPU and on CUDA.
Works with PyTorch 1.13 (no scaled_dot_product_attention, no torch.compile).
"""
import math
from typing import Callable, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from moe_lbl import expert_counts

VOCAB = 256

# Model sizes of moe_bench.py.
CONFIGS = {
    "tiny": dict(dim=256, layers=4, heads=4, experts=8, top_k=2, hidden=512,
                 seq_len=256, micro_batch=8),
    "small": dict(dim=512, layers=8, heads=8, experts=16, top_k=2, hidden=1024,
                  seq_len=512, micro_batch=4),
    "medium": dict(dim=1024, layers=12, heads=16, experts=64, top_k=6, hidden=512,
                   seq_len=1024, micro_batch=16),
}

# balance(layer_index, probs [N, E], topk_idx [N, k]) -> (LBL scalar, counts [E])
Balance = Callable[[int, torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(seq_len: int, head_dim: int, base: float = 10000.0):
    """cos and sin tables [seq_len, head_dim / 2] for rotary position embeddings."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return freqs.cos(), freqs.sin()


def apply_rope(x, cos, sin):
    """Rotate pairs (i, i + head_dim/2) (GPT-NeoX / LLaMA-HF convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads or (dim // heads) % 2:
            raise ValueError(f"dim {dim} must split into {heads} heads of even size")
        self.heads, self.head_dim = heads, dim // heads
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(self, x, cos, sin, mask):
        B, T, D = x.shape
        q, k, v = self.wqkv(x).view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        att = att.masked_fill(mask, float("-inf")).softmax(dim=-1)
        return self.wo((att @ v).transpose(1, 2).reshape(B, T, D))


class MoE(nn.Module):
    """Token-choice top-k MoE with SwiGLU experts; no capacity limit, no token dropping."""

    def __init__(self, dim: int, hidden: int, experts: int, top_k: int):
        super().__init__()
        if not 1 <= top_k <= experts:
            raise ValueError(f"top_k {top_k} must be in 1..{experts}")
        self.experts, self.top_k = experts, top_k
        self.router = nn.Linear(dim, experts, bias=False)
        self.w1 = nn.ModuleList(nn.Linear(dim, hidden, bias=False) for _ in range(experts))
        self.w3 = nn.ModuleList(nn.Linear(dim, hidden, bias=False) for _ in range(experts))
        self.w2 = nn.ModuleList(nn.Linear(hidden, dim, bias=False) for _ in range(experts))

    def expert(self, e: int, x):
        return self.w2[e](F.silu(self.w1[e](x)) * self.w3[e](x))

    def forward(self, x):
        """Returns (output like x, router probabilities [N, E], top-k expert ids [N, k])."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        N, k = x.shape[0], self.top_k
        probs = self.router(x).softmax(dim=-1)
        topw, topi = probs.topk(k, dim=-1)                       # combine weights, expert ids
        # Assignment a = token * k + slot. Sort the assignments by expert (stable), run each
        # expert on its contiguous slice, then undo the permutation.
        order = torch.sort(topi.reshape(-1), stable=True).indices
        inverse = torch.argsort(order)
        per_assignment = x.unsqueeze(1).expand(N, k, shape[-1]).reshape(N * k, shape[-1])
        chunks = torch.split(per_assignment.index_select(0, order),
                             expert_counts(topi, self.experts).tolist())
        ys = torch.cat([self.expert(e, xe) for e, xe in enumerate(chunks) if xe.shape[0] > 0])
        y = ys.index_select(0, inverse).view(N, k, shape[-1])
        out = (y * topw.unsqueeze(-1).to(y.dtype)).sum(dim=1)
        return out.view(shape), probs, topi


class Block(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        self.norm1 = RMSNorm(c["dim"])
        self.attn = Attention(c["dim"], c["heads"])
        self.norm2 = RMSNorm(c["dim"])
        self.moe = MoE(c["dim"], c["hidden"], c["experts"], c["top_k"])

    def forward(self, x, cos, sin, mask):
        x = x + self.attn(self.norm1(x), cos, sin, mask)
        m, probs, topi = self.moe(self.norm2(x))
        return x + m, probs, topi


class MoELM(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        self.c = dict(c)
        self.embed = nn.Embedding(VOCAB, c["dim"])
        self.blocks = nn.ModuleList(Block(c) for _ in range(c["layers"]))
        self.norm_f = RMSNorm(c["dim"])
        self.head = nn.Linear(c["dim"], VOCAB, bias=False)
        cos, sin = rope_tables(c["seq_len"], c["dim"] // c["heads"])
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        mask = torch.triu(torch.ones(c["seq_len"], c["seq_len"], dtype=torch.bool), diagonal=1)
        self.register_buffer("mask", mask, persistent=False)
        for mod in self.modules():
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                nn.init.normal_(mod.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets, balance: Balance):
        """idx, targets: int64 [B, T].

        Returns (cross-entropy per sequence [B], per-layer LBL list, per-layer counts list).
        """
        B, T = idx.shape
        cos, sin, mask = self.cos[:T], self.sin[:T], self.mask[:T, :T]
        x = self.embed(idx)
        lbls: List[torch.Tensor] = []
        counts: List[torch.Tensor] = []
        for i, blk in enumerate(self.blocks):
            x, probs, topi = blk(x, cos, sin, mask)
            lbl, cnt = balance(i, probs, topi)
            lbls.append(lbl)
            counts.append(cnt)
        logits = self.head(self.norm_f(x))
        ce = F.cross_entropy(logits.view(-1, VOCAB), targets.reshape(-1), reduction="none")
        return ce.view(B, T).mean(dim=1), lbls, counts
