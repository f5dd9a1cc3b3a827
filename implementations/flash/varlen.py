"""flash's serving path: FlashAttention-2 over a packed (varlen) batch, without padding
(docs/contracts.md, "Serving"; FlashAttention's flash_attn_varlen_func layout).

The tiled forward of flash/forward.py, unchanged (its query-block worker `_query_block` with the
lazy-rescaling key sweep), run on views into the packed tensors: one context per (sequence, kv-head
chunk) whose q / k / v / out are strided views of that sequence's rows -- nothing is copied or
padded, and a sequence's keys past its own are never touched. Its offset is the sequence's cached
length (bottom-right causal), so key blocks the causal mask hides are skipped per sequence.

Work items are (sequence, kv-head chunk, query tile), handed to the worker threads of
implementations/_shared/thread_pool.py as flash does, the costliest first (longest-processing-time
order balances a few long prefill chunks against many short decodes). Heads are split into chunks
only when there are too few (sequence, tile) items to keep every worker busy. Items with few query
rows (decode: 1 row per head) get a wider key block, so a decode sequence costs a few tile steps,
not one per 256 keys. Every buffer is allocated by the calling thread (flash's rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.registry import register_path
from implementations._shared.contract import LOG2E, compute_dtype, default_scale
from implementations._shared.thread_pool import run_parallel
from implementations._shared.varlen_contract import check_varlen_args
from implementations.flash.forward import (
    BLOCK_K,
    BLOCK_Q_CAUSAL,
    _causal_band,
    _Ctx,
    _query_block,
    _Scratch,
    _workers_for,
)

MAX_BLOCK_K = 4096  # the widest key block a short-query item gets
TILE_ROWS_X_KEYS = BLOCK_Q_CAUSAL * BLOCK_K  # query rows x keys per kv head of a prefill tile
ITEMS_PER_WORKER = 4  # split heads until there are this many items per worker (or one kv head each)


def _key_block(rows: int) -> int:
    """BLOCK_K, doubled while rows (per kv head) x keys stays within a prefill tile's."""
    bk = BLOCK_K
    while 2 * bk <= MAX_BLOCK_K and 2 * bk * rows <= TILE_ROWS_X_KEYS:
        bk *= 2
    return bk


@dataclass(frozen=True)
class _Piece:
    """One (sequence, kv-head chunk): its rows, keys, blocks and kv heads [h0, h1)."""

    q0: int
    nq: int
    k0: int
    nk: int
    h0: int
    h1: int
    bq: int
    bk: int

    def tiles(self) -> list[int]:
        return list(range(0, self.nq, self.bq))

    def cost(self, group: int, i0: int) -> int:
        """Score entries the tile of rows [i0, i0 + bq) computes (keys up to its last row's)."""
        i1 = min(i0 + self.bq, self.nq)
        return (self.h1 - self.h0) * group * (i1 - i0) * min(self.nk, i1 + self.nk - self.nq)


def _plan(q_lens, k_lens, heads_kv: int, group: int, workers: int) -> list[_Piece]:
    """The pieces of a packed batch (sequences with no new token have none)."""
    seqs, q0, k0 = [], 0, 0
    for nq, nk in zip(q_lens, k_lens):
        if nq:
            bq = min(BLOCK_Q_CAUSAL, nq)
            seqs.append((q0, nq, k0, nk, bq, _key_block(group * bq)))
        q0, k0 = q0 + nq, k0 + nk
    n_tiles = sum(-(-nq // bq) for _, nq, _, _, bq, _ in seqs)
    step = heads_kv  # kv heads per piece: fewer while there are too few items for the workers
    while step > 1 and n_tiles * -(-heads_kv // step) < ITEMS_PER_WORKER * workers:
        step -= 1
    return [_Piece(q0, nq, k0, nk, h0, min(h0 + step, heads_kv), bq, bk)
            for q0, nq, k0, nk, bq, bk in seqs for h0 in range(0, heads_kv, step)]


def _scratch_sizes(pieces: list[_Piece], group: int, d: int) -> dict:
    """Per-worker buffer elements for the largest piece (flash/forward.py _Scratch's buffers)."""
    rows = [(p.h1 - p.h0) * group * p.bq for p in pieces]  # B·Hkv·G·bq of _Scratch
    return dict(s=max(r * p.bk for r, p in zip(rows, pieces)), qacc=max(r * d for r in rows), rows=max(rows),
                kv=max((p.h1 - p.h0) * p.bk * d for p in pieces))


class _VarlenScratch(_Scratch):
    """flash's per-worker buffers, sized for the largest piece (pieces differ in rows and key block)."""

    def __init__(self, sizes: dict, copy_q: bool, upcast: bool, dtype, device):  # noqa: super() not called
        e = dict(dtype=dtype, device=device)
        self.bias = None  # no attn_mask: causality is the band
        self.s = torch.empty(sizes["s"], **e)
        self.q = torch.empty(sizes["qacc"], **e) if copy_q else None
        self.acc = torch.empty(sizes["qacc"], **e)
        self.rowstats = torch.empty(6, sizes["rows"], **e)
        # fp32 k / v tiles (low precision), under both names the forward has used for them: one
        # (2, n) buffer `kv`, or `k` and `v` (since values may be Dv wide; here Dv = D)
        self.kv = torch.empty(2, sizes["kv"], **e) if upcast else None
        self.k, self.v = (self.kv[0], self.kv[1]) if upcast else (None, None)


def flash_varlen(q, k, v, *, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale=None):
    dims = check_varlen_args(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale)
    Hkv, G, D = dims.heads_kv, dims.group, dims.head_dim
    q_lens = [q1 - q0 for q0, q1, *_ in dims.spans()]
    k_lens = [k1 - k0 for _, _, k0, k1, _ in dims.spans()]
    acc_dtype = compute_dtype(q.dtype)
    out = torch.empty_like(q)  # (Tq, Hq, D)
    if out.numel() == 0:
        return out
    n_tiles = sum(-(-n // min(BLOCK_Q_CAUSAL, n)) for n in q_lens if n)
    pieces = _plan(q_lens, k_lens, Hkv, G, _workers_for(q.device, n_tiles * Hkv))
    c = default_scale(D, scale) * LOG2E
    q4, out4 = q.view(-1, Hkv, G, D), out.view(-1, Hkv, G, D)  # (T, Hkv, G, D) views
    items = []
    for p in pieces:
        kp = k[p.k0 : p.k0 + p.nk, p.h0 : p.h1].permute(1, 0, 2)  # (hc, nk, D), strided view
        vp = v[p.k0 : p.k0 + p.nk, p.h0 : p.h1].permute(1, 0, 2)
        rows = slice(p.q0, p.q0 + p.nq)
        ctx = _Ctx(
            q5=q4[rows, p.h0 : p.h1].permute(1, 2, 0, 3).unsqueeze(0),  # (1, hc, G, nq, D) view
            tiles=[(j0, min(j0 + p.bk, p.nk), kp[:, j0 : j0 + p.bk].transpose(1, 2), vp[:, j0 : j0 + p.bk])
                   for j0 in range(0, p.nk, p.bk)],
            out5=out4[rows, p.h0 : p.h1].permute(1, 2, 0, 3).unsqueeze(0),  # (1, hc, G, nq, D) view
            lse4=None,
            visible=None,
            # one band per key block width, with BLOCK_Q_CAUSAL rows (a shorter block uses its top)
            band=_causal_band(BLOCK_Q_CAUSAL, p.bk, acc_dtype, q.device) if p.nq > 1 else None,
            offset=p.nk - p.nq,  # the cached prefix: bottom-right causal
            c=c,
            bq=p.bq,
            bk=p.bk,
            Nk=p.nk,
        )
        items += [(p.cost(G, i0), ctx, i0) for i0 in p.tiles()]
    items.sort(key=lambda it: -it[0])  # costliest first
    workers = _workers_for(q.device, len(items))
    sizes = _scratch_sizes(pieces, G, D)
    upcast = q.dtype != acc_dtype
    scratch = [_VarlenScratch(sizes, upcast or G > 1, upcast, acc_dtype, q.device) for _ in range(workers)]
    run_parallel(items, scratch, lambda s, it: _query_block(it[1], s, it[2]))
    return out


def _memory_model(case) -> int:
    """The output and each worker's buffers (as flash_varlen allocates them)."""
    q_lens = list(case.q_lens)
    k_lens = [n + c for n, c in zip(case.q_lens, case.cached_lens)]
    G = case.heads_q // case.heads_kv
    n_tiles = sum(-(-n // min(BLOCK_Q_CAUSAL, n)) for n in q_lens if n)
    pieces = _plan(q_lens, k_lens, case.heads_kv, G, _workers_for(case.device, n_tiles * case.heads_kv, case.threads))
    items = sum(len(p.tiles()) for p in pieces)
    workers = _workers_for(case.device, items, case.threads)
    sz = _scratch_sizes(pieces, G, case.head_dim)
    upcast = case.dtype != "float32"
    per_worker = sz["s"] + sz["qacc"] * (2 if upcast or G > 1 else 1) + 6 * sz["rows"] + (2 * sz["kv"] if upcast else 0)
    out = case.element_bytes * sum(q_lens) * case.heads_q * case.head_dim
    return out + workers * 4 * per_worker


register_path("serving", "flash", memory_model=_memory_model,
              description="FlashAttention-2 tiles over the packed batch, per sequence, no padding")(flash_varlen)
