"""flash_decoding's partition step for float32 queries on the CPU: the C kernel (`cpu_decode.c`,
built by `kernel_build.py`) once per worker thread, each call taking partitions from the call's
shared list until none is left (ctypes releases the GIL, so the workers run in parallel); the worker that
finishes a sequence's last item merges it, in C too. The kernel reads the cache in place and in its
stored type (float32, bfloat16, float8 e4m3fn with per-head scales): a contiguous partition is
one run of tokens per head, a paged one the partition's pages through the block table (element
offsets of each page, computed once per call). `ctx` is flash_decoding's _Ctx (or the MLA path's,
mla.py); its docstring describes the algorithm."""

from __future__ import annotations

import functools
import os

import torch

from implementations.flash_decoding import kernel_build
from implementations.flash_decoding.work_plan import PLANS_KEPT, heads_per_item

KV_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float8_e4m3fn: 2}  # the kernel's kv_dtype
BLOCKED_MIN_ROWS = 16  # query rows per kv head from which the register-blocked variant runs


def blocked(rows: int, kv_dtype: str = "same") -> bool:
    """Does the kernel's register-blocked (compute-bound) variant run `rows` query rows per kv head
    (float32 caches only)?"""
    return rows >= BLOCKED_MIN_ROWS and kv_dtype == "same"


def memory_model(case, part: int, merges_bytes, *, heads_kv: int | None = None, rows: int | None = None,
                 dk: int | None = None, dv: int | None = None, c_merge: bool = False) -> int:
    """Bytes above the inputs for partitions of `part` tokens (already a whole number of pages):
    partial results, then the larger of the workers' scores and row pointers and the merge buffers
    of the merging workers (split.merge_workers), the transposed q (blocked variant), the page/partition offsets, the per-head scales and the output. The
    keywords give MLA's geometry (one kv head, Hq·Nq rows, key and value widths), c_merge the
    merges in the C workers (no buffers but the items left per sequence)."""
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
    # the work plan (work_plan.plan: the list, lengths, partitions, counters; kept for the layout's
    # later calls, which then allocate only their counters) and a call's own counters
    offsets += 24 * items * -(-Hkv // heads_per_item(items, Hkv, workers)) + 24 * B + 8 + 8 * (1 + B)
    if c_merge:  # the workers merge, with no buffers but their own
        scratch = workers * per_worker
    else:  # the workers' buffers are freed before the merge's are allocated (split.run_split)
        scratch = max(workers * per_worker, merges_bytes(workers, B, P, Hkv, GN, dv, 4))
    return partials + scratch + offsets + 8 * Hkv + q_t + 4 * B * Hq * Nq * dv


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


def head_scales(cache, scale, heads_kv: int) -> torch.Tensor:
    """The kernel's per-head factor of scores or outputs, (Hkv,) float32: the float8 scale (one
    per tensor or per head) over the factor the kernel reads codes with (cpu_decode.c, ldc; a
    power of two, so the product is exact); ones for the other caches."""
    if cache.dtype != torch.float8_e4m3fn:
        return torch.ones(heads_kv, dtype=torch.float32)
    fix = 1.0 / kernel_build.kernel().fp8_read_factor
    return torch.mul(scale.expand(heads_kv), fix)  # one small op instead of four (~50 us of a call)


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
    return dict(offs=_partition_offsets(B, -(-Nmax // part), Hkv * Nmax * row, part * row),
                head_stride=Nmax * row, **form)


@functools.lru_cache(maxsize=PLANS_KEPT)
def _partition_offsets(B: int, P: int, seq_stride: int, part_stride: int) -> torch.Tensor:
    """(B, P) int64 element offsets of each contiguous partition's first token of head 0, kept
    for the layout's later calls (see work_plan; the kernel only reads them)."""
    b = torch.arange(B, dtype=torch.int64).view(B, 1) * seq_stride
    p = torch.arange(P, dtype=torch.int64).view(1, P) * part_stride
    return (b + p).contiguous()


def worker_partitions(ctx, scr: Scratch, work: torch.Tensor, heads_per_item: int, lens: torch.Tensor,
                      taken: torch.Tensor, merge=None) -> None:
    """A worker's share of the call's partitions in one kernel call (attnbench_fd_partitions):
    work (n, 3) int64 (sequence, partition, first kv head; heads_per_item heads each, see
    work_plan.work_list) in the order to take them, taken[0] the next one to take (shared by the
    call's workers), lens (B,) int64 the kv lengths; merge = (items left per sequence, partitions
    per sequence), (B,) int64 each: the worker that finishes a sequence merges it into ctx.out
    (None: the caller merges). The same work as a kernel call per partition, without the ~45 us
    of Python and ctypes a partition cost that way."""
    remaining, counts = merge if merge is not None else (None, None)
    _, Hkv, GN, Dk = ctx.q.shape
    _, P, _, _, Dv = ctx.o_part.shape
    rc = kernel_build.kernel().partitions(
        ctx.q_c.data_ptr(), ctx.q_c.stride(0), ctx.c, ctx.k_cache.data_ptr(), ctx.v_cache.data_ptr(),
        ctx.offs.data_ptr(), ctx.offs.shape[1], ctx.ps, ctx.part, ctx.head_stride, ctx.row_stride, Hkv, GN, ctx.Nq, Dk,
        Dv, work.data_ptr(), work.shape[0], heads_per_item, lens.data_ptr(), P, ctx.dt, int(ctx.blocked),
        ctx.kscale.data_ptr(), ctx.vscale.data_ptr(), scr.s.data_ptr(), scr.rows.data_ptr(), ctx.o_part.data_ptr(),
        ctx.m_part.data_ptr(), ctx.l_part.data_ptr(), taken.data_ptr(),
        remaining.data_ptr() if merge is not None else None, counts.data_ptr() if merge is not None else None,
        ctx.sinks2.data_ptr() if merge is not None and ctx.sinks2 is not None else None, ctx.out.data_ptr())
    _check(rc, ctx)


def _check(rc: int, ctx) -> None:
    if rc == -2:
        raise MemoryError("the C kernel could not allocate its buffers (a few tens of KiB per partition call)")
    if rc:
        raise ValueError(f"the C kernel refused its arguments (kv dtype code {ctx.dt}, blocked {ctx.blocked})")
