"""flash_decoding's partition step for float32 queries on the CPU: one call of the C kernel
(`cpu_decode.c`, built by `kernel_build.py`) per partition, from the worker threads (ctypes
releases the GIL, so the workers run in parallel). The kernel reads the cache in place and in its
stored type (float32, bfloat16, float8 e4m3fn with per-head scales): a contiguous partition is
one run of tokens per head, a paged one the partition's pages through the block table (element
offsets of each page, computed once per call). `ctx` is flash_decoding's _Ctx (or the MLA path's,
mla.py); its docstring describes the algorithm."""

from __future__ import annotations

import os

import torch

from implementations.flash_decoding import kernel_build

KV_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float8_e4m3fn: 2}  # the kernel's kv_dtype
BLOCKED_MIN_ROWS = 16  # query rows per kv head from which the register-blocked variant runs


def blocked(rows: int, kv_dtype: str = "same") -> bool:
    """Does the kernel's register-blocked (compute-bound) variant run `rows` query rows per kv head
    (float32 caches only)?"""
    return rows >= BLOCKED_MIN_ROWS and kv_dtype == "same"


def memory_model(case, part: int, merges_bytes, *, heads_kv: int | None = None, rows: int | None = None,
                 dk: int | None = None, dv: int | None = None) -> int:
    """Bytes above the inputs for partitions of `part` tokens (already a whole number of pages):
    partial results, then the larger of the workers' scores and row pointers and the merge buffers
    of the merging workers (split.merge_workers), the transposed q (blocked variant), the page/partition offsets, the per-head scales and the output. The
    keywords give MLA's geometry (one kv head, Hq·Nq rows, key and value widths)."""
    B, Hq, Nq = case.batch, case.heads_q, case.seq_len_q
    Hkv = heads_kv or case.heads_kv
    dk, dv = dk or case.head_dim, dv or case.head_dim
    paged = case.kv_layout == "paged"
    lens = case.kv_lens or (case.seq_len_kv,) * B
    P = -(-max(lens) // part)
    items = sum(-(-n // part) for n in lens)
    GN = rows or Hq // Hkv * Nq
    partials = 4 * B * P * Hkv * GN * (dv + 2)  # o, m, l
    per_worker = 4 * GN * part + 8 * part  # scores, row pointers
    q_t = 0
    if blocked(GN, case.kv_dtype):
        per_worker = 4 * _round_up(GN) * part + 8 * part  # scores, rows padded
        q_t = 4 * B * Hkv * dk * _round_up(GN)  # q transposed and padded
    workers = max(1, min(case.threads or os.cpu_count() or 1, items))
    offsets = 8 * B * (-(-max(lens) // case.page_size) if paged else P)
    offsets += 16 * items + 8 * B + 8  # the work list (split.run_split), the lengths, the shared counter
    merge = merges_bytes(workers, B, P, Hkv, GN, dv, 4, uniform=all(-(-n // part) == P for n in lens), out_is_acc=True)
    # the workers' buffers are freed before the merge's are allocated (split.run_split)
    return partials + max(workers * per_worker, merge) + offsets + 8 * Hkv + q_t + 4 * B * Hq * Nq * dv


def _round_up(rows: int) -> int:
    width = kernel_build.kernel().vector_width if kernel_build.unavailable_reason() is None else 16
    return -(-rows // width) * width


class Scratch:
    """One worker's buffers: the scores of one head (G·Nq rows x part; blocked: rows rounded up to
    the vector width) and the row pointers of one head's partition."""

    def __init__(self, ctx):
        rows = ctx.q.shape[2]
        size = (_round_up(rows) if ctx.blocked else rows) * ctx.part
        self.s = torch.empty(size, dtype=torch.float32)
        self.rows = torch.empty(ctx.part, dtype=torch.int64)
        self.kernel = kernel_build.partition_kernel()


def head_scales(cache, scale, heads_kv: int) -> torch.Tensor:
    """The kernel's per-head factor of scores or outputs, (Hkv,) float32: the float8 scale (one
    per tensor or per head) over the factor the kernel reads codes with (cpu_decode.c, ldc); ones
    for the other caches."""
    if cache.dtype != torch.float8_e4m3fn:
        return torch.ones(heads_kv, dtype=torch.float32)
    fix = 1.0 / kernel_build.kernel().fp8_read_factor
    return (scale.to(torch.float64) * fix).to(torch.float32).expand(heads_kv).contiguous()


def index_fields(q, k_cache, block_table, dims, part: int, *, k_scale=None, v_scale=None,
                 row_stride: int | None = None) -> dict:
    """offs: element offset of each page's slot 0 of head 0 (paged, (B, max_pages)) or of each
    partition's first token of head 0 (contiguous, (B, P)); head_stride: elements between heads;
    q_c: q as (B, Hkv, G·Nq, D) contiguous (a view of the input when it is contiguous; for the
    blocked variant transposed and padded, (B, Hkv, D, GNp)); the cache's kernel code and per-head
    scales; row_stride: elements between tokens (default: head_dim)."""
    B, D, Hkv = q.shape[0], q.shape[3], dims.heads_kv
    row = row_stride or D
    q_c = q.reshape(B, Hkv, -1, D)
    dt = KV_CODES[k_cache.dtype]
    is_blocked = dt == 0 and blocked(q_c.shape[2])
    if is_blocked:  # one copy per call: B·Hq·Nq·D elements, small beside the partitions' work
        pad = _round_up(q_c.shape[2]) - q_c.shape[2]
        q_c = torch.nn.functional.pad(q_c, (0, 0, 0, pad)).transpose(2, 3).contiguous()  # (B, Hkv, D, GNp)
    else:
        q_c = q_c.contiguous()
    form = dict(q_c=q_c, dt=dt, row_stride=row, blocked=is_blocked,
                kscale=head_scales(k_cache, k_scale, Hkv), vscale=head_scales(k_cache, v_scale, Hkv))
    if dims.paged:
        ps = dims.page_size
        offs = block_table.long().clamp_min(0).mul_(Hkv * ps * row)  # unused (-1) entries never read
        return dict(offs=offs, head_stride=ps * row, **form)
    Nmax = k_cache.shape[2]
    P = -(-Nmax // part)
    b = torch.arange(B, dtype=torch.int64).view(B, 1) * (Hkv * Nmax * row)
    p = torch.arange(P, dtype=torch.int64).view(1, P) * (part * row)
    return dict(offs=(b + p).contiguous(), head_stride=Nmax * row, **form)


def worker_partitions(ctx, scr: Scratch, items: torch.Tensor, lens: torch.Tensor, taken: torch.Tensor) -> None:
    """A worker's share of the call's partitions in one kernel call (attnbench_fd_partitions):
    items (n, 2) int64 (sequence, partition) in the order to take them, taken[0] the next one to
    take (shared by the call's workers), lens (B,) int64 the kv lengths. The same work as
    `partition` once per item, without the ~45 us of Python and ctypes per item."""
    _, Hkv, GN, Dk = ctx.q.shape
    _, P, _, _, Dv = ctx.o_part.shape
    rc = kernel_build.kernel().partitions(
        ctx.q_c.data_ptr(), ctx.q_c.stride(0), ctx.c, ctx.k_cache.data_ptr(), ctx.v_cache.data_ptr(),
        ctx.offs.data_ptr(), ctx.offs.shape[1], ctx.ps, ctx.part, ctx.head_stride, ctx.row_stride, Hkv, GN, ctx.Nq, Dk,
        Dv, items.data_ptr(), items.shape[0], lens.data_ptr(), P, ctx.dt, int(ctx.blocked), ctx.kscale.data_ptr(),
        ctx.vscale.data_ptr(), scr.s.data_ptr(), scr.rows.data_ptr(), ctx.o_part.data_ptr(), ctx.m_part.data_ptr(),
        ctx.l_part.data_ptr(), taken.data_ptr())
    _check(rc, ctx)


def _check(rc: int, ctx) -> None:
    if rc == -2:
        raise MemoryError("the C kernel could not allocate its buffers (q and o in group order)")
    if rc:
        raise ValueError(f"the C kernel refused its arguments (kv dtype code {ctx.dt}, blocked {ctx.blocked})")


def partition(ctx, scr: Scratch, b: int, p: int) -> None:
    """Partial attention of sequence b over cached tokens [p·part, min((p+1)·part, L)) into
    ctx.o_part[b, p], m_part[b, p], l_part[b, p]: one kernel call, addresses by arithmetic on the
    tensors' base pointers (float32: 4 bytes, offsets int64: 8 bytes)."""
    L = ctx.lens[b]
    j0 = p * ctx.part
    _, Hkv, GN, Dk = ctx.q.shape
    Dv = ctx.o_part.shape[-1]
    P = ctx.o_part.shape[1]
    cols = ctx.offs.shape[1]
    first = b * cols + (j0 // ctx.ps if ctx.ps else p)  # the partition's first page | its run
    item = b * P + p
    rc = scr.kernel(ctx.q_c[b].data_ptr(), ctx.c, ctx.k_cache.data_ptr(),
                    ctx.v_cache.data_ptr(), ctx.offs.data_ptr() + 8 * first, ctx.ps or ctx.part, ctx.head_stride,
                    ctx.row_stride, Hkv, GN, ctx.Nq, Dk, Dv, j0, min(ctx.part, L - j0), L - ctx.Nq, ctx.dt,
                    int(ctx.blocked), ctx.kscale.data_ptr(), ctx.vscale.data_ptr(), scr.s.data_ptr(),
                    scr.rows.data_ptr(), ctx.o_part.data_ptr() + 4 * item * Hkv * GN * Dv,
                    ctx.m_part.data_ptr() + 4 * item * Hkv * GN, ctx.l_part.data_ptr() + 4 * item * Hkv * GN)
    _check(rc, ctx)
