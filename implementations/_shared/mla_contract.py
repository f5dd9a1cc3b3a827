"""Argument checks and helpers shared by the MLA decode paths (docs/contracts.md, "MLA decode").

fn(q, latent_cache, *, kv_lens, kv_lora_rank, block_table=None, scale=None) -> out: q (B, Hq, Nq,
W), W = kv_lora_rank + qk_rope_head_dim; latent_cache contiguous (B, Nmax, W) or a paged pool
(num_pages, page_size, W) with block_table (B, max_pages) int32; kv_lens (B,) int32, Nq <=
kv_lens[b]; out (B, Hq, Nq, kv_lora_rank). Every query head scores the whole latent row of each
cached token and sums its first kv_lora_rank columns; query i of sequence b sees token j iff
j <= i + (kv_lens[b] - Nq); scale defaults to 1/sqrt(W).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from implementations._shared.contract import FLOATING
from implementations._shared.decode_contract import padded_len


@dataclass(frozen=True)
class MlaDims:
    batch: int
    heads_q: int
    query_tokens: int
    width: int  # W = kv_lora_rank + qk_rope_head_dim: the key
    rank: int  # kv_lora_rank: the value
    paged: bool
    page_size: int  # 0 when contiguous


def check_mla_args(q, latent_cache, kv_lens, kv_lora_rank, block_table, scale) -> MlaDims:
    """Validate shapes, dtypes and devices; raise ValueError saying what is wrong."""
    if not isinstance(q, torch.Tensor) or q.dim() != 4:
        raise ValueError(f"q must be a 4-D torch.Tensor (B, Hq, Nq, W), got {getattr(q, 'shape', type(q))}")
    if not isinstance(latent_cache, torch.Tensor) or latent_cache.dim() != 3:
        raise ValueError("latent_cache must be a 3-D torch.Tensor: (B, Nmax, W) or a pool (pages, page_size, W)")
    if q.dtype not in FLOATING or latent_cache.dtype != q.dtype:
        raise ValueError(f"q and latent_cache need one floating dtype, got {q.dtype} and {latent_cache.dtype}")
    B, Hq, Nq, W = q.shape
    if latent_cache.shape[2] != W:
        raise ValueError(f"latent width differs: q has {W}, the cache {latent_cache.shape[2]}")
    if isinstance(kv_lora_rank, bool) or not isinstance(kv_lora_rank, int) or not 0 < kv_lora_rank <= W:
        raise ValueError(f"kv_lora_rank must be an int in 1..{W} (the value columns of the latent), got {kv_lora_rank!r}")
    if not isinstance(kv_lens, torch.Tensor) or kv_lens.shape != (B,) or kv_lens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"kv_lens must be an int32 tensor of shape ({B},)")
    for name, t in (("latent_cache", latent_cache), ("kv_lens", kv_lens), ("block_table", block_table)):
        if t is not None and t.device != q.device:
            raise ValueError(f"{name} is on {t.device}, q on {q.device}")
    paged = block_table is not None
    if paged and (not isinstance(block_table, torch.Tensor) or block_table.dim() != 2 or block_table.shape[0] != B):
        raise ValueError(f"block_table must be a (B={B}, max_pages) int tensor")
    if not paged and latent_cache.shape[0] != B:
        raise ValueError(f"contiguous latent_cache batch {latent_cache.shape[0]} != q batch {B}")
    if scale is not None and not isinstance(scale, (int, float)):
        raise ValueError(f"scale must be a number, got {scale!r}")
    return MlaDims(B, Hq, Nq, W, kv_lora_rank, paged, latent_cache.shape[1] if paged else 0)


def padded_latent(latent_cache, block_table):
    """The cache as (B, Npad, W): the input itself when contiguous; a paged pool's pages gathered
    in block-table order (Npad = max_pages · page_size; unused entries read page 0, hidden later by
    the length mask)."""
    if block_table is None:
        return latent_cache
    pages = latent_cache[block_table.long().clamp_min(0)]  # (B, P, ps, W): a copy
    return pages.reshape(pages.shape[0], -1, pages.shape[3])


def gathered_bytes(case) -> int:
    """Bytes of padded_latent's copy for a paged Case (0 when contiguous)."""
    return case.element_bytes * case.batch * padded_len(case) * case.head_dim if case.kv_layout == "paged" else 0
