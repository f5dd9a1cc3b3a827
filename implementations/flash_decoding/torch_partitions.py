"""flash_decoding's partition step in torch ops (every device and dtype for flash_decoding_torch;
CUDA and non-float32 dtypes for flash_decoding): scores K·qᵀ as one bmm over the kv heads, the
probabilities, and o = p·V by embedding_bag straight from the cache (full precision on the CPU) or
by bmm. Split out of the package's __init__.py, whose docstring describes the algorithm; `ctx` is
its _Ctx.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F


def part_len(partition: int, page_size: int) -> int:
    """Partition length; a whole number of pages when paged, so partitions never share a page."""
    if page_size:
        return max(page_size, partition // page_size * page_size)
    return partition


def bag_v(dtype, device) -> bool:
    """V is read by embedding_bag (weighted sums of cache rows, straight from the cache or the page
    pool) for a full-precision cache on the CPU; elsewhere by a matmul (low precision needs float32
    copies to accumulate in float32; embedding_bag's GPU kernel has no such advantage)."""
    return torch.device(device).type == "cpu" and dtype in (torch.float32, torch.float64)


def head_scales(k_scale, v_scale, heads_kv: int) -> dict:
    """A float8 cache's scales per kv head, as the torch step applies them: kscale (Hkv, 1, 1)
    multiplies q (the scores), vscale (Hkv, 1, 1) the partial output; None for other caches."""
    if k_scale is None:
        return {}
    return {"kscale": k_scale.float().expand(heads_kv).reshape(heads_kv, 1, 1),
            "vscale": v_scale.float().expand(heads_kv).reshape(heads_kv, 1, 1)}


def memory_model(case, partition: int, merges_bytes) -> int:
    B, Hq, Hkv, Nq, D = case.batch, case.heads_q, case.heads_kv, case.seq_len_q, case.head_dim
    paged = case.kv_layout == "paged"
    part = part_len(partition, case.page_size if paged else 0)
    P = -(-case.seq_len_kv // part)
    lens = case.kv_lens or (case.seq_len_kv,) * B
    items = sum(-(-n // part) for n in lens)
    GN = Hq // Hkv * Nq
    acc = 8 if case.dtype == "float64" else 4
    partials = acc * B * P * Hkv * GN * (D + 2)  # o, m, l
    low = case.kv_dtype != "same"  # a bfloat16 / float8 cache: copied to float32 per partition
    bag = case.device == "cpu" and case.dtype in ("float32", "float64") and not low
    per_worker = 2 * acc * Hkv * GN * part  # score and probability tiles
    if bag:
        per_worker += 4 * Hkv * GN * part + 4 * Hkv * (part + case.page_size) + acc * Hkv * GN * D  # int32 bag
        # indices, token rows, bag output
    if paged:  # gathered K pages (and V pages without embedding_bag)
        e = {"bfloat16": 2, "float8_e4m3fn": 1}.get(case.kv_dtype, case.element_bytes)
        per_worker += (1 if bag else 2) * e * Hkv * (part + case.page_size) * D
    if case.dtype not in ("float32", "float64") or low:
        per_worker += 2 * 4 * Hkv * part * D  # float32 k/v copies
    workers = 1 if case.device != "cpu" else max(1, min(case.threads or os.cpu_count() or 1, items))
    per_worker += acc * Hkv * GN * D  # scaled q of one sequence
    merge = merges_bytes(workers, B, P, Hkv, GN, D, acc)
    small = case.element_bytes * B * Hq * Nq * D  # out
    if paged and bag:
        small += 4 * Hkv * (part + case.page_size)  # one-row bag offsets
    return partials + max(workers * per_worker, merge) + small  # the workers' buffers go before the merge's


class Scratch:
    """One worker's buffers; a shorter partition uses a prefix view."""

    def __init__(self, ctx, upcast: bool, acc):
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


def _gather(rows, ctx, buf, b: int, p0: int, p1: int, n: int):
    """(Hkv, n, D): pages p0..p1 of sequence b gathered head-major into buf with one index_select
    of contiguous (page, head) rows (index_select along dim 1 of a transposed pool view copies the
    whole pool on torch 2.13)."""
    Hkv, D = ctx.q.shape[1], ctx.q.shape[3]
    np_ = p1 - p0
    idx = ctx.row_idx[b, :, p0:p1].reshape(-1)  # (Hkv·np,) head-major: h·np + page
    out = buf[: Hkv * np_ * ctx.ps * D].view(Hkv * np_, ctx.ps * D)
    torch.index_select(rows, 0, idx, out=out)  # (Hkv·np, ps·D)
    return out.view(Hkv, np_ * ctx.ps, D)[:, :n]


def partition(ctx, scr: Scratch, b: int, p: int) -> None:
    """Partial attention of sequence b over cached tokens [p·part, min((p+1)·part, L))."""
    L = ctx.lens[b]
    j0, j1 = p * ctx.part, min((p + 1) * ctx.part, L)
    n = j1 - j0
    _, Hkv, GN, D = ctx.q.shape
    bag = scr.idx is not None
    qg = scr.q.copy_(ctx.q[b]).mul_(ctx.c)  # (Hkv, G·Nq, D) · scale·log2(e), accumulation dtype
    if ctx.kscale is not None:  # float8: the scores of kv head h are (q · k_scale[h]) · codes
        qg.mul_(ctx.kscale)
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
    if ctx.vscale is not None:
        o.mul_(ctx.vscale)


def index_fields(q, k_cache, v_cache, block_table, dims, part: int) -> dict:
    """The torch step's fields of flash_decoding's _Ctx: pool views, the block table as pool rows
    and, for embedding_bag, the cache row of each (sequence, head[, page]). Small ops only (the
    caller's OpenMP team must stay asleep; see flash_decoding/__init__.py)."""
    B, D = q.shape[0], q.shape[3]
    Hkv, ps = dims.heads_kv, dims.page_size
    row_idx = _row_index(block_table, Hkv) if dims.paged else None  # (B, Hkv, max_pages)
    bag = bag_v(q.dtype, q.device) and k_cache.dtype == q.dtype
    itype = torch.int32 if v_cache.numel() // D < 2**31 else torch.int64
    if bag and dims.paged:
        bag_base = (row_idx * ps).to(itype)  # (B, Hkv, max_pages): row of slot 0
        slots = torch.arange(ps, dtype=itype, device=q.device)
    elif bag:
        Nmax = k_cache.shape[2]
        bag_base = torch.arange(B * Hkv, dtype=itype, device=q.device).mul_(Nmax).view(B, Hkv, 1)
        slots = torch.arange(Nmax, dtype=itype, device=q.device)
    else:
        bag_base = slots = None
    return dict(
        k_rows=k_cache.reshape(-1, ps * D) if dims.paged else None,  # (pages·Hkv, ps·D)
        v_rows=v_cache.reshape(-1, ps * D) if dims.paged else None,
        row_idx=row_idx,
        v_tok=v_cache.reshape(-1, D) if bag else None,  # (tokens, D), a view
        bag_base=bag_base,
        slots=slots,
        k_tok=k_cache.reshape(-1, D) if bag and dims.paged else None,
        ones=torch.arange(Hkv * (part + ps), dtype=itype, device=q.device) if bag and dims.paged else None,
    )


def _row_index(block_table, Hkv: int):
    """(B, Hkv, max_pages) int64: row page·Hkv + h of the pool viewed (num_pages·Hkv, ps·D);
    unused entries (-1) point at row 0 and are never read."""
    pages = block_table.long().clamp_min(0).unsqueeze(1)  # (B, 1, P)
    heads = torch.arange(Hkv, device=block_table.device).view(1, Hkv, 1)  # (1, Hkv, 1)
    return pages * Hkv + heads  # (B, Hkv, P)
