"""triton_decode's MLA decode path (absorbed form; docs/contracts.md, "MLA decode") as Triton
kernels, in the shape of vLLM's grouped MLA decode kernel: one program per (sequence, block of
BLOCK_M query rows, split of the cache), the rows being query heads x query tokens of the one
shared latent; the scores are q_nope·latent[:R] + q_rope·latent[R:], the values latent[:R] (the
same loaded tile, transposed), online softmax over BLOCK_N tokens; the partials are merged by
triton_decode's reduction kernel (each row block one "kv head" of BLOCK_M rows). Each program reads
the latent rows of its split once for its BLOCK_M rows.

Where it runs: CUDA with triton installed; on the CPU only under TRITON_INTERPRET=1 (tests).
Imported by the package's __init__ after it registers the implementation.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from harness.registry import register_path
from implementations._shared.contract import LOG2E, default_scale
from implementations._shared.mla_contract import check_mla_args
from implementations._shared.triton_support import triton_available
from implementations.triton_decode.kernels import reduce_kernel

BLOCK_M = 16  # query rows per program (tl.dot needs >= 16)
BLOCK_N = 32  # cached tokens per inner step
NUM_WARPS = 4
TARGET_PROGRAMS = 512


def _pow2(n: int) -> int:
    return max(16, 1 << (max(n, 1) - 1).bit_length())


def _splits(batch: int, blocks: int, n_max: int) -> int:
    want = -(-TARGET_PROGRAMS // (batch * blocks))
    return max(1, min(want, -(-n_max // BLOCK_N)))


def _memory_model(case) -> int:
    rows = case.heads_q * case.seq_len_q
    blocks = -(-rows // BLOCK_M)
    ns = _splits(case.batch, blocks, case.seq_len_kv)
    rank = _pow2(case.kv_lora_rank)
    partials = 4 * case.batch * blocks * ns * BLOCK_M * (rank + 2)
    return partials + case.element_bytes * case.batch * blocks * BLOCK_M * case.kv_lora_rank * 2


@lru_cache(maxsize=None)
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def mla_split(
        Q, C, LENS, BT, OP, MP, LP,
        sqb, sqh, sqm, sqd,  # q strides (B, Hq, Nq, W)
        scp, scn, scd,  # latent strides: paged (page, slot, W) | contiguous (B, N, W)
        sbt, Hq, Nq, R, P, PAGE, split_len, qk_scale,
        PAGED: tl.constexpr, UPCAST: tl.constexpr, HAS_ROPE: tl.constexpr, IEEE: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
    ):
        b = tl.program_id(0)
        blk = tl.program_id(1)
        sp = tl.program_id(2)
        nblk = tl.num_programs(1)
        nsp = tl.num_programs(2)
        L = tl.load(LENS + b).to(tl.int32)
        rows = blk * BLOCK_M + tl.arange(0, BLOCK_M)  # row = h·Nq + i
        h = rows // Nq
        qi = rows % Nq
        row_ok = rows < Hq * Nq
        offs_r = tl.arange(0, BLOCK_R)
        r_ok = offs_r < R
        q_row = Q + b * sqb + h[:, None] * sqh + qi[:, None] * sqm
        q_n = tl.load(q_row + offs_r[None, :] * sqd, mask=row_ok[:, None] & r_ok[None, :], other=0.0)
        offs_p = tl.arange(0, BLOCK_P)
        p_ok = offs_p < P
        if HAS_ROPE:
            q_p = tl.load(q_row + (R + offs_p)[None, :] * sqd, mask=row_ok[:, None] & p_ok[None, :], other=0.0)
            if UPCAST:
                q_p = q_p.to(tl.float32)
        if UPCAST:
            q_n = q_n.to(tl.float32)
        last = qi + (L - Nq)
        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        acc = tl.zeros((BLOCK_M, BLOCK_R), tl.float32)
        lo = sp * split_len
        hi = tl.minimum(lo + split_len, L)
        for start in range(lo, hi, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            col_ok = cols < hi
            if PAGED:
                page = tl.load(BT + b * sbt + cols // PAGE, mask=col_ok, other=0)
                base = page.to(tl.int64) * scp + (cols % PAGE) * scn
            else:
                base = b.to(tl.int64) * scp + cols * scn
            kn = tl.load(C + base[None, :] + offs_r[:, None] * scd, mask=col_ok[None, :] & r_ok[:, None],
                         other=0.0)  # (BLOCK_R, BLOCK_N): the latent's first R columns, transposed
            if UPCAST:
                kn = kn.to(tl.float32)
            if IEEE:
                s = tl.dot(q_n, kn, input_precision="ieee")
            else:
                s = tl.dot(q_n, kn)
            if HAS_ROPE:
                kp = tl.load(C + base[None, :] + (R + offs_p)[:, None] * scd, mask=col_ok[None, :] & p_ok[:, None],
                             other=0.0)  # (BLOCK_P, BLOCK_N): the rotary columns
                if UPCAST:
                    kp = kp.to(tl.float32)
                if IEEE:
                    s += tl.dot(q_p, kp, input_precision="ieee")
                else:
                    s += tl.dot(q_p, kp)
            s = s * qk_scale
            visible = col_ok[None, :] & row_ok[:, None] & (cols[None, :] <= last[:, None])
            s = tl.where(visible, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            shift = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(s - shift[:, None])
            alpha = tl.math.exp2(m_i - shift)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.trans(kn)  # (BLOCK_N, BLOCK_R): the value is the same tile
            if IEEE:
                acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
            else:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        pbase = (b * nblk + blk) * nsp + sp
        tl.store(MP + pbase * BLOCK_M + tl.arange(0, BLOCK_M), m_i)
        tl.store(LP + pbase * BLOCK_M + tl.arange(0, BLOCK_M), l_i)
        tl.store(OP + (pbase * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]) * BLOCK_R + offs_r[None, :], acc)

    return triton, mla_split


@register_path("mla_decode", "triton_decode", dtypes=("float32", "float16", "bfloat16"), memory_model=_memory_model,
               available=triton_available, options={"layouts": ("contiguous", "paged")},
               params={"block_m": BLOCK_M, "block_n": BLOCK_N})
def triton_mla_decode(q, latent_cache, *, kv_lens, kv_lora_rank, block_table=None, scale=None,
                      num_splits: int | None = None):
    dims = check_mla_args(q, latent_cache, kv_lens, kv_lora_rank, block_table, scale)
    support = triton_available(str(q.device))
    if not support:
        raise RuntimeError(support.reason)
    triton, mla_split = _kernel()
    B, Hq, Nq, W = q.shape
    R, P = kv_lora_rank, W - kv_lora_rank
    rows = Hq * Nq
    nblk = -(-rows // BLOCK_M)
    n_max = latent_cache.shape[1] if not dims.paged else block_table.shape[1] * dims.page_size
    ns = num_splits or _splits(B, nblk, n_max)
    split_len = -(-(-(-n_max // ns)) // BLOCK_N) * BLOCK_N  # whole blocks per split
    ns = -(-n_max // split_len)
    block_r = _pow2(R)
    opts = dict(dtype=torch.float32, device=q.device)
    o_part = torch.empty(B, nblk, ns, BLOCK_M, block_r, **opts)
    m_part = torch.empty(B, nblk, ns, BLOCK_M, **opts)
    l_part = torch.empty(B, nblk, ns, BLOCK_M, **opts)
    bt = block_table if dims.paged else kv_lens
    mla_split[(B, nblk, ns)](
        q, latent_cache, kv_lens, bt, o_part, m_part, l_part, *q.stride(), *latent_cache.stride(), bt.stride(0),
        Hq, Nq, R, P, max(dims.page_size, 1), split_len, default_scale(W, scale) * LOG2E,
        PAGED=dims.paged, UPCAST=q.dtype == torch.bfloat16, HAS_ROPE=P > 0, IEEE=q.dtype != torch.float16,
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_R=block_r, BLOCK_P=_pow2(P), num_warps=NUM_WARPS,
    )
    # the decode reduction with each row block as a "kv head" of BLOCK_M rows (one query token)
    out = torch.empty(B, nblk * BLOCK_M, 1, R, dtype=q.dtype, device=q.device)
    reduce_kernel()[(B, nblk)](
        o_part, m_part, l_part, kv_lens, out, kv_lens, *out.stride(),
        nblk, BLOCK_M, 1, R, split_len, ns, HAS_SINKS=False, BLOCK_M=BLOCK_M, BLOCK_D=block_r, num_warps=NUM_WARPS,
    )
    return out[:, :rows, 0].reshape(B, Hq, Nq, R)
