"""A packed (varlen) batch run as one padded attention call -- what an attention function without
a varlen kernel needs (docs/contracts.md, "Serving"): every sequence padded to the longest (queries
and keys), a boolean mask that hides the padding and applies each sequence's bottom-right
causality, one call, the real rows gathered back. The call computes every (padded query, padded
key) pair; harness/workloads/serving records how much of that no sequence needs.
"""

from __future__ import annotations

from typing import Callable

import torch

from implementations._shared.varlen_contract import check_varlen_args, padded_rows


def padded_call(attend: Callable, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale):
    """attend(qp (S, Hq, mq, D), kp, vp (S, Hkv, mk, D), mask (S, 1, mq, mk) bool, scale, group)
    -> (S, Hq, mq, D) on the padded batch; returns the packed (Tq, Hq, D) output."""
    dims = check_varlen_args(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale)
    S, Hq, Hkv, D = dims.sequences, dims.heads_q, dims.heads_kv, dims.head_dim
    mq = max(b - a for a, b in zip(dims.cu_q, dims.cu_q[1:]))
    mk = max(b - a for a, b in zip(dims.cu_k, dims.cu_k[1:]))
    rows_q = padded_rows(dims.cu_q, mq, q.device)  # (Tq,)
    rows_k = padded_rows(dims.cu_k, mk, q.device)  # (Tk,)
    # zeros, not empty: a padded value is multiplied by a probability of 0, and 0·NaN is NaN
    qp = q.new_zeros(S * mq, Hq, D).index_copy_(0, rows_q, q)  # (S·mq, Hq, D)
    kp = k.new_zeros(S * mk, Hkv, D).index_copy_(0, rows_k, k)  # (S·mk, Hkv, D)
    vp = v.new_zeros(S * mk, Hkv, D).index_copy_(0, rows_k, v)
    cached = torch.tensor([c for *_, c in dims.spans()], device=q.device).view(S, 1, 1, 1)  # (S, 1, 1, 1)
    i = torch.arange(mq, device=q.device).view(1, 1, mq, 1)
    j = torch.arange(mk, device=q.device).view(1, 1, 1, mk)
    # Query i of sequence s sees key j <= i + c_s: never a padded key for a real query, and every
    # padded query row sees key 0 at least (no fully masked row, no NaN to clean up).
    mask = j <= i + cached  # (S, 1, mq, mk)
    out = attend(qp.view(S, mq, Hq, D).transpose(1, 2), kp.view(S, mk, Hkv, D).transpose(1, 2),
                 vp.view(S, mk, Hkv, D).transpose(1, 2), mask, scale, dims.group)  # (S, Hq, mq, D)
    return out.transpose(1, 2).reshape(S * mq, Hq, D).index_select(0, rows_q)  # (Tq, Hq, D)


def padded_shape(case) -> tuple[int, int]:
    """(max_q, max_k) of a serving case: the padded lengths."""
    return max(case.q_lens), max(n + c for n, c in zip(case.q_lens, case.cached_lens))


def padded_memory_model(case, call_bytes: int) -> int:
    """Peak bytes of padded_call above the inputs: the padded q, k, v, output, mask and row indices
    held throughout, plus the larger of the call (`call_bytes`: what `attend` allocates besides its
    output, e.g. an additive copy of the mask and its kernel's tiles) and the gather after it (the
    padded output made contiguous, the packed output)."""
    e = case.element_bytes
    S, Hq, Hkv, D = case.batch, case.heads_q, case.heads_kv, case.head_dim
    mq, mk = padded_shape(case)
    held = e * S * D * (2 * Hq * mq + 2 * Hkv * mk) + S * mq * mk + 8 * (case.seq_len_q + case.seq_len_kv)
    after = e * D * Hq * (S * mq + case.seq_len_q)
    return held + max(call_bytes, after)
