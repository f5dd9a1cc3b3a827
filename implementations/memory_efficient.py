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

Backward (the paper's section 4 recomputes instead of storing; the loop is FlashAttention-2's
backward, Dao 2023, Algorithm 2): a torch.autograd.Function that saves only q, k, v, the output
and the float32 log-sum-exp of each query row (O(N)), never a score matrix. The backward walks key
chunks in its outer loop and query chunks in its inner loop, recomputing each score tile
P = exp(S·scale − lse); dK and dV of a key chunk are finished on chip-sized accumulators, dQ is
accumulated across key chunks in float32. Autograd never sees the chunk loop. With no gradient
needed the function runs the plain forward (no log-sum-exp kept).
"""

from __future__ import annotations

import torch

from harness.registry import Support, register
from implementations._shared import variants as _variants
from implementations._shared.contract import (
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
    B, Hq, Hkv, D = case.batch, case.heads_q, case.heads_kv, case.head_dim
    Dv = case.head_dim_v or D
    rows = B * Hq * bq
    e = case.element_bytes
    q_elems = B * Hq * case.seq_len_q * D
    out_bytes = e * B * Hq * case.seq_len_q * Dv
    lse_bytes = 4 * B * Hq * case.seq_len_q  # float32 log-sum-exp per query row
    fwd = 4 * rows * bk  # one key chunk's scores, exponentiated in place
    fwd += 4 * rows * (D + 2 * Dv)  # scaled queries, running values, chunk values
    fwd += 8 * 4 * rows  # running max / sum, chunk max / sum, rescale factors
    kv_chunk = 2 * B * Hkv * bk * (D + Dv)  # the mean of one float32 key and value chunk
    if e != 4:
        fwd += 2 * kv_chunk  # fp32 k / v chunks
    if case.causal:
        fwd += 2 * bq * bk  # boolean causal visibility of a diagonal chunk and its negation
    if case.mask != "none":
        fwd += 2 * B * bk  # key-padding slice, negated
    if case.pass_kind == "forward":
        return out_bytes + fwd
    # Backward (Algorithm 2), read off the CPU allocator timeline: D = rowsum(dO∘O) and the float32
    # dQ accumulator for all rows, the dk / dv outputs, per key chunk the float32 dK_j / dV_j
    # accumulators (and float32 k / v chunks for half inputs), per tile the float32 query and dO
    # chunks, lse / D rows, and P and dP (dS in place) -- the peak. At the end dq is cast from its
    # accumulator for half inputs.
    kv_bytes = e * B * Hkv * case.seq_len_kv * (D + Dv)  # dk + dv
    common = 4 * B * Hq * case.seq_len_q + 4 * q_elems + kv_bytes  # D, dQ accumulator, dk, dv
    loop = 2 * kv_chunk + 4 * rows * (D + Dv) + 8 * rows + 2 * 4 * rows * bk
    if e != 4:
        loop += 2 * kv_chunk
    if case.causal:
        loop += 2 * bq * bk
    if case.mask != "none":
        loop += 2 * B * bk
    bwd = common + max(loop, e * q_elems if e != 4 else 0)
    if case.pass_kind == "backward":  # the graph (out, lse) exists before the timed call
        return bwd
    # forward_backward: the output and log-sum-exp are kept while the backward runs
    return out_bytes + lse_bytes + max(fwd, bwd)


def _supports(case) -> Support:
    # forward and backward (its own autograd.Function), every dtype, mask and shape; variants forward only
    return _variants.forward_only(case, "memory_efficient")


@register(
    "memory_efficient",
    devices=("cpu", "cuda"),
    dtypes=("float32", "float16", "bfloat16"),
    memory_model=_memory_model,
    supports=_supports,
    description="Rabe & Staats 2021: query and key chunks merged by log-sum-exp; memory independent of Nk",
    params={"query_chunk": BLOCK_Q, "key_chunk": BLOCK_K, "variants": _variants.ALL},
)
def memory_efficient_attention(
    q, k, v, *, causal=False, attn_mask=None, scale=None, query_chunk: int = BLOCK_Q, key_chunk: int = BLOCK_K,
    window=0, softcap=0.0, alibi=False, doc_ids=None, sinks=None,
):
    """Variants (forward only, implementations/_shared/variants.py): key chunks before the first key a
    query chunk's window / documents allow are never visited; sinks join the merged weight sum once
    per query chunk. v may have its own head dim Dv (out: Dv wide)."""
    dims = check_args(q, k, v, attn_mask, scale)
    var = _variants.variants(dims, window, softcap, alibi, doc_ids, sinks)  # None: plain attention
    causal = causal or (var is not None and var.masks)
    if query_chunk < 1 or key_chunk < 1:
        raise ValueError(f"query_chunk and key_chunk must be positive, got {query_chunk}, {key_chunk}")
    scale = default_scale(dims.head_dim, scale)
    # bottom-right causal: query i sees key j iff j <= i + offset, offset = Nk − Nq
    offset = dims.seq_len_kv - dims.seq_len_q if causal else None
    cfg = _Config(dims, offset, scale, query_chunk, key_chunk)
    cfg.var = var
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        if var is not None:
            raise NotImplementedError("memory_efficient implements the attention variants in the forward pass only")
        return _MemoryEfficientAttention.apply(q, k, v, attn_mask, cfg)
    out, _ = _forward(q, k, v, attn_mask, cfg, want_lse=False)
    return out


class _Config:
    """What forward and backward share besides tensors."""

    def __init__(self, dims, offset, scale, query_chunk, key_chunk):
        self.dims, self.offset, self.scale = dims, offset, scale
        self.query_chunk, self.key_chunk = query_chunk, key_chunk


class _MemoryEfficientAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, attn_mask, cfg):
        out, lse = _forward(q, k, v, attn_mask, cfg, want_lse=True)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.attn_mask, ctx.cfg = attn_mask, cfg
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _backward(q, k, v, out, lse, grad_out, ctx.attn_mask, ctx.cfg)
        return dq, dk, dv, None, None


def _forward(q, k, v, attn_mask, cfg, want_lse: bool):
    """Returns out (B, Hq, Nq, Dv) and, if want_lse, the float32 log-sum-exp of the scaled scores
    of every query row, laid out (B, Hkv, G, Nq); +inf for rows that see no key (so that
    exp(s − lse) = 0 there in the backward)."""
    dims, offset, scale = cfg.dims, cfg.offset, cfg.scale
    query_chunk, key_chunk = cfg.query_chunk, cfg.key_chunk
    B, Hkv, G = dims.batch, dims.heads_kv, dims.group
    Nq, Nk, Dv = dims.seq_len_q, dims.seq_len_kv, dims.value_dim
    acc = compute_dtype(q.dtype)
    var = getattr(cfg, "var", None)
    sink = None  # (1, Hkv, G, 1) sink logits, joined to each query chunk's weight sum
    if var is not None and var.sinks is not None:
        sink = _variants.sink_logits(var.sinks, Hkv, G, 1.0, acc, q.device)
    mask5 = grouped_mask(attn_mask, dims)  # (b, hkv, g, nq, nk) or None
    # A chunk row with no visible key has max −inf; clamping maxima to the lowest finite float
    # keeps exp(−inf − m) = 0 and exp(m_c − m) finite, so nothing is ever NaN.
    lowest = torch.finfo(acc).min

    q5 = q.reshape(B, Hkv, G, Nq, dims.head_dim)  # (B, Hkv, G, Nq, D)
    out = q.new_empty(B, dims.heads_q, Nq, Dv)  # (B, Hq, Nq, Dv)
    out5 = out.view(B, Hkv, G, Nq, Dv)  # (B, Hkv, G, Nq, Dv)
    lse5 = torch.full((B, Hkv, G, Nq), float("inf"), dtype=acc, device=q.device) if want_lse else None
    for i0 in range(0, Nq, query_chunk):
        i1 = min(i0 + query_chunk, Nq)
        nb = i1 - i0
        k_stop = Nk if offset is None else max(0, min(Nk, i1 + offset))
        k0 = 0 if var is None else var.key_range(i0, i1, Nk)[0]  # a window / documents: first key
        if k_stop <= k0:  # causality (or the window) hides every key from this query chunk
            out5[:, :, :, i0:i1].zero_()
            continue
        qc = (q5[:, :, :, i0:i1].to(acc) * scale).reshape(B, Hkv, G * nb, -1)  # (B, Hkv, G·nb, D)
        m = l = values = None  # merged summary: running max, weight sum, weighted values

        for j0 in range(k0, k_stop, key_chunk):
            j1 = min(j0 + key_chunk, k_stop)
            kc = k[:, :, j0:j1].to(acc)  # (B, Hkv, w, D), a view for float32
            vc = v[:, :, j0:j1].to(acc)  # (B, Hkv, w, Dv)
            # summarize_chunk: local max, exp, weighted values, weight sum
            s = torch.matmul(qc, kc.transpose(-1, -2))  # (B, Hkv, G·nb, w)
            if var is not None and var.mods:
                var.mod_(s.view(B, Hkv, G, nb, j1 - j0), i0, i1, j0, j1)
            visible = tile_visible(mask5, offset, i0, i1, j0, j1, q.device)
            if var is not None:
                more = var.tile_visible(i0, i1, j0, j1, q.device)  # (nb, w) or None
                visible = more if visible is None else (visible if more is None else visible & more)
            if visible is not None:
                s.view(B, Hkv, G, nb, j1 - j0).masked_fill_(visible.logical_not(), float("-inf"))
            m_c = s.amax(dim=-1, keepdim=True).clamp_min_(lowest)  # (B, Hkv, G·nb, 1)
            s.sub_(m_c).exp_()  # exp(s − m_c), in place
            l_c = s.sum(dim=-1, keepdim=True)  # (B, Hkv, G·nb, 1)
            v_c = torch.matmul(s, vc)  # (B, Hkv, G·nb, Dv)
            del s
            if m is None:
                m, l, values = m_c, l_c, v_c
                continue
            # merge: rescale both summaries to the larger of the two maxima
            m_new = torch.maximum(m, m_c)  # (B, Hkv, G·nb, 1)
            a_old = (m - m_new).exp_()  # (B, Hkv, G·nb, 1)
            a_new = (m_c - m_new).exp_()
            values.mul_(a_old).add_(v_c.mul_(a_new))  # (B, Hkv, G·nb, Dv)
            l.mul_(a_old).add_(l_c.mul_(a_new))
            m = m_new
            del v_c  # free before the next chunk's scores are allocated

        if sink is not None:  # the sink joins the weight sum (no value); m is finite (clamped), and a
            # row that saw no key (m = lowest) gets l = inf, so 0 / inf = 0
            l = l + torch.exp(sink - m.view(B, Hkv, G, nb)).view(B, Hkv, G * nb, 1)
        if lse5 is not None:  # log Σ exp(s) = m + log l; rows with l == 0 keep +inf
            seen = l > 0  # (B, Hkv, G·nb, 1)
            lse_c = torch.where(seen, m + torch.log(torch.where(seen, l, 1.0)), float("inf"))
            lse5[:, :, :, i0:i1] = lse_c.view(B, Hkv, G, nb)
        # l >= 1 wherever a key was visible (the overall maximum contributes exp(0) = 1);
        # l == 0 means none was, values == 0 there, and dividing by 1 yields the required zeros.
        chunk_out = values.div_(l.clamp_min_(1.0))  # (B, Hkv, G·nb, Dv)
        out5[:, :, :, i0:i1] = chunk_out.view(B, Hkv, G, nb, Dv)
        del qc, values, chunk_out  # free before the next query chunk allocates its own
    return out, lse5


def _backward(q, k, v, out, lse5, grad_out, attn_mask, cfg):
    """FlashAttention-2 backward (Dao 2023, Algorithm 2) over the forward's chunks:
    D = rowsum(dO∘O); per tile P = exp(S·scale − lse), dV += Pᵀ dO, dP = dO Vᵀ, dS = P∘(dP − D),
    dQ += dS K·scale, dK += dSᵀ Q·scale. Key chunks outer (dK_j, dV_j finished per chunk), query
    chunks inner (dQ accumulated). Query heads of a GQA group are stacked along the row axis of a
    tile, so Pᵀ dO and dSᵀ Q already sum dK / dV over the group. Everything accumulates in
    float32 (float64 for float64 inputs); the gradients are cast to the input dtype at the end."""
    dims, offset, scale = cfg.dims, cfg.offset, cfg.scale
    query_chunk, key_chunk = cfg.query_chunk, cfg.key_chunk
    B, Hkv, G = dims.batch, dims.heads_kv, dims.group
    Nq, Nk, D = dims.seq_len_q, dims.seq_len_kv, dims.head_dim
    acc = compute_dtype(q.dtype)
    mask5 = grouped_mask(attn_mask, dims)  # (b, hkv, g, nq, nk) or None

    q5 = q.reshape(B, Hkv, G, Nq, D)  # (B, Hkv, G, Nq, D)
    Dv = dims.value_dim
    do5 = grad_out.reshape(B, Hkv, G, Nq, Dv)  # (B, Hkv, G, Nq, Dv)
    delta5 = (do5.to(acc) * out.reshape(B, Hkv, G, Nq, Dv).to(acc)).sum(-1)  # D: (B, Hkv, G, Nq)
    dq5 = torch.zeros(B, Hkv, G, Nq, D, dtype=acc, device=q.device)  # dQ accumulator
    dk = torch.zeros_like(k)  # (B, Hkv, Nk, D); keys no query sees keep 0
    dv = torch.zeros_like(v)  # (B, Hkv, Nk, Dv)
    for j0 in range(0, Nk, key_chunk):
        j1 = min(j0 + key_chunk, Nk)
        w = j1 - j0
        # causal chunk skipping: query i sees key j0 iff i >= j0 − offset
        i_start = 0 if offset is None else max(0, j0 - offset)
        if i_start >= Nq:  # no query sees any key of this chunk (nor of later ones)
            break
        kc = k[:, :, j0:j1].to(acc)  # (B, Hkv, w, D), a view for float32
        vc = v[:, :, j0:j1].to(acc)  # (B, Hkv, w, Dv)
        dk_j = torch.zeros(B, Hkv, w, D, dtype=acc, device=q.device)  # dK_j accumulator
        dv_j = torch.zeros(B, Hkv, w, Dv, dtype=acc, device=q.device)  # dV_j accumulator
        for i0 in range(i_start - i_start % query_chunk, Nq, query_chunk):
            i1 = min(i0 + query_chunk, Nq)
            nb = i1 - i0
            qc = (q5[:, :, :, i0:i1].to(acc) * scale).reshape(B, Hkv, G * nb, D)  # (B, Hkv, G·nb, D)
            doc = do5[:, :, :, i0:i1].to(acc).reshape(B, Hkv, G * nb, Dv)  # (B, Hkv, G·nb, Dv)
            lse_c = lse5[:, :, :, i0:i1].reshape(B, Hkv, G * nb, 1)  # (B, Hkv, G·nb, 1)
            delta_c = delta5[:, :, :, i0:i1].reshape(B, Hkv, G * nb, 1)  # (B, Hkv, G·nb, 1)
            p = torch.matmul(qc, kc.transpose(-1, -2))  # S·scale: (B, Hkv, G·nb, w)
            visible = tile_visible(mask5, offset, i0, i1, j0, j1, q.device)
            if visible is not None:
                p.view(B, Hkv, G, nb, w).masked_fill_(visible.logical_not(), float("-inf"))
            p.sub_(lse_c).exp_()  # P = exp(S·scale − lse); 0 where hidden or the row sees nothing
            dv_j.add_(torch.matmul(p.transpose(-1, -2), doc))  # dV_j += Pᵀ dO: (B, Hkv, w, Dv)
            ds = torch.matmul(doc, vc.transpose(-1, -2))  # dP = dO Vᵀ: (B, Hkv, G·nb, w)
            ds.sub_(delta_c).mul_(p)  # dS = P∘(dP − D), in place
            del p
            dq5[:, :, :, i0:i1] += torch.matmul(ds, kc).view(B, Hkv, G, nb, D)  # dQ_i += dS K (·scale later)
            dk_j.add_(torch.matmul(ds.transpose(-1, -2), qc))  # dK_j += dSᵀ (Q·scale): (B, Hkv, w, D)
            del ds, qc, doc
        dk[:, :, j0:j1] = dk_j  # the query chunk already carried the scale
        dv[:, :, j0:j1] = dv_j
        del kc, vc, dk_j, dv_j
    dq = dq5.mul_(scale).view(B, dims.heads_q, Nq, D).to(q.dtype)  # (B, Hq, Nq, D)
    return dq, dk, dv
