"""Nominal attention FLOP counts (the ceilings they are compared with: harness/measure/machine/ceilings.py).

Forward attention does two matmuls per visible (query, key) pair and head-dim element: Q·Kᵀ and
P·V, each a multiply-add (2 FLOPs), so 4·B·Hq·D·pairs (FlashAttention paper §4 / benchmark
scripts). Softmax and scaling are not counted, as in the literature. Causal masking removes the
hidden pairs (bottom-right aligned, see DESIGN.md). Key-padding masks do NOT reduce the count:
the reported FLOPs are nominal for the shape, so a padded case's TFLOP/s is comparable to the
unpadded shape's and an implementation that skips padded keys shows up as faster, not as
"doing fewer FLOPs". A sliding window and packed documents DO reduce it: they are the shape of
the problem (a window of 256 at N = 8192 is ~32x fewer pairs than dense). Backward is 2.5× forward (5 matmuls instead of 2), forward+backward 3.5×.
"""

from __future__ import annotations

import math

from harness.case import Case
from harness.measure.variants import document_lengths

BACKWARD_FACTOR = 2.5
FORWARD_BACKWARD_FACTOR = 3.5


def _sum_clamped(lo: int, hi: int, n: int) -> int:
    """Σ_{u=lo}^{hi} clamp(u, 0, n), exactly (0 when hi < lo)."""
    if hi < lo:
        return 0
    a, b = max(lo, 1), min(hi, n - 1)  # the part where clamp(u) = u
    total = (b - a + 1) * (a + b) // 2 if b >= a else 0
    return total + n * max(0, hi - max(lo, n) + 1)  # the part where clamp(u) = n


def visible_pairs(seq_len_q: int, seq_len_kv: int, causal: bool, window: int = 0,
                  doc_lengths: tuple[int, ...] = ()) -> int:
    """Number of (query, key) pairs not hidden by causality, a sliding window or documents.

    Bottom-right causal: query i sees keys j ≤ t = i + (Nk − Nq), i.e. c(t) = clamp(t + 1, 0, Nk)
    keys; a window of W keeps j > t − W, leaving c(t) − c(t − W). Summed in closed form over
    t = Nk − Nq … Nk − 1 (_sum_clamped). Packed documents (self-attention) are each a causal
    square: the sum over documents of their own count (window included).
    """
    if seq_len_q < 0 or seq_len_kv < 0:
        raise ValueError("sequence lengths must be >= 0")
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    if doc_lengths:
        if sum(doc_lengths) != seq_len_kv or seq_len_q != seq_len_kv:
            raise ValueError("documents need self-attention (Nq == Nk) and lengths summing to N")
        return sum(visible_pairs(n, n, True, window) for n in doc_lengths)
    if not causal and not window:
        return seq_len_q * seq_len_kv
    if seq_len_q == 0 or seq_len_kv == 0:
        return 0
    t0, t1 = seq_len_kv - seq_len_q, seq_len_kv - 1  # i + offset over the query rows
    pairs = _sum_clamped(t0 + 1, t1 + 1, seq_len_kv)
    if window:
        pairs -= _sum_clamped(t0 + 1 - window, t1 + 1 - window, seq_len_kv)
    return pairs


def case_visible_pairs(case: Case) -> int:
    """visible_pairs for a case, its window and document split included."""
    docs = document_lengths(case.seq_len_kv, case.documents) if case.documents > 0 else ()
    return visible_pairs(case.seq_len_q, case.seq_len_kv, case.effective_causal, case.window, docs)


def attention_flops(case: Case) -> int:
    """Nominal FLOPs of one call of `case`'s pass (see the module docstring for what counts)."""
    pairs = case_visible_pairs(case)
    forward = 4 * case.batch * case.heads_q * case.head_dim * pairs
    if case.pass_kind == "forward":
        return forward
    if case.pass_kind == "backward":
        return forward * 5 // 2  # exact: forward is a multiple of 4
    if case.pass_kind == "forward_backward":
        return forward * 7 // 2
    raise ValueError(f"unknown pass_kind {case.pass_kind!r}; allowed: forward, backward, forward_backward")


def tflops_per_s(flops: int | float, time_s: float) -> float:
    """FLOPs per second in units of 10¹²."""
    if time_s <= 0 or not math.isfinite(time_s):
        raise ValueError(f"time_s must be positive and finite, got {time_s}")
    return flops / time_s / 1e12
