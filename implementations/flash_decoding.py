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
worker threads running single-threaded torch ops (the idea of implementations/flash.py's pool:
per-op OpenMP barriers stall under load). The caller runs only small ops: a large one would wake
its OpenMP team, whose threads spin-wait afterwards on the cores the workers need. On CUDA one
thread issues everything in order.

Measured (shared 2-core AMD EPYC, torch 2.13 with MKL; B=8, Hq=32, Hkv=8, D=128, KV=8192, fp32;
bytes per CPU-second, 1 thread): contiguous ~17.8 GB/s, paged (page 16) ~11 GB/s, against ~38 GB/s
for a plain streaming sum and ~15-20 GB/s for MKL's skinny matmuls alone. Both matmuls are bound by
MKL's compute on these shapes, not by memory; paged pays one extra copy of K (a gather of 8 KiB
(page, head) slabs runs at ~16-19 GB/s per core), which is why it reaches ~0.6-0.65x of the
contiguous speed per CPU-second, short of 0.8x.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.registry import register_decode
from implementations._common import LOG2E, compute_dtype, default_scale
from implementations._decode import check_decode_args
from implementations.flash_pool import run_parallel

# Tokens per partition. One partition = one work item: Hkv·part·D·2 elements of K and V (8 MiB in
# fp32 at Hkv=8, D=128), so its ~10 Python-level ops cost a few % of its streaming time; the score
# and probability tiles (Hkv·G·Nq·part) stay in L2. Measured per CPU-second on a shared 2-core
# AMD EPYC (B=8, Hq=32, Hkv=8, D=128, KV=8192, fp32, 1 thread): 512 14.3, 1024 15.2, 2048 14.9,
# 4096 14.0 GB/s.
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


def _bag_v(dtype, device) -> bool:
    """V is read by embedding_bag (weighted sums of cache rows, straight from the cache or the page
    pool) for full-precision CPU inputs; elsewhere by a matmul (low precision needs float32 copies
    to accumulate in float32; embedding_bag's GPU kernel has no such advantage)."""
    return torch.device(device).type == "cpu" and dtype in (torch.float32, torch.float64)


def _memory_model(case, partition: int = PARTITION) -> int:
    B, Hq, Hkv, Nq, D = case.batch, case.heads_q, case.heads_kv, case.seq_len_q, case.head_dim
    paged = case.kv_layout == "paged"
    part = _part_len(partition, case.page_size if paged else 0)
    P = -(-case.seq_len_kv // part)
    lens = case.kv_lens or (case.seq_len_kv,) * B
    items = sum(-(-n // part) for n in lens)
    GN = Hq // Hkv * Nq
    acc = 8 if case.dtype == "float64" else 4
    partials = acc * B * P * Hkv * GN * (2 * D + 2)  # o, m, l and the weighted o of the merge
    bag = case.device == "cpu" and case.dtype in ("float32", "float64")
    per_worker = 2 * acc * Hkv * GN * part  # score and probability tiles
    if bag:
        per_worker += 4 * Hkv * GN * part + 4 * Hkv * (part + case.page_size) + acc * Hkv * GN * D  # int32 bag
        # indices, token rows, bag output
    if paged:  # gathered K pages (and V pages without embedding_bag)
        per_worker += (1 if bag else 2) * case.element_bytes * Hkv * (part + case.page_size) * D
    if case.dtype not in ("float32", "float64"):
        per_worker += 2 * 4 * Hkv * part * D  # float32 k/v copies
    workers = 1 if case.device != "cpu" else max(1, min(case.threads or os.cpu_count() or 1, items))
    per_worker += acc * Hkv * GN * D  # scaled q of one sequence
    small = acc * B * Hq * Nq * D * 2 + case.element_bytes * B * Hq * Nq * D  # merge, out
    if paged and bag:
        small += 4 * Hkv * (part + case.page_size)  # one-row bag offsets
    return partials + workers * per_worker + small


@dataclass(frozen=True)
class _Ctx:
    q: torch.Tensor  # (B, Hkv, G·Nq, D), a view of the input q
    c: float  # scale·log2(e)
    k_cache: torch.Tensor  # contiguous (B, Hkv, Nmax, D) | paged pool (num_pages, Hkv, ps, D)
    v_cache: torch.Tensor
    k_rows: torch.Tensor | None  # paged: the pool viewed (num_pages·Hkv, ps·D), one row per (page, head)
    v_rows: torch.Tensor | None
    row_idx: torch.Tensor | None  # (B, Hkv, max_pages) int64: pool row of (sequence, head, page)
    v_tok: torch.Tensor | None  # embedding_bag: the V cache viewed (tokens, D), one row per cached token
    bag_base: torch.Tensor | None  # embedding_bag, (B, Hkv, 1) contiguous | (B, Hkv, max_pages): v_tok
    # row of token 0 of (sequence, head) | of slot 0 of (sequence, head, page)
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
    slots: torch.Tensor | None  # embedding_bag: arange(ps) paged | arange(Nmax) contiguous
    k_tok: torch.Tensor | None  # embedding_bag, paged: the K pool viewed (tokens, D)
    ones: torch.Tensor | None  # embedding_bag, paged: offsets of one-row bags, arange(Hkv·(part + ps))


class _Scratch:
    """One worker's buffers; a shorter partition uses a prefix view."""

    def __init__(self, ctx: _Ctx, upcast: bool, acc):
        _, Hkv, GN, D = ctx.q.shape
        dev = ctx.q.device
        self.q = torch.empty(Hkv, GN, D, dtype=acc, device=dev)  # q of one sequence · scale·log2(e)
        self.s = torch.empty(Hkv * GN * ctx.part, dtype=acc, device=dev)  # scores (Hkv, n, G·Nq)
        self.p = torch.empty(Hkv * GN * ctx.part, dtype=acc, device=dev)  # probabilities (Hkv, G·Nq, n)
        self.idx = None
        if ctx.bag_base is not None:
            self.idx = torch.empty(Hkv * GN * ctx.part, dtype=ctx.bag_base.dtype, device=dev)  # bag rows
            self.tok = torch.empty(Hkv * (ctx.part + ctx.ps), dtype=ctx.bag_base.dtype, device=dev)
        self.pages = None
        if ctx.ps and self.idx is None:  # gathered K and V pages
            n = Hkv * ctx.part * D
            self.pages = torch.empty(2, n, dtype=ctx.k_cache.dtype, device=dev)
        self.kv32 = torch.empty(2, Hkv * ctx.part * D, dtype=acc, device=dev) if upcast else None


def _gather(rows, ctx: _Ctx, buf, b: int, p0: int, p1: int, n: int):
    """(Hkv, n, D): pages p0..p1 of sequence b gathered head-major into buf with one index_select
    of contiguous (page, head) rows (index_select along dim 1 of a transposed pool view copies the
    whole pool on torch 2.13)."""
    Hkv, D = ctx.q.shape[1], ctx.q.shape[3]
    np_ = p1 - p0
    idx = ctx.row_idx[b, :, p0:p1].reshape(-1)  # (Hkv·np,) head-major: h·np + page
    out = buf[: Hkv * np_ * ctx.ps * D].view(Hkv * np_, ctx.ps * D)
    torch.index_select(rows, 0, idx, out=out)  # (Hkv·np, ps·D)
    return out.view(Hkv, np_ * ctx.ps, D)[:, :n]


def _partition(ctx: _Ctx, scr: _Scratch, b: int, p: int) -> None:
    """Partial attention of sequence b over cached tokens [p·part, min((p+1)·part, L))."""
    L = ctx.lens[b]
    j0, j1 = p * ctx.part, min((p + 1) * ctx.part, L)
    n = j1 - j0
    _, Hkv, GN, D = ctx.q.shape
    bag = scr.idx is not None
    qg = scr.q.copy_(ctx.q[b]).mul_(ctx.c)  # (Hkv, G·Nq, D) · scale·log2(e), accumulation dtype
    v = None
    if ctx.ps:  # read this partition's pages through the block table, nothing else
        p0, p1 = j0 // ctx.ps, -(-j1 // ctx.ps)
        if bag:  # K's token rows gathered head-major by embedding_bag with one-row bags: FBGEMM's
            # prefetching copy beats index_select of (page, head) rows by ~8% overall (measured,
            # 1 thread, ps 16); its (Hkv·np·ps, D) output is the one allocation of an item
            np_ = p1 - p0
            tok = scr.tok[: Hkv * np_ * ctx.ps].view(Hkv, np_, ctx.ps)
            torch.add(ctx.bag_base[b, :, p0:p1].unsqueeze(-1), ctx.slots, out=tok)
            k = F.embedding_bag(tok.view(-1), ctx.k_tok, ctx.ones[: Hkv * np_ * ctx.ps], mode="sum")
            k = k.view(Hkv, np_ * ctx.ps, D)[:, :n]
        else:  # V is a matmul operand too: gather both
            k = _gather(ctx.k_rows, ctx, scr.pages[0], b, p0, p1, n)  # (Hkv, n, D)
            v = _gather(ctx.v_rows, ctx, scr.pages[1], b, p0, p1, n)
    else:
        k = ctx.k_cache[b, :, j0:j1]  # (Hkv, n, D), a view
        v = ctx.v_cache[b, :, j0:j1]
    if scr.kv32 is not None:  # low precision: float32 copies so both matmuls accumulate in fp32
        k = scr.kv32[0, : Hkv * n * D].view(Hkv, n, D).copy_(k)
        v = scr.kv32[1, : Hkv * n * D].view(Hkv, n, D).copy_(v)
    # Scores as K·qᵀ, (Hkv, n, G·Nq): the cache is the streamed row-major operand, which BLAS
    # runs about 2x faster than q·Kᵀ for G·Nq ≈ 4 rows (measured, 1 thread, fp32).
    s = scr.s[: Hkv * n * GN].view(Hkv, n, GN)  # (Hkv, n, G·Nq)
    torch.bmm(k, qg.transpose(1, 2), out=s)  # scores · scale · log2(e)
    # Probabilities laid out (Hkv, G·Nq, n): rows contiguous for the V side and for the row max
    # (amax along the middle axis of the (Hkv, n, G·Nq) scores runs ~10x slower, measured)
    pr = scr.p[: Hkv * GN * n].view(Hkv, GN, n)
    pr.copy_(s.transpose(1, 2))
    m = ctx.m_part[b, p].view(Hkv, GN, 1)  # (Hkv, G·Nq, 1)
    last = L - ctx.Nq  # query i sees key j iff j <= i + last
    if j1 - 1 > last:  # the partition holds keys some queries may not see yet
        i = torch.arange(ctx.Nq, device=s.device).view(1, 1, ctx.Nq, 1)  # (1, 1, Nq, 1)
        j = torch.arange(j0, j1, device=s.device).view(1, 1, 1, n)  # (1, 1, 1, n)
        pr.view(Hkv, ctx.G, ctx.Nq, n).masked_fill_(j > i + last, float("-inf"))
        torch.amax(pr, dim=2, keepdim=True, out=m)
        # a row that sees no key of this partition keeps m = −inf (weight 0 in the merge); shift
        # it by the lowest finite value so its probabilities are 0, not NaN
        pr.sub_(m.clamp_min(torch.finfo(s.dtype).min))
    else:
        torch.amax(pr, dim=2, keepdim=True, out=m)
        pr.sub_(m)
    pr.exp2_()  # p = 2^(s − m)
    torch.sum(pr, dim=2, out=ctx.l_part[b, p])  # (Hkv, G·Nq)
    o = ctx.o_part[b, p]  # (Hkv, G·Nq, D)
    if bag:
        # o[h, r] = Σ_j p[h, r, j]·V[row(h, j)]: one bag per (head, query row), read straight from
        # the cache or the page pool (no gathered copy of V); FBGEMM's kernel streams the rows
        # faster than BLAS runs the skinny p·V matmul (measured, 1 thread, fp32).
        idx = scr.idx[: Hkv * GN * n].view(Hkv, GN, n)
        if ctx.ps:  # v_tok rows of the partition's tokens: page start + slot, then the first n
            idx.copy_(tok.view(Hkv, 1, -1)[:, :, :n].expand(Hkv, GN, n))
        else:
            torch.add(ctx.slots[j0:j1].view(1, 1, n).expand(Hkv, GN, n), ctx.bag_base[b].unsqueeze(-1), out=idx)
        offsets = torch.arange(0, Hkv * GN * n, n, dtype=idx.dtype, device=idx.device)
        out = F.embedding_bag(idx.view(-1), ctx.v_tok, offsets, mode="sum", per_sample_weights=pr.view(-1))
        o.view(Hkv * GN, D).copy_(out)
    else:
        torch.bmm(pr, v, out=o)  # (Hkv, G·Nq, D)


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
    # Only small ops here (below ATen's parallel grain): a large op would run on the caller's
    # OpenMP team, whose threads then spin-wait on the cores the workers need (measured: +50% CPU).
    # Scaling q, the bag indices and the merge run in the workers.
    row_idx = _row_index(block_table, Hkv) if dims.paged else None  # (B, Hkv, max_pages)
    bag = _bag_v(q.dtype, q.device)
    itype = torch.int32 if v_cache.numel() // D < 2**31 else torch.int64
    if bag and dims.paged:
        bag_base = (row_idx * dims.page_size).to(itype)  # (B, Hkv, max_pages): row of slot 0
        slots = torch.arange(dims.page_size, dtype=itype, device=q.device)
    elif bag:
        Nmax = k_cache.shape[2]
        bag_base = torch.arange(B * Hkv, dtype=itype, device=q.device).mul_(Nmax).view(B, Hkv, 1)
        slots = torch.arange(Nmax, dtype=itype, device=q.device)
    else:
        bag_base = slots = None
    ctx = _Ctx(
        q=q.reshape(B, Hkv, GN, D),  # a view: query head h·G + g, token i is row g·Nq + i of kv head h
        c=c,
        k_cache=k_cache,
        v_cache=v_cache,
        k_rows=k_cache.reshape(-1, dims.page_size * D) if dims.paged else None,  # (pages·Hkv, ps·D)
        v_rows=v_cache.reshape(-1, dims.page_size * D) if dims.paged else None,
        row_idx=row_idx,
        v_tok=v_cache.reshape(-1, D) if bag else None,  # (tokens, D), a view
        bag_base=bag_base,
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
        slots=slots,
        k_tok=k_cache.reshape(-1, D) if bag and dims.paged else None,
        ones=torch.arange(Hkv * (part + dims.page_size), dtype=itype, device=q.device) if bag and dims.paged else None,
    )
    # Longest partitions first (all are `part` long but each sequence's last), so the short tails
    # of a ragged batch fill in at the end and the workers finish together.
    items = sorted(((b, p) for b in range(B) for p in range(counts[b])),
                   key=lambda it: -(min((it[1] + 1) * part, lens[it[0]]) - it[1] * part))
    n_workers = _workers(q.device, len(items))
    scratch = [_Scratch(ctx, q.dtype != acc, acc) for _ in range(n_workers)]  # caller allocates
    # the partitions, then the merge of each sequence (flash_pool.run_parallel: inline for one worker)
    run_parallel(items, scratch, lambda scr, item: _partition(ctx, scr, *item))
    run_parallel(range(B), scratch, lambda scr, b: _merge(ctx, b))
    return ctx.out.view(B, Hq, Nq, D)


def _merge(ctx: _Ctx, b: int) -> None:
    """out[b] from sequence b's partitions, merged by log-sum-exp (scores in log2 units)."""
    P = ctx.counts[b]
    m = ctx.m_part[b, :P]  # (P, Hkv, 1, G·Nq); −inf where a row saw no key of a partition
    big_m = m.amax(dim=0)  # (Hkv, 1, G·Nq), finite: every row sees key 0
    w = torch.exp2(m - big_m).squeeze(2)  # (P, Hkv, G·Nq)
    den = (ctx.l_part[b, :P] * w).sum(dim=0)  # (Hkv, G·Nq)
    num = (ctx.o_part[b, :P] * w.unsqueeze(-1)).sum(dim=0)  # (Hkv, G·Nq, D)
    ctx.out[b].copy_(num.div_(den.unsqueeze(-1)))


def _row_index(block_table, Hkv: int):
    """(B, Hkv, max_pages) int64: row page·Hkv + h of the pool viewed (num_pages·Hkv, ps·D);
    unused entries (-1) point at row 0 and are never read."""
    pages = block_table.long().clamp_min(0).unsqueeze(1)  # (B, 1, P)
    heads = torch.arange(Hkv, device=block_table.device).view(1, Hkv, 1)  # (1, Hkv, 1)
    return pages * Hkv + heads  # (B, Hkv, P)
