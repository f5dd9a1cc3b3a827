"""naive's MLA decode path (docs/contracts.md, "MLA decode"): the textbook multi-head attention,
one query head at a time, each head reading the (shared) latent rows as its keys and their first
kv_lora_rank columns as its values -- what attention code written per head does with MLA's cache:
the latent is read once per query head (Hq times), scores are materialised, softmax, weighted sum.
(Expanding the latent to every head at once, as naive's GQA does for kv heads, would materialise
Hq copies of the cache: 9.6 GB at B=8, Hq=128, KV=4096.)"""

from __future__ import annotations

import torch

from harness.registry import register_path
from implementations._shared.contract import compute_dtype, default_scale
from implementations._shared.decode_contract import length_mask, padded_len
from implementations._shared.mla_contract import check_mla_args, gathered_bytes, padded_latent


def _memory_model(case) -> int:
    npad = padded_len(case)
    B, Nq, e = case.batch, case.seq_len_q, case.element_bytes
    head = 3 * 4 * B * Nq * npad + e * B * Nq * npad  # one head's scores, masked scores, probabilities
    mask = B * Nq * npad
    return gathered_bytes(case) + head + mask + e * B * case.heads_q * Nq * case.kv_lora_rank


@register_path("mla_decode", "naive", dtypes=("float32", "float16", "bfloat16"), memory_model=_memory_model,
               options={"layouts": ("contiguous", "paged")})
def naive_mla_decode(q, latent_cache, *, kv_lens, kv_lora_rank, block_table=None, scale=None):
    dims = check_mla_args(q, latent_cache, kv_lens, kv_lora_rank, block_table, scale)
    lat = padded_latent(latent_cache, block_table)  # (B, Npad, W)
    Npad = lat.shape[1]
    keys_t = lat.transpose(1, 2)  # (B, W, Npad)
    values = lat[:, :, :kv_lora_rank]  # (B, Npad, R)
    hidden = ~length_mask(kv_lens, dims.query_tokens, Npad)[:, 0]  # (B, Nq, Npad)
    c = default_scale(dims.width, scale)
    out = q.new_empty(dims.batch, dims.heads_q, dims.query_tokens, kv_lora_rank)
    for h in range(dims.heads_q):
        s = torch.matmul(q[:, h], keys_t).to(compute_dtype(q.dtype)) * c  # (B, Nq, Npad)
        p = torch.softmax(s.masked_fill_(hidden, float("-inf")), dim=-1).to(lat.dtype)
        out[:, h] = torch.matmul(p, values)  # (B, Nq, R)
    return out
