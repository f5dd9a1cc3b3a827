"""FlashAttention-2 backward for `flash` (Dao 2023, "FlashAttention-2", Algorithm 2).

The forward (forward.flash_forward) saves only q, k, v, out and the per-row log-sum-exp; the
backward recomputes each score tile instead of storing the (Nq, Nk) probabilities:

    D  = rowsum(dO ∘ O)                      (Algorithm 2 line 4; phase 1 here)
    P  = exp(S·scale − lse)                  (line 11; here exp2(c·q·kᵀ − lse2), c = scale·log2 e)
    dV += Pᵀ dO,  dP = dO Vᵀ,  dS = P ∘ (dP − D)                 (lines 12-14)
    dQ += dS K·scale,  dK += dSᵀ Q·scale                        (lines 15-16)

Key blocks are the outer loop (each worker owns the dK/dV accumulators of the key block it is
working on), query blocks the inner one. dQ rows are written by every key block, so each worker
adds into its own fp32 partial dQ and the partials are summed at the end (phase 3) -- the CPU
stand-in for FA2's atomic adds; O(N·D) per worker, never O(N²). Low precision accumulates in
fp32 (scores, dK/dV/dQ) and casts once at the end. GQA/MQA: the G query heads of a kv head are
stacked as rows of one matmul (as in the forward), so dK/dV are summed over the group for free.

Masking follows the forward exactly: causal key blocks hidden from a whole query block are
skipped, straddling tiles add the same cached causal bias, boolean masks go through
forward._hide_. A row that sees no key has lse2 = +inf, so P = exp2(· − inf) = 0 and its dq is 0;
D is 0 since O is 0.
"""

from __future__ import annotations

import torch

from implementations._shared.contract import LOG2E, compute_dtype, default_scale, grouped_mask
from implementations._shared.thread_pool import run_parallel
from implementations.flash.forward import (
    _causal_band,
    _hide_,
    _workers_for,
    flash_forward,
    forward_memory_model,
    mask_bias_numel,
)


class FlashFunction(torch.autograd.Function):
    """out = flash(q, k, v) (arguments already checked: dims from check_args); saves q, k, v, out
    and lse2 (B, Hq, Nq) fp32 only."""

    @staticmethod
    def forward(ctx, q, k, v, dims, causal, attn_mask, scale, block_q, block_k):
        out, lse2 = flash_forward(q, k, v, dims, causal, attn_mask, scale, block_q, block_k, want_lse=True)
        ctx.save_for_backward(q, k, v, out, lse2)
        ctx.args = (dims, causal, attn_mask, scale, block_q, block_k)  # the mask is an input, not saved state
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        q, k, v, out, lse2 = ctx.saved_tensors
        dq, dk, dv = flash_backward(q, k, v, out, lse2, dout, *ctx.args)
        need = ctx.needs_input_grad
        return (dq if need[0] else None, dk if need[1] else None, dv if need[2] else None) + (None,) * 6


class _BwdScratch:
    """One worker's buffers, flat so edge tiles are prefix views; allocated by the calling thread
    (the CPU profiler records that thread's allocations)."""

    def __init__(self, bh, rows, bk, d, dv, copy_q, upcast, n_bias, dq_partial, dtype, device):
        e = dict(dtype=dtype, device=device)
        self.bias = torch.empty(n_bias, **e) if n_bias else None  # additive mask tile (forward._hide_)
        self.s = torch.empty(bh * rows * bk, **e)  # scores -> P
        self.dp = torch.empty(bh * rows * bk, **e)  # dP -> dS
        self.t = torch.empty(bh * rows * max(d, dv), **e)  # dS·K tile (D); dO∘O in phase 1 (Dv)
        self.q = torch.empty(bh * rows * d, **e) if copy_q else None  # grouped / fp32 q block
        self.do = torch.empty(bh * rows * dv, **e) if copy_q else None  # grouped / fp32 dO block
        self.rows = torch.empty(2, bh * rows, **e)  # −lse2 and D of the query block
        self.k = torch.empty(bh * bk * d, **e) if upcast else None  # fp32 k tile
        self.v = torch.empty(bh * bk * dv, **e) if upcast else None  # fp32 v tile
        self.dk = torch.empty(bh * bk * d, **e)  # dK accumulator of the key block
        self.dv = torch.empty(bh * bk * dv, **e)  # dV accumulator of the key block
        self.dq = dq_partial  # (B, Hkv, G, Nq, D) fp32, this worker's share of dQ


class _Masking:
    """What forward._hide_ reads: the backward's tiles are masked exactly like the forward's."""

    def __init__(self, band, offset, bk, visible):
        self.band, self.offset, self.bk, self.visible = band, offset, bk, visible


def flash_backward(q, k, v, out, lse2, dout, dims, causal, attn_mask, scale, block_q, block_k):
    B, Hkv, G = dims.batch, dims.heads_kv, dims.group
    Nq, Nk, D, Dv = dims.seq_len_q, dims.seq_len_kv, dims.head_dim, dims.value_dim
    BH = B * Hkv
    bq, bk = min(block_q, Nq), min(block_k, Nk)
    acc_dtype = compute_dtype(q.dtype)
    opts = dict(dtype=acc_dtype, device=q.device)
    upcast = q.dtype != acc_dtype
    copy_q = upcast or G > 1
    sc = default_scale(D, scale)
    c = sc * LOG2E
    offset = Nk - Nq if causal else None
    visible = grouped_mask(attn_mask, dims)  # (b, hkv, g, nq, nk), size-1 kept, True = may attend
    masking = _Masking(_causal_band(bq, bk, acc_dtype, q.device) if causal else None, offset, bk, visible)
    n_bias = mask_bias_numel(visible, bq, bk, B * dims.heads_q * bq * bk)
    masked = causal or attn_mask is not None

    q5 = q.reshape(B, Hkv, G, Nq, D)  # (B, Hkv, G, Nq, D)
    do5 = dout.contiguous().view(B, Hkv, G, Nq, Dv)  # (B, Hkv, G, Nq, Dv); autograd may pass expanded
    o5 = out.view(B, Hkv, G, Nq, Dv)  # (B, Hkv, G, Nq, Dv)
    lse4 = lse2.view(B, Hkv, G, Nq)  # (B, Hkv, G, Nq)
    k3, v3 = k.reshape(BH, Nk, D), v.reshape(BH, Nk, Dv)  # (B·Hkv, Nk, D), (B·Hkv, Nk, Dv)
    dq = torch.empty(B, dims.heads_q, Nq, D, dtype=q.dtype, device=q.device)  # (B, Hq, Nq, D)
    dk = torch.empty(B, Hkv, Nk, D, dtype=q.dtype, device=q.device)  # (B, Hkv, Nk, D)
    dv = torch.empty(B, Hkv, Nk, Dv, dtype=q.dtype, device=q.device)  # (B, Hkv, Nk, Dv)
    dk3, dv3 = dk.view(BH, Nk, D), dv.view(BH, Nk, Dv)
    delta = torch.empty(B, Hkv, G, Nq, **opts)  # (B, Hkv, G, Nq): D = rowsum(dO ∘ O)

    k_starts = list(range(0, Nk, bk))  # causal: key block 0 has the most query blocks, so first
    q_starts = list(range(0, Nq, bq))
    n_workers = _workers_for(q.device, len(k_starts))
    # fp32 dq is worker 0's partial itself; the others (and all, for low precision) are extra.
    partials = [dq.view(B, Hkv, G, Nq, D)] if not upcast else []
    partials += [torch.empty(B, Hkv, G, Nq, D, **opts) for _ in range(n_workers - len(partials))]
    scratch = [
        _BwdScratch(BH, G * bq, bk, D, Dv, copy_q, upcast, n_bias, partials[w], **opts) for w in range(n_workers)
    ]

    def phase1(s, i0):  # D for query rows [i0, i1), and zero every partial dQ there
        i1 = min(i0 + bq, Nq)
        t = s.t[: BH * G * (i1 - i0) * Dv].view(B, Hkv, G, i1 - i0, Dv)
        if upcast:
            t.copy_(o5[:, :, :, i0:i1]).mul_(s.do[: t.numel()].view_as(t).copy_(do5[:, :, :, i0:i1]))
        else:
            torch.mul(o5[:, :, :, i0:i1], do5[:, :, :, i0:i1], out=t)
        torch.sum(t, dim=-1, out=delta[:, :, :, i0:i1])
        for p in partials:
            p[:, :, :, i0:i1].zero_()

    def phase2(s, j0):
        _key_block(s, j0, min(j0 + bk, Nk))

    def _key_block(s, j0, j1):
        w = j1 - j0
        kb, vb = k3[:, j0:j1], v3[:, j0:j1]  # (B·Hkv, w, D), (B·Hkv, w, Dv)
        if upcast:  # fp32 copies so every matmul accumulates in fp32
            kb = s.k[: BH * w * D].view(BH, w, D).copy_(kb)
            vb = s.v[: BH * w * Dv].view(BH, w, Dv).copy_(vb)
        dk_acc = s.dk[: BH * w * D].view(BH, w, D).zero_()  # (B·Hkv, w, D)
        dv_acc = s.dv[: BH * w * Dv].view(BH, w, Dv).zero_()  # (B·Hkv, w, Dv)
        for i0 in q_starts:
            i1 = min(i0 + bq, Nq)
            if offset is not None and i1 - 1 + offset < j0:
                continue  # causality hides the whole key block from these queries
            nb = i1 - i0
            R = G * nb  # query rows per kv head
            qb, gb = q5[:, :, :, i0:i1], do5[:, :, :, i0:i1]  # (B, Hkv, G, nb, D), (…, Dv)
            if copy_q:  # G > 1 (stack the group's rows) or low precision (fp32)
                qb = s.q[: BH * R * D].view(B, Hkv, G, nb, D).copy_(qb)
                gb = s.do[: BH * R * Dv].view(B, Hkv, G, nb, Dv).copy_(gb)
            qb, gb = qb.reshape(BH, R, D), gb.reshape(BH, R, Dv)  # (B·Hkv, G·nb, D | Dv), views
            nl = s.rows[0, : BH * R].view(B, Hkv, G, nb)
            torch.neg(lse4[:, :, :, i0:i1], out=nl)  # −lse2; −inf for rows that see no key
            dl = s.rows[1, : BH * R].view(B, Hkv, G, nb).copy_(delta[:, :, :, i0:i1])
            nl, dl = nl.view(BH, R, 1), dl.view(BH, R, 1)  # (B·Hkv, G·nb, 1)
            p = s.s[: BH * R * w].view(BH, R, w)  # (B·Hkv, G·nb, w)
            # P = exp2(c·q·kᵀ − lse2): lse2 rides on the matmul as its input (as the forward's m)
            torch.baddbmm(nl.expand(BH, R, w), qb, kb.transpose(1, 2), alpha=c, out=p)
            if masked:
                _hide_(masking, p.view(B, Hkv, G, nb, w), i0, i1, j0, j1, s.bias)
            p.exp2_()
            dv_acc.baddbmm_(p.transpose(1, 2), gb)  # dV += Pᵀ dO, (B·Hkv, w, Dv)
            ds = s.dp[: BH * R * w].view(BH, R, w)
            torch.bmm(gb, vb.transpose(1, 2), out=ds)  # dP = dO Vᵀ, (B·Hkv, G·nb, w)
            ds.sub_(dl).mul_(p)  # dS = P ∘ (dP − D); scale applied to dK/dQ below
            dk_acc.baddbmm_(ds.transpose(1, 2), qb)  # dK += dSᵀ Q, (B·Hkv, w, D)
            t = s.t[: BH * R * D].view(BH, R, D)
            torch.bmm(ds, kb, out=t)  # dS K, (B·Hkv, G·nb, D)
            s.dq[:, :, :, i0:i1].add_(t.view(B, Hkv, G, nb, D), alpha=sc)
        dk3[:, j0:j1].copy_(dk_acc.mul_(sc))  # casts to the input dtype
        dv3[:, j0:j1].copy_(dv_acc)

    def phase3(s, i0):  # dQ = Σ partials, cast once
        i1 = min(i0 + bq, Nq)
        first = partials[0][:, :, :, i0:i1]
        for p in partials[1:]:
            first.add_(p[:, :, :, i0:i1])
        if upcast:
            dq.view(B, Hkv, G, Nq, D)[:, :, :, i0:i1].copy_(first)

    run_parallel(q_starts, scratch, phase1)
    run_parallel(k_starts, scratch, phase2)
    if len(partials) > 1 or upcast:
        run_parallel(q_starts, scratch, phase3)
    return dq, dk, dv


def backward_memory_model(case, block_q: int, block_k: int) -> int:
    """Peak bytes above the inputs for pass kinds backward / forward_backward: O(N), no N² term."""
    B, Hq, Hkv, D = case.batch, case.heads_q, case.heads_kv, case.head_dim
    Dv = case.head_dim_v or D
    Nq, Nk, eb = case.seq_len_q, case.seq_len_kv, case.element_bytes
    bq, bk = min(block_q, Nq), min(block_k, Nk)
    upcast = case.dtype != "float32"
    workers = _workers_for(case.device, -(-Nk // bk), case.threads)
    rows = B * Hq * bq  # query rows of a tile, all heads
    per_worker = 2 * 4 * rows * bk + 4 * rows * max(D, Dv) + 2 * 4 * rows  # P, dS, dS·K, −lse2 and D
    per_worker += 4 * B * Hkv * bk * (D + Dv)  # dK, dV accumulators
    if case.mask != "none":
        per_worker += 4 * B * bk  # additive key-padding bias tile
    if upcast or Hq != Hkv:
        per_worker += 4 * rows * (D + Dv)  # grouped / fp32 q and dO blocks
    if upcast:
        per_worker += 4 * B * Hkv * bk * (D + Dv)  # fp32 k, v tiles
    grads = eb * (B * Hq * Nq * D + B * Hkv * Nk * (D + Dv))  # dq, dk, dv
    delta = 4 * B * Hq * Nq
    partials = 4 * B * Hq * Nq * D * (workers - (0 if upcast else 1))
    backward = grads + delta + partials + workers * per_worker
    if case.pass_kind == "backward":
        return backward
    saved = eb * B * Hq * Nq * Dv + 4 * B * Hq * Nq  # out and lse2, held from forward to backward
    forward_scratch = forward_memory_model(case.replace(pass_kind="forward"), block_q, block_k)
    forward_scratch -= eb * B * Hq * Nq * Dv  # out, counted in saved
    return saved + max(forward_scratch, backward)

