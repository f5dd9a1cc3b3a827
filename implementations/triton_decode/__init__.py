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

import torch

from harness.registry import register_decode
from implementations._shared.contract import LOG2E, default_scale
from implementations._shared.decode_contract import check_decode_args
from implementations._shared.triton_support import triton_available
from implementations.triton_decode.kernels import decode_kernels

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


@register_decode(
    "triton_decode",
    layouts=("contiguous", "paged"),
    devices=("cpu", "cuda"),
    dtypes=("float32", "float16", "bfloat16"),
    memory_model=_memory_model,
    available=triton_available,  # Triton on this machine at all (CPU: only in its interpreter)
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
    triton, split_kv, reduce = decode_kernels()
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


from implementations.triton_decode import mla  # noqa: E402,F401  registers the MLA decode path (after "triton_decode")
