"""Argument checks and helpers shared by the decode paths (docs/contracts.md, "Decode").

fn(q, k_cache, v_cache, *, kv_lens, block_table=None, scale=None, sinks=None, k_scale=None,
v_scale=None): q (B, Hq, Nq, D); contiguous k_cache, v_cache (B, Hkv, Nmax, D); paged
(num_pages, Hkv, page_size, D) with block_table (B, max_pages) int32; kv_lens (B,) int32,
Nq <= kv_lens[b]. Query i of sequence b sees cached key j iff j <= i + (kv_lens[b] - Nq); query
head h uses kv head h // (Hq / Hkv). Low-precision caches (float32 q only): bfloat16, or
float8_e4m3fn with float32 k_scale, v_scale of shape () (per tensor) or (Hkv,) (per kv head),
the stored value times its scale being the cached number. sinks: (Hq,) float32 logits, each
adding exp(sinks[h]) to query head h's softmax denominator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from implementations._shared.contract import FLOATING

LOW_PRECISION_CACHES = (torch.bfloat16, torch.float8_e4m3fn)  # with float32 queries


@dataclass(frozen=True)
class DecodeDims:
    batch: int
    heads_q: int
    heads_kv: int
    query_tokens: int
    head_dim: int
    paged: bool
    page_size: int  # 0 when contiguous
    cache_dtype: torch.dtype = torch.float32

    @property
    def group(self) -> int:
        return self.heads_q // self.heads_kv


def _check_cache_dtypes(q, k_cache, v_cache) -> None:
    if q.dtype not in FLOATING:
        raise ValueError(f"q has dtype {q.dtype}; allowed: float32, float16, bfloat16, float64")
    if k_cache.dtype != v_cache.dtype:
        raise ValueError(f"k_cache and v_cache dtypes differ: {k_cache.dtype}, {v_cache.dtype}")
    if k_cache.dtype == q.dtype:
        return
    if q.dtype == torch.float32 and k_cache.dtype in LOW_PRECISION_CACHES:
        return
    raise ValueError(f"q has dtype {q.dtype}, the cache {k_cache.dtype}; allowed: the same dtype, or a "
                     "bfloat16 / float8_e4m3fn cache with float32 q")


def _check_scales(k_cache, k_scale, v_scale, Hkv: int, dev) -> None:
    fp8 = k_cache.dtype == torch.float8_e4m3fn
    for name, s in (("k_scale", k_scale), ("v_scale", v_scale)):
        if not fp8:
            if s is not None:
                raise ValueError(f"{name} is for a float8_e4m3fn cache, not {k_cache.dtype}")
            continue
        if not isinstance(s, torch.Tensor) or s.dtype != torch.float32 or s.shape not in ((), (Hkv,)):
            raise ValueError(f"a float8_e4m3fn cache needs {name}: a float32 tensor of shape () or ({Hkv},), "
                             f"got {getattr(s, 'shape', s)!r}")
        if s.device != dev:
            raise ValueError(f"{name} is on {s.device}, q on {dev}")


def check_decode_args(q, k_cache, v_cache, kv_lens, block_table, scale, *, sinks=None, k_scale=None,
                      v_scale=None) -> DecodeDims:
    """Validate shapes, dtypes and devices; raise ValueError saying what is wrong."""
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D torch.Tensor, got {getattr(t, 'shape', type(t))}")
    _check_cache_dtypes(q, k_cache, v_cache)
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"k_cache and v_cache shapes differ: {tuple(k_cache.shape)} vs {tuple(v_cache.shape)}")
    B, Hq, Nq, D = q.shape
    Hkv = k_cache.shape[1]
    if k_cache.shape[3] != D:
        raise ValueError(f"head_dim differs: q has {D}, the cache {k_cache.shape[3]}")
    if Hkv == 0 or Hq % Hkv:
        raise ValueError(f"heads_q ({Hq}) must be a multiple of heads_kv ({Hkv})")
    if not isinstance(kv_lens, torch.Tensor) or kv_lens.shape != (B,) or kv_lens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"kv_lens must be an int32 tensor of shape ({B},)")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache), ("kv_lens", kv_lens)):
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device}, q on {q.device}")
    paged = block_table is not None
    if paged:
        if not isinstance(block_table, torch.Tensor) or block_table.dim() != 2 or block_table.shape[0] != B:
            raise ValueError(f"block_table must be a (B={B}, max_pages) int tensor")
        if block_table.device != q.device:
            raise ValueError(f"block_table is on {block_table.device}, q on {q.device}")
    elif k_cache.shape[0] != B:
        raise ValueError(f"contiguous cache batch {k_cache.shape[0]} != q batch {B}")
    if scale is not None and not isinstance(scale, (int, float)):
        raise ValueError(f"scale must be a number, got {scale!r}")
    _check_scales(k_cache, k_scale, v_scale, Hkv, q.device)
    if sinks is not None:
        if not isinstance(sinks, torch.Tensor) or sinks.shape != (Hq,) or sinks.dtype != torch.float32:
            raise ValueError(f"sinks must be a float32 tensor of shape ({Hq},), got {getattr(sinks, 'shape', sinks)!r}")
        if sinks.device != q.device:
            raise ValueError(f"sinks is on {sinks.device}, q on {q.device}")
    return DecodeDims(B, Hq, Hkv, Nq, D, paged, k_cache.shape[2] if paged else 0, k_cache.dtype)


def dequantised(cache, scale, dtype=torch.float32):
    """A cache (heads at dim 1) as `dtype`: the stored value times its scale (float8), or the stored
    value (bfloat16 and the others)."""
    x = cache.to(dtype)
    if scale is None:
        return x
    return x.mul_(scale.to(dtype).reshape((1, -1, 1, 1) if scale.dim() else ()))  # x is a fresh copy


def with_sinks(s, sinks):
    """Scores (B, Hq, Nq, N) with each head's sink logit appended as a last column (no value:
    drop that column of the softmax); `s` itself when there are no sinks."""
    if sinks is None:
        return s
    B, Hq, Nq, _ = s.shape
    return torch.cat([s, sinks.to(s.dtype).view(1, Hq, 1, 1).expand(B, Hq, Nq, 1)], dim=-1)


def padded_cache(k_cache, v_cache, block_table):
    """The cache as (B, Hkv, Npad, D) tensors: the inputs themselves when contiguous; for a paged
    cache every sequence's pages gathered in block-table order (Npad = max_pages · page_size;
    unused entries read page 0, hidden later by the length mask)."""
    if block_table is None:
        return k_cache, v_cache
    idx = block_table.long().clamp_min(0)  # (B, P)
    out = []
    for cache in (k_cache, v_cache):
        pages = cache[idx]  # (B, P, Hkv, ps, D): a copy
        B, P, Hkv, ps, D = pages.shape
        out.append(pages.permute(0, 2, 1, 3, 4).reshape(B, Hkv, P * ps, D))  # (B, Hkv, Npad, D)
    return out[0], out[1]


def length_mask(kv_lens, query_tokens: int, n_keys: int):
    """Boolean (B, 1, Nq, Npad), True = may attend: key j visible to query i of sequence b iff
    j <= i + kv_lens[b] - Nq (which also hides every slot at or past kv_lens[b])."""
    dev = kv_lens.device
    i = torch.arange(query_tokens, device=dev).view(1, query_tokens, 1)  # (1, Nq, 1)
    j = torch.arange(n_keys, device=dev).view(1, 1, n_keys)  # (1, 1, Npad)
    last = (kv_lens.long() - query_tokens).view(-1, 1, 1)  # (B, 1, 1)
    return (j <= i + last).unsqueeze(1)  # (B, 1, Nq, Npad)


def cache_element_bytes(case) -> int:
    """Bytes of one stored cache element of a decode Case (its kv_dtype, else its dtype)."""
    return {"bfloat16": 2, "float8_e4m3fn": 1}.get(case.kv_dtype, case.element_bytes)


def dequantised_bytes(case) -> int:
    """Bytes of a float32 copy of a low-precision cache, padded (dequantised() of k and v); 0 for
    a cache in the case's dtype."""
    if case.kv_dtype == "same":
        return 0
    return 2 * 4 * case.batch * case.heads_kv * padded_len(case) * case.head_dim


def padded_len(case) -> int:
    """Npad of padded_cache for a Case."""
    if case.kv_layout != "paged":
        return case.seq_len_kv
    return -(-case.seq_len_kv // case.page_size) * case.page_size
