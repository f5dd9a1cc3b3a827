"""Which key a query sees, the parts that need no torch and every workload shares: the exact
count of visible (query, key) pairs (bottom-right causal, sliding window, packed documents), the
seeded split of a packed sequence into documents and the standard ALiBi slopes. Used by the
workloads' inputs (doc_ids), FLOP counts and float64 references; implementations have their own
copy of the slopes (implementations/_shared/variants.py), checked against this one by the tests.

Semantics (README "Variants"), with offset = Nk − Nq (bottom-right alignment):
- window W ≥ 1: query i sees key j iff i + offset − W < j ≤ i + offset (a sliding window is causal);
- softcap c > 0: scores s (already scaled, ALiBi bias added) become c·tanh(s / c) before the softmax;
- alibi: query head h adds −m_h·(i + offset − j) to its scores, m_h from alibi_slopes(Hq);
- documents n: positions 0 … N−1 split into n contiguous documents (document_lengths); query i
  sees key j iff both are in the same document and j ≤ i (self-attention only).
Variants combine: visibility is the AND of every active rule (and of causal and a padding mask).
"""

from __future__ import annotations

import hashlib
import math
import random

DOCUMENT_SEED = 0x5EED_D0C5  # fixed: the split depends on (N, documents) only, so FLOP counts do too


def document_lengths(seq_len: int, documents: int) -> tuple[int, ...]:
    """A seeded split of `seq_len` positions into `documents` contiguous documents, each ≥ 1
    position: documents − 1 distinct cut points drawn uniformly from 1 … N−1 by a generator seeded
    from (DOCUMENT_SEED, N, documents). Stable across processes; documents == N gives one token each."""
    if not (isinstance(documents, int) and 1 <= documents <= seq_len):
        raise ValueError(f"documents must be an integer in [1, seq_len = {seq_len}], got {documents!r}")
    key = repr((DOCUMENT_SEED, int(seq_len), int(documents))).encode()
    rng = random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))
    cuts = sorted(rng.sample(range(1, seq_len), documents - 1))
    edges = [0, *cuts, seq_len]
    return tuple(b - a for a, b in zip(edges, edges[1:]))


def document_ids(seq_len: int, documents: int) -> list[int]:
    """The document index of every position (0 … documents−1, non-decreasing)."""
    out: list[int] = []
    for d, n in enumerate(document_lengths(seq_len, documents)):
        out += [d] * n
    return out


def alibi_slopes(heads: int) -> list[float]:
    """The ALiBi slopes of Press et al. 2022 (their reference code): for H a power of two
    m_h = 2^(−8(h+1)/H); otherwise the slopes of the closest smaller power of two P followed by
    every other slope of 2P, up to H in all."""
    if heads < 1:
        raise ValueError(f"heads must be >= 1, got {heads}")

    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]

    if heads & (heads - 1) == 0:
        return power_of_two(heads)
    p = 2 ** int(math.floor(math.log2(heads)))
    return power_of_two(p) + power_of_two(2 * p)[0::2][: heads - p]


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
