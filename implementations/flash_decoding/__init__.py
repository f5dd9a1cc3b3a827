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

import torch

from harness.registry import YES, Support, no, register_decode
from implementations._shared.contract import LOG2E, compute_dtype, default_scale
from implementations._shared.decode_contract import check_decode_args
from implementations.flash_decoding import c_partitions, kernel_build, torch_partitions
from implementations.flash_decoding.split import (
    C_PARTITION,
    MIN_AUTO_PARTITION,
    PARTITION,
    Ctx,
    merges_bytes,
    partition_for,
    run_split,
    sink_rows,
    workers,
)


def _case_partition(case, partition: int | None, default: int = PARTITION) -> int:
    workers = (case.threads or os.cpu_count() or 1) if case.device == "cpu" else 1
    lens = case.kv_lens or (case.seq_len_kv,) * case.batch
    return partition_for(partition, lens, case.page_size if case.kv_layout == "paged" else 0, workers, default)


def _memory_model(case, partition: int | None = None) -> int:
    if _runs_c(case):
        return c_partitions.memory_model(case, _case_partition(case, partition, C_PARTITION), merges_bytes,
                                         c_merge=True)
    return torch_partitions.memory_model(case, _case_partition(case, partition), merges_bytes)


def _memory_model_torch(case, partition: int | None = None) -> int:
    return torch_partitions.memory_model(case, _case_partition(case, partition), merges_bytes)


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
    default = C_PARTITION if c_kernel else PARTITION
    part = partition_for(partition, lens, dims.page_size, workers(q.device, sum(lens)), default)
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
    ctx = Ctx(
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
    if c_kernel:
        run_split(ctx, q.device, None, lambda: c_partitions.Scratch(ctx), acc,
                  worker_step=c_partitions.worker_partitions, workers_merge=True)
    else:
        upcast = k_cache.dtype != acc
        run_split(ctx, q.device, torch_partitions.partition, lambda: torch_partitions.Scratch(ctx, upcast, acc), acc)
    return ctx.out.view(B, Hq, Nq, D)


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
    params={"partition": f"auto: {C_PARTITION} (C kernel; {PARTITION} with torch ops), halved to >= "
                         f"{MIN_AUTO_PARTITION} while fewer partitions than threads"},
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


from implementations.flash_decoding import mla  # noqa: E402,F401  registers the MLA decode path (after "flash_decoding")
