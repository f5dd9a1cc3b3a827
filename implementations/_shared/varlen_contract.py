"""Argument checks shared by the serving (varlen) paths (docs/contracts.md, "Serving").

fn(q, k, v, *, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale=None): q (Tq, Hq, D)
the new tokens of S sequences concatenated; k, v (Tk, Hkv, D) each sequence's cached tokens then
its new ones; cu_seqlens_q / cu_seqlens_k (S+1,) int32 cumulative lengths starting at 0. Query i of
sequence s (n_s new tokens, c_s = keys − n_s cached) sees key j iff j <= i + c_s (bottom-right
causal); query head h uses kv head h // (Hq / Hkv).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from implementations._shared.contract import FLOATING


@dataclass(frozen=True)
class VarlenDims:
    heads_q: int
    heads_kv: int
    head_dim: int
    cu_q: tuple[int, ...]  # (S+1,) on the host
    cu_k: tuple[int, ...]

    @property
    def group(self) -> int:
        return self.heads_q // self.heads_kv

    @property
    def sequences(self) -> int:
        return len(self.cu_q) - 1

    def spans(self):
        """Per sequence: (q0, q1, k0, k1, cached) -- its rows of q and of k, and c_s."""
        for s in range(self.sequences):
            q0, q1, k0, k1 = self.cu_q[s], self.cu_q[s + 1], self.cu_k[s], self.cu_k[s + 1]
            yield q0, q1, k0, k1, (k1 - k0) - (q1 - q0)


def _cumulative(name: str, t, total: int, device) -> tuple[int, ...]:
    if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.numel() < 2 or t.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be a 1-D int32 tensor of S+1 >= 2 cumulative lengths")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, q on {device}")
    cu = tuple(t.tolist())  # one host copy (a device sync on CUDA), as FlashAttention's host-side checks
    if cu[0] != 0 or cu[-1] != total or any(b < a for a, b in zip(cu, cu[1:])):
        raise ValueError(f"{name} must start at 0, never decrease and end at {total}, got {list(cu)[:8]}...")
    return cu


def check_varlen_args(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale) -> VarlenDims:
    """Validate shapes, dtypes, devices and lengths; raise ValueError saying what is wrong."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise ValueError(f"{name} must be a 3-D (tokens, heads, head_dim) tensor, got {getattr(t, 'shape', t)}")
        if t.dtype not in FLOATING or t.dtype != q.dtype or t.device != q.device:
            raise ValueError(f"q, k, v must share a floating dtype and device; {name} is {t.dtype} on {t.device}")
    if k.shape != v.shape or k.shape[2] != q.shape[2]:
        raise ValueError(f"k, v shapes {tuple(k.shape)}, {tuple(v.shape)} do not match q {tuple(q.shape)}")
    Hq, Hkv = q.shape[1], k.shape[1]
    if Hkv == 0 or Hq % Hkv:
        raise ValueError(f"heads_q ({Hq}) must be a multiple of heads_kv ({Hkv})")
    cu_q = _cumulative("cu_seqlens_q", cu_seqlens_q, q.shape[0], q.device)
    cu_k = _cumulative("cu_seqlens_k", cu_seqlens_k, k.shape[0], q.device)
    if len(cu_q) != len(cu_k):
        raise ValueError(f"cu_seqlens_q has {len(cu_q) - 1} sequences, cu_seqlens_k {len(cu_k) - 1}")
    dims = VarlenDims(Hq, Hkv, q.shape[2], cu_q, cu_k)
    for s, (q0, q1, k0, k1, cached) in enumerate(dims.spans()):
        if cached < 0:
            raise ValueError(f"sequence {s} has {q1 - q0} new tokens but only {k1 - k0} keys (its keys are its "
                             "cached tokens followed by its new ones)")
    longest_q = max(b - a for a, b in zip(cu_q, cu_q[1:]))
    longest_k = max(b - a for a, b in zip(cu_k, cu_k[1:]))
    if max_seqlen_q < longest_q or max_seqlen_k < longest_k:
        raise ValueError(f"max_seqlen_q / max_seqlen_k ({max_seqlen_q}, {max_seqlen_k}) below the longest "
                         f"sequence ({longest_q}, {longest_k})")
    if scale is not None and not isinstance(scale, (int, float)):
        raise ValueError(f"scale must be a number, got {scale!r}")
    return dims


def padded_rows(cu, longest: int, device) -> torch.Tensor:
    """For packed rows with cumulative lengths `cu` (S+1, on the host): the row of each packed token
    in the layout that pads every sequence to `longest` rows (S·longest), (T,) int64."""
    lens = torch.tensor([b - a for a, b in zip(cu, cu[1:])], device=device)  # (S,)
    starts = torch.tensor(cu[:-1], device=device)  # (S,)
    seq = torch.repeat_interleave(torch.arange(len(lens), device=device), lens)  # (T,)
    return seq * longest + torch.arange(cu[-1], device=device) - starts[seq]  # (T,)
