"""Naive decode: gather the whole cache (padded to the longest sequence), mask by length, full
softmax -- the textbook attention (Vaswani et al. 2017, eq. 1) over a KV cache, as a newcomer
writes it. The decode path of `naive` (README, "Decode")."""

from __future__ import annotations

import torch

from harness.registry import register_decode
from implementations._common import compute_dtype, default_scale
from implementations._decode import check_decode_args, length_mask, padded_cache, padded_len


def _memory_model(case) -> int:
    npad = padded_len(case)
    e = case.element_bytes
    gathered = 2 * e * case.batch * case.heads_kv * npad * case.head_dim if case.kv_layout == "paged" else 0
    scores = 4 * case.batch * case.heads_q * case.seq_len_q * npad  # float32 scores, then probs
    raw = e * case.batch * case.heads_q * case.seq_len_q * npad  # matmul output before the upcast
    mask = case.batch * case.seq_len_q * npad
    out = e * case.batch * case.heads_q * case.seq_len_q * case.head_dim
    return gathered + 2 * scores + (raw if e != 4 else 0) + mask + out


@register_decode("naive", layouts=("contiguous", "paged"), dtypes=("float32", "float16", "bfloat16"),
                 memory_model=_memory_model)
def naive_decode(q, k_cache, v_cache, *, kv_lens, block_table=None, scale=None):
    dims = check_decode_args(q, k_cache, v_cache, kv_lens, block_table, scale)
    B, Hq, Nq, D = q.shape
    Hkv, G = dims.heads_kv, dims.group
    k, v = padded_cache(k_cache, v_cache, block_table)  # (B, Hkv, Npad, D) each
    Npad = k.shape[2]
    qg = q.reshape(B, Hkv, G * Nq, D)  # (B, Hkv, G·Nq, D): the G query heads of a kv head stacked
    s = torch.matmul(qg, k.transpose(-1, -2)).view(B, Hq, Nq, Npad)  # (B, Hq, Nq, Npad)
    s = s.to(compute_dtype(q.dtype)) * default_scale(D, scale)
    s = s.masked_fill(~length_mask(kv_lens, Nq, Npad), float("-inf"))  # (B, Hq, Nq, Npad)
    p = torch.softmax(s, dim=-1).to(v.dtype).view(B, Hkv, G * Nq, Npad)  # (B, Hkv, G·Nq, Npad)
    return torch.matmul(p, v).view(B, Hq, Nq, D)  # (B, Hq, Nq, D)
