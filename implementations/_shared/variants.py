"""Attention variants for the implementations: sliding window, soft cap, ALiBi, packed documents,
attention sinks.

The contract (docs/contracts.md "Variants"; harness/workloads/prefill/reference.py computes the
float64 reference by the same rules), offset = Nk − Nq:
- window=W (W ≥ 1): query i sees key j iff i + offset − W < j ≤ i + offset (implies causal);
- softcap=c (c > 0): scaled scores s → c·tanh(s / c) before the softmax (after the ALiBi bias);
- alibi=True: query head h adds −m_h·(i + offset − j), m_h the standard slopes (alibi_slopes);
- doc_ids: (Nk,) non-decreasing integer document index per position, self-attention only; query i
  sees key j iff doc_ids[i] == doc_ids[j] and j ≤ i (implies causal);
- sinks: (Hq,) float tensor, one logit per query head that joins the softmax denominator with no
  value: p_ij = exp(s_ij − m) / (exp(sink_h − m) + Σ_j exp(s_ij − m)) (gpt-oss). A row that sees
  no key is 0 with a sink too. Dense implementations append it as one more softmax column
  (sink_column); online-softmax ones add exp(sink − m) to the running sum at the end (sink_logits);
  one that returns the log-sum-exp rescales its output by 1/(1 + exp(sink − lse)) (rescale_by_sink).
The harness passes these keywords only when a variant is active. Tiled implementations use
Variants.key_range to skip key blocks no query of a block can see -- the point of a window or of
documents -- and tile_visible / mod_ for the tiles they do visit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from harness.case import Case
from harness.registry import YES, Support, no

ALL = ("window", "softcap", "alibi", "document", "sinks")
LOG2E = 1.4426950408889634


def alibi_slopes(heads: int) -> list[float]:
    """Press et al. 2022: 2^(−8(h+1)/H) for H a power of two, else the closest smaller power of
    two P's slopes followed by every other slope of 2P (their reference code)."""

    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]

    if heads & (heads - 1) == 0:
        return power_of_two(heads)
    p = 2 ** int(math.floor(math.log2(heads)))
    return power_of_two(p) + power_of_two(2 * p)[0::2][: heads - p]


def forward_only(case: Case, name: str) -> Support:
    """For implementations whose variants exist in the forward pass only (the registry has already
    checked params["variants"])."""
    if case.variants and case.pass_kind != "forward":
        return no(f"{name} implements variants ({', '.join(case.variants)}) in the forward pass only")
    return YES


@dataclass(frozen=True)
class Variants:
    """One call's variants, checked; built by `variants(...)` (None when none is active)."""

    window: int
    softcap: float
    slopes: torch.Tensor | None  # (Hq,) float32/64 ALiBi slopes, or None
    doc: list | None  # doc_ids as a Python list (for block ranges), or None
    doc_ids: torch.Tensor | None  # (Nk,) on the inputs' device
    doc_start: list | None  # first position of the document of each position
    offset: int  # Nk − Nq
    sinks: torch.Tensor | None = None  # (Hq,) sink logits, as given (float32 for the harness)

    @property
    def masks(self) -> bool:
        return self.window > 0 or self.doc is not None

    @property
    def mods(self) -> bool:
        return self.softcap > 0 or self.slopes is not None

    def key_range(self, i0: int, i1: int, nk: int) -> tuple[int, int]:
        """Keys [lo, hi) that some query in [i0, i1) may see (causal upper bound included)."""
        hi = max(0, min(nk, i1 + self.offset))
        lo = 0
        if self.window > 0:
            lo = max(lo, i0 + self.offset - self.window + 1)
        if self.doc_start is not None:
            lo = max(lo, self.doc_start[i0])
        return min(lo, hi), hi

    def tile_visible(self, i0: int, i1: int, j0: int, j1: int, device) -> torch.Tensor | None:
        """Boolean (nq, nk) of what the window and documents let the tile see (the causal upper
        bound is the caller's), or None when they hide nothing in it."""
        vis = None
        if self.window > 0 and j0 <= (i1 - 1) + self.offset - self.window:
            i = torch.arange(i0, i1, device=device).unsqueeze(1)  # (nq, 1)
            j = torch.arange(j0, j1, device=device).unsqueeze(0)  # (1, nk)
            vis = j > i + self.offset - self.window  # (nq, nk)
        if self.doc is not None:
            d = self.doc
            if not (d[i0] == d[i1 - 1] == d[j0] == d[j1 - 1]):  # ids are non-decreasing
                same = self.doc_ids[i0:i1].unsqueeze(1) == self.doc_ids[j0:j1].unsqueeze(0)
                vis = same if vis is None else vis & same
        return vis

    def hide_(self, s5: torch.Tensor, i0: int, i1: int, j0: int, j1: int) -> bool:
        """−inf where the window or the documents hide a key of the tile (B, Hkv, G, nq, nk), in
        place; True when anything may be hidden."""
        vis = self.tile_visible(i0, i1, j0, j1, s5.device)  # (nq, nk) or None
        if vis is None:
            return False
        s5.masked_fill_(vis.logical_not(), float("-inf"))
        return True

    def mod_(self, s5: torch.Tensor, i0: int, i1: int, j0: int, j1: int, unit: float = 1.0,
             inplace: bool = True) -> torch.Tensor:
        """ALiBi bias then soft cap on a score tile (B, Hkv, G, nq, nk) holding unit·(scaled
        scores) -- unit = log2(e) for base-2 kernels. In place (returns s5), or out of place for
        autograd (inplace=False; tanh's backward needs its own output untouched)."""
        if self.slopes is not None:
            Hkv, G = s5.shape[1], s5.shape[2]
            i = torch.arange(i0, i1, device=s5.device, dtype=s5.dtype).unsqueeze(1)  # (nq, 1)
            j = torch.arange(j0, j1, device=s5.device, dtype=s5.dtype).unsqueeze(0)  # (1, nk)
            bias = self.slopes.to(s5.device, s5.dtype).view(1, Hkv, G, 1, 1) * (-unit) * ((i + self.offset) - j)
            s5 = s5.add_(bias) if inplace else s5 + bias  # (B, Hkv, G, nq, nk)
        if self.softcap > 0:
            c = self.softcap * unit
            s5 = s5.div_(c).tanh_().mul_(c) if inplace else torch.tanh(s5 / c) * c
        return s5


def check_sinks(sinks, heads_q: int) -> None:
    """sinks: None or a floating (Hq,) tensor."""
    if sinks is None:
        return
    if not isinstance(sinks, torch.Tensor) or not sinks.dtype.is_floating_point or tuple(sinks.shape) != (heads_q,):
        got = f"{tuple(sinks.shape)} {sinks.dtype}" if isinstance(sinks, torch.Tensor) else type(sinks).__name__
        raise ValueError(f"sinks must be a floating tensor of shape (Hq,) = ({heads_q},), got {got}")


def variants(dims, window=0, softcap=0.0, alibi=False, doc_ids=None, sinks=None) -> Variants | None:
    """Check the variant keywords of one call; None when none is active."""
    if not (isinstance(window, int) and window >= 0):
        raise ValueError(f"window must be an integer >= 0 (0 = no window), got {window!r}")
    if not (isinstance(softcap, (int, float)) and softcap >= 0 and math.isfinite(softcap)):
        raise ValueError(f"softcap must be a finite number >= 0 (0 = no cap), got {softcap!r}")
    check_sinks(sinks, dims.heads_q)
    if not window and not softcap and not alibi and doc_ids is None and sinks is None:
        return None
    doc = start = None
    if doc_ids is not None:
        if dims.seq_len_q != dims.seq_len_kv:
            raise ValueError(f"doc_ids need self-attention, got Nq={dims.seq_len_q}, Nk={dims.seq_len_kv}")
        if not isinstance(doc_ids, torch.Tensor) or doc_ids.dim() != 1 or doc_ids.numel() != dims.seq_len_kv \
                or doc_ids.dtype.is_floating_point or doc_ids.dtype == torch.bool:
            raise ValueError(f"doc_ids must be an integer tensor of shape ({dims.seq_len_kv},)")
        doc = doc_ids.tolist()
        if any(b < a for a, b in zip(doc, doc[1:])):
            raise ValueError("doc_ids must be non-decreasing (packed contiguous documents)")
        start, first = [], 0
        for p, d in enumerate(doc):
            if p and d != doc[p - 1]:
                first = p
            start.append(first)
    slopes = torch.tensor(alibi_slopes(dims.heads_q), dtype=torch.float64) if alibi else None
    return Variants(int(window), float(softcap), slopes, doc, doc_ids, start, dims.seq_len_kv - dims.seq_len_q,
                    sinks)


def dense_visible(v: Variants | None, nq: int, nk: int, device) -> torch.Tensor | None:
    """What the window and documents let all of (nq, nk) see, causal included; None if no mask."""
    if v is None or not v.masks:
        return None
    i = torch.arange(nq, device=device).unsqueeze(1)  # (nq, 1)
    j = torch.arange(nk, device=device).unsqueeze(0)  # (1, nk)
    vis = j <= i + v.offset
    if v.window > 0:
        vis &= j > i + v.offset - v.window
    if v.doc_ids is not None:
        vis &= v.doc_ids.unsqueeze(1) == v.doc_ids.unsqueeze(0)
    return vis  # (nq, nk)


def alibi_bias(v: Variants, nq: int, nk: int, dtype, device) -> torch.Tensor:
    """The dense ALiBi bias (1, Hq, nq, nk) = −m_h·(i + offset − j)."""
    i = torch.arange(nq, device=device, dtype=dtype).unsqueeze(1)
    j = torch.arange(nk, device=device, dtype=dtype).unsqueeze(0)
    m = v.slopes.to(device=device, dtype=dtype).view(1, -1, 1, 1)
    return -m * ((i + v.offset) - j)  # (1, Hq, nq, nk)


# ---------------------------------------------------------------------------------------------
# Attention sinks, three ways (module docstring).


def sink_logits(sinks: torch.Tensor, heads_kv: int, group: int, unit: float, dtype, device) -> torch.Tensor:
    """unit·sinks as (1, Hkv, G, 1): broadcasts against a grouped-query row layout (B, Hkv, G, rows)
    (unit = log2(e) for base-2 kernels)."""
    return (sinks.to(device=device, dtype=dtype) * unit).view(1, heads_kv, group, 1)


def sink_column(scores: torch.Tensor, sink: torch.Tensor) -> torch.Tensor:
    """scores (..., Nk) with the sink logits appended as column Nk: (..., Nk + 1), for a dense
    softmax whose first Nk columns are then the probabilities; `sink` broadcasts to
    scores[..., :1] (e.g. (1, Hq, 1, 1) for (B, Hq, Nq, Nk) scores)."""
    return torch.cat([scores, sink.to(scores.dtype).expand(*scores.shape[:-1], 1)], dim=-1)


def rescale_by_sink(out: torch.Tensor, lse: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
    """out (B, Hq, Nq, Dv) normalised without the sink, lse (B, Hq, Nq) its natural log-sum-exp:
    with the sink the denominator is exp(lse) + exp(sink), so out·1/(1 + exp(sink − lse)) =
    out·sigmoid(lse − sink). A row that sees no key (lse = −inf) gets 0."""
    w = torch.sigmoid(lse.float() - sinks.float().view(1, -1, 1))  # (B, Hq, Nq)
    return (out.float() * w.unsqueeze(-1)).to(out.dtype)
