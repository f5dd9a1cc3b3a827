"""sdpa's decode path (README, "Decode"): gather the whole cache (padded to the longest sequence)
and call scaled_dot_product_attention with a boolean length mask and enable_gqa -- what a newcomer
writes with torch. A low-precision cache is dequantised first; sinks are one more zero key."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.registry import register_decode
from implementations._shared.decode_contract import (
    cache_element_bytes,
    check_decode_args,
    dequantised,
    dequantised_bytes,
    length_mask,
    padded_cache,
    padded_len,
    with_sinks,
)



def _decode_memory_model(case) -> int:
    npad = padded_len(case) + case.sinks  # sinks: one more (zero) key and value
    e = case.element_bytes
    B, Hq, Nq, D = case.batch, case.heads_q, case.seq_len_q, case.head_dim
    gathered = 2 * cache_element_bytes(case) * B * case.heads_kv * npad * D if case.kv_layout == "paged" else 0
    extended = 2 * e * B * case.heads_kv * npad * D if case.sinks else 0
    expanded = 2 * e * B * Hq * npad * D if Hq != case.heads_kv else 0  # GQA: k/v per query head
    scores = 2 * 4 * B * Hq * Nq * npad  # math fallback: scores and probabilities
    mask = (4 * Hq if case.sinks else 1) * B * Nq * npad  # float bias with sinks, else boolean
    return gathered + dequantised_bytes(case) + extended + expanded + scores + mask + e * B * Hq * Nq * D


@register_decode("sdpa", layouts=("contiguous", "paged"), dtypes=("float32", "float16", "bfloat16"),
                 memory_model=_decode_memory_model, forms=("sinks", "scale", "kv_bfloat16", "kv_float8_e4m3fn"))
def sdpa_decode(q, k_cache, v_cache, *, kv_lens, block_table=None, scale=None, sinks=None, k_scale=None,
                v_scale=None):
    """A low-precision cache is dequantised to q's dtype first. Sinks, which SDPA has no argument
    for, as one more key and value of zeros whose additive mask is the sink logit: its score is
    exactly sinks[h], its value adds nothing."""
    dims = check_decode_args(q, k_cache, v_cache, kv_lens, block_table, scale, sinks=sinks, k_scale=k_scale,
                             v_scale=v_scale)
    k, v = padded_cache(k_cache, v_cache, block_table)  # (B, Hkv, Npad, D) each
    if k.dtype != q.dtype:
        k, v = dequantised(k, k_scale, q.dtype), dequantised(v, v_scale, q.dtype)
    mask = length_mask(kv_lens, dims.query_tokens, k.shape[2])  # (B, 1, Nq, Npad)
    if sinks is not None:
        B, Hkv, _, D = k.shape
        zero = k.new_zeros(B, Hkv, 1, D)
        k, v = torch.cat([k, zero], dim=2), torch.cat([v, zero], dim=2)  # (B, Hkv, Npad + 1, D)
        bias = torch.zeros(mask.shape, dtype=torch.float32, device=q.device).masked_fill_(~mask, float("-inf"))
        mask = with_sinks(bias.expand(-1, dims.heads_q, -1, -1), sinks).to(q.dtype)  # (B, Hq, Nq, Npad + 1)
    # Every query sees at least key 0 (Nq <= kv_lens[b]), so no row is fully masked.
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, scale=scale, enable_gqa=dims.group > 1
    )  # (B, Hq, Nq, D)
