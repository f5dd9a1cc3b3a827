"""Flash-Decoding in PyTorch: split-KV attention for decode (Dao, Haziza, Massa, Sizov 2023,
"Flash-Decoding for long-context inference"; the log-sum-exp merge of Rabe & Staats 2021 and
FlashAttention, Dao et al. 2022).

A decode step has few query rows (Nq per sequence), so parallelising over queries, as prefill
kernels do, leaves the machine idle. Flash-Decoding splits each sequence's cache into partitions
of `partition` tokens, processed in parallel: each yields a partial output o_p (unnormalised),
its row maximum m_p and row sum l_p; a final reduction merges them exactly:
    M = max_p m_p,  out = Σ_p 2^(m_p − M)·o_p / Σ_p 2^(m_p − M)·l_p      (scores in log2 units).

Reading the cache (every K and V byte once). Scores: K·qᵀ as one bmm per partition over the Hkv
heads, the G query heads of a kv head stacked as its G·Nq columns (SDPA with enable_gqa expands K/V
to every query head instead); contiguous K is a view of the cache, paged K is gathered head-major
through the block table (never the whole pool). Values, full precision on the CPU: o = Σ_j p_j·V_j
as torch's embedding_bag (FBGEMM) with the probabilities as per-sample weights, one bag per (kv
head, query row), reading V's token rows straight from the cache or the page pool -- no gathered
copy of V, and faster than BLAS's skinny p·V matmul here. Low precision and CUDA: p·V by bmm over
float32 copies / gathered pages. Ragged batches: partitions follow each sequence's own length, so
work tracks total tokens, not batch x longest sequence.

On the CPU the partitions, then the per-sequence merges, are handed to `torch.get_num_threads()`
worker threads running single-threaded torch ops (implementations/_shared/thread_pool.py, as flash:
per-op OpenMP barriers stall under load). The caller runs only small ops: a large one would wake
its OpenMP team, whose threads spin-wait afterwards on the cores the workers need. On CUDA one
thread issues everything in order.

Attention sinks join the merge: a sink logit is one more term of the log-sum-exp, a weight in the
denominator and none in the numerator. A low-precision cache (bfloat16, float8 e4m3 with a scale
per tensor or per kv head) is read in its stored type by the C kernel (converted in registers);
the torch step copies each partition to float32 and folds the float8 scales into q and the
partial output.

CPU float32 queries: a C kernel per partition (`cpu_decode.c`, built on first use by `kernel_build.py`).
Through torch the partition is two skinny matmuls that BLAS runs compute-bound at about half the
streaming-read rate of a core, plus a gathered copy of K when paged (measured on a shared 2-core
AMD EPYC, 1 thread, B=8, Hq=32, Hkv=8, D=128, KV=8192: K·qᵀ ~10 GB/s, p·V ~9-10 GB/s, a plain
sum ~19 GB/s, the K page gather ~0.3-0.4 ms of a ~1.1 ms partition); the kernel reads each K and V
row once, in order, pages in place, with its dot products in registers. The partitioning, the
block table, the worker pool and the merge stay in PyTorch, as does every other dtype and device;
`flash_decoding_torch` is the same algorithm with the torch partition step everywhere, to compare
against and for machines without a C compiler (where `flash_decoding`'s CPU float32 cases are
skipped with the reason, never silently run another way).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from harness.registry import YES, Support, no, register_decode
from implementations._shared.contract import LOG2E, compute_dtype, default_scale
from implementations._shared.decode_contract import check_decode_args
from implementations._shared.thread_pool import run_parallel
from implementations.flash_decoding import c_partitions, kernel_build, torch_partitions

# Tokens per partition. One partition = one work item: Hkv·part·D·2 elements of K and V (8 MiB in
# fp32 at Hkv=8, D=128), so the per-item Python work costs a few % of its streaming time; the
# score tiles (G·Nq·part) stay in L2. Measured with 2 threads on a shared 2-core AMD EPYC (B=8,
# Hq=32, Hkv=8, D=128, KV=8192, fp32), torch step per CPU-second: 512 14.3, 1024 15.2, 2048 14.9,
# 4096 14.0 GB/s; C step: 256 33.1, 512 29.8, 1024 28.2, 2048 27.7 ms. By default a call with fewer
# partitions than workers halves it (to MIN_AUTO_PARTITION at the least), so a short cache of a
# small batch still occupies every worker (B=1, KV=1024, 2 threads, 80 interleaved calls: median
# 1.00 ms at 512 vs 1.14 ms at 1024; 256: 1.04 ms).
PARTITION = 1024
MIN_AUTO_PARTITION = 256


def partition_for(partition: int | None, lens, page_size: int, workers: int) -> int:
    """Tokens per partition: `partition` when given, else PARTITION halved while the batch would
    make fewer partitions than `workers`; a whole number of pages when paged."""
    if partition is None:
        partition = PARTITION
        while partition > MIN_AUTO_PARTITION and sum(-(-n // partition) for n in lens) < workers:
            partition //= 2
    return torch_partitions.part_len(partition, page_size)


def _case_partition(case, partition: int | None) -> int:
    workers = (case.threads or os.cpu_count() or 1) if case.device == "cpu" else 1
    lens = case.kv_lens or (case.seq_len_kv,) * case.batch
    return partition_for(partition, lens, case.page_size if case.kv_layout == "paged" else 0, workers)


def _workers(device, items: int) -> int:
    if torch.device(device).type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), items))


def _memory_model(case, partition: int | None = None) -> int:
    if _runs_c(case):
        return c_partitions.memory_model(case, _case_partition(case, partition), merge_bytes)
    return torch_partitions.memory_model(case, _case_partition(case, partition), merge_bytes)


def _memory_model_torch(case, partition: int | None = None) -> int:
    return torch_partitions.memory_model(case, _case_partition(case, partition), merge_bytes)


def _runs_c(case) -> bool:
    """Does flash_decoding run `case` with the C kernel (float32 queries on the CPU, any cache)?"""
    return case.device == "cpu" and case.dtype == "float32"


FORMS = ("sinks", "scale", "kv_bfloat16", "kv_float8_e4m3fn")


def _c_supports(case) -> Support:
    """flash_decoding's CPU float32 cases need the C kernel; elsewhere it runs torch ops."""
    if _runs_c(case):
        why = kernel_build.unavailable_reason()
        if why:
            return no(f"its CPU float32 partitions are a C kernel that cannot be built here ({why}); "
                      "flash_decoding_torch runs without one")
    return YES


@dataclass(frozen=True)
class _Ctx:
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
    # per-head factors of the scores and the partial outputs (C: float8 scale · 2^120; torch:
    # the float8 scale, None for other caches)
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


def _decode(q, k_cache, v_cache, kv_lens, block_table, scale, partition: int | None, c_kernel: bool,
            sinks=None, k_scale=None, v_scale=None):
    dims = check_decode_args(q, k_cache, v_cache, kv_lens, block_table, scale, sinks=sinks, k_scale=k_scale,
                             v_scale=v_scale)
    if partition is not None and (not isinstance(partition, int) or partition < 1):
        raise ValueError(f"partition must be a positive int (or None: automatic), got {partition!r}")
    B, Hq, Nq, D = q.shape
    Hkv, G = dims.heads_kv, dims.group
    GN = G * Nq
    acc = compute_dtype(q.dtype)
    lens = [int(x) for x in kv_lens.tolist()]
    if any(n < Nq for n in lens):
        raise ValueError(f"kv_lens {lens} must all be >= the {Nq} query tokens")
    part = partition_for(partition, lens, dims.page_size, _workers(q.device, sum(lens)))
    counts = [-(-n // part) for n in lens]
    P = max(counts)
    opts = dict(dtype=acc, device=q.device)
    # Only small ops here (below ATen's parallel grain): a large op would run on the caller's
    # OpenMP team, whose threads then spin-wait on the cores the workers need (measured: +50% CPU).
    # Scaling q, the bag indices and the merge run in the workers.
    if c_kernel:
        k_cache, v_cache = k_cache.contiguous(), v_cache.contiguous()  # views of the inputs as given
        fields = c_partitions.index_fields(q, k_cache, block_table, dims, part, k_scale=k_scale, v_scale=v_scale)
    else:
        fields = torch_partitions.index_fields(q, k_cache, v_cache, block_table, dims, part)
        fields.update(torch_partitions.head_scales(k_scale, v_scale, Hkv))
    ctx = _Ctx(
        q=q.reshape(B, Hkv, GN, D),  # a view: query head h·G + g, token i is row g·Nq + i of kv head h
        c=default_scale(D, scale) * LOG2E,  # softmax(x·scale) = 2^(x·c − max) / Σ
        k_cache=k_cache,
        v_cache=v_cache,
        lens=lens,
        counts=counts,
        out=torch.empty(B, Hkv, GN, D, dtype=q.dtype, device=q.device),
        o_part=torch.empty(B, P, Hkv, GN, D, **opts),  # (B, P, Hkv, G·Nq, D); only p < counts[b] is used
        m_part=torch.empty(B, P, Hkv, 1, GN, **opts),  # (B, P, Hkv, 1, G·Nq)
        l_part=torch.empty(B, P, Hkv, GN, **opts),  # (B, P, Hkv, G·Nq)
        G=G,
        Nq=Nq,
        part=part,
        ps=dims.page_size,
        sinks2=sink_rows(sinks, Hkv, G, Nq),
        **fields,
    )
    # Longest partitions first (all are `part` long but each sequence's last), so the short tails
    # of a ragged batch fill in at the end and the workers finish together.
    items = sorted(((b, p) for b in range(B) for p in range(counts[b])),
                   key=lambda it: -(min((it[1] + 1) * part, lens[it[0]]) - it[1] * part))
    n_workers = _workers(q.device, len(items))
    # the caller allocates the workers' buffers; then the partitions, then the merge of each
    # sequence (thread_pool.run_parallel: inline for one worker)
    if c_kernel:
        scratch = [c_partitions.Scratch(ctx) for _ in range(n_workers)]
        run_parallel(items, scratch, lambda scr, item: c_partitions.partition(ctx, scr, *item))
    else:
        scratch = [torch_partitions.Scratch(ctx, k_cache.dtype != acc, acc) for _ in range(n_workers)]
        run_parallel(items, scratch, lambda scr, item: torch_partitions.partition(ctx, scr, *item))
    merges = [_MergeScratch(P, Hkv, GN, D, acc, q.device) for _ in range(min(n_workers, B))]
    run_parallel(range(B), merges, lambda mrg, b: merge(ctx, mrg, b))
    return ctx.out.view(B, Hq, Nq, D)


def sink_rows(sinks, Hkv: int, G: int, Nq: int):
    """(Hkv, 1, G·Nq) sink logits in log2 units, row g·Nq + i of kv head h = query head h·G + g;
    None without sinks (a small op: Hq·Nq elements)."""
    if sinks is None:
        return None
    return (sinks.float().view(Hkv, G, 1).expand(Hkv, G, Nq).reshape(Hkv, 1, G * Nq) * LOG2E).contiguous()


@register_decode(
    "flash_decoding",
    layouts=("contiguous", "paged"),
    devices=("cpu", "cuda"),
    dtypes=("float32", "float16", "bfloat16"),
    supports=_c_supports,
    memory_model=_memory_model,
    description="Flash-Decoding: split-KV partitions merged by log-sum-exp, paged via the block table "
                "(CPU float32 partitions: a C kernel reading float32, bfloat16 and float8 caches; elsewhere "
                "torch ops)",
    params={"partition": f"auto: {PARTITION}, halved to >= {MIN_AUTO_PARTITION} while fewer partitions than threads"},
    forms=FORMS,
)
def flash_decoding(q, k_cache, v_cache, *, kv_lens, block_table=None, scale=None, sinks=None, k_scale=None,
                   v_scale=None, partition: int | None = None):
    use_c = q.device.type == "cpu" and q.dtype == torch.float32
    return _decode(q, k_cache, v_cache, kv_lens, block_table, scale, partition, use_c, sinks, k_scale, v_scale)


@register_decode(
    "flash_decoding_torch",
    layouts=("contiguous", "paged"),
    devices=("cpu", "cuda"),
    dtypes=("float32", "float16", "bfloat16"),
    memory_model=_memory_model_torch,
    description="Flash-Decoding in torch ops only: the same split-KV algorithm, partitions as bmm + embedding_bag",
    params={"partition": f"auto: {PARTITION}, halved to >= {MIN_AUTO_PARTITION} while fewer partitions than threads"},
    forms=FORMS,
)
def flash_decoding_torch(q, k_cache, v_cache, *, kv_lens, block_table=None, scale=None, sinks=None, k_scale=None,
                         v_scale=None, partition: int | None = None):
    return _decode(q, k_cache, v_cache, kv_lens, block_table, scale, partition, False, sinks, k_scale, v_scale)


class _MergeScratch:
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


def merge(ctx, mrg: _MergeScratch, b: int) -> None:
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
