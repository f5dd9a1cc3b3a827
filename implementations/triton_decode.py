"""Flash-Decoding as Triton kernels over a contiguous or paged KV cache (Dao, Haziza, Massa, Sizov
2023, "Flash-Decoding for long-context inference"; paging as in vLLM's PagedAttention, Kwon et al.
2023; Triton: Tillet et al. 2019).

Kernel 1 (split-KV), one program per (sequence b, kv head, split s): the G·Nq query rows that
share the kv head (GQA: each K/V block is loaded once for all G query heads) against the cached
tokens [s·S, (s+1)·S) ∩ [0, kv_lens[b]), online softmax over blocks of BLOCK_N tokens; token j's
page is block_table[b, j // page_size] (any page size: addresses are gathered per token).
Writes the unnormalised partial output, its row max m and row sum l (log2 units).
Kernel 2 (reduction), one program per (sequence, kv head): merges the splits of its sequence by
log-sum-exp, out = Σ 2^(m_s − M)·o_s / Σ 2^(m_s − M)·l_s, and writes the rows to (B, Hq, Nq, D).

Decode forms: `scale`; attention sinks start kernel 2's merge as one more partial (row max =
the sink logit, row sum 1, no output); a bfloat16 cache is upcast after the load, a float8 e4m3
cache is loaded as bytes and converted by bit arithmetic (sign and 7 low bits moved into a float16,
exponent bias 15 for e4m3's 7: the value x 2^-8, the 2^8 folded into the per-head scales; float16
subnormals convert exactly to float32), the same on every GPU and in the interpreter.

Where it runs: CUDA with triton installed; on the CPU only under TRITON_INTERPRET=1 (NumPy
interpreter: tests only). One config, no block pointers; bf16 tiles upcast before tl.dot.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from harness.registry import register_decode
from implementations._shared.contract import LOG2E, default_scale
from implementations._shared.decode_contract import check_decode_args
from implementations._shared.triton_support import triton_available

BLOCK_N = 64  # cached tokens per inner step
NUM_WARPS = 4
TARGET_PROGRAMS = 512  # split count aims at about this many split-KV programs (fills a big GPU)


def _num_splits(batch: int, heads_kv: int, max_len: int, block_n: int) -> int:
    """Splits per sequence: enough programs to occupy the device, never a split under one block."""
    want = -(-TARGET_PROGRAMS // (batch * heads_kv))
    return max(1, min(want, -(-max_len // block_n)))


def _memory_model(case) -> int:
    B, Hq, Hkv, Nq, D = case.batch, case.heads_q, case.heads_kv, case.seq_len_q, case.head_dim
    ns = _num_splits(B, Hkv, case.seq_len_kv, BLOCK_N)
    rows = max(16, 1 << (Hq // Hkv * Nq - 1).bit_length())
    dpad = max(16, 1 << (D - 1).bit_length())
    partials = 4 * B * Hkv * ns * rows * (dpad + 2)
    return partials + case.element_bytes * B * Hq * Nq * D


@lru_cache(maxsize=None)
def _kernels():
    """Define the kernels on first use (triton reads TRITON_INTERPRET when a kernel is defined)."""
    import triton
    import triton.language as tl

    @triton.jit
    def split_kv(
        Q, K, V, LENS, BT, OP, MP, LP, KS, VS,
        sqb, sqh, sqm, sqd,  # q strides (B, Hq, Nq, D)
        skp, skh, skn, skd,  # cache strides: paged (page, Hkv, slot, D) | contiguous (B, Hkv, N, D)
        svp, svh, svn, svd,
        sbt,  # block-table row stride
        Hkv, G, Nq, D, PAGE, split_len, qk_scale,
        PAGED: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr, FP8: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        b = tl.program_id(0)
        hk = tl.program_id(1)
        sp = tl.program_id(2)
        nsp = tl.num_programs(2)
        L = tl.load(LENS + b).to(tl.int32)
        rows = tl.arange(0, BLOCK_M)  # row r = g·Nq + i: query head hk·G + g, query token i
        g = rows // Nq
        qi = rows % Nq
        row_ok = rows < G * Nq
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        q_ptrs = Q + b * sqb + (hk * G + g)[:, None] * sqh + qi[:, None] * sqm + offs_d[None, :] * sqd
        q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_M, BLOCK_D)
        if UPCAST:
            q = q.to(tl.float32)
        last = qi + (L - Nq)  # query i sees key j iff j <= i + L - Nq

        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
        lo = sp * split_len
        hi = tl.minimum(lo + split_len, L)
        for start in range(lo, hi, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)  # (BLOCK_N,) token positions in the sequence
            col_ok = cols < hi
            if PAGED:
                page = tl.load(BT + b * sbt + cols // PAGE, mask=col_ok, other=0)
                kbase = page.to(tl.int64) * skp + (cols % PAGE) * skn
                vbase = page.to(tl.int64) * svp + (cols % PAGE) * svn
            else:
                kbase = b.to(tl.int64) * skp + cols * skn
                vbase = b.to(tl.int64) * svp + cols * svn
            kT = tl.load(K + hk * skh + kbase[None, :] + offs_d[:, None] * skd,
                         mask=col_ok[None, :] & d_ok[:, None], other=0.0)  # (BLOCK_D, BLOCK_N)
            v = tl.load(V + hk * svh + vbase[:, None] + offs_d[None, :] * svd,
                        mask=col_ok[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_N, BLOCK_D)
            if FP8:  # e4m3 bytes -> float16 bits (bias 15 for 7: the value · 2^-8; the 2^8 is in KS, VS)
                kb = kT.to(tl.int32)
                vb = v.to(tl.int32)
                kT = (((kb & 0x80) << 8) | ((kb & 0x7F) << 7)).to(tl.uint16).to(tl.float16, bitcast=True)
                v = (((vb & 0x80) << 8) | ((vb & 0x7F) << 7)).to(tl.uint16).to(tl.float16, bitcast=True)
                kT = kT.to(tl.float32)
                v = v.to(tl.float32)
            elif UPCAST:
                kT = kT.to(tl.float32)
                v = v.to(tl.float32)
            if IEEE:
                s = tl.dot(q, kT, input_precision="ieee")
            else:
                s = tl.dot(q, kT)
            s = s * (qk_scale * tl.load(KS + hk))  # (BLOCK_M, BLOCK_N), scale·log2(e)·k_scale folded in
            visible = col_ok[None, :] & row_ok[:, None] & (cols[None, :] <= last[:, None])
            s = tl.where(visible, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # no key seen yet: no NaN
            p = tl.math.exp2(s - shift[:, None])
            alpha = tl.math.exp2(m_i - shift)
            l_i = l_i * alpha + tl.sum(p, 1)
            if IEEE:
                acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
            else:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        # partials laid out (B, Hkv, splits, BLOCK_M[, BLOCK_D]); an empty split writes m = −inf
        base = (b * Hkv + hk) * nsp + sp
        tl.store(MP + base * BLOCK_M + rows, m_i)
        tl.store(LP + base * BLOCK_M + rows, l_i)
        tl.store(OP + (base * BLOCK_M + rows[:, None]) * BLOCK_D + offs_d[None, :], acc * tl.load(VS + hk))

    @triton.jit
    def reduce(
        OP, MP, LP, LENS, O, SINKS,
        sob, soh, som, sod,
        Hkv, G, Nq, D, split_len, n_splits,
        HAS_SINKS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        b = tl.program_id(0)
        hk = tl.program_id(1)
        L = tl.load(LENS + b).to(tl.int32)
        n_used = (L + split_len - 1) // split_len  # splits this sequence actually has
        rows = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        m_all = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l_all = tl.zeros((BLOCK_M,), tl.float32)
        if HAS_SINKS:  # the sink as the first partial: max = its logit (log2 units), sum 1, no output
            sink_ok = rows < G * Nq
            m_all = tl.load(SINKS + hk * G + rows // Nq, mask=sink_ok, other=float("-inf")) * 1.4426950408889634
            l_all = tl.where(sink_ok, 1.0, 0.0)
        acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
        for sp in range(0, n_used):
            base = (b * Hkv + hk) * n_splits + sp
            m_s = tl.load(MP + base * BLOCK_M + rows)
            l_s = tl.load(LP + base * BLOCK_M + rows)
            o_s = tl.load(OP + (base * BLOCK_M + rows[:, None]) * BLOCK_D + offs_d[None, :])
            m_new = tl.maximum(m_all, m_s)
            shift = tl.where(m_new == float("-inf"), 0.0, m_new)
            a_old = tl.math.exp2(m_all - shift)
            a_new = tl.math.exp2(m_s - shift)
            l_all = l_all * a_old + l_s * a_new
            acc = acc * a_old[:, None] + o_s * a_new[:, None]
            m_all = m_new
        l_safe = tl.where(l_all == 0.0, 1.0, l_all)
        out = acc / l_safe[:, None]
        g = rows // Nq
        qi = rows % Nq
        ok = (rows < G * Nq)[:, None] & (offs_d < D)[None, :]
        o_ptrs = O + b * sob + (hk * G + g)[:, None] * soh + qi[:, None] * som + offs_d[None, :] * sod
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=ok)

    return triton, split_kv, reduce


@register_decode(
    "triton_decode",
    layouts=("contiguous", "paged"),
    devices=("cpu", "cuda"),
    dtypes=("float32", "float16", "bfloat16"),
    memory_model=_memory_model,
    # register_decode has no available= yet: the machine check rides on supports (cases skip with why)
    supports=lambda case: triton_available(case.device),
    description="Flash-Decoding as Triton kernels: split-KV + log-sum-exp reduction, paged via the block table "
    "(CUDA; CPU only via TRITON_INTERPRET=1)",
    params={"block_n": BLOCK_N, "num_warps": NUM_WARPS, "target_programs": TARGET_PROGRAMS},
    forms=("sinks", "scale", "kv_bfloat16", "kv_float8_e4m3fn"),
)
def triton_decode(q, k_cache, v_cache, *, kv_lens, block_table=None, scale=None, sinks=None, k_scale=None,
                  v_scale=None, num_splits: int | None = None):
    """num_splits overrides the per-sequence split count (default: about TARGET_PROGRAMS programs)."""
    dims = check_decode_args(q, k_cache, v_cache, kv_lens, block_table, scale, sinks=sinks, k_scale=k_scale,
                             v_scale=v_scale)
    support = triton_available(str(q.device))
    if not support:
        raise RuntimeError(support.reason)
    triton, split_kv, reduce = _kernels()
    B, Hq, Nq, D = q.shape
    Hkv, G = dims.heads_kv, dims.group
    # The longest sequence bounds the splits: a contiguous cache's length axis, or the block
    # table's width in pages (no host read of kv_lens, so no device sync).
    n_max = k_cache.shape[2] if not dims.paged else block_table.shape[1] * dims.page_size
    ns = num_splits or _num_splits(B, Hkv, n_max, BLOCK_N)
    split_len = -(-n_max // ns)
    split_len = -(-split_len // BLOCK_N) * BLOCK_N  # whole blocks per split
    ns = -(-n_max // split_len)
    block_m = max(16, triton.next_power_of_2(G * Nq))  # tl.dot needs >= 16 rows
    block_d = max(16, triton.next_power_of_2(D))
    opts = dict(dtype=torch.float32, device=q.device)
    o_part = torch.empty(B, Hkv, ns, block_m, block_d, **opts)  # unnormalised partial outputs
    m_part = torch.empty(B, Hkv, ns, block_m, **opts)  # partial row maxima (log2 units)
    l_part = torch.empty(B, Hkv, ns, block_m, **opts)  # partial row sums
    out = torch.empty_like(q)  # (B, Hq, Nq, D)
    bt = block_table if dims.paged else kv_lens  # never read when contiguous
    fp8 = k_cache.dtype == torch.float8_e4m3fn
    ks, vs = _head_scales(k_scale, Hkv, q.device), _head_scales(v_scale, Hkv, q.device)
    if fp8:  # loaded as bytes (every triton backend and the interpreter read uint8)
        k_cache, v_cache = k_cache.view(torch.uint8), v_cache.view(torch.uint8)
    split_kv[(B, Hkv, ns)](
        q, k_cache, v_cache, kv_lens, bt, o_part, m_part, l_part, ks, vs,
        *q.stride(), *k_cache.stride(), *v_cache.stride(), bt.stride(0),
        Hkv, G, Nq, D, max(dims.page_size, 1), split_len, default_scale(D, scale) * LOG2E,
        PAGED=dims.paged, UPCAST=k_cache.dtype == torch.bfloat16, IEEE=q.dtype != torch.float16, FP8=fp8,
        BLOCK_M=block_m, BLOCK_N=BLOCK_N, BLOCK_D=block_d, num_warps=NUM_WARPS,
    )
    reduce[(B, Hkv)](
        o_part, m_part, l_part, kv_lens, out, sinks if sinks is not None else ks, *out.stride(),
        Hkv, G, Nq, D, split_len, ns, HAS_SINKS=sinks is not None, BLOCK_M=block_m, BLOCK_D=block_d,
        num_warps=NUM_WARPS,
    )
    return out


E4M3_READ_FACTOR = 2.0**-8  # what split_kv reads an e4m3 code as, times its value


def _head_scales(scale, heads_kv: int, device):
    """(Hkv,) float32 factors of the scores / partial outputs: a float8 scale over the read factor,
    else ones (small ops)."""
    if scale is None:
        return torch.ones(heads_kv, dtype=torch.float32, device=device)
    return (scale.to(torch.float64) / E4M3_READ_FACTOR).to(torch.float32).expand(heads_kv).contiguous()
