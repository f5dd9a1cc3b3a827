"""Naive attention: materialise the full score matrix, softmax, weighted sum of V.

The textbook baseline (Vaswani et al. 2017, eq. 1): out = softmax(Q·Kᵀ·scale) · V.
Holds about two (B, Hq, Nq, Nk) score matrices at its peak: the scores and their softmax.

Differentiable by plain autograd: the forward keeps the float32 probabilities (and their cast to
the input dtype for float16 / bfloat16) plus the boolean visibility for the backward, which
allocates a few more score-sized gradient matrices (see _memory_model).

Its decode path (naive_decode, at the end; README, "Decode") is the same attention over a KV cache:
gather the whole cache (padded to the longest sequence), mask by length, full softmax. Its serving
path (naive_serving, after it) runs a packed batch one sequence at a time; its MLA decode path is
mla_decode.py (the latent read once per query head).
"""

from __future__ import annotations

import torch

from harness.registry import register, register_decode, register_path
from implementations._shared import variants as _variants
from implementations._shared.contract import (
    causal_visible,
    check_args,
    compute_dtype,
    default_scale,
    group_queries,
    mask_4d,
    ungroup,
)
from implementations._shared.decode_contract import (
    cache_element_bytes,
    check_decode_args,
    dequantised,
    dequantised_bytes,
    length_mask,
    padded_cache,
    padded_len,
    with_sinks,
)
from implementations._shared.varlen_contract import check_varlen_args


def _memory_model(case) -> int:
    """Bytes above the inputs, read off the CPU allocator timeline (torch 2.13) and checked within
    ~15% of the measured peak for every pass kind (forward, backward, forward_backward)."""
    pairs = case.batch * case.heads_q * case.seq_len_q * case.seq_len_kv
    score_bytes = 4 * pairs  # one float32 (B, Hq, Nq, Nk) matrix
    e = case.element_bytes
    dv = case.head_dim_v or case.head_dim
    out_bytes = e * case.batch * case.heads_q * case.seq_len_q * dv
    q_bytes = e * case.batch * case.heads_q * case.seq_len_q * case.head_dim
    kv_bytes = e * case.batch * case.heads_kv * case.seq_len_kv * (case.head_dim + dv)
    if case.pass_kind == "forward":
        return 2 * score_bytes + out_bytes  # the scores and their softmax (sinks: with a column more)
    grads = q_bytes + kv_bytes  # dq, dk, dv
    # Autograd keeps the float32 probabilities (plus their input-dtype cast for float16 / bfloat16).
    # Its backward then holds dP, the softmax gradient and the gradients of the masked and scaled
    # scores: in float32 about four score matrices at its peak (three besides the saved
    # probabilities when the graph is freed as it goes); for half inputs dP is half-sized and
    # the peak is about two score matrices in backward-only runs and three with the forward.
    if case.pass_kind == "backward":  # graph built beforehand (retained), gradients timed
        return (4 if e == 4 else 2) * score_bytes + grads
    return (4 if e == 4 else 3) * score_bytes + out_bytes + grads  # forward_backward (no sinks: forward only)


@register(
    "naive",
    devices=("cpu", "cuda"),
    dtypes=("float32", "float16", "bfloat16"),
    memory_model=_memory_model,
    description="Full score matrix, softmax, weighted sum of V (textbook baseline)",
    params={"variants": _variants.ALL},
)
def naive_attention(q, k, v, *, causal=False, attn_mask=None, scale=None, window=0, softcap=0.0, alibi=False,
                    doc_ids=None, sinks=None):
    """v may have its own head dim Dv (out: (B, Hq, Nq, Dv)); sinks join the softmax as one more
    column (the gpt-oss reference code's way), dropped before P·V."""
    dims = check_args(q, k, v, attn_mask, scale)
    var = _variants.variants(dims, window, softcap, alibi, doc_ids, sinks)  # None: plain attention
    scale = default_scale(dims.head_dim, scale)
    acc = compute_dtype(q.dtype)
    # GQA: stack the query heads that share a kv head, one matmul per kv head, no k/v copies.
    qg = group_queries(q, dims)  # (B, Hkv, G*Nq, D)
    scores = torch.matmul(qg, k.transpose(-1, -2))  # (B, Hkv, G*Nq, Nk)
    scores = ungroup(scores, dims).to(acc)  # (B, Hq, Nq, Nk), float32 for low precision
    scores.mul_(scale)
    if var is not None and var.slopes is not None:
        scores = scores + _variants.alibi_bias(var, dims.seq_len_q, dims.seq_len_kv, acc, q.device)
    if var is not None and var.softcap > 0:
        scores = torch.tanh(scores / var.softcap) * var.softcap
    visible = _variants.dense_visible(var, dims.seq_len_q, dims.seq_len_kv, q.device)  # (Nq, Nk) or None
    if causal and visible is None:
        offset = dims.seq_len_kv - dims.seq_len_q
        visible = causal_visible(0, dims.seq_len_q, 0, dims.seq_len_kv, offset, q.device)  # (Nq, Nk)
    if attn_mask is not None:
        m = mask_4d(attn_mask)  # (b, h, nq, Nk), broadcastable
        visible = m if visible is None else (m & visible)
    if visible is not None:
        # Hidden scores get the lowest finite value, not −inf: a row with no visible key then has
        # a finite (uniform) softmax instead of NaN -- in the forward and in its gradient -- and
        # its output is zeroed below. Visible scores beat it by far, so exp() of it is exactly 0.
        scores.masked_fill_(~visible, torch.finfo(acc).min)
    if sinks is not None:  # (B, Hq, Nq, Nk + 1): the sink logit as one more key with no value
        scores = _variants.sink_column(scores, sinks.view(1, -1, 1, 1))
    probs = torch.softmax(scores, dim=-1)  # (B, Hq, Nq, Nk); autograd keeps it for the backward
    del scores
    if sinks is not None:
        probs = probs[..., : dims.seq_len_kv].contiguous()  # (B, Hq, Nq, Nk): the keys' share
    pg = group_queries(probs.to(v.dtype), dims)  # (B, Hkv, G*Nq, Nk)
    out = ungroup(torch.matmul(pg, v), dims)  # (B, Hq, Nq, Dv)
    if visible is not None:
        # A row with no visible key outputs zeros (the contract). Zeroing the output -- not the
        # probabilities autograd saved -- also zeroes that row's upstream gradient, so its
        # dS = P∘(dP − rowsum(dP∘P)) is exactly 0 and q, k, v get no gradient through it.
        has_key = visible.any(dim=-1, keepdim=True)  # (b, h, nq, 1)
        out = out.masked_fill_(~has_key, 0.0)  # in place: matmul's backward does not need out
    return out


# ---------------------------------------------------------------------------------------------
# Decode (README, "Decode"): the textbook attention over a KV cache, as a newcomer writes it.


def _decode_memory_model(case) -> int:
    npad = padded_len(case)
    e = case.element_bytes
    gathered = 2 * cache_element_bytes(case) * case.batch * case.heads_kv * npad * case.head_dim \
        if case.kv_layout == "paged" else 0
    scores = 4 * case.batch * case.heads_q * case.seq_len_q * (npad + case.sinks)  # float32 scores, then probs
    raw = e * case.batch * case.heads_q * case.seq_len_q * npad  # matmul output before the upcast
    mask = case.batch * case.seq_len_q * npad
    out = e * case.batch * case.heads_q * case.seq_len_q * case.head_dim
    return gathered + dequantised_bytes(case) + (3 if case.sinks else 2) * scores + (raw if e != 4 else 0) + mask + out


@register_decode("naive", layouts=("contiguous", "paged"), dtypes=("float32", "float16", "bfloat16"),
                 memory_model=_decode_memory_model, forms=("sinks", "scale", "kv_bfloat16", "kv_float8_e4m3fn"))
def naive_decode(q, k_cache, v_cache, *, kv_lens, block_table=None, scale=None, sinks=None, k_scale=None,
                 v_scale=None):
    """A low-precision cache is dequantised to q's dtype (float32) first; sinks join the softmax
    as one more column (no value)."""
    dims = check_decode_args(q, k_cache, v_cache, kv_lens, block_table, scale, sinks=sinks, k_scale=k_scale,
                             v_scale=v_scale)
    B, Hq, Nq, D = q.shape
    Hkv, G = dims.heads_kv, dims.group
    k, v = padded_cache(k_cache, v_cache, block_table)  # (B, Hkv, Npad, D) each
    if k.dtype != q.dtype:
        k, v = dequantised(k, k_scale, q.dtype), dequantised(v, v_scale, q.dtype)
    Npad = k.shape[2]
    qg = q.reshape(B, Hkv, G * Nq, D)  # (B, Hkv, G·Nq, D): the G query heads of a kv head stacked
    s = torch.matmul(qg, k.transpose(-1, -2)).view(B, Hq, Nq, Npad)  # (B, Hq, Nq, Npad)
    s = s.to(compute_dtype(q.dtype)) * default_scale(D, scale)
    s = s.masked_fill(~length_mask(kv_lens, Nq, Npad), float("-inf"))  # (B, Hq, Nq, Npad)
    p = torch.softmax(with_sinks(s, sinks), dim=-1)[..., :Npad]  # the sink column has no value
    p = p.to(v.dtype).reshape(B, Hkv, G * Nq, Npad)  # (B, Hkv, G·Nq, Npad)
    return torch.matmul(p, v).view(B, Hq, Nq, D)  # (B, Hq, Nq, D)


# ---------------------------------------------------------------------------------------------
# Serving (docs/contracts.md, "Serving"): the packed batch one sequence at a time, each through
# the textbook attention above (its new tokens against its cached + new keys, bottom-right causal).


def _serving_memory_model(case) -> int:
    """The output, plus the largest sequence's scores and softmax (float32) and its grouped query
    and output copies; k and v are read through strided views in float32, copied for the half
    precision matmuls."""
    e = case.element_bytes
    Hq, Hkv, D = case.heads_q, case.heads_kv, case.head_dim
    kv = 0 if e == 4 else 2 * e * Hkv * D
    per_seq = [4 * 2 * Hq * n * (n + c) + e * D * 2 * Hq * n + kv * (n + c) for n, c in zip(case.q_lens, case.cached_lens)]
    return e * case.seq_len_q * Hq * D + max(per_seq)


@register_path("serving", "naive", memory_model=_serving_memory_model)
def naive_serving(q, k, v, *, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale=None):
    dims = check_varlen_args(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale)
    out = torch.empty_like(q)  # (Tq, Hq, D)
    for q0, q1, k0, k1, _ in dims.spans():
        if q1 == q0:
            continue
        seq = (t.transpose(0, 1).unsqueeze(0) for t in (q[q0:q1], k[k0:k1], v[k0:k1]))  # (1, H, n, D) each
        out[q0:q1] = naive_attention(*seq, causal=True, scale=scale)[0].transpose(0, 1)  # (n, Hq, D)
    return out


# The MLA decode path attaches to the implementation registered above.
from implementations.naive import mla_decode  # noqa: E402,F401
