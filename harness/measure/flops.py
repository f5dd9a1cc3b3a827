"""Nominal attention FLOP counts (the ceilings they are compared with: harness/measure/calibrate.py).

Forward attention does two matmuls per visible (query, key) pair and head-dim element: Q·Kᵀ and
P·V, each a multiply-add (2 FLOPs), so 4·B·Hq·D·pairs (FlashAttention paper §4 / benchmark
scripts). Softmax and scaling are not counted, as in the literature. Causal masking removes the
hidden pairs (bottom-right aligned, see DESIGN.md). Key-padding masks do NOT reduce the count:
the reported FLOPs are nominal for the shape, so a padded case's TFLOP/s is comparable to the
unpadded shape's and an implementation that skips padded keys shows up as faster, not as
"doing fewer FLOPs". Backward is 2.5× forward (5 matmuls instead of 2), forward+backward 3.5×.
"""

from __future__ import annotations

import math

from harness.case import Case

BACKWARD_FACTOR = 2.5
FORWARD_BACKWARD_FACTOR = 3.5


def _triangle(n: int) -> int:
    return n * (n + 1) // 2 if n > 0 else 0


def visible_pairs(seq_len_q: int, seq_len_kv: int, causal: bool) -> int:
    """Number of (query, key) pairs not hidden by the causal mask.

    Bottom-right causal: query i sees keys j ≤ i + (Nk − Nq), i.e. min(Nk, max(0, i + Nk − Nq + 1))
    keys. With c = Nk − Nq + 1 the counts run c, c+1, …, Nk over i = 0 … Nq−1 (never above Nk), so
    the sum of their positive parts is T(Nk) − T(max(c, 1) − 1), T(n) = n(n+1)/2.
    """
    if seq_len_q < 0 or seq_len_kv < 0:
        raise ValueError("sequence lengths must be >= 0")
    if not causal:
        return seq_len_q * seq_len_kv
    if seq_len_q == 0 or seq_len_kv == 0:
        return 0
    c = seq_len_kv - seq_len_q + 1
    return _triangle(seq_len_kv) - _triangle(max(c, 1) - 1)


def attention_flops(case: Case) -> int:
    """Nominal FLOPs of one call of `case`'s pass (see the module docstring for what counts)."""
    pairs = visible_pairs(case.seq_len_q, case.seq_len_kv, case.causal)
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
