"""SDPA decode: gather the whole cache (padded to the longest sequence) and call
torch.nn.functional.scaled_dot_product_attention with a boolean length mask and enable_gqa --
what a newcomer writes with torch. The decode path of `sdpa` (README, "Decode")."""

from __future__ import annotations

import torch.nn.functional as F

from harness.registry import register_decode
from implementations._decode import check_decode_args, length_mask, padded_cache, padded_len


def _memory_model(case) -> int:
    npad = padded_len(case)
    e = case.element_bytes
    B, Hq, Nq, D = case.batch, case.heads_q, case.seq_len_q, case.head_dim
    gathered = 2 * e * B * case.heads_kv * npad * D if case.kv_layout == "paged" else 0
    expanded = 2 * e * B * Hq * npad * D if Hq != case.heads_kv else 0  # GQA: k/v per query head
    scores = 2 * 4 * B * Hq * Nq * npad  # math fallback: scores and probabilities
    return gathered + expanded + scores + B * Nq * npad + e * B * Hq * Nq * D


@register_decode("sdpa", layouts=("contiguous", "paged"), dtypes=("float32", "float16", "bfloat16"),
                 memory_model=_memory_model)
def sdpa_decode(q, k_cache, v_cache, *, kv_lens, block_table=None, scale=None):
    dims = check_decode_args(q, k_cache, v_cache, kv_lens, block_table, scale)
    k, v = padded_cache(k_cache, v_cache, block_table)  # (B, Hkv, Npad, D) each
    mask = length_mask(kv_lens, dims.query_tokens, k.shape[2])  # (B, 1, Nq, Npad)
    # Every query sees at least key 0 (Nq <= kv_lens[b]), so no row is fully masked.
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, scale=scale, enable_gqa=dims.group > 1
    )  # (B, Hq, Nq, D)
