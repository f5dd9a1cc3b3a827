"""flash_decoding's partition step for float32 on the CPU: one call of the C kernel
(`cpu_decode.c`, built by `kernel_build.py`) per partition, from the worker threads (ctypes
releases the GIL, so the workers run in parallel). The kernel reads the cache in place: a
contiguous partition is one run of tokens per head, a paged one the partition's pages through
the block table (element offsets of each page, computed once per call). `ctx` is flash_decoding's
_Ctx; its docstring describes the algorithm."""

from __future__ import annotations

import os

import torch

from implementations.flash_decoding import kernel_build


def memory_model(case, part: int, merge_bytes) -> int:
    """Bytes above the inputs for partitions of `part` tokens (already a whole number of pages):
    partial results, each worker's scores and row pointers, the merge buffers of min(workers, B)
    workers, the page/partition offsets and the output."""
    B, Hq, Hkv, Nq, D = case.batch, case.heads_q, case.heads_kv, case.seq_len_q, case.head_dim
    paged = case.kv_layout == "paged"
    lens = case.kv_lens or (case.seq_len_kv,) * B
    P = -(-max(lens) // part)
    items = sum(-(-n // part) for n in lens)
    GN = Hq // Hkv * Nq
    partials = 4 * B * P * Hkv * GN * (D + 2)  # o, m, l
    per_worker = 4 * GN * part + 8 * part  # scores, row pointers
    workers = max(1, min(case.threads or os.cpu_count() or 1, items))
    offsets = 8 * B * (-(-max(lens) // case.page_size) if paged else P)
    merge = min(workers, B) * merge_bytes(P, Hkv, GN, D, 4)
    return partials + workers * per_worker + merge + offsets + 4 * B * Hq * Nq * D


class Scratch:
    """One worker's buffers: the scores of one head (G·Nq rows x part) and the row pointers of one
    head's partition."""

    def __init__(self, ctx):
        self.s = torch.empty(ctx.q.shape[2] * ctx.part, dtype=torch.float32)
        self.rows = torch.empty(ctx.part, dtype=torch.int64)
        self.kernel = kernel_build.partition_kernel()


def index_fields(q, k_cache, block_table, dims, part: int) -> dict:
    """offs: element offset of each page's slot 0 of head 0 (paged, (B, max_pages)) or of each
    partition's first token of head 0 (contiguous, (B, P)); head_stride: elements between heads;
    q_c: q as (B, Hkv, G·Nq, D) contiguous (a view of the input when it is contiguous)."""
    B, D, Hkv = q.shape[0], q.shape[3], dims.heads_kv
    q_c = q.reshape(B, Hkv, -1, D).contiguous()
    if dims.paged:
        ps = dims.page_size
        offs = block_table.long().clamp_min(0).mul_(Hkv * ps * D)  # unused (-1) entries never read
        return dict(offs=offs, head_stride=ps * D, q_c=q_c)
    Nmax = k_cache.shape[2]
    P = -(-Nmax // part)
    b = torch.arange(B, dtype=torch.int64).view(B, 1) * (Hkv * Nmax * D)
    p = torch.arange(P, dtype=torch.int64).view(1, P) * (part * D)
    return dict(offs=(b + p).contiguous(), head_stride=Nmax * D, q_c=q_c)


def partition(ctx, scr: Scratch, b: int, p: int) -> None:
    """Partial attention of sequence b over cached tokens [p·part, min((p+1)·part, L)) into
    ctx.o_part[b, p], m_part[b, p], l_part[b, p]: one kernel call, addresses by arithmetic on the
    tensors' base pointers (float32: 4 bytes, offsets int64: 8 bytes)."""
    L = ctx.lens[b]
    j0 = p * ctx.part
    _, Hkv, GN, D = ctx.q.shape
    P = ctx.o_part.shape[1]
    cols = ctx.offs.shape[1]
    first = b * cols + (j0 // ctx.ps if ctx.ps else p)  # the partition's first page | its run
    item = b * P + p
    scr.kernel(ctx.q_c.data_ptr() + 4 * b * Hkv * GN * D, ctx.c, ctx.k_cache.data_ptr(), ctx.v_cache.data_ptr(),
               ctx.offs.data_ptr() + 8 * first, ctx.ps or ctx.part, ctx.head_stride, Hkv, GN, ctx.Nq, D, j0,
               min(ctx.part, L - j0), L - ctx.Nq, scr.s.data_ptr(), scr.rows.data_ptr(),
               ctx.o_part.data_ptr() + 4 * item * Hkv * GN * D, ctx.m_part.data_ptr() + 4 * item * Hkv * GN,
               ctx.l_part.data_ptr() + 4 * item * Hkv * GN)
