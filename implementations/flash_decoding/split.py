"""The split-KV plumbing flash_decoding's decode and MLA paths share: the partition length, the
worker count, the call's context (what a partition step reads and writes) and the log-sum-exp
merge of a sequence's partitions (with attention sinks as one more term). The algorithm is
described in the package's __init__.py."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from implementations._shared.contract import LOG2E
from implementations._shared.thread_pool import run_parallel, run_shares
from implementations.flash_decoding import torch_partitions
from implementations.flash_decoding.work_plan import ordered_items, plan

# Tokens per partition. One partition = one work item: Hkv·part·D·2 elements of K and V (8 MiB in
# fp32 at Hkv=8, D=128), so the per-item Python work costs a few % of its streaming time; the
# score tiles (G·Nq·part) stay in L2. Measured with 2 threads on a shared 2-core AMD EPYC (B=8,
# Hq=32, Hkv=8, D=128, KV=8192, fp32), torch step per CPU-second: 512 14.3, 1024 15.2, 2048 14.9,
# 4096 14.0 GB/s; C step: 256 33.1, 512 29.8, 1024 28.2, 2048 27.7 ms. By default a call with fewer
# partitions than workers halves it (to MIN_AUTO_PARTITION at the least), so a short cache of a
# small batch still occupies every worker (B=1, KV=1024, 2 threads, 80 interleaved calls: median
# 1.00 ms at 512 vs 1.14 ms at 1024; 256: 1.04 ms).
PARTITION = 1024
# The C step's: each work item costs ~45 us of Python (the ctypes call and its arguments, under
# the GIL), as much as 15% of a 1024-token float8 partition; the kernel's one-pass (AVX-512) code
# keeps no score tile, its 8-lane code one of G·Nq·part floats (64 KiB at G·Nq = 4: still in L2). Same benchmark, 2 threads on a 2-core Sapphire Rapids VM, best of 3 x 7 calls:
# 1024 / 2048 / 4096 tokens: float32 27.7 / 24.9 / 24.2 ms, bfloat16 16.4 / 13.8 / 13.3, float8
# 12.9 / 11.1 / 10.3.
C_PARTITION = 4096
MIN_AUTO_PARTITION = 256


def partition_for(partition: int | None, lens, page_size: int, workers: int, default: int = PARTITION) -> int:
    """Tokens per partition: `partition` when given, else `default` halved while the batch would
    make fewer partitions than `workers`; a whole number of pages when paged."""
    if partition is None:
        partition = default
        while partition > MIN_AUTO_PARTITION and sum(-(-n // partition) for n in lens) < workers:
            partition //= 2
    return torch_partitions.part_len(partition, page_size)


# The merges run in the calling thread when the partials hold at most this many elements: handing
# a batch of small merges to the worker threads cost more than the merges (B=8, P=8, Hkv=8, G=4,
# D=128, 2 threads on a 2-core Intel Xeon: 0.81 ms on two workers, 0.46 ms in the caller, of a
# 10.6 ms float8 call); MLA's merges (512-wide rows, 128 of them) stay on the workers.
MERGE_INLINE_ELEMENTS = 2**20


def merge_workers(n_workers: int, B: int, P: int, Hkv: int, GN: int, D: int) -> int:
    """How many workers merge (each with its own MergeScratch): 1 (the caller) for small partials."""
    return 1 if B * P * Hkv * GN * D <= MERGE_INLINE_ELEMENTS else max(1, min(n_workers, B))


def workers(device, items: int) -> int:
    if torch.device(device).type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), items))


@dataclass(frozen=True)
class Ctx:
    q: torch.Tensor  # (B, Hkv, G·Nq, D), a view of the input q
    c: float  # scale·log2(e)
    k_cache: torch.Tensor  # contiguous (B, Hkv, Nmax, D) | paged pool (num_pages, Hkv, ps, D)
    v_cache: torch.Tensor
    lens: list  # kv_lens on the host
    counts: list  # partitions per sequence
    out: torch.Tensor  # (B, Hkv, G·Nq, D) in q's dtype
    o_part: torch.Tensor  # (B, P, Hkv, G·Nq, D) partial outputs, unnormalised
    m_part: torch.Tensor  # (B, P, Hkv, 1, G·Nq) partial row maxima (log2 units), −inf = unused
    l_part: torch.Tensor  # (B, P, Hkv, G·Nq) partial row sums
    G: int
    Nq: int
    part: int
    ps: int  # page size, 0 when contiguous
    sinks2: torch.Tensor | None = None  # (Hkv, 1, G·Nq) sink logits · log2(e); None = no sinks
    # the C step (c_partitions.index_fields): element offsets of pages | partitions, elements
    # between heads and between tokens, the cache's kernel code, per-head scales, blocked variant
    offs: torch.Tensor | None = None
    head_stride: int = 0
    row_stride: int = 0
    dt: int = 0
    blocked: bool = False
    q_c: torch.Tensor | None = None  # (B, Hkv, G·Nq, D) contiguous, unscaled
    # per-head factors of the scores and the partial outputs (C: the float8 scale over the
    # kernel's read factor, see c_partitions.head_scales; torch: the float8 scale, None for other
    # caches)
    kscale: torch.Tensor | None = None
    vscale: torch.Tensor | None = None
    # the torch step (torch_partitions.index_fields)
    k_rows: torch.Tensor | None = None  # paged: the pool viewed (num_pages·Hkv, ps·D), one row per (page, head)
    v_rows: torch.Tensor | None = None
    row_idx: torch.Tensor | None = None  # (B, Hkv, max_pages) int64: pool row of (sequence, head, page)
    v_tok: torch.Tensor | None = None  # embedding_bag: the V cache viewed (tokens, D), one row per cached token
    bag_base: torch.Tensor | None = None  # embedding_bag, (B, Hkv, 1) contiguous | (B, Hkv, max_pages): v_tok
    # row of token 0 of (sequence, head) | of slot 0 of (sequence, head, page)
    slots: torch.Tensor | None = None  # embedding_bag: arange(ps) paged | arange(Nmax) contiguous
    k_tok: torch.Tensor | None = None  # embedding_bag, paged: the K pool viewed (tokens, D)
    ones: torch.Tensor | None = None  # embedding_bag, paged: offsets of one-row bags, arange(Hkv·(part + ps))
    block_table: torch.Tensor | None = None  # the MLA torch step reads pages through it


def sink_rows(sinks, Hkv: int, G: int, Nq: int):
    """(Hkv, 1, G·Nq) sink logits in log2 units, row g·Nq + i of kv head h = query head h·G + g;
    None without sinks (a small op: Hq·Nq elements)."""
    if sinks is None:
        return None
    return (sinks.float().view(Hkv, G, 1).expand(Hkv, G, Nq).reshape(Hkv, 1, G * Nq) * LOG2E).contiguous()


def run_split(ctx, device, step, new_scratch, acc, worker_step=None, workers_merge: bool = False) -> None:
    """Every partition of every sequence on the workers (`step(ctx, scratch, b, p)`, each worker
    with its `new_scratch()`), then each sequence's merge into ctx.out. Longest partitions first
    (work_plan.ordered_items). With `worker_step(ctx, scratch, work, heads_per_item, lens, taken,
    merge)` instead of `step` (the C step) each worker takes its items from the shared list of
    the layout's work plan itself, in one call, and with `workers_merge` the worker that
    finishes a sequence's last item merges it (into ctx.out; float32 out only). The caller's
    thread allocates every buffer (thread_pool.run_parallel: inline for one worker)."""
    B, lens = len(ctx.lens), ctx.lens
    n_workers = workers(device, sum(ctx.counts))
    scratch = [new_scratch() for _ in range(n_workers)]
    if worker_step is None:
        items = ordered_items(lens, ctx.part)
        run_parallel(items, scratch, lambda scr, item: step(ctx, scr, *item))
    else:
        wp = plan(tuple(lens), ctx.part, ctx.o_part.shape[2], n_workers)
        taken, left = wp.counters()
        in_c = (left, wp.counts) if workers_merge else None
        run_shares(scratch, lambda scr: worker_step(ctx, scr, wp.work, wp.heads_per_item, wp.lens, taken, in_c))
        del taken, left, in_c
    del scratch
    if workers_merge:
        return
    _, P, Hkv, GN, Dv = ctx.o_part.shape
    merges = [MergeScratch(P, Hkv, GN, Dv, acc, device) for _ in range(merge_workers(n_workers, B, P, Hkv, GN, Dv))]
    run_parallel(range(B), merges, lambda mrg, b: merge(ctx, mrg, b))


class MergeScratch:
    """One worker's merge buffers (caller-allocated, like every buffer of a call: see
    thread_pool.run_parallel). P = the most partitions of any sequence."""

    def __init__(self, P: int, Hkv: int, GN: int, D: int, acc, device):
        opts = dict(dtype=acc, device=device)
        self.big_m = torch.empty(Hkv, 1, GN, **opts)
        self.w = torch.empty(P, Hkv, 1, GN, **opts)
        self.num = torch.empty(Hkv, GN, D, **opts)
        self.den = torch.empty(Hkv, GN, **opts)
        self.sink = torch.empty(Hkv, 1, GN, **opts)  # the sink's weight


def merge_bytes(P: int, Hkv: int, GN: int, D: int, acc_bytes: int) -> int:
    """Bytes of one _MergeScratch."""
    return acc_bytes * (Hkv * GN + P * Hkv * GN + Hkv * GN * D + 2 * Hkv * GN)


def merges_bytes(n_workers: int, B: int, P: int, Hkv: int, GN: int, D: int, acc_bytes: int) -> int:
    """Bytes of the merge buffers of a call (one MergeScratch per merging worker), for the
    memory models (passed to them: they are imported by this module)."""
    return merge_workers(n_workers, B, P, Hkv, GN, D) * merge_bytes(P, Hkv, GN, D, acc_bytes)


def merge(ctx, mrg: MergeScratch, b: int) -> None:
    """out[b] from sequence b's partitions, merged by log-sum-exp (scores in log2 units), a sink
    logit (ctx.sinks2) one more term of the denominator; the partials are scaled in place (they
    are this call's own buffers)."""
    P = ctx.counts[b]
    m = ctx.m_part[b, :P]  # (P, Hkv, 1, G·Nq); −inf where a row saw no key of a partition
    torch.amax(m, dim=0, out=mrg.big_m)  # (Hkv, 1, G·Nq), finite: every row sees key 0
    if ctx.sinks2 is not None:
        torch.maximum(mrg.big_m, ctx.sinks2, out=mrg.big_m)
    w = torch.sub(m, mrg.big_m, out=mrg.w[:P]).exp2_().squeeze(2)  # (P, Hkv, G·Nq)
    torch.sum(ctx.l_part[b, :P].mul_(w), dim=0, out=mrg.den)  # (Hkv, G·Nq)
    if ctx.sinks2 is not None:  # the sink's weight 2^(sink − M): in the denominator only
        mrg.den.add_(torch.sub(ctx.sinks2, mrg.big_m, out=mrg.sink).exp2_().squeeze(1))
    torch.sum(ctx.o_part[b, :P].mul_(w.unsqueeze(-1)), dim=0, out=mrg.num)  # (Hkv, G·Nq, D)
    ctx.out[b].copy_(mrg.num.div_(mrg.den.unsqueeze(-1)))
