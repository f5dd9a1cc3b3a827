"""Naive attention: materialise the full score matrix, softmax, weighted sum of V.

The textbook baseline (Vaswani et al. 2017, eq. 1): out = softmax(Q·Kᵀ·scale) · V.
Holds about two (B, Hq, Nq, Nk) score matrices at its peak: the scores and their softmax.

Differentiable by plain autograd: the forward keeps the float32 probabilities (and their cast to
the input dtype for float16 / bfloat16) plus the boolean visibility for the backward, which
allocates a few more score-sized gradient matrices (see _memory_model).
"""

from __future__ import annotations

import torch

from harness.registry import register
from implementations._common import (
    causal_visible,
    check_args,
    compute_dtype,
    default_scale,
    group_queries,
    mask_4d,
    ungroup,
)


def _memory_model(case) -> int:
    score_bytes = 4 * case.batch * case.heads_q * case.seq_len_q * case.seq_len_kv  # float32 scores
    out_bytes = case.element_bytes * case.batch * case.heads_q * case.seq_len_q * case.head_dim
    return 2 * score_bytes + out_bytes


@register(
    "naive",
    devices=("cpu", "cuda"),
    dtypes=("float32", "float16", "bfloat16"),
    memory_model=_memory_model,
    description="Full score matrix, softmax, weighted sum of V (textbook baseline)",
)
def naive_attention(q, k, v, *, causal=False, attn_mask=None, scale=None):
    dims = check_args(q, k, v, attn_mask, scale)
    scale = default_scale(dims.head_dim, scale)
    acc = compute_dtype(q.dtype)
    # GQA: stack the query heads that share a kv head, one matmul per kv head, no k/v copies.
    qg = group_queries(q, dims)  # (B, Hkv, G*Nq, D)
    scores = torch.matmul(qg, k.transpose(-1, -2))  # (B, Hkv, G*Nq, Nk)
    scores = ungroup(scores, dims).to(acc)  # (B, Hq, Nq, Nk), float32 for low precision
    scores.mul_(scale)
    visible = None
    if causal:
        offset = dims.seq_len_kv - dims.seq_len_q
        visible = causal_visible(0, dims.seq_len_q, 0, dims.seq_len_kv, offset, q.device)  # (Nq, Nk)
    if attn_mask is not None:
        m = mask_4d(attn_mask)  # (b, h, nq, Nk), broadcastable
        visible = m if visible is None else (m & visible)
    if visible is not None:
        # Hidden scores get the lowest finite value, not −inf: a row with no visible key then has
        # a finite (uniform) softmax instead of NaN -- in the forward and in its gradient -- and
        # its output is zeroed below. Visible scores beat it by far, so exp() of it is exactly 0.
        scores.masked_fill_(~visible, torch.finfo(acc).min)
    probs = torch.softmax(scores, dim=-1)  # (B, Hq, Nq, Nk); autograd keeps it for the backward
    del scores
    pg = group_queries(probs.to(v.dtype), dims)  # (B, Hkv, G*Nq, Nk)
    out = ungroup(torch.matmul(pg, v), dims)  # (B, Hq, Nq, D)
    if visible is not None:
        # A row with no visible key outputs zeros (the contract). Zeroing the output -- not the
        # probabilities autograd saved -- also zeroes that row's upstream gradient, so its
        # dS = P∘(dP − rowsum(dP∘P)) is exactly 0 and q, k, v get no gradient through it.
        has_key = visible.any(dim=-1, keepdim=True)  # (b, h, nq, 1)
        out = out.masked_fill_(~has_key, 0.0)  # in place: matmul's backward does not need out
    return out
