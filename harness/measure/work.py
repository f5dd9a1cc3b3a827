"""The work a case must do, whatever implementation does it: FLOPs (harness.measure.flops for
prefill, harness.measure.kv_cache for decode) and the minimum bytes moved, from which the
achieved bandwidth, the arithmetic intensity and the roofline follow.

Minimum bytes, prefill forward: q and k, v read once, the output written once (a padding mask
does not shrink them). Training passes: backward reads q, k, v, o and dO and writes dq, dk, dv;
forward+backward is the sum of both. Decode: q read, K and V read up to each sequence's length,
o written, plus the block-table entries a paged cache needs (kv_cache.decode_min_bytes).
Roofline time = max(FLOPs / compute ceiling, bytes / bandwidth ceiling): no implementation can
beat it, so a case measured faster (beyond its spread) is `suspect`.
"""

from __future__ import annotations

from harness.case import Case


def flops_of(case: Case) -> int:
    if case.is_decode:
        from harness.measure.kv_cache import decode_flops

        return decode_flops(case)
    from harness.measure.flops import attention_flops

    return attention_flops(case)


def min_bytes_of(case: Case) -> int:
    if case.is_decode:
        from harness.measure.kv_cache import decode_min_bytes

        return decode_min_bytes(case)
    e = case.element_bytes
    q = case.batch * case.heads_q * case.seq_len_q * case.head_dim * e  # = |o| = |dO| = |dq|
    kv = 2 * case.batch * case.heads_kv * case.seq_len_kv * case.head_dim * e  # |k| + |v|
    forward = 2 * q + kv
    backward = 4 * q + 2 * kv
    return {"forward": forward, "backward": backward, "forward_backward": forward + backward}[case.pass_kind]
