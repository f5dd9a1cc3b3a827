"""Flash-Decoding in PyTorch: split-KV attention for decode (Dao, Haziza, Massa, Sizov 2023,
"Flash-Decoding for long-context inference"; the log-sum-exp merge of Rabe & Staats 2021 and
FlashAttention, Dao et al. 2022).

A decode step has few query rows (Nq per sequence), so parallelising over queries, as prefill
kernels do, leaves the machine idle. Flash-Decoding splits each sequence's cache into partitions
of `partition` tokens, processed in parallel: each yields a partial output o_p (unnormalised),
its row maximum m_p and row sum l_p; a final reduction merges them exactly:
    M = max_p m_p,  out = Σ_p 2^(m_p − M)·o_p / Σ_p 2^(m_p − M)·l_p      (scores in log2 units).

Reading the cache: a contiguous partition is a view of the cache; a paged partition reads its
pages through the block table with one index_select into a per-worker buffer -- never the whole
cache. GQA: the G query heads of a kv head are stacked as rows of one matmul, so every K/V page
is read once for all of them (SDPA with enable_gqa expands K/V to every query head instead).
Ragged batches: partitions follow each sequence's own length, so work tracks total tokens, not
batch x longest sequence.

On the CPU the partitions are handed to `torch.get_num_threads()` worker threads running
single-threaded torch ops (the idea of implementations/flash.py's pool: per-op OpenMP barriers on
tiny ops stall under load); on CUDA one thread issues them in order.
"""

from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass

import torch

from harness.registry import register_decode
from implementations._common import LOG2E, compute_dtype, default_scale
from implementations._decode import check_decode_args

# Tokens per partition. On a shared 2-core AMD EPYC (B=8, Hq=32, Hkv=8, D=128, KV=8192, fp32)
# 256, 512 and 1024 were within the run-to-run noise (±25% under other load); 1024 keeps the
# Python cost per token low and still gives 64 partitions to balance over the workers.
PARTITION = 1024


def _workers(device, items: int) -> int:
    if torch.device(device).type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), items))


def _part_len(partition: int, page_size: int) -> int:
    """Partition length; a whole number of pages when paged, so partitions never share a page."""
    if page_size:
        return max(page_size, partition // page_size * page_size)
    return partition


def _memory_model(case, partition: int = PARTITION) -> int:
    B, Hq, Hkv, Nq, D = case.batch, case.heads_q, case.heads_kv, case.seq_len_q, case.head_dim
    part = _part_len(partition, case.page_size if case.kv_layout == "paged" else 0)
    P = -(-case.seq_len_kv // part)
    lens = case.kv_lens or (case.seq_len_kv,) * B
    items = sum(-(-n // part) for n in lens)
    GN = Hq // Hkv * Nq
    partials = 4 * B * P * Hkv * GN * (2 * D + 2)  # o, m, l and the weighted o of the merge
    per_worker = 4 * Hkv * GN * part  # score tile
    if case.kv_layout == "paged":
        per_worker += 2 * case.element_bytes * Hkv * (part + case.page_size) * D  # gathered pages
    if case.dtype != "float32":
        per_worker += 2 * 4 * Hkv * part * D  # float32 k/v copies
    workers = 1 if case.device != "cpu" else max(1, min(case.threads or os.cpu_count() or 1, items))
    small = 4 * B * Hq * Nq * D * 2 + case.element_bytes * B * Hq * Nq * D  # scaled q, merge, out
    return partials + workers * per_worker + small


@dataclass(frozen=True)
class _Ctx:
    qg: torch.Tensor  # (B, Hkv, G·Nq, D), float32/64, pre-scaled by scale·log2(e)
    k_cache: torch.Tensor  # contiguous (B, Hkv, Nmax, D) | paged pool (num_pages, Hkv, ps, D)
    v_cache: torch.Tensor
    k_rows: torch.Tensor | None  # paged: the pool viewed (num_pages·Hkv, ps·D), one row per (page, head)
    v_rows: torch.Tensor | None
    row_idx: torch.Tensor | None  # (B, Hkv, max_pages) int64: pool row of (sequence, head, page)
    lens: list  # kv_lens on the host
    o_part: torch.Tensor  # (B, P, Hkv, G·Nq, D) partial outputs, unnormalised
    m_part: torch.Tensor  # (B, P, Hkv, 1, G·Nq) partial row maxima (log2 units), −inf = unused
    l_part: torch.Tensor  # (B, P, Hkv, 1, G·Nq) partial row sums
    G: int
    Nq: int
    part: int
    ps: int  # page size, 0 when contiguous


class _Scratch:
    """One worker's buffers; a shorter partition uses a prefix view."""

    def __init__(self, ctx: _Ctx, upcast: bool, acc):
        B, Hkv, GN, D = ctx.qg.shape
        dev = ctx.qg.device
        self.s = torch.empty(Hkv * GN * ctx.part, dtype=acc, device=dev)  # scores / probabilities
        self.pages = None
        if ctx.ps:
            n = Hkv * ctx.part * D
            self.pages = torch.empty(2, n, dtype=ctx.k_cache.dtype, device=dev)  # gathered k, v pages
        self.kv32 = torch.empty(2, Hkv * ctx.part * D, dtype=acc, device=dev) if upcast else None


def _partition(ctx: _Ctx, scr: _Scratch, b: int, p: int) -> None:
    """Partial attention of sequence b over cached tokens [p·part, min((p+1)·part, L))."""
    L = ctx.lens[b]
    j0, j1 = p * ctx.part, min((p + 1) * ctx.part, L)
    n = j1 - j0
    _, Hkv, GN, D = ctx.qg.shape
    if ctx.ps:  # read this partition's pages through the block table, nothing else
        p0, p1 = j0 // ctx.ps, -(-j1 // ctx.ps)
        np_ = p1 - p0
        rows = ctx.row_idx[b, :, p0:p1].reshape(-1)  # (Hkv·np,) head-major: h·np + page
        kb = scr.pages[0, : Hkv * np_ * ctx.ps * D].view(Hkv * np_, ctx.ps * D)
        vb = scr.pages[1, : Hkv * np_ * ctx.ps * D].view(Hkv * np_, ctx.ps * D)
        # one contiguous-row gather lands the pages head-major: (Hkv, np·ps, D) with no permute
        # (index_select along dim 1 of a transposed pool view copies the whole pool on torch 2.13)
        torch.index_select(ctx.k_rows, 0, rows, out=kb)  # (Hkv·np, ps·D)
        torch.index_select(ctx.v_rows, 0, rows, out=vb)
        k = kb.view(Hkv, np_ * ctx.ps, D)[:, :n]  # (Hkv, n, D)
        v = vb.view(Hkv, np_ * ctx.ps, D)[:, :n]
    else:
        k = ctx.k_cache[b, :, j0:j1]  # (Hkv, n, D), a view
        v = ctx.v_cache[b, :, j0:j1]
    if scr.kv32 is not None:  # low precision: float32 copies so both matmuls accumulate in fp32
        k = scr.kv32[0, : Hkv * n * D].view(Hkv, n, D).copy_(k)
        v = scr.kv32[1, : Hkv * n * D].view(Hkv, n, D).copy_(v)
    # Scores as K·qᵀ, (Hkv, n, G·Nq): the cache is the streamed row-major operand, which BLAS
    # runs about 2x faster than q·Kᵀ for G·Nq ≈ 4 rows (measured, 1 thread, fp32).
    s = scr.s[: Hkv * n * GN].view(Hkv, n, GN)  # (Hkv, n, G·Nq)
    torch.bmm(k, ctx.qg[b].transpose(1, 2), out=s)  # scores · scale · log2(e)
    m = ctx.m_part[b, p]  # (Hkv, 1, G·Nq)
    last = L - ctx.Nq  # query i sees key j iff j <= i + last
    if j1 - 1 > last:  # the partition holds keys some queries may not see yet
        i = torch.arange(ctx.Nq, device=s.device).view(1, 1, ctx.Nq)  # (1, 1, Nq)
        j = torch.arange(j0, j1, device=s.device).view(n, 1, 1)  # (n, 1, 1)
        s.view(Hkv, n, ctx.G, ctx.Nq).masked_fill_(j > i + last, float("-inf"))
        torch.amax(s, dim=1, keepdim=True, out=m)
        # a row that sees no key of this partition keeps m = −inf (weight 0 in the merge); shift
        # it by the lowest finite value so its probabilities are 0, not NaN
        s.sub_(m.clamp_min(torch.finfo(s.dtype).min))
    else:
        torch.amax(s, dim=1, keepdim=True, out=m)
        s.sub_(m)
    s.exp2_()  # p = 2^(s − m)
    torch.sum(s, dim=1, keepdim=True, out=ctx.l_part[b, p])  # (Hkv, 1, G·Nq)
    torch.bmm(s.transpose(1, 2), v, out=ctx.o_part[b, p])  # (Hkv, G·Nq, D)


@register_decode(
    "flash_decoding",
    layouts=("contiguous", "paged"),
    devices=("cpu", "cuda"),
    dtypes=("float32", "float16", "bfloat16"),
    memory_model=_memory_model,
    description="Flash-Decoding in PyTorch: split-KV partitions merged by log-sum-exp, paged via the block table",
    params={"partition": PARTITION},
)
def flash_decoding(q, k_cache, v_cache, *, kv_lens, block_table=None, scale=None, partition: int = PARTITION):
    dims = check_decode_args(q, k_cache, v_cache, kv_lens, block_table, scale)
    if partition < 1:
        raise ValueError(f"partition must be positive, got {partition}")
    B, Hq, Nq, D = q.shape
    Hkv, G = dims.heads_kv, dims.group
    GN = G * Nq
    acc = compute_dtype(q.dtype)
    lens = [int(x) for x in kv_lens.tolist()]
    if any(n < Nq for n in lens):
        raise ValueError(f"kv_lens {lens} must all be >= the {Nq} query tokens")
    part = _part_len(partition, dims.page_size)
    counts = [-(-n // part) for n in lens]
    P = max(counts)
    opts = dict(dtype=acc, device=q.device)
    c = default_scale(D, scale) * LOG2E  # softmax(x·scale) = 2^(x·c − max) / Σ
    ctx = _Ctx(
        qg=(q.reshape(B, Hkv, GN, D).to(acc) * c).contiguous(),  # (B, Hkv, G·Nq, D), a copy
        k_cache=k_cache,
        v_cache=v_cache,
        k_rows=k_cache.reshape(-1, dims.page_size * D) if dims.paged else None,  # (pages·Hkv, ps·D)
        v_rows=v_cache.reshape(-1, dims.page_size * D) if dims.paged else None,
        row_idx=_row_index(block_table, Hkv) if dims.paged else None,  # (B, Hkv, max_pages)
        lens=lens,
        o_part=torch.zeros(B, P, Hkv, GN, D, **opts),  # (B, P, Hkv, G·Nq, D)
        m_part=torch.full((B, P, Hkv, 1, GN), float("-inf"), **opts),  # (B, P, Hkv, 1, G·Nq)
        l_part=torch.zeros(B, P, Hkv, 1, GN, **opts),  # (B, P, Hkv, 1, G·Nq)
        G=G,
        Nq=Nq,
        part=part,
        ps=dims.page_size,
    )
    # Longest sequences' partitions first is not needed: all partitions are the same size but
    # the last of each sequence; hand them out in order.
    items = [(b, p) for b in range(B) for p in range(counts[b])]
    n_workers = _workers(q.device, len(items))
    scratch = [_Scratch(ctx, q.dtype != acc, acc) for _ in range(n_workers)]  # caller allocates
    if n_workers == 1:
        for b, p in items:
            _partition(ctx, scratch[0], b, p)
    else:
        todo = iter(items)
        lock = threading.Lock()

        def worker(scr):
            with torch.no_grad():
                while True:
                    with lock:
                        item = next(todo, None)
                    if item is None:
                        return
                    _partition(ctx, scr, *item)

        _pool(torch.get_num_threads()).run([lambda s=s: worker(s) for s in scratch])
    # Merge the partitions by log-sum-exp; unused ones have m = −inf, hence weight 0.
    big_m = ctx.m_part.amax(dim=1, keepdim=True)  # (B, 1, Hkv, 1, G·Nq), finite: every row sees a key
    w = torch.exp2(ctx.m_part - big_m).transpose(-1, -2)  # (B, P, Hkv, G·Nq, 1)
    num = (ctx.o_part * w).sum(dim=1)  # (B, Hkv, G·Nq, D)
    den = (ctx.l_part.transpose(-1, -2) * w).sum(dim=1)  # (B, Hkv, G·Nq, 1)
    return (num / den).view(B, Hq, Nq, D).to(q.dtype)  # (B, Hq, Nq, D)


def _row_index(block_table, Hkv: int):
    """(B, Hkv, max_pages) int64: row page·Hkv + h of the pool viewed (num_pages·Hkv, ps·D);
    unused entries (-1) point at row 0 and are never read."""
    pages = block_table.long().clamp_min(0).unsqueeze(1)  # (B, 1, P)
    heads = torch.arange(Hkv, device=block_table.device).view(1, Hkv, 1)  # (1, Hkv, 1)
    return pages * Hkv + heads  # (B, Hkv, P)


class _WorkerPool:
    """n daemon threads whose torch ops run single-threaded (set_num_threads is per thread under
    OpenMP); `run` hands each callable to a worker and waits for all (as in flash.py)."""

    def __init__(self, n: int):
        self.n, self.pid = n, os.getpid()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        ready = threading.Barrier(n + 1)
        for i in range(n):
            threading.Thread(target=self._serve, args=(ready,), daemon=True, name=f"fdec-{i}").start()
        caller_threads = torch.get_num_threads()
        ready.wait()
        torch.set_num_threads(caller_threads)  # the workers' set_num_threads(1) changed the default

    def _serve(self, ready: threading.Barrier) -> None:
        torch.get_num_threads()  # initialise this thread's OpenMP count before overriding it
        torch.set_num_threads(1)
        ready.wait()
        while True:
            job = self._jobs.get()
            if job is None:
                return
            job()

    def run(self, fns) -> list:
        futures = []
        for fn in fns:
            fut: Future = Future()

            def job(fn=fn, fut=fut):
                try:
                    fut.set_result(fn())
                except BaseException as exc:  # re-raised in the caller by fut.result()
                    fut.set_exception(exc)

            self._jobs.put(job)
            futures.append(fut)
        return [f.result() for f in futures]

    def close(self) -> None:
        for _ in range(self.n):
            self._jobs.put(None)


_POOL: _WorkerPool | None = None
_POOL_LOCK = threading.Lock()


def _pool(n: int) -> _WorkerPool:
    """The shared pool, rebuilt when the thread count changes or after a fork (threads are lost)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.n != n or _POOL.pid != os.getpid():
            if _POOL is not None and _POOL.pid == os.getpid():
                _POOL.close()
            _POOL = _WorkerPool(n)
        return _POOL
