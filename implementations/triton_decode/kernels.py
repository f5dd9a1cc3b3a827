"""triton_decode's kernels, defined on first use (triton reads TRITON_INTERPRET when a kernel is
defined): kernel 1, split-KV partial attention of a sequence's query rows per kv head; kernel 2, the
log-sum-exp reduction of the splits (also the MLA path's, mla.py). See the package's __init__."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=None)
def decode_kernels():
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


def reduce_kernel():
    """Kernel 2 (the log-sum-exp reduction)."""
    return decode_kernels()[2]
