"""The tiled FlashAttention-2 forward of `flash` (implementations/flash/__init__.py registers it
and documents the algorithm and its speed tricks): block constants, the forward memory model, the
query-block worker and the key sweep with lazy rescaling. No registration here, so the backward
(backward.py) can build on it without an import cycle.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from implementations._shared import variants as _variants  # noqa: F401  (the _Ctx annotation)
from implementations._shared.contract import (
    LOG2E,
    compute_dtype,
    default_scale,
    grouped_mask,
)
from implementations._shared.thread_pool import run_parallel

# Tuned on a 2-core AVX2 CPU at N = 4096 (single-thread CPU time and interleaved 2-thread runs
# against SDPA): 256 x 256 fp32 tiles (2 MiB at 8 heads) were as fast as any shape tried (64-2048
# rows x 64-1024 keys, all within noise of ~5%) while keeping two workers' buffers ~5 MiB; wider
# or taller tiles fell out of cache with two workers, and smaller ones paid more Python per tile.
BLOCK_Q = 256
BLOCK_K = 256
# Causal default for block_q=None: 128-row query blocks waste less of the straddling tiles and give
# the workers twice as many blocks to balance. Interleaved, 2 threads, N=1024: causal / non-causal
# time 0.60 with 128 vs 0.70 with 256 (0.55 vs 0.56 at N=4096).
BLOCK_Q_CAUSAL = 128


def _workers_for(device: torch.device | str, n_blocks: int, threads: int | None = None) -> int:
    """How many worker threads a call uses: one per intra-op thread on the CPU, never more than
    there are query blocks; on CUDA one (the kernels already run in parallel on the device)."""
    if torch.device(device).type != "cpu":
        return 1
    return max(1, min(threads or torch.get_num_threads(), n_blocks))


def forward_memory_model(case, block_q: int, block_k: int = BLOCK_K) -> int:
    """Peak bytes above the inputs of the forward: the output and each worker's tiles."""
    bq, bk = min(block_q, case.seq_len_q), min(block_k, case.seq_len_kv)
    n_blocks = -(-case.seq_len_q // bq)
    workers = _workers_for(case.device, n_blocks, case.threads)
    rows = case.batch * case.heads_q * bq  # query rows in flight per worker
    dv = case.head_dim_v or case.head_dim
    per_worker = 4 * rows * bk  # fp32 score tile
    per_worker += 4 * rows * dv  # accumulator
    if case.dtype != "float32" or case.heads_q != case.heads_kv:
        per_worker += 4 * rows * case.head_dim  # grouped / fp32 copy of the query block
    per_worker += 6 * 4 * rows  # row statistics: m (two), l (two), alpha, shift
    if case.dtype != "float32":
        per_worker += 4 * case.batch * case.heads_kv * bk * (case.head_dim + dv)  # fp32 k/v tiles
    if case.mask != "none":
        per_worker += 4 * case.batch * bk  # additive bias of a (B, 1, 1, Nk) key-padding mask tile
    shared = case.element_bytes * case.batch * case.heads_q * case.seq_len_q * dv  # out
    # Nothing else per call: the causal band is a cached constant and masks are used as given.
    return shared + workers * per_worker


def flash_forward(q, k, v, dims, causal, attn_mask, scale, block_q, block_k, want_lse=False, var=None):
    """The tiled forward. Returns (out, lse2): lse2 (B, Hq, Nq) fp32 is the base-2 log-sum-exp of
    the scaled scores, log2 Σ_j exp2(c·q·k_j) with c = scale·log2(e) (= lse·log2(e)), +inf for rows
    that see no key; None unless want_lse (the backward's only saved statistic, FA2 Algorithm 1
    line 13). v and out have their own head dim Dv: every buffer and matmul on the value side is Dv
    wide, nothing is padded to the larger of D and Dv."""
    B, Hkv, G = dims.batch, dims.heads_kv, dims.group
    Nq, Nk, D, Dv = dims.seq_len_q, dims.seq_len_kv, dims.head_dim, dims.value_dim
    bq, bk = min(block_q, Nq), min(block_k, Nk)
    acc_dtype = compute_dtype(q.dtype)
    opts = dict(dtype=acc_dtype, device=q.device)

    out = torch.empty(B, dims.heads_q, Nq, Dv, dtype=q.dtype, device=q.device)  # (B, Hq, Nq, Dv)
    lse = torch.empty(B, dims.heads_q, Nq, **opts) if want_lse else None  # (B, Hq, Nq) fp32
    # No tensor op runs on the calling thread: one big enough to start an OpenMP region (e.g.
    # attn_mask.logical_not() or building the causal band, ~200k elements) left an OpenMP helper
    # thread spinning ~9 ms against the workers, which made causal slower than non-causal. The
    # mask is applied as given (torch.where in _hide_) and the band is a cached constant.
    visible = grouped_mask(attn_mask, dims)  # (b, hkv, g, nq, nk), size-1 kept, True = may attend
    band = _causal_band(bq, bk, acc_dtype, q.device) if causal else None

    k3 = k.reshape(B * Hkv, Nk, D)  # (B·Hkv, Nk, D)
    v3 = v.reshape(B * Hkv, Nk, Dv)  # (B·Hkv, Nk, Dv)
    ctx = _Ctx(
        q5=q.reshape(B, Hkv, G, Nq, D),  # (B, Hkv, G, Nq, D), a view for contiguous q
        # Key-block views built once per call, not per tile: Python time per tile is what two
        # workers sharing the GIL contend for.
        tiles=[
            (j0, min(j0 + bk, Nk), k3[:, j0 : j0 + bk].transpose(1, 2), v3[:, j0 : j0 + bk])
            for j0 in range(0, Nk, bk)
        ],
        out5=out.view(B, Hkv, G, Nq, Dv),  # (B, Hkv, G, Nq, Dv)
        lse4=None if lse is None else lse.view(B, Hkv, G, Nq),  # (B, Hkv, G, Nq)
        visible=visible,
        band=band,
        offset=Nk - Nq if causal else None,  # bottom-right: query i sees key j iff j <= i + offset
        c=default_scale(D, scale) * LOG2E,  # softmax(x·scale) = exp2(x·c − max) / sum
        bq=bq,
        bk=bk,
        Nk=Nk,
        var=var,
        # sinks in log2 units, (1, Hkv, G, 1): they join l at the end of each query block
        sink2=None if var is None or var.sinks is None else _variants.sink_logits(var.sinks, Hkv, G, LOG2E, **opts),
    )
    starts = list(range(0, Nq, bq))
    if causal:
        # Longest first: causal query blocks cost 1, 2, ... key blocks, and handing them out in
        # that order leaves the biggest for last (N=1024, 4 blocks on 2 workers: 6 vs 5 tiles).
        starts.reverse()
    n_workers = _workers_for(q.device, len(starts))
    # Every buffer a worker touches is allocated here, in the calling thread.
    upcast = q.dtype != acc_dtype
    copy_q = upcast or G > 1
    n_bias = mask_bias_numel(visible, bq, bk, B * dims.heads_q * bq * bk)
    scratch = [_Scratch(B * Hkv, G * bq, bk, D, Dv, copy_q, upcast, n_bias, **opts) for _ in range(n_workers)]
    run_parallel(starts, scratch, lambda s, i0: _query_block(ctx, s, i0))
    return out, lse


@functools.lru_cache(maxsize=16)
def _const(value: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A 0-d constant for torch.where, which takes no Python float for both branches here."""
    return torch.tensor(value, dtype=dtype, device=device)


@functools.lru_cache(maxsize=16)
def _causal_band(bq: int, bk: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive (bq, 2bk + bq) constant, 0 = visible, −inf = hidden: straddling tiles hide key jj
    from query ii iff jj - ii > d, with d = i0 + (Nk - Nq) - j0 in [-(bq-1), bk-2];
    band[:, bk-d : bk-d+w] is that tile's causal bias (a view, no copy).

    Cached: it depends on nothing else (768 KiB fp32 at 256 x 256), and building it per call cost
    the causal path an OpenMP region on the calling thread (see flash_forward). Additive, not
    boolean: adding a broadcast (nb, w) bias to an (8, 256, 256) fp32 tile took 0.036 ms, while
    masked_fill_ / torch.where with the broadcast boolean took 1.4-1.5 ms (1 thread, 2-core AVX2),
    which was ~25% of a causal call at N = 1024."""
    x = torch.arange(2 * bk + bq, device=device)  # (2bk + bq,)
    hidden = (x.unsqueeze(0) - torch.arange(bq, device=device).unsqueeze(1)) > bk  # (bq, 2bk+bq)
    return torch.zeros(hidden.shape, dtype=dtype, device=device).masked_fill_(hidden, float("-inf"))


def mask_bias_numel(visible: torch.Tensor | None, bq: int, bk: int, score_numel: int) -> int:
    """Elements of the per-worker buffer that turns a broadcast boolean mask tile into an additive
    bias (see _hide_); 0 for no mask or a mask about as large as the scores (torch.where then)."""
    if visible is None:
        return 0
    n = math.prod(visible.shape[:-2]) * min(bq, visible.shape[-2]) * min(bk, visible.shape[-1])
    return n if 8 * n <= score_numel else 0


@dataclass(frozen=True)
class _Ctx:
    """Read-only views and constants shared by every query block of one call."""

    q5: torch.Tensor  # (B, Hkv, G, Nq, D)
    tiles: list  # per key block: (j0, j1, kᵀ (B·Hkv, D, w), v (B·Hkv, w, Dv)), views
    out5: torch.Tensor  # (B, Hkv, G, Nq, Dv), the output
    lse4: torch.Tensor | None  # (B, Hkv, G, Nq) fp32 base-2 log-sum-exp, when the backward needs it
    visible: torch.Tensor | None  # (b, hkv, g, nq, nk) boolean, True = may attend
    band: torch.Tensor | None  # (bq, 2·bk + bq) additive causal band (0 / −inf), see _causal_band
    offset: int | None  # Nk − Nq when causal (bottom-right), else None
    c: float  # scale · log2(e)
    bq: int
    bk: int
    Nk: int
    var: "_variants.Variants | None" = None  # window / softcap / alibi / documents / sinks
    sink2: torch.Tensor | None = None  # (1, Hkv, G, 1) sinks·log2(e), when the call has sinks


class _Scratch:
    """One worker's buffers, flat so a smaller edge tile is a contiguous prefix view."""

    def __init__(self, bh: int, rows: int, bk: int, d: int, dv: int, copy_q: bool, upcast: bool, n_bias: int,
                 dtype, device):
        e = dict(dtype=dtype, device=device)
        self.bias = torch.empty(n_bias, **e) if n_bias else None  # additive mask tile, see _hide_
        self.s = torch.empty(bh * rows * bk, **e)  # score / probability tile
        self.q = torch.empty(bh * rows * d, **e) if copy_q else None  # grouped / fp32 query block
        self.acc = torch.empty(bh * rows * dv, **e)  # unnormalised output block, Dv wide
        self.rowstats = torch.empty(6, bh * rows, **e)  # m, m_new, l, l_blk, alpha, shift
        self.k = torch.empty(bh * bk * d, **e) if upcast else None  # fp32 k tile
        self.v = torch.empty(bh * bk * dv, **e) if upcast else None  # fp32 v tile


def _query_block(ctx: _Ctx, s: _Scratch, i0: int) -> None:
    """FA2 Algorithm 1, lines 3-15, for the query rows [i0, i0 + bq) of every head."""
    i1 = min(i0 + ctx.bq, ctx.q5.shape[3])
    k_start, k_stop = 0, ctx.Nk
    if ctx.offset is not None:
        k_stop = min(ctx.Nk, i1 + ctx.offset)  # keys the block's last row can see
    if ctx.var is not None:  # a window / documents: keys before k_start are hidden from every row
        k_start, k_stop = ctx.var.key_range(i0, i1, ctx.Nk)
    if k_stop <= k_start:  # causality hides every key from every row of this block
        ctx.out5[:, :, :, i0:i1].zero_()
        if ctx.lse4 is not None:
            ctx.lse4[:, :, :, i0:i1].fill_(math.inf)  # no key: P = exp2(s - inf) = 0 in backward
        return
    if not _sweep_keys(ctx, s, i0, i1, k_stop, lazy=True, k_start=k_start):
        _sweep_keys(ctx, s, i0, i1, k_stop, lazy=False, k_start=k_start)


def _sweep_keys(ctx: _Ctx, s: _Scratch, i0: int, i1: int, k_stop: int, lazy: bool, k_start: int = 0) -> bool:
    """The inner loop over key blocks for queries [i0, i1); writes the output rows and returns
    True, or returns False when lazy rescaling overflowed (the caller redoes it with lazy=False).

    Lazy rescaling -- the conditional rescaling of FlashAttention-4 (Dao et al. 2025), taken to
    its limit: once every row has a finite running max m (after the first key block, normally),
    m is frozen and folded into the QK matmul (baddbmm adds −m), so a key block costs matmul,
    exp2, row sum, matmul -- no max pass, no subtraction pass, no rescaling of l and acc. A later
    key scoring above m gives p = exp2(s − m) > 1, which loses nothing in floating point (the
    final acc / l is the same softmax) unless something overflows; a finiteness check at the end
    catches that (scores ~88 nats above the first block's maximum) and the block is redone with
    exact per-block rescaling.
    """
    B, Hkv, G, _, D = ctx.q5.shape
    Dv = ctx.out5.shape[-1]
    BH = B * Hkv
    nb = i1 - i0
    rows = G * nb  # query rows per kv head in this block
    qb = ctx.q5[:, :, :, i0:i1]  # (B, Hkv, G, nb, D)
    if s.q is not None:  # G > 1 (rows of G heads are stacked) or low precision: copy
        qb = s.q[: BH * rows * D].view(B, Hkv, G, nb, D).copy_(qb)
    qb = qb.reshape(BH, rows, D)  # (B·Hkv, G·nb, D), a view after the copy
    acc = s.acc[: BH * rows * Dv].view(BH, rows, Dv)  # (B·Hkv, G·nb, Dv)
    m, m_new, l, l_blk, alpha, shift = (r[: BH * rows].view(BH, rows, 1) for r in s.rowstats)
    st_full = s.s[: BH * rows * ctx.bk].view(BH, rows, ctx.bk)  # (B·Hkv, G·nb, bk)
    shift_full = shift.expand(BH, rows, ctx.bk)  # −m broadcast over a full key block
    c, lowest = ctx.c, torch.finfo(acc.dtype).min
    masked = ctx.band is not None or ctx.visible is not None
    may_be_empty = False  # might a row have seen only hidden keys so far (m = −inf)?
    frozen = False  # is m frozen into the matmul (lazy rescaling)?
    var, seen = ctx.var, False
    mods = var is not None and var.mods

    for j0, j1, kT, vb in ctx.tiles:
        if j0 >= k_stop:
            break
        if j1 <= k_start:  # hidden from the whole query block by a window or documents
            continue
        w = j1 - j0
        st, sh_e = st_full, shift_full
        if j1 > k_stop or w < ctx.bk:  # an edge tile: narrower views
            j1 = min(j1, k_stop)
            w = j1 - j0
            kT, vb = kT[:, :, :w], vb[:, :w]
            st = s.s[: BH * rows * w].view(BH, rows, w)  # (B·Hkv, G·nb, w)
            sh_e = shift.expand(BH, rows, w)
        if s.k is not None:  # low precision: fp32 copies, so both matmuls accumulate in fp32
            kT = s.k[: BH * w * D].view(BH, D, w).copy_(kT)  # (B·Hkv, D, w)
            vb = s.v[: BH * w * Dv].view(BH, w, Dv).copy_(vb)  # (B·Hkv, w, Dv)
        if frozen:
            if mods:  # ALiBi / soft cap act on the scores before −m
                torch.baddbmm(st, qb, kT, beta=0.0, alpha=c, out=st)
                var.mod_(st.view(B, Hkv, G, nb, w), i0, i1, j0, j1, LOG2E).add_(sh_e.view(B, Hkv, G, nb, w))
            else:
                torch.baddbmm(sh_e, qb, kT, alpha=c, out=st)  # st = c·q·kᵀ − m, (B·Hkv, G·nb, w)
            if masked:
                _hide_(ctx, st.view(B, Hkv, G, nb, w), i0, i1, j0, j1, s.bias)
            if var is not None:
                var.hide_(st.view(B, Hkv, G, nb, w), i0, i1, j0, j1)
            st.exp2_()  # p = exp2(s − m), possibly > 1
            torch.sum(st, dim=-1, keepdim=True, out=l_blk)  # (B·Hkv, G·nb, 1)
            l.add_(l_blk)
            acc.baddbmm_(st, vb)  # (B·Hkv, G·nb, Dv)
            continue
        # st = c·q·kᵀ: scale·log2(e) is applied by the matmul's alpha, not by a separate pass
        torch.baddbmm(st, qb, kT, beta=0.0, alpha=c, out=st)  # (B·Hkv, G·nb, w)
        if mods:
            var.mod_(st.view(B, Hkv, G, nb, w), i0, i1, j0, j1, LOG2E)
        if masked and _hide_(ctx, st.view(B, Hkv, G, nb, w), i0, i1, j0, j1, s.bias):
            may_be_empty = True
        if var is not None and var.hide_(st.view(B, Hkv, G, nb, w), i0, i1, j0, j1):
            may_be_empty = True
        first, seen = not seen, True
        torch.amax(st, dim=-1, keepdim=True, out=m if first else m_new)  # (B·Hkv, G·nb, 1)
        if not first:
            torch.maximum(m, m_new, out=m_new)
        cur = m if first else m_new
        # A row that has seen no key yet has max −inf; shift it by the lowest finite float
        # instead, so −inf − shift stays −inf (p = 0) rather than NaN.
        sh = torch.clamp_min(cur, lowest, out=shift) if may_be_empty else cur
        st.sub_(sh).exp2_()  # p = exp2(s − m) in [0, 1]
        if first:
            torch.sum(st, dim=-1, keepdim=True, out=l)  # (B·Hkv, G·nb, 1)
            torch.bmm(st, vb, out=acc)  # (B·Hkv, G·nb, Dv)
        else:
            torch.sub(m, sh, out=alpha).exp2_()  # rescales the old statistics; 0 where m = −inf
            torch.sum(st, dim=-1, keepdim=True, out=l_blk)
            l.mul_(alpha).add_(l_blk)
            acc.mul_(alpha).baddbmm_(st, vb)  # (B·Hkv, G·nb, Dv)
            m, m_new = m_new, m  # the new maximum becomes the running one (swap, no copy)
        if lazy and (not may_be_empty or bool(torch.isfinite(m).all())):
            torch.neg(m, out=shift)
            frozen = True

    # Overflow check without a mask-sized temporary: inf or NaN anywhere makes the sums non-finite
    # (a finite-but-huge sum only triggers a harmless exact redo).
    if frozen and not math.isfinite(float(acc.sum()) + float(l.sum())):
        return False
    if ctx.sink2 is not None:  # the sink joins the denominator: l += exp2(sink2 − m), no value.
        # A row that saw no key has m = −inf, so l = inf and its output 0 / inf = 0.
        a4 = alpha.view(B, Hkv, G, nb)
        torch.sub(ctx.sink2, m.view(B, Hkv, G, nb), out=a4).exp2_()
        l.add_(alpha)
    if ctx.lse4 is not None:  # lse2 = m + log2(l); a row that saw no key: -inf + -inf -> +inf
        torch.log2(l, out=l_blk).add_(m).nan_to_num_(nan=math.inf, posinf=math.inf, neginf=math.inf)
        ctx.lse4[:, :, :, i0:i1].copy_(l_blk.view(B, Hkv, G, nb))
    # l >= 1 for any row that saw a key (its maximum contributed exp2(0) = 1 exactly); l == 0
    # means it saw none, and then acc == 0 too, so dividing by 1 gives the zeros the contract wants.
    acc.div_(l.clamp_min_(1.0))
    ctx.out5[:, :, :, i0:i1].copy_(acc.view(B, Hkv, G, nb, Dv))  # casts in place: no temporary
    return True


def _hide_(ctx, st5: torch.Tensor, i0: int, i1: int, j0: int, j1: int, bias: torch.Tensor | None) -> bool:
    """Set the scores the tile may not see to −inf, in place; True if anything may be hidden.
    ctx needs band, offset, bk and visible (the backward passes its own); bias is the worker's
    mask_bias_numel buffer (None when the mask is used by torch.where directly)."""
    hid = False
    if ctx.band is not None and j1 - 1 > i0 + ctx.offset:  # tile straddles the diagonal
        c0 = ctx.bk - (i0 + ctx.offset - j0)
        st5.add_(ctx.band[: i1 - i0, c0 : c0 + j1 - j0])  # (nb, w) broadcast; −inf + s = −inf
        hid = True
    if ctx.visible is not None:
        m = ctx.visible  # (b, hkv, g, nq, nk); size-1 dims broadcast and are not sliced
        rows = slice(i0, i1) if m.shape[-2] > 1 else slice(None)
        cols = slice(j0, j1) if m.shape[-1] > 1 else slice(None)
        m = m[..., rows, cols]
        ninf = _const(float("-inf"), st5.dtype, st5.device)
        if bias is not None:  # broadcast mask (e.g. key padding): a small additive bias, then one
            # vectorised add; where() over the scores with the broadcast mask was ~7x slower
            # (0.22 vs 0.03 ms on an (8, 256, 256) tile with a (1, 256) mask).
            b = bias[: m.numel()].view(m.shape)
            torch.where(m, _const(0.0, st5.dtype, st5.device), ninf, out=b)
            st5.add_(b)
        else:  # a mask as large as the scores: where() in place (masked_fill_ wants it negated)
            torch.where(m, st5, ninf, out=st5)
        hid = True
    return hid

