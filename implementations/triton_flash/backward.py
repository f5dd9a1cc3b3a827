"""FlashAttention-2 backward as Triton kernels for triton_flash (Dao 2023, Algorithm 2).

Three kernels, each one program per tile as in the Triton fused-attention tutorial:
- preprocess: D = rowsum(dO ∘ O) per query row (float32);
- dK/dV: one program per (key block, batch · kv head). It keeps its K, V blocks and float32 dK,
  dV accumulators on chip and streams the query blocks of every query head of its GQA group
  (so dK, dV are summed over the group without atomics), starting at the first query block that
  can see the key block under bottom-right causality;
- dQ: one program per (query block, batch · query head), streaming the key blocks it can see.

Both recompute P = exp2(S·scale·log2e − L) from the log-sum-exp L (log2 units, +inf for rows
that see no key, so P = 0 there) the forward stored, then dP = dO Vᵀ, dS = P ∘ (dP − D),
dV += Pᵀ dO, dK += dSᵀ Q · scale, dQ += dS K · scale. float16 tiles meet in tl.dot (float32
accumulators); bfloat16 and float32 are computed in float32 with IEEE dots (as the forward).
Written for CUDA; on the CPU only under TRITON_INTERPRET=1. triton is imported on first use.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from implementations._shared.contract import LOG2E, default_scale
from implementations.triton_flash.forward import NUM_WARPS, kernel_mask, launch_forward, tile_sizes


@lru_cache(maxsize=None)
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def preprocess(
        O, DO, DELTA,
        sob, soh, som, sod,  # out strides (B, Hq, Nq, D)
        sdb, sdh, sdm, sdd,  # grad_out strides
        Hq, Nq, D,
        BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        start_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // Hq
        h = bh % Hq
        offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
        offs_d = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
        ok = (offs_m < Nq)[:, None] & (offs_d < D)[None, :]  # (BLOCK_M, BLOCK_D)
        o = tl.load(O + b * sob + h * soh + offs_m[:, None] * som + offs_d[None, :] * sod, mask=ok, other=0.0)
        do = tl.load(DO + b * sdb + h * sdh + offs_m[:, None] * sdm + offs_d[None, :] * sdd, mask=ok, other=0.0)
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)  # D = rowsum(dO ∘ O): (BLOCK_M,)
        tl.store(DELTA + bh * Nq + offs_m, delta, mask=offs_m < Nq)

    @triton.jit
    def dkdv(
        Q, K, V, DO, DK, DV, L, DELTA, M,
        sqb, sqh, sqm, sqd,  # q strides (B, Hq, Nq, D)
        skb, skh, skn, skd,  # k strides (B, Hkv, Nk, D)
        svb, svh, svn, svd,  # v strides
        sdb, sdh, sdm, sdd,  # grad_out strides (B, Hq, Nq, D)
        sdkb, sdkh, sdkn, sdkd,  # dk strides (B, Hkv, Nk, D)
        sdvb, sdvh, sdvn, sdvd,  # dv strides (B, Hkv, Nk, Dv)
        smb, smh, smm, smn,  # mask strides, 0 where it broadcasts
        Hq, Hkv, group, Nq, Nk, D, Dv, sm_scale, qk_scale, causal_offset,
        HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    ):
        start_n = tl.program_id(0)
        bhk = tl.program_id(1)
        b = bhk // Hkv
        hk = bhk % Hkv
        offs_n = start_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) key indices
        offs_d = tl.arange(0, BLOCK_D)  # (BLOCK_D,) q / k columns
        offs_dv = tl.arange(0, BLOCK_DV)  # (BLOCK_DV,) v / dO columns (Dv may differ from D)
        col_ok = offs_n < Nk
        d_ok = offs_d < D
        dv_ok = offs_dv < Dv
        kv_ok = col_ok[:, None] & d_ok[None, :]  # (BLOCK_N, BLOCK_D)
        vv_ok = col_ok[:, None] & dv_ok[None, :]  # (BLOCK_N, BLOCK_DV)
        k = tl.load(K + b * skb + hk * skh + offs_n[:, None] * skn + offs_d[None, :] * skd, mask=kv_ok, other=0.0)
        v = tl.load(V + b * svb + hk * svh + offs_n[:, None] * svn + offs_dv[None, :] * svd, mask=vv_ok, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        dk = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)  # (BLOCK_N, BLOCK_D)
        dv = tl.zeros((BLOCK_N, BLOCK_DV), tl.float32)  # (BLOCK_N, BLOCK_DV)

        lo = 0
        if CAUSAL:  # bottom-right: query i sees key start_n·BLOCK_N iff i >= start_n·BLOCK_N − offset
            lo = tl.maximum(0, start_n * BLOCK_N - causal_offset)
            lo = (lo // BLOCK_M) * BLOCK_M
        for g in range(0, group):  # every query head that reads this kv head (GQA / MQA)
            h = hk * group + g
            for start_m in range(lo, Nq, BLOCK_M):
                offs_m = start_m + tl.arange(0, BLOCK_M)  # (BLOCK_M,) query indices
                row_ok = offs_m < Nq
                qT = tl.load(
                    Q + b * sqb + h * sqh + offs_m[None, :] * sqm + offs_d[:, None] * sqd,
                    mask=row_ok[None, :] & d_ok[:, None], other=0.0,
                )  # (BLOCK_D, BLOCK_M)
                do = tl.load(
                    DO + b * sdb + h * sdh + offs_m[:, None] * sdm + offs_dv[None, :] * sdd,
                    mask=row_ok[:, None] & dv_ok[None, :], other=0.0,
                )  # (BLOCK_M, BLOCK_DV)
                if UPCAST:
                    qT = qT.to(tl.float32)
                    do = do.to(tl.float32)
                lse = tl.load(L + (b * Hq + h) * Nq + offs_m, mask=row_ok, other=float("inf"))  # (BLOCK_M,)
                delta = tl.load(DELTA + (b * Hq + h) * Nq + offs_m, mask=row_ok, other=0.0)  # (BLOCK_M,)
                if IEEE:
                    sT = tl.dot(k, qT, input_precision="ieee")  # Sᵀ: (BLOCK_N, BLOCK_M)
                else:
                    sT = tl.dot(k, qT)
                pT = tl.math.exp2(sT * qk_scale - lse[None, :])  # Pᵀ, 0 on rows that see nothing
                visible = col_ok[:, None] & row_ok[None, :]
                if CAUSAL:
                    visible = visible & (offs_n[:, None] <= offs_m[None, :] + causal_offset)
                if HAS_MASK:
                    allowed = tl.load(
                        M + b * smb + h * smh + offs_m[None, :] * smm + offs_n[:, None] * smn,
                        mask=row_ok[None, :] & col_ok[:, None], other=0,
                    )  # (BLOCK_N, BLOCK_M)
                    visible = visible & (allowed != 0)
                pT = tl.where(visible, pT, 0.0)
                if IEEE:
                    dv += tl.dot(pT, do, input_precision="ieee")  # dV += Pᵀ dO
                    dpT = tl.dot(v, tl.trans(do), input_precision="ieee")  # dPᵀ = V dOᵀ
                else:
                    dv += tl.dot(pT.to(do.dtype), do)
                    dpT = tl.dot(v, tl.trans(do))
                dsT = pT * (dpT - delta[None, :])  # dSᵀ = Pᵀ ∘ (dPᵀ − D): (BLOCK_N, BLOCK_M)
                if IEEE:
                    dk += tl.dot(dsT, tl.trans(qT), input_precision="ieee")  # dK += dSᵀ Q
                else:
                    dk += tl.dot(dsT.to(qT.dtype), tl.trans(qT))
        dk = dk * sm_scale
        tl.store(DK + b * sdkb + hk * sdkh + offs_n[:, None] * sdkn + offs_d[None, :] * sdkd,
                 dk.to(DK.dtype.element_ty), mask=kv_ok)
        tl.store(DV + b * sdvb + hk * sdvh + offs_n[:, None] * sdvn + offs_dv[None, :] * sdvd,
                 dv.to(DV.dtype.element_ty), mask=vv_ok)

    @triton.jit
    def dq_kernel(
        Q, K, V, DO, DQ, L, DELTA, M,
        sqb, sqh, sqm, sqd,  # q strides (B, Hq, Nq, D)
        skb, skh, skn, skd,  # k strides (B, Hkv, Nk, D)
        svb, svh, svn, svd,  # v strides
        sdb, sdh, sdm, sdd,  # grad_out strides (B, Hq, Nq, D)
        sdqb, sdqh, sdqm, sdqd,  # dq strides (B, Hq, Nq, D)
        smb, smh, smm, smn,  # mask strides, 0 where it broadcasts
        Hq, group, Nq, Nk, D, Dv, sm_scale, qk_scale, causal_offset,
        HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    ):
        start_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // Hq
        h = bh % Hq
        hk = h // group  # GQA: query head h reads kv head h // (Hq / Hkv)
        offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
        offs_n0 = tl.arange(0, BLOCK_N)  # (BLOCK_N,)
        offs_d = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
        offs_dv = tl.arange(0, BLOCK_DV)  # (BLOCK_DV,) v / dO columns
        row_ok = offs_m < Nq
        d_ok = offs_d < D
        dv_ok = offs_dv < Dv
        q_ok = row_ok[:, None] & d_ok[None, :]  # (BLOCK_M, BLOCK_D)
        q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd, mask=q_ok, other=0.0)
        do = tl.load(DO + b * sdb + h * sdh + offs_m[:, None] * sdm + offs_dv[None, :] * sdd,
                     mask=row_ok[:, None] & dv_ok[None, :], other=0.0)  # (BLOCK_M, BLOCK_DV)
        if UPCAST:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        lse = tl.load(L + bh * Nq + offs_m, mask=row_ok, other=float("inf"))  # (BLOCK_M,)
        delta = tl.load(DELTA + bh * Nq + offs_m, mask=row_ok, other=0.0)  # (BLOCK_M,)
        dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)  # (BLOCK_M, BLOCK_D)

        hi = Nk
        if CAUSAL:  # the block's last row sees keys j <= last_row + Nk − Nq
            hi = tl.minimum(Nk, (start_m + 1) * BLOCK_M + causal_offset)
        for start_n in range(0, hi, BLOCK_N):
            cols = start_n + offs_n0  # (BLOCK_N,)
            col_ok = cols < Nk
            kT_ok = col_ok[None, :] & d_ok[:, None]  # (BLOCK_D, BLOCK_N)
            kT = tl.load(K + b * skb + hk * skh + cols[None, :] * skn + offs_d[:, None] * skd, mask=kT_ok, other=0.0)
            vT = tl.load(V + b * svb + hk * svh + cols[None, :] * svn + offs_dv[:, None] * svd,
                         mask=col_ok[None, :] & dv_ok[:, None], other=0.0)  # (BLOCK_DV, BLOCK_N)
            if UPCAST:
                kT = kT.to(tl.float32)
                vT = vT.to(tl.float32)
            if IEEE:
                s = tl.dot(q, kT, input_precision="ieee")  # S: (BLOCK_M, BLOCK_N)
                dp = tl.dot(do, vT, input_precision="ieee")  # dP = dO Vᵀ
            else:
                s = tl.dot(q, kT)
                dp = tl.dot(do, vT)
            p = tl.math.exp2(s * qk_scale - lse[:, None])  # P: (BLOCK_M, BLOCK_N)
            visible = row_ok[:, None] & col_ok[None, :]
            if CAUSAL:
                visible = visible & (cols[None, :] <= offs_m[:, None] + causal_offset)
            if HAS_MASK:
                allowed = tl.load(
                    M + b * smb + h * smh + offs_m[:, None] * smm + cols[None, :] * smn,
                    mask=row_ok[:, None] & col_ok[None, :], other=0,
                )
                visible = visible & (allowed != 0)
            p = tl.where(visible, p, 0.0)
            ds = p * (dp - delta[:, None])  # dS = P ∘ (dP − D)
            if IEEE:
                dq += tl.dot(ds, tl.trans(kT), input_precision="ieee")  # dQ += dS K
            else:
                dq += tl.dot(ds.to(kT.dtype), tl.trans(kT))
        dq = dq * sm_scale
        tl.store(DQ + b * sdqb + h * sdqh + offs_m[:, None] * sdqm + offs_d[None, :] * sdqd,
                 dq.to(DQ.dtype.element_ty), mask=q_ok)

    return triton, preprocess, dkdv, dq_kernel


def launch_backward(q, k, v, out, lse, grad_out, causal, attn_mask, scale, block_m, block_n):
    """dq, dk, dv (each like its input) from the saved tensors and the upstream gradient."""
    triton, preprocess, dkdv, dq_kernel = _kernels()
    B, Hq, Nq, D = q.shape
    Hkv, Nk, Dv = k.shape[1], k.shape[2], v.shape[3]
    group = Hq // Hkv
    bm, bn = tile_sizes(triton, block_m, block_n)
    block_d, block_dv = (max(16, triton.next_power_of_2(d)) for d in (D, Dv))
    sm_scale = default_scale(D, scale)
    delta = torch.empty(B, Hq, Nq, dtype=torch.float32, device=q.device)  # D = rowsum(dO ∘ O)
    preprocess[(triton.cdiv(Nq, bm), B * Hq)](  # over out and dO: Dv wide
        out, grad_out, delta, *out.stride(), *grad_out.stride(), Hq, Nq, Dv,
        BLOCK_M=bm, BLOCK_D=block_dv, num_warps=NUM_WARPS,
    )
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    mask, mask_strides = kernel_mask(attn_mask, B, Hq, Nq, Nk)
    mask_arg = delta if mask is None else mask  # never read without HAS_MASK
    flags = dict(
        HAS_MASK=mask is not None, CAUSAL=bool(causal),
        UPCAST=q.dtype == torch.bfloat16, IEEE=q.dtype != torch.float16,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=block_d, BLOCK_DV=block_dv, num_warps=NUM_WARPS,
    )
    common = (*q.stride(), *k.stride(), *v.stride(), *grad_out.stride())
    dkdv[(triton.cdiv(Nk, bn), B * Hkv)](
        q, k, v, grad_out, dk, dv, lse, delta, mask_arg,
        *common, *dk.stride(), *dv.stride(), *mask_strides,
        Hq, Hkv, group, Nq, Nk, D, Dv, sm_scale, sm_scale * LOG2E, Nk - Nq, **flags,
    )
    dq_kernel[(triton.cdiv(Nq, bm), B * Hq)](
        q, k, v, grad_out, dq, lse, delta, mask_arg,
        *common, *dq.stride(), *mask_strides,
        Hq, group, Nq, Nk, D, Dv, sm_scale, sm_scale * LOG2E, Nk - Nq, **flags,
    )
    return dq, dk, dv


class _TritonFlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, attn_mask, scale, block_m, block_n):
        B, Hq, Nq, _ = q.shape
        lse = torch.empty(B, Hq, Nq, dtype=torch.float32, device=q.device)  # log2 units
        out = launch_forward(q, k, v, causal, attn_mask, scale, block_m, block_n, lse=lse)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = (causal, attn_mask, scale, block_m, block_n)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        causal, attn_mask, scale, block_m, block_n = ctx.args
        dq, dk, dv = launch_backward(q, k, v, out, lse, grad_out, causal, attn_mask, scale, block_m, block_n)
        return dq, dk, dv, None, None, None, None, None


def attention_with_grad(q, k, v, causal, attn_mask, scale, block_m, block_n):
    """triton_flash's forward under autograd: stores the log-sum-exp, backward by the kernels above."""
    return _TritonFlashAttention.apply(q, k, v, causal, attn_mask, scale, block_m, block_n)
