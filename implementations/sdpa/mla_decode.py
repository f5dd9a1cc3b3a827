"""sdpa's MLA decode path (docs/contracts.md, "MLA decode"): one scaled_dot_product_attention
call with the query heads folded into the query rows of the single latent "head" -- q as
(B, 1, Hq·Nq, W) against keys (B, 1, Npad, W) and values (B, 1, Npad, kv_lora_rank) -- and a
boolean mask carrying each row's causal length. SDPA takes a value head dim other than the key's
(its math path on the CPU); enable_gqa with one kv head would instead expand the latent to every
query head."""

from __future__ import annotations

import torch.nn.functional as F

from harness.registry import register_path
from implementations._shared.decode_contract import length_mask, padded_len
from implementations._shared.mla_contract import check_mla_args, gathered_bytes, padded_latent


def _memory_model(case) -> int:
    npad = padded_len(case)
    rows = case.batch * case.heads_q * case.seq_len_q
    e = case.element_bytes
    values = e * case.batch * npad * case.kv_lora_rank  # SDPA's math path copies the strided value slice
    return gathered_bytes(case) + values + 3 * 4 * rows * npad + 2 * rows * npad + e * rows * case.kv_lora_rank


@register_path("mla_decode", "sdpa", dtypes=("float32", "float16", "bfloat16"), memory_model=_memory_model,
               options={"layouts": ("contiguous", "paged")})
def sdpa_mla_decode(q, latent_cache, *, kv_lens, kv_lora_rank, block_table=None, scale=None):
    dims = check_mla_args(q, latent_cache, kv_lens, kv_lora_rank, block_table, scale)
    B, Hq, Nq, W = q.shape
    lat = padded_latent(latent_cache, block_table).unsqueeze(1)  # (B, 1, Npad, W)
    mask = length_mask(kv_lens, Nq, lat.shape[2]).expand(B, Hq, Nq, -1).reshape(B, 1, Hq * Nq, -1)
    out = F.scaled_dot_product_attention(q.reshape(B, 1, Hq * Nq, W), lat, lat[..., :kv_lora_rank],
                                         attn_mask=mask, scale=scale)  # (B, 1, Hq·Nq, R)
    return out.view(B, Hq, Nq, kv_lora_rank)
