"""FlashAttention-2 forward as a Triton kernel (Dao 2023, Algorithm 1; Tillet et al. 2019).

One program per (query block, batch·head): it keeps its query block, a running max m, running
sum l and a float32 accumulator on chip, streams the key/value blocks, and writes
acc / l once. Causal attention is bottom-right aligned and stops at the last key block the query
block can see; a boolean attn_mask is read through its strides (0 for broadcast dimensions).
Rows that see no key give zeros. Plain pointer arithmetic (no block pointers) and one autotune
config keep the kernel portable across Triton versions and backends.

Where it runs: CUDA with triton installed; on the CPU only under TRITON_INTERPRET=1, Triton's
NumPy interpreter (correct but very slow -- for tests, not timings). triton is imported only
when the kernel is first needed, never at module import.
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache

import torch

from harness.registry import YES, Support, no, register
from implementations._common import LOG2E, check_args, default_scale, mask_4d

BLOCK_M = 64  # query rows per program
BLOCK_N = 64  # keys per inner step
NUM_WARPS = 4
NUM_STAGES = 2


def _available(device: str) -> Support:
    if importlib.util.find_spec("triton") is None:
        return no("triton is not installed (pip install 'attnbench[triton]')")
    kind = str(device).split(":")[0]
    if kind == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return no("Triton runs on the CPU only in its interpreter: set TRITON_INTERPRET=1")
    return YES


def _supports(case) -> Support:
    if case.pass_kind != "forward":
        return no("triton_flash has no backward kernel")
    if case.head_dim > 256:
        return no(f"head_dim {case.head_dim} > 256 does not fit the kernel's on-chip tiles")
    return YES


def _memory_model(case) -> int:
    # The output only: the tiles live in registers / shared memory, masks are read as views.
    return case.element_bytes * case.batch * case.heads_q * case.seq_len_q * case.head_dim


@lru_cache(maxsize=None)
def _kernels():
    """Define the kernel on first use (triton reads TRITON_INTERPRET when a kernel is defined)."""
    import triton
    import triton.language as tl

    @triton.jit
    def fwd(
        Q, K, V, O, M,  # tensors; M is a uint8 view of the boolean mask (unused without HAS_MASK)
        sqb, sqh, sqm, sqd,  # q strides (B, Hq, Nq, D)
        skb, skh, skn, skd,  # k strides (B, Hkv, Nk, D)
        svb, svh, svn, svd,  # v strides
        sob, soh, som, sod,  # out strides
        smb, smh, smm, smn,  # mask strides, 0 where it broadcasts
        Hq, group, Nq, Nk, D, qk_scale, causal_offset,
        HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        start_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // Hq
        h = bh % Hq
        hk = h // group  # GQA: query head h reads kv head h // (Hq / Hkv)
        offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
        offs_n = tl.arange(0, BLOCK_N)  # (BLOCK_N,)
        offs_d = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
        row_ok = offs_m < Nq
        d_ok = offs_d < D

        q_ptrs = Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd
        q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_M, BLOCK_D)
        if UPCAST:
            q = q.to(tl.float32)
        k_base = K + b * skb + hk * skh
        v_base = V + b * svb + hk * svh

        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)  # running max, log2 units
        l_i = tl.zeros((BLOCK_M,), tl.float32)  # running sum
        acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)  # unnormalised output

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
                v_base + cols[:, None] * svn + offs_d[None, :] * svd,
                mask=col_ok[:, None] & d_ok[None, :],
                other=0.0,
            )  # (BLOCK_N, BLOCK_D)
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

        l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # no visible key: acc is 0, the output zeros
        out = acc / l_safe[:, None]
        o_ptrs = O + b * sob + h * soh + offs_m[:, None] * som + offs_d[None, :] * sod
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])

    tuned = triton.autotune(
        configs=[triton.Config({"BLOCK_M": BLOCK_M, "BLOCK_N": BLOCK_N}, num_warps=NUM_WARPS, num_stages=NUM_STAGES)],
        key=["Nq", "Nk", "D", "HAS_MASK", "CAUSAL"],
    )(fwd)
    return triton, fwd, tuned


@register(
    "triton_flash",
    devices=("cpu", "cuda"),
    dtypes=("float32", "float16", "bfloat16"),
    available=_available,
    supports=_supports,
    memory_model=_memory_model,
    description="FlashAttention-2 forward as a Triton kernel (CUDA; CPU only via TRITON_INTERPRET=1)",
    params={"block_m": BLOCK_M, "block_n": BLOCK_N, "num_warps": NUM_WARPS, "num_stages": NUM_STAGES},
)
def triton_flash_attention(
    q, k, v, *, causal=False, attn_mask=None, scale=None, block_m: int | None = None, block_n: int | None = None
):
    """block_m / block_n override the single autotune config (BLOCK_M x BLOCK_N). Triton needs
    power-of-two tile sides (tl.arange) of at least 16 (tl.dot), so a requested size is rounded
    up to the next such value: block_m=7 runs 16-row tiles."""
    dims = check_args(q, k, v, attn_mask, scale)
    if any(b is not None and b < 1 for b in (block_m, block_n)):
        raise ValueError(f"block_m and block_n must be positive, got {block_m}, {block_n}")
    support = _available(str(q.device))
    if not support:
        raise RuntimeError(support.reason)
    triton, fwd, tuned = _kernels()
    B, Hq, Nq, D = q.shape
    Nk = dims.seq_len_kv
    out = torch.empty_like(q)  # (B, Hq, Nq, D)
    mask = mask_4d(attn_mask)
    if mask is not None:
        mask = mask.expand(B, Hq, Nq, Nk).view(torch.uint8)  # stride 0 where it broadcasts
        mask_arg, mask_strides = mask, mask.stride()
    else:
        mask_arg, mask_strides = out, (0, 0, 0, 0)  # never read
    args = (
        q, k, v, out, mask_arg,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *mask_strides,
        Hq, dims.group, Nq, Nk, D, default_scale(D, scale) * LOG2E, Nk - Nq,
    )
    flags = dict(
        HAS_MASK=mask is not None,
        CAUSAL=bool(causal),
        UPCAST=q.dtype == torch.bfloat16,  # bf16 tiles become float32 before tl.dot
        IEEE=q.dtype != torch.float16,  # float32 (and upcast bf16) dots in full precision, not TF32
        BLOCK_D=max(16, triton.next_power_of_2(D)),
    )
    if block_m is None and block_n is None:
        grid = lambda meta: (triton.cdiv(Nq, meta["BLOCK_M"]), B * Hq)  # noqa: E731
        tuned[grid](*args, **flags)
    else:
        requested = (BLOCK_M if block_m is None else block_m, BLOCK_N if block_n is None else block_n)
        bm, bn = (max(16, triton.next_power_of_2(b)) for b in requested)
        fwd[(triton.cdiv(Nq, bm), B * Hq)](*args, **flags, BLOCK_M=bm, BLOCK_N=bn, num_warps=NUM_WARPS)
    return out
