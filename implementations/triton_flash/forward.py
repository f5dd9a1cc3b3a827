"""The Triton FlashAttention-2 forward kernel of `triton_flash` (implementations/triton_flash/__init__.py
registers it and documents it): tile constants, the kernel, its launch, mask layout and tile
sizes. No registration here, so the backward (backward.py) builds on it without an
import cycle.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from implementations._shared.contract import LOG2E, default_scale, mask_4d

BLOCK_M = 64  # query rows per program
BLOCK_N = 64  # keys per inner step
NUM_WARPS = 4
NUM_STAGES = 2


@lru_cache(maxsize=None)
def _kernels():
    """Define the kernel on first use (triton reads TRITON_INTERPRET when a kernel is defined)."""
    import triton
    import triton.language as tl

    @triton.jit
    def fwd(
        Q, K, V, O, M,  # tensors; M is a uint8 view of the boolean mask (unused without HAS_MASK)
        L,  # float32 (B, Hq, Nq) log-sum-exp in log2 units, written only when STORE_LSE
        S,  # float32 (Hq,) sink logits in log2 units, read only when HAS_SINKS
        sqb, sqh, sqm, sqd,  # q strides (B, Hq, Nq, D)
        skb, skh, skn, skd,  # k strides (B, Hkv, Nk, D)
        svb, svh, svn, svd,  # v strides
        sob, soh, som, sod,  # out strides
        smb, smh, smm, smn,  # mask strides, 0 where it broadcasts
        Hq, group, Nq, Nk, D, Dv, qk_scale, causal_offset,
        HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
        STORE_LSE: tl.constexpr, HAS_SINKS: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    ):
        start_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // Hq
        h = bh % Hq
        hk = h // group  # GQA: query head h reads kv head h // (Hq / Hkv)
        offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
        offs_n = tl.arange(0, BLOCK_N)  # (BLOCK_N,)
        offs_d = tl.arange(0, BLOCK_D)  # (BLOCK_D,) q / k columns
        offs_dv = tl.arange(0, BLOCK_DV)  # (BLOCK_DV,) v / out columns: Dv may differ from D
        row_ok = offs_m < Nq
        d_ok = offs_d < D
        dv_ok = offs_dv < Dv

        q_ptrs = Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd
        q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_M, BLOCK_D)
        if UPCAST:
            q = q.to(tl.float32)
        k_base = K + b * skb + hk * skh
        v_base = V + b * svb + hk * svh

        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)  # running max, log2 units
        l_i = tl.zeros((BLOCK_M,), tl.float32)  # running sum
        acc = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)  # unnormalised output

        hi = Nk
        if CAUSAL:  # bottom-right: the block's last row sees keys j <= last_row + Nk - Nq
            hi = tl.minimum(Nk, (start_m + 1) * BLOCK_M + causal_offset)
        for start_n in range(0, hi, BLOCK_N):
            cols = start_n + offs_n  # (BLOCK_N,)
            col_ok = cols < Nk
            kT = tl.load(
                k_base + cols[None, :] * skn + offs_d[:, None] * skd,
                mask=col_ok[None, :] & d_ok[:, None],
                other=0.0,
            )  # (BLOCK_D, BLOCK_N)
            v = tl.load(
                v_base + cols[:, None] * svn + offs_dv[None, :] * svd,
                mask=col_ok[:, None] & dv_ok[None, :],
                other=0.0,
            )  # (BLOCK_N, BLOCK_DV)
            if UPCAST:
                kT = kT.to(tl.float32)
                v = v.to(tl.float32)
            if IEEE:
                s = tl.dot(q, kT, input_precision="ieee")
            else:
                s = tl.dot(q, kT)
            s = s * qk_scale  # (BLOCK_M, BLOCK_N), scale·log2(e) folded in
            visible = col_ok[None, :] & row_ok[:, None]
            if CAUSAL:
                visible = visible & (cols[None, :] <= offs_m[:, None] + causal_offset)
            if HAS_MASK:
                m_ptrs = M + b * smb + h * smh + offs_m[:, None] * smm + cols[None, :] * smn
                allowed = tl.load(m_ptrs, mask=row_ok[:, None] & col_ok[None, :], other=0)
                visible = visible & (allowed != 0)
            s = tl.where(visible, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))  # (BLOCK_M,)
            # rows with no visible key so far keep m = −inf; shift them by 0 so no NaN appears
            shift = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(s - shift[:, None])  # (BLOCK_M, BLOCK_N)
            alpha = tl.math.exp2(m_i - shift)  # rescales the old statistics
            l_i = l_i * alpha + tl.sum(p, 1)
            if IEEE:
                acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
            else:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new

        if HAS_SINKS:  # the sink joins the denominator (no value); m = −inf rows get l = inf, out 0
            l_i = l_i + tl.math.exp2(tl.load(S + h) - m_i)
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # no visible key: acc is 0, the output zeros
        out = acc / l_safe[:, None]
        o_ptrs = O + b * sob + h * soh + offs_m[:, None] * som + offs_dv[None, :] * sod
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=row_ok[:, None] & dv_ok[None, :])
        if STORE_LSE:  # for the backward (Dao 2023, Algorithm 1 line 13): L = m + log2(l), log2 units;
            # +inf where no key is visible, so that P = exp2(S·scale·log2e − L) is 0 on those rows
            lse = tl.where(l_i == 0.0, float("inf"), m_i + tl.math.log2(l_safe))  # (BLOCK_M,)
            tl.store(L + bh * Nq + offs_m, lse, mask=row_ok)

    tuned = triton.autotune(
        configs=[triton.Config({"BLOCK_M": BLOCK_M, "BLOCK_N": BLOCK_N}, num_warps=NUM_WARPS, num_stages=NUM_STAGES)],
        key=["Nq", "Nk", "D", "Dv", "HAS_MASK", "CAUSAL", "STORE_LSE", "HAS_SINKS"],
    )(fwd)
    return triton, fwd, tuned


def kernel_mask(attn_mask, B: int, Hq: int, Nq: int, Nk: int):
    """The boolean mask as a uint8 (B, Hq, Nq, Nk) view (stride 0 where it broadcasts) and its
    strides; None and zero strides without a mask."""
    mask = mask_4d(attn_mask)
    if mask is None:
        return None, (0, 0, 0, 0)
    mask = mask.expand(B, Hq, Nq, Nk).view(torch.uint8)  # stride 0 where it broadcasts
    return mask, mask.stride()


def launch_forward(q, k, v, causal, attn_mask, scale, block_m, block_n, lse=None, sinks=None):
    """Run the forward kernel; out (B, Hq, Nq, Dv). With lse (a float32 (B, Hq, Nq) tensor) it also
    stores each row's log-sum-exp in log2 units for the backward; sinks (Hq,) join each row's
    denominator."""
    triton, fwd, tuned = _kernels()
    B, Hq, Nq, D = q.shape
    Nk, Dv = k.shape[2], v.shape[3]
    group = Hq // k.shape[1]
    out = q.new_empty(B, Hq, Nq, Dv)  # (B, Hq, Nq, Dv)
    mask, mask_strides = kernel_mask(attn_mask, B, Hq, Nq, Nk)
    sink2 = None if sinks is None else (sinks.to(device=q.device, dtype=torch.float32) * LOG2E).contiguous()
    args = (
        q, k, v, out, out if mask is None else mask, out if lse is None else lse,  # unused: never read
        out if sink2 is None else sink2,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *mask_strides,
        Hq, group, Nq, Nk, D, Dv, default_scale(D, scale) * LOG2E, Nk - Nq,
    )
    flags = dict(
        HAS_MASK=mask is not None,
        CAUSAL=bool(causal),
        UPCAST=q.dtype == torch.bfloat16,  # bf16 tiles become float32 before tl.dot
        IEEE=q.dtype != torch.float16,  # float32 (and upcast bf16) dots in full precision, not TF32
        STORE_LSE=lse is not None,
        HAS_SINKS=sink2 is not None,
        BLOCK_D=max(16, triton.next_power_of_2(D)),
        BLOCK_DV=max(16, triton.next_power_of_2(Dv)),
    )
    if block_m is None and block_n is None:
        grid = lambda meta: (triton.cdiv(Nq, meta["BLOCK_M"]), B * Hq)  # noqa: E731
        tuned[grid](*args, **flags)
    else:
        bm, bn = tile_sizes(triton, block_m, block_n)
        fwd[(triton.cdiv(Nq, bm), B * Hq)](*args, **flags, BLOCK_M=bm, BLOCK_N=bn, num_warps=NUM_WARPS)
    return out


def tile_sizes(triton, block_m, block_n) -> tuple[int, int]:
    """Requested block sizes (None = default) rounded up to powers of two >= 16."""
    requested = (BLOCK_M if block_m is None else block_m, BLOCK_N if block_n is None else block_n)
    bm, bn = (max(16, triton.next_power_of_2(b)) for b in requested)
    return bm, bn
