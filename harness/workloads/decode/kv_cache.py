"""Decode against a KV cache: seeded inputs (contiguous or paged), a float64 reference, and the
byte and FLOP counts of one decode step.

The decode contract (docs/contracts.md, "Decode"): fn(q, k_cache, v_cache, *, kv_lens, block_table=None,
scale=None, sinks=None, k_scale=None, v_scale=None) -> out. q (B, Hq, Nq, D); contiguous k_cache,
v_cache (B, Hkv, Nmax, D); paged k_cache, v_cache (num_pages, Hkv, page_size, D) with block_table
(B, max_pages) int32 (entry p = pool index of the sequence's p-th page, -1 where unused); kv_lens
int32 (B,). Query i of sequence b sees cached key j iff j <= i + (kv_lens[b] - Nq) (bottom-right
causal). The cache may be stored in bfloat16 or float8 e4m3 (kv_quant.py: `k_scale`, `v_scale`);
`sinks` (Hq,) float32 adds exp(sinks[h]) to query head h's softmax denominator; the keywords
beyond kv_lens and block_table are passed only when the case uses them.

Inputs are drawn like the prefill's (harness/workloads/prefill/inputs.py): float32 on the CPU from a generator seeded by
(seed, shape, kv lengths) only, then cast and moved, so every implementation, layout, dtype and
device sees the same logical cache. Slots no sequence owns (padding past a contiguous sequence's
length, the tail of a last page) hold random numbers too, never zeros, so reading them shows up as
an error. Paged: the pages of all sequences are placed in the pool in a seeded shuffled order, so
an implementation that ignores the block table computes the wrong thing.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.case import Case
from harness.workloads.decode import kv_quant
from harness.workloads.visibility import visible_pairs

if TYPE_CHECKING:  # torch is imported inside functions: nothing heavy at import time
    import torch


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no truth value to compare with
class DecodeInputs:
    q: "torch.Tensor"  # (B, Hq, Nq, D)
    k_cache: "torch.Tensor"  # contiguous (B, Hkv, Nmax, D) | paged (num_pages, Hkv, page_size, D)
    v_cache: "torch.Tensor"  # same shape as k_cache
    kv_lens: "torch.Tensor"  # (B,) int32 on q's device
    block_table: "torch.Tensor | None"  # (B, max_pages) int32, -1 where unused; None = contiguous
    lens: tuple[int, ...] = ()  # kv_lens on the host
    k_scale: "torch.Tensor | None" = None  # float8 cache: float32 () per tensor | (Hkv,) per kv head
    v_scale: "torch.Tensor | None" = None
    sinks: "torch.Tensor | None" = None  # (Hq,) float32 sink logits; None = no sinks
    scale: float | None = None  # softmax scale; None = 1/sqrt(D)
    seed: int = 0  # the seed the inputs were drawn with

    @property
    def paged(self) -> bool:
        return self.block_table is not None

    def args(self) -> tuple:
        """Positional arguments: fn(*inputs.args(), **inputs.kwargs())."""
        return (self.q, self.k_cache, self.v_cache)

    def kwargs(self) -> dict:
        kw = {"kv_lens": self.kv_lens, "block_table": self.block_table}
        if self.scale is not None:
            kw["scale"] = self.scale
        if self.sinks is not None:
            kw["sinks"] = self.sinks
        if self.k_scale is not None:
            kw.update(k_scale=self.k_scale, v_scale=self.v_scale)
        return kw

    def call(self, fn):
        """One call of an implementation's decode function on these inputs."""
        return fn(*self.args(), **self.kwargs())

    def named_tensors(self) -> dict:
        """Every input tensor by name, for checksumming (an implementation must not write them)."""
        named = {"q": self.q, "k_cache": self.k_cache, "v_cache": self.v_cache, "kv_lens": self.kv_lens,
                 "block_table": self.block_table, "k_scale": self.k_scale, "v_scale": self.v_scale,
                 "sinks": self.sinks}
        return {n: t for n, t in named.items() if t is not None}

    def tensors(self) -> tuple:
        return tuple(self.named_tensors().values())


# --- kv lengths -----------------------------------------------------------------------------------


def seed_of(*key: Any) -> int:
    """A 63-bit seed from a tuple; stable across processes (hash() is salted per process)."""
    digest = hashlib.sha256(repr(key).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _check_len(n: Any, where: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise ValueError(f"kv length {where} must be an integer, got {n!r}")
    if n <= 0:
        raise ValueError(f"kv length {where} is {n}; every cached sequence needs at least 1 token")
    return n


def kv_lengths(spec: Any, batch: int, seed: int = 0) -> tuple[int, ...]:
    """Per-sequence cache lengths for a batch.

    spec: an int (every sequence), a list of ints (one per sequence, or one value for all), or
    {"uniform": [lo, hi]}: independent seeded draws in [lo, hi] inclusive. A length <= 0 raises
    ValueError naming it.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if isinstance(spec, dict):
        if set(spec) != {"uniform"}:
            raise ValueError(f"kv length spec {spec!r}: the only table form is {{'uniform': [lo, hi]}}")
        bounds = spec["uniform"]
        if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
            raise ValueError(f"kv length spec uniform = {bounds!r}: need [lo, hi]")
        lo, hi = (_check_len(x, f"uniform bound {x!r}") for x in bounds)
        if lo > hi:
            raise ValueError(f"kv length spec uniform = [{lo}, {hi}]: lo must be <= hi")
        rng = random.Random(seed_of(int(seed), "kv_lengths", batch, lo, hi))
        return tuple(rng.randint(lo, hi) for _ in range(batch))
    items = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if not items:
        raise ValueError("kv length spec is empty")
    lens = [_check_len(n, f"[{i}]" if len(items) > 1 else "") for i, n in enumerate(items)]
    if len(lens) == 1:
        return tuple(lens * batch)
    if len(lens) != batch:
        raise ValueError(f"kv length spec has {len(lens)} lengths for a batch of {batch}")
    return tuple(lens)


def case_kv_lens(case: Case) -> tuple[int, ...]:
    """The case's per-sequence lengths (case.kv_lens, or seq_len_kv for every sequence)."""
    lens = tuple(case.kv_lens) if case.kv_lens else (case.seq_len_kv,) * case.batch
    if len(lens) != case.batch:
        raise ValueError(f"case has {len(lens)} kv_lens for a batch of {case.batch}")
    for b, n in enumerate(lens):
        _check_len(n, f"kv_lens[{b}]")
        if n < case.seq_len_q:
            raise ValueError(f"kv_lens[{b}] = {n} < {case.seq_len_q} query tokens: the cache must "
                             "hold the queries' own keys")
    return lens


def pages_of(lens, page_size: int) -> list[int]:
    return [-(-n // page_size) for n in lens]


# --- inputs ---------------------------------------------------------------------------------------


def make_decode_inputs(case: Case, seed: int = 0) -> DecodeInputs:
    """Seeded q, cache, lengths (and block table) for a decode case, on case.device in case.dtype
    (the cache in its kv_dtype, with its scales), plus the sinks and scale of the case."""
    import torch

    if case.kv_layout not in ("contiguous", "paged"):
        raise ValueError(f"unknown kv_layout {case.kv_layout!r}; allowed: contiguous, paged")
    if case.kv_layout == "paged" and case.page_size < 1:
        raise ValueError(f"paged layout needs page_size >= 1, got {case.page_size}")
    lens = case_kv_lens(case)
    B, Hq, Hkv, Nq, D = case.batch, case.heads_q, case.heads_kv, case.seq_len_q, case.head_dim
    if Hq % Hkv:
        raise ValueError(f"heads_q ({Hq}) must be a multiple of heads_kv ({Hkv})")
    dtype, dev = getattr(torch, case.dtype), case.device
    gen = torch.Generator(device="cpu").manual_seed(seed_of(int(seed), "decode", B, Hq, Hkv, Nq, D, lens))
    q = torch.randn((B, Hq, Nq, D), generator=gen).to(device=dev, dtype=dtype)  # (B, Hq, Nq, D)
    # The logical cache, one sequence at a time (a B x Nmax float32 copy would not fit at scale):
    # drawn in the same order for every layout, so layouts differ only in where tokens live.
    seqs = []
    for n in lens:
        k = torch.randn((Hkv, n, D), generator=gen)  # (Hkv, n, D)
        v = torch.randn((Hkv, n, D), generator=gen)  # (Hkv, n, D)
        seqs.append((k, v))
    junk = torch.Generator(device="cpu").manual_seed(seed_of(int(seed), "junk", B, Hkv, D, lens))
    kv_lens = torch.tensor(lens, dtype=torch.int32, device=dev)  # (B,)
    kvd, kvs = case.params.kv_dtype, case.params.kv_scale
    k_s, v_s = kv_quant.scales(kvd, kvs, seqs, Hkv)  # float8: from the logical cache only
    enc = kv_quant.encoder(kvd, dtype)  # float32 (heads at dim 1) -> the stored dtype
    store = kv_quant.stored_dtype(kvd, dtype)
    extra = dict(lens=lens, seed=int(seed), **_form_inputs(case, seed, k_s, v_s))

    if case.kv_layout == "contiguous":
        shape = (B, Hkv, max(lens), D)
        k_cache = torch.empty(shape, dtype=store, device=dev)  # (B, Hkv, Nmax, D)
        v_cache = torch.empty(shape, dtype=store, device=dev)  # (B, Hkv, Nmax, D)
        for b, (k, v) in enumerate(seqs):
            n = lens[b]
            k_cache[b : b + 1, :, :n] = enc(k.unsqueeze(0), k_s)
            v_cache[b : b + 1, :, :n] = enc(v.unsqueeze(0), v_s)
            if n < shape[2]:  # padding: random, never read by a correct implementation
                pad = (1, Hkv, shape[2] - n, D)
                k_cache[b : b + 1, :, n:] = enc(torch.randn(pad, generator=junk), k_s)
                v_cache[b : b + 1, :, n:] = enc(torch.randn(pad, generator=junk), v_s)
        return DecodeInputs(q, k_cache, v_cache, kv_lens, None, **extra)

    ps = case.page_size
    pages = pages_of(lens, ps)
    total = sum(pages)
    order = torch.randperm(total, generator=junk).tolist()  # pool slot of the i-th logical page
    table = torch.full((B, max(pages)), -1, dtype=torch.int32)  # (B, max_pages)
    pool_shape = (total, Hkv, ps, D)
    k_cache = torch.empty(pool_shape, dtype=store, device=dev)  # (num_pages, Hkv, page_size, D)
    v_cache = torch.empty(pool_shape, dtype=store, device=dev)  # (num_pages, Hkv, page_size, D)
    i = 0
    for b, (k, v) in enumerate(seqs):
        n, np_ = lens[b], pages[b]
        kp = torch.randn((Hkv, np_ * ps, D), generator=junk)  # (Hkv, np·ps, D): junk tail
        vp = torch.randn((Hkv, np_ * ps, D), generator=junk)
        kp[:, :n], vp[:, :n] = k, v
        kp = kp.view(Hkv, np_, ps, D).transpose(0, 1)  # (np, Hkv, ps, D)
        vp = vp.view(Hkv, np_, ps, D).transpose(0, 1)
        slots = order[i : i + np_]
        i += np_
        table[b, :np_] = torch.tensor(slots, dtype=torch.int32)
        idx = torch.tensor(slots, dtype=torch.long, device=dev)
        _put_pages(k_cache, idx, enc(kp, k_s).to(dev))
        _put_pages(v_cache, idx, enc(vp, v_s).to(dev))
    return DecodeInputs(q, k_cache, v_cache, kv_lens, table.to(dev), **extra)


def _put_pages(pool, idx, pages) -> None:
    """pool[idx] = pages (index_copy_ has no float8 kernel: bytes are copied as bytes)."""
    if pool.element_size() == 1 and pool.is_floating_point():
        import torch

        pool, pages = pool.view(torch.uint8), pages.view(torch.uint8)
    pool.index_copy_(0, idx, pages)


def _form_inputs(case: Case, seed: int, k_s, v_s) -> dict:
    """The keyword inputs of the case's form: float8 scales, seeded sinks (Hq,) float32, scale."""
    import torch

    dev = case.device
    sinks = None
    if case.params.sinks:
        gen = torch.Generator(device="cpu").manual_seed(seed_of(int(seed), "sinks", case.heads_q))
        sinks = (2.0 * torch.randn(case.heads_q, generator=gen)).to(dev)  # logits of the scores' size
    return dict(k_scale=None if k_s is None else k_s.to(dev), v_scale=None if v_s is None else v_s.to(dev),
                sinks=sinks, scale=case.params.scale or None)


def gather_cache(inputs: DecodeInputs) -> list[tuple["torch.Tensor", "torch.Tensor"]]:
    """Per sequence b, its keys and values in order: [(k (Hkv, L_b, D), v (Hkv, L_b, D)), ...];
    views for the contiguous layout, copies for the paged one (pages read via the block table)."""
    out = []
    for b, n in enumerate(inputs.lens):
        if inputs.block_table is None:
            out.append((inputs.k_cache[b, :, :n], inputs.v_cache[b, :, :n]))  # (Hkv, n, D) views
            continue
        ps = inputs.k_cache.shape[2]
        idx = inputs.block_table[b, : -(-n // ps)].long()  # (np,)
        kv = []
        for cache in (inputs.k_cache, inputs.v_cache):
            pages = cache.index_select(0, idx)  # (np, Hkv, ps, D)
            kv.append(pages.transpose(0, 1).reshape(cache.shape[1], -1, cache.shape[3])[:, :n])
        out.append((kv[0], kv[1]))  # (Hkv, n, D) each
    return out


def reference_decode(inputs: DecodeInputs) -> "torch.Tensor":
    """float64 CPU output (B, Hq, Nq, D), one sequence at a time from its gathered cache
    (dequantised: stored value x scale): heads expanded (query head h uses kv head h // G),
    bottom-right causal over the sequence's length, the sink logits in the denominator."""
    import torch

    q = inputs.q.detach().to("cpu", torch.float64)
    B, Hq, Nq, D = q.shape
    scale = 1.0 / math.sqrt(D) if inputs.scale is None else float(inputs.scale)
    sinks = None if inputs.sinks is None else inputs.sinks.detach().to("cpu", torch.float64).view(Hq, 1, 1)
    outs = []
    for b, (k, v) in enumerate(gather_cache(inputs)):
        n = inputs.lens[b]
        group = Hq // k.shape[0]
        k = kv_quant.dequantised(k.unsqueeze(0), inputs.k_scale)[0].repeat_interleave(group, dim=0)  # (Hq, n, D)
        v = kv_quant.dequantised(v.unsqueeze(0), inputs.v_scale)[0].repeat_interleave(group, dim=0)  # (Hq, n, D)
        s = torch.matmul(q[b], k.transpose(-1, -2)) * scale  # (Hq, Nq, n)
        i = torch.arange(Nq).unsqueeze(1)  # (Nq, 1)
        j = torch.arange(n).unsqueeze(0)  # (1, n)
        s = s.masked_fill(j > i + (n - Nq), float("-inf"))
        outs.append(torch.matmul(softmax_with_sinks(s, sinks), v))  # (Hq, Nq, D)
    return torch.stack(outs)  # (B, Hq, Nq, D)


def softmax_with_sinks(s: "torch.Tensor", sinks: "torch.Tensor | None") -> "torch.Tensor":
    """softmax over the last dim with exp(sink) added to each row's denominator (sinks broadcast
    against s without its last dim; None = the plain softmax)."""
    import torch

    if sinks is None:
        return torch.softmax(s, dim=-1)
    m = torch.maximum(s.amax(dim=-1, keepdim=True), sinks)
    p = torch.exp(s - m)
    return p / (p.sum(dim=-1, keepdim=True) + torch.exp(sinks - m))


def quant_error(case: Case, inputs: DecodeInputs, ref: "torch.Tensor") -> float:
    """max |attention over the dequantised cache - attention over the float32 cache it was made
    from| (both float64), on every query row; `ref` is the former, (B, Hq, Nq, D)."""
    original = make_decode_inputs(case.replace(kv_dtype="same", kv_scale="tensor"), inputs.seed)
    return float((ref - reference_decode(original)).abs().max())


# --- work counts ----------------------------------------------------------------------------------


def decode_min_bytes(case: Case) -> int:
    """Bytes a decode step must move at least: Q read, K and V read up to each sequence's length
    (every cached key is visible to the last query), O written; paged adds the block-table
    entries read (int32 per page used) and kv_lens (int32 per sequence)."""
    lens = case_kv_lens(case)
    e = case.element_bytes
    qo = 2 * case.batch * case.heads_q * case.seq_len_q * case.head_dim * e
    kv = 2 * case.heads_kv * case.head_dim * kv_quant.cache_element_bytes(case) * sum(lens)
    meta = 4 * case.batch + kv_quant.scale_bytes(case) + (4 * case.heads_q if case.params.sinks else 0)
    if case.kv_layout == "paged":
        meta += 4 * sum(pages_of(lens, case.page_size))
    return qo + kv + meta


def decode_input_bytes(case: Case) -> int:
    """Bytes of the inputs as allocated: q, and the cache (padded to the longest sequence, or whole
    pages) in its stored dtype."""
    lens = case_kv_lens(case)
    q = case.batch * case.heads_q * case.seq_len_q * case.head_dim * case.element_bytes
    tokens = case.batch * max(lens) if case.kv_layout != "paged" else (
        sum(pages_of(lens, case.page_size)) * case.page_size)
    return q + 2 * case.heads_kv * case.head_dim * tokens * kv_quant.cache_element_bytes(case)


def decode_flops(case: Case) -> int:
    """4·Hq·D·(visible query-key pairs summed over sequences): Q·Kᵀ and P·V, 2 FLOPs per
    multiply-add, bottom-right causal over each sequence's own length (visibility.py)."""
    pairs = sum(visible_pairs(case.seq_len_q, n, causal=True) for n in case_kv_lens(case))
    return 4 * case.heads_q * case.head_dim * pairs
