"""Query-chunked attention: the naive algorithm one block of query rows at a time.

Each chunk of queries takes a full softmax over every key it may see, so peak memory is
O(chunk · Nk) instead of O(Nq · Nk) -- the simplest memory saving, used for example by
xformers' and diffusers' "sliced attention". Keys hidden from a whole chunk by causality
(bottom-right aligned) are not computed at all.

Backward: plain autograd, one query chunk at a time under torch.utils.checkpoint. What the forward
stores for the backward is only references to q, k, v (and the boolean visibility of each chunk,
(nb, nk) when causal, a view of attn_mask otherwise) -- no scores or probabilities. The backward
recomputes one chunk's scores and softmax and runs autograd through them, so it too holds
O(chunk · Nk): about four chunk-sized float32 matrices at a time, plus dq, dk, dv.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from harness.registry import register
from implementations._shared import variants as _variants
from implementations._shared.contract import (
    check_args,
    compute_dtype,
    default_scale,
    grouped_mask,
    tile_visible,
)

# 128 query rows: at 8 heads and Nk = 4096 a chunk's scores and probabilities are 16 MiB each,
# large enough that matmul and softmax run at full speed, small enough to stay in the 10s of MiB.
BLOCK_Q = 128


def _memory_model(case, block_q: int = BLOCK_Q) -> int:
    bq = min(block_q, case.seq_len_q)
    nk = case.seq_len_kv
    rows = case.batch * case.heads_q * bq
    e = case.element_bytes
    dv = case.head_dim_v or case.head_dim
    out_bytes = e * case.batch * case.heads_q * case.seq_len_q * dv
    chunk = 4 * rows * nk * 2  # fp32 scores and probabilities of one chunk (sinks: a column more each;
    # the scores are freed once the sink column is appended, so still two at a time)
    chunk += e * rows * dv  # the chunk's output before it is copied into out
    if e != 4:
        chunk += e * rows * nk  # the low-precision matmul result, before its float32 copy
    if case.causal:
        chunk += 2 * bq * nk  # boolean causal visibility of the chunk and its negation
    if case.mask != "none":
        chunk += 2 * case.batch * nk  # key-padding slice, negated
    if case.heads_q != case.heads_kv:
        chunk += e * rows * case.head_dim  # grouped copy of the query chunk
    if case.pass_kind == "forward":
        return out_bytes + chunk
    # Backward (read off the CPU allocator timeline): autograd's copy of the upstream gradient for
    # the chunk writes into out, the dq accumulator and the full-size dq of one chunk's slice, the
    # dk / dv accumulators, and one recomputed chunk: its probabilities plus the gradients of the
    # probabilities, the softmax and the scaled scores -- about four float32 chunk matrices at the
    # peak (for half inputs too: their half-precision copies are freed by then); the grouped query
    # chunk for GQA. Checked within ~10% of the measured peak (fp32 / fp16 / bf16, GQA, causal).
    q_bytes = e * case.batch * case.heads_q * case.seq_len_q * case.head_dim
    kv_bytes = e * case.batch * case.heads_kv * nk * (case.head_dim + dv)
    bwd = out_bytes + q_bytes + kv_bytes + 4 * 4 * rows * nk
    if case.heads_q != case.heads_kv:
        bwd += e * rows * case.head_dim
    if case.pass_kind == "backward":
        return bwd
    return out_bytes + max(chunk, bwd)  # forward_backward: the output is alive during the backward


@register(
    "chunked",
    devices=("cpu", "cuda"),
    dtypes=("float32", "float16", "bfloat16"),
    memory_model=_memory_model,
    description="Query chunks, full softmax over all keys per chunk: memory O(chunk·Nk)",
    params={"block_q": BLOCK_Q, "variants": _variants.ALL},
)
def chunked_attention(q, k, v, *, causal=False, attn_mask=None, scale=None, block_q: int = BLOCK_Q,
                      window=0, softcap=0.0, alibi=False, doc_ids=None, sinks=None):
    """Variants (implementations/_shared/variants.py): each chunk visits only the keys its window and
    documents allow; ALiBi and the soft cap act on the chunk's scores (autograd sees them); sinks
    are one more softmax column of each chunk. v may have its own head dim Dv (out: Dv wide)."""
    dims = check_args(q, k, v, attn_mask, scale)
    var = _variants.variants(dims, window, softcap, alibi, doc_ids, sinks)  # None: plain attention
    causal = causal or (var is not None and var.masks)
    if block_q < 1:
        raise ValueError(f"block_q must be positive, got {block_q}")
    B, Hkv, G = dims.batch, dims.heads_kv, dims.group
    Nq, Nk, D, Dv = dims.seq_len_q, dims.seq_len_kv, dims.head_dim, dims.value_dim
    scale = default_scale(D, scale)
    acc = compute_dtype(q.dtype)
    offset = Nk - Nq if causal else None  # bottom-right: query i sees key j iff j <= i + offset
    mask5 = grouped_mask(attn_mask, dims)  # (b, hkv, g, nq, nk) or None

    q5 = q.reshape(B, Hkv, G, Nq, D)  # (B, Hkv, G, Nq, D)
    kT = k.transpose(-1, -2)  # (B, Hkv, D, Nk)
    out = q.new_empty(B, dims.heads_q, Nq, Dv)  # (B, Hq, Nq, Dv)
    out5 = out.view(B, Hkv, G, Nq, Dv)  # (B, Hkv, G, Nq, Dv)
    sink = None if sinks is None else sinks.to(acc).view(1, Hkv, G, 1, 1)  # broadcasts to a score column
    # With a gradient to compute, each chunk runs under activation checkpointing (Chen et al. 2016,
    # "Training Deep Nets with Sublinear Memory Cost"): the forward keeps no score matrix, and the
    # backward recomputes one chunk's scores and probabilities at a time.
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    for i0 in range(0, Nq, block_q):
        i1 = min(i0 + block_q, Nq)
        k_stop = Nk if offset is None else max(0, min(Nk, i1 + offset))  # keys the chunk may see
        k0 = 0 if var is None else var.key_range(i0, i1, Nk)[0]  # a window / documents: first key
        if k_stop <= k0:  # causality (or the window) hides every key from this chunk
            out5[:, :, :, i0:i1] = 0
            continue
        visible = tile_visible(mask5, offset, i0, i1, k0, k_stop, q.device)  # broadcastable or None
        if var is not None:
            more = var.tile_visible(i0, i1, k0, k_stop, q.device)  # (nb, nk) or None
            visible = more if visible is None else (visible if more is None else visible & more)
        tile = None if var is None or not var.mods else (var, i0, i1, k0, k_stop)
        args = (q5[:, :, :, i0:i1], kT[..., k0:k_stop], v[:, :, k0:k_stop], visible, scale, acc, tile, sink)
        if grad:
            chunk = checkpoint(_chunk, *args, use_reentrant=False)  # (B, Hkv, G, nb, Dv)
        else:
            chunk = _chunk(*args)  # (B, Hkv, G, nb, Dv)
        out5[:, :, :, i0:i1] = chunk
    return out


def _chunk(qc5, kT, v, visible, scale: float, acc: torch.dtype, tile=None, sink=None) -> torch.Tensor:
    """One query chunk against the keys it may see: (B, Hkv, G, nb, D) -> (B, Hkv, G, nb, Dv).
    kT (B, Hkv, D, nk), v (B, Hkv, nk, Dv); visible broadcastable to (B, Hkv, G, nb, nk) or None;
    sink (1, Hkv, G, 1, 1) sink logits or None."""
    B, Hkv, G, nb, D = qc5.shape
    nk, Dv = kT.shape[-1], v.shape[-1]
    # Hidden scores get the lowest finite value rather than −inf: a row with no visible key then
    # has a finite (uniform) softmax instead of NaN, and its output is zeroed below; the gradient
    # through such a row is zero (its upstream gradient is zeroed). Visible keys beat it by far.
    lowest = torch.finfo(acc).min
    qc = qc5.reshape(B, Hkv, G * nb, D)  # (B, Hkv, G·nb, D); copies if G > 1
    scores = torch.matmul(qc, kT).to(acc)  # (B, Hkv, G·nb, nk)
    scores = scores.view(B, Hkv, G, nb, nk).mul_(scale)  # (B, Hkv, G, nb, nk)
    if tile is not None:  # (variants, i0, i1, j0, j1): ALiBi / soft cap, out of place for autograd
        scores = tile[0].mod_(scores, *tile[1:], inplace=not torch.is_grad_enabled())
    if visible is not None:
        scores.masked_fill_(visible.logical_not(), lowest)
    if sink is not None:  # the sink as one more column, dropped after the softmax
        scores = _variants.sink_column(scores, sink)  # (B, Hkv, G, nb, nk + 1)
    probs = torch.softmax(scores, dim=-1).to(v.dtype)  # (B, Hkv, G, nb, nk [+ 1])
    del scores
    chunk = torch.matmul(probs[..., :nk].reshape(B, Hkv, G * nb, nk), v)  # (B, Hkv, G·nb, Dv)
    del probs  # free before the next chunk's scores are allocated
    chunk = chunk.view(B, Hkv, G, nb, Dv)  # (B, Hkv, G, nb, Dv)
    if visible is not None:
        has_key = visible.any(dim=-1, keepdim=True)  # (b, hkv, g, nb, 1), broadcastable
        chunk = chunk.masked_fill(has_key.logical_not(), 0.0)
    return chunk
