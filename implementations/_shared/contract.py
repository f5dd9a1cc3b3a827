"""The call contract of every implementation: argument checks and mask helpers.

The contract (docs/contracts.md): q (B, Hq, Nq, D); k (B, Hkv, Nk, D), v (B, Hkv, Nk, Dv) with
Hq % Hkv == 0 and Dv the value head dim (= D but for MLA-style attention); out (B, Hq, Nq, Dv);
optional boolean attn_mask broadcastable to (B, Hq, Nq, Nk), True = may attend; causal is
bottom-right aligned: query i sees key j iff j <= i + (Nk - Nq). A query row that sees no key
outputs zeros. `scale` defaults to 1/sqrt(D).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

FLOATING = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@dataclass(frozen=True)
class Dims:
    batch: int
    heads_q: int
    heads_kv: int
    seq_len_q: int
    seq_len_kv: int
    head_dim: int
    head_dim_v: int = 0  # v's and the output's head dim; 0 = head_dim

    @property
    def value_dim(self) -> int:
        """Dv: the head dim of v and of the output."""
        return self.head_dim_v or self.head_dim

    @property
    def group(self) -> int:
        """Query heads per key/value head (1 = MHA, Hq = MQA)."""
        return self.heads_q // self.heads_kv


def check_args(q, k, v, attn_mask=None, scale=None) -> Dims:
    """Validate shapes, dtypes and devices; raise ValueError saying what is wrong."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (B, H, N, D), got shape {tuple(t.shape)}")
        if t.dtype not in FLOATING:
            raise ValueError(f"{name} has dtype {t.dtype}; allowed: float32, float16, bfloat16, float64")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v devices differ: {q.device}, {k.device}, {v.device}")
    B, Hq, Nq, D = q.shape
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(f"k and v shapes differ in more than the head dim: {tuple(k.shape)} vs {tuple(v.shape)}")
    Bk, Hkv, Nk, Dk = k.shape
    if Bk != B:
        raise ValueError(f"batch differs: q has {B}, k/v have {Bk}")
    if Dk != D:
        raise ValueError(f"head_dim differs: q has {D}, k/v have {Dk}")
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"heads_q ({Hq}) must be a multiple of heads_kv ({Hkv})")
    if attn_mask is not None:
        if not isinstance(attn_mask, torch.Tensor) or attn_mask.dtype != torch.bool:
            got = attn_mask.dtype if isinstance(attn_mask, torch.Tensor) else type(attn_mask).__name__
            raise ValueError(f"attn_mask must be a boolean tensor (True = may attend), got {got}")
        if attn_mask.device != q.device:
            raise ValueError(f"attn_mask is on {attn_mask.device}, q on {q.device}")
        target = (B, Hq, Nq, Nk)
        ok = attn_mask.dim() <= 4 and all(
            m in (1, t) for m, t in zip(reversed(attn_mask.shape), reversed(target))
        )
        if not ok:
            raise ValueError(
                f"attn_mask shape {tuple(attn_mask.shape)} does not broadcast to (B, Hq, Nq, Nk) = {target}"
            )
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    return Dims(B, Hq, Hkv, Nq, Nk, D, v.shape[3])


def default_scale(head_dim: int, scale: float | None) -> float:
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)


def mask_4d(attn_mask: torch.Tensor | None) -> torch.Tensor | None:
    """View a broadcastable mask as 4-D (b, h, nq, nk) with size-1 dims kept for broadcasting."""
    if attn_mask is None:
        return None
    while attn_mask.dim() < 4:
        attn_mask = attn_mask.unsqueeze(0)
    return attn_mask


def causal_visible(
    q_start: int, q_stop: int, k_start: int, k_stop: int, offset: int, device
) -> torch.Tensor:
    """Boolean (q_stop-q_start, k_stop-k_start): key j visible to query i iff j <= i + offset,
    where offset = Nk - Nq (bottom-right alignment)."""
    i = torch.arange(q_start, q_stop, device=device).unsqueeze(1)  # (nq, 1)
    j = torch.arange(k_start, k_stop, device=device).unsqueeze(0)  # (1, nk)
    return j <= i + offset  # (nq, nk)


def block_fully_hidden(q_stop: int, k_start: int, offset: int) -> bool:
    """True when causality hides every key in [k_start, ...) from every query in [..., q_stop)."""
    return k_start > (q_stop - 1) + offset


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Low-precision inputs accumulate softmax statistics and outputs in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def group_queries(q: torch.Tensor, dims: Dims) -> torch.Tensor:
    """(B, Hq, N, D) -> (B, Hkv, G*N, D): the G query heads sharing one key/value head stacked
    along the sequence axis, so one batched matmul per kv head serves GQA/MQA without copying k/v."""
    B, Hq, N, D = q.shape
    return q.reshape(B, dims.heads_kv, dims.group * N, D)


def ungroup(x: torch.Tensor, dims: Dims) -> torch.Tensor:
    """Inverse of group_queries for any trailing width: (B, Hkv, G*N, W) -> (B, Hq, N, W)."""
    B, _, GN, W = x.shape
    return x.reshape(B, dims.heads_q, GN // dims.group, W)


# ---------------------------------------------------------------------------------------------
# Tiling helpers shared by chunked, memory_efficient and flash. Scores of a tile are laid out
# (B, Hkv, G, nq, nk) -- the grouped-query layout of group_queries with the group axis split out --
# so masks broadcast against them without copies.

LOG2E = 1.4426950408889634  # log2(e): exp(x) = exp2(x * LOG2E); folded into q once per block


def grouped_mask(attn_mask: torch.Tensor | None, dims: Dims) -> torch.Tensor | None:
    """View a broadcastable boolean mask as (b, hkv, g, nq, nk), size-1 dims kept, so it
    broadcasts against scores laid out (B, Hkv, G, nq, nk). No copy."""
    m = mask_4d(attn_mask)  # (b, h, nq, nk)
    if m is None:
        return None
    if m.shape[1] == 1:
        return m.unsqueeze(2)  # (b, 1, 1, nq, nk)
    return m.unflatten(1, (dims.heads_kv, dims.group))  # (b, Hkv, G, nq, nk)


def tile_visible(
    mask5: torch.Tensor | None,
    causal_offset: int | None,
    q_start: int,
    q_stop: int,
    k_start: int,
    k_stop: int,
    device,
) -> torch.Tensor | None:
    """What the tile (queries [q_start, q_stop), keys [k_start, k_stop)) may see, as a boolean
    broadcastable to (B, Hkv, G, nq, nk); None when it sees everything (no mask to apply).

    causal_offset is Nk - Nq for causal attention (bottom-right aligned), None otherwise. Only
    tiles that straddle the diagonal get a causal mask; callers skip fully hidden ones.
    """
    visible = None
    if causal_offset is not None and (k_stop - 1) > q_start + causal_offset:
        visible = causal_visible(q_start, q_stop, k_start, k_stop, causal_offset, device)  # (nq, nk)
    if mask5 is not None:
        rows = slice(q_start, q_stop) if mask5.shape[-2] > 1 else slice(None)
        cols = slice(k_start, k_stop) if mask5.shape[-1] > 1 else slice(None)
        tile = mask5[..., rows, cols]  # (b, hkv, g, nq, nk), size-1 dims kept
        visible = tile if visible is None else (tile & visible)
    return visible
