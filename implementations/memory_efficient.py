"""Memory-efficient attention (Rabe & Staats 2021, "Self-attention Does Not Need O(n²) Memory").

Queries are processed in chunks, and for each query chunk the keys in chunks. Each key chunk is
summarised on its own, as in the paper's `summarize_chunk` (section 3, Figure 1): its local row
maximum m_c, exp(s − m_c), the exp-weighted values v_c and the weight sum l_c. The summaries are
merged with a running maximum -- the log-sum-exp trick -- so instead of stacking every chunk's
summary (memory growing with Nk / key_chunk, as the paper's reference code does) only the merged
one is kept: peak memory is one key chunk's scores plus O(query_chunk · D), independent of Nk.

Differences from `flash`, on purpose: natural exp with the scale applied to q (the paper's
formulation), every chunk normalised by its own maximum and then rescaled into the running sum
(two rescales per chunk), no threading, no skipping of causally hidden chunks beyond the last
visible one. The paper's default chunk sizes (1024 queries, 4096 keys) would hold 128 MiB of
scores at 8 heads; the defaults here keep a chunk at 4 MiB (see BLOCK_Q, BLOCK_K).
"""

from __future__ import annotations

import torch

from harness.registry import YES, Support, no, register
from implementations._common import (
    check_args,
    compute_dtype,
    default_scale,
    grouped_mask,
    tile_visible,
)

# 128 x 1024: 4 MiB of fp32 scores at 8 heads, so the whole call stays ~2% of naive's peak at
# N = 4096 while the matmuls are large enough to run near full speed.
BLOCK_Q = 128
BLOCK_K = 1024


def _memory_model(case, query_chunk: int = BLOCK_Q, key_chunk: int = BLOCK_K) -> int:
    bq, bk = min(query_chunk, case.seq_len_q), min(key_chunk, case.seq_len_kv)
    rows = case.batch * case.heads_q * bq
    e = case.element_bytes
    out_bytes = e * case.batch * case.heads_q * case.seq_len_q * case.head_dim
    held = 4 * rows * bk  # one key chunk's scores, exponentiated in place
    held += 3 * 4 * rows * case.head_dim  # scaled queries, running values, chunk values
    held += 8 * 4 * rows  # running max / sum, chunk max / sum, rescale factors
    if e != 4:
        held += 2 * 4 * case.batch * case.heads_kv * bk * case.head_dim  # fp32 k / v chunks
    if case.causal:
        held += 2 * bq * bk  # boolean causal visibility of a diagonal chunk and its negation
    if case.mask != "none":
        held += 2 * case.batch * bk  # key-padding slice, negated
    return out_bytes + held


def _supports(case) -> Support:
    if case.pass_kind != "forward":
        return no("memory_efficient is forward-only here: it updates chunks in place")
    return YES


@register(
    "memory_efficient",
    devices=("cpu", "cuda"),
    dtypes=("float32", "float16", "bfloat16"),
    memory_model=_memory_model,
    supports=_supports,
    description="Rabe & Staats 2021: query and key chunks merged by log-sum-exp; memory independent of Nk",
    params={"query_chunk": BLOCK_Q, "key_chunk": BLOCK_K},
)
def memory_efficient_attention(
    q, k, v, *, causal=False, attn_mask=None, scale=None, query_chunk: int = BLOCK_Q, key_chunk: int = BLOCK_K
):
    dims = check_args(q, k, v, attn_mask, scale)
    if query_chunk < 1 or key_chunk < 1:
        raise ValueError(f"query_chunk and key_chunk must be positive, got {query_chunk}, {key_chunk}")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise ValueError("memory_efficient is forward-only; call it under torch.no_grad()")
    B, Hkv, G = dims.batch, dims.heads_kv, dims.group
    Nq, Nk, D = dims.seq_len_q, dims.seq_len_kv, dims.head_dim
    scale = default_scale(D, scale)
    acc = compute_dtype(q.dtype)
    offset = Nk - Nq if causal else None  # bottom-right: query i sees key j iff j <= i + offset
    mask5 = grouped_mask(attn_mask, dims)  # (b, hkv, g, nq, nk) or None
    # A chunk row with no visible key has max −inf; clamping maxima to the lowest finite float
    # keeps exp(−inf − m) = 0 and exp(m_c − m) finite, so nothing is ever NaN.
    lowest = torch.finfo(acc).min

    q5 = q.reshape(B, Hkv, G, Nq, D)  # (B, Hkv, G, Nq, D)
    out = torch.empty_like(q)  # (B, Hq, Nq, D)
    out5 = out.view(B, Hkv, G, Nq, D)  # (B, Hkv, G, Nq, D)
    for i0 in range(0, Nq, query_chunk):
        i1 = min(i0 + query_chunk, Nq)
        nb = i1 - i0
        k_stop = Nk if offset is None else max(0, min(Nk, i1 + offset))
        if k_stop == 0:  # causality hides every key from this query chunk
            out5[:, :, :, i0:i1].zero_()
            continue
        qc = (q5[:, :, :, i0:i1].to(acc) * scale).reshape(B, Hkv, G * nb, D)  # (B, Hkv, G·nb, D)
        m = l = values = None  # merged summary: running max, weight sum, weighted values

        for j0 in range(0, k_stop, key_chunk):
            j1 = min(j0 + key_chunk, k_stop)
            kc = k[:, :, j0:j1].to(acc)  # (B, Hkv, w, D), a view for float32
            vc = v[:, :, j0:j1].to(acc)  # (B, Hkv, w, D)
            # summarize_chunk: local max, exp, weighted values, weight sum
            s = torch.matmul(qc, kc.transpose(-1, -2))  # (B, Hkv, G·nb, w)
            visible = tile_visible(mask5, offset, i0, i1, j0, j1, q.device)
            if visible is not None:
                s.view(B, Hkv, G, nb, j1 - j0).masked_fill_(visible.logical_not(), float("-inf"))
            m_c = s.amax(dim=-1, keepdim=True).clamp_min_(lowest)  # (B, Hkv, G·nb, 1)
            s.sub_(m_c).exp_()  # exp(s − m_c), in place
            l_c = s.sum(dim=-1, keepdim=True)  # (B, Hkv, G·nb, 1)
            v_c = torch.matmul(s, vc)  # (B, Hkv, G·nb, D)
            del s
            if m is None:
                m, l, values = m_c, l_c, v_c
                continue
            # merge: rescale both summaries to the larger of the two maxima
            m_new = torch.maximum(m, m_c)  # (B, Hkv, G·nb, 1)
            a_old = (m - m_new).exp_()  # (B, Hkv, G·nb, 1)
            a_new = (m_c - m_new).exp_()
            values.mul_(a_old).add_(v_c.mul_(a_new))  # (B, Hkv, G·nb, D)
            l.mul_(a_old).add_(l_c.mul_(a_new))
            m = m_new
            del v_c  # free before the next chunk's scores are allocated

        # l >= 1 wherever a key was visible (the overall maximum contributes exp(0) = 1);
        # l == 0 means none was, values == 0 there, and dividing by 1 yields the required zeros.
        chunk_out = values.div_(l.clamp_min_(1.0))  # (B, Hkv, G·nb, D)
        out5[:, :, :, i0:i1] = chunk_out.view(B, Hkv, G, nb, D)
        del qc, values, chunk_out  # free before the next query chunk allocates its own
    return out
