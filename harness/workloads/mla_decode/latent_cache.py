"""MLA decode's inputs, float64 reference and work counts (docs/contracts.md, "MLA decode").

fn(q, latent_cache, *, kv_lens, kv_lora_rank, block_table=None, scale=None) -> out: the absorbed
form of DeepSeek-V2/V3's multi-head latent attention. Every query head attends one shared latent
row per cached token, of width W = kv_lora_rank + qk_rope_head_dim (512 + 64 = 576): the whole
row is the key (the compressed "nope" part and the rotary part), its first kv_lora_rank columns
are the value. q (B, Hq, Nq, W); latent_cache contiguous (B, Nmax, W) or a paged pool
(num_pages, page_size, W) with block_table (B, max_pages) int32 (-1 where unused); kv_lens int32
(B,); out (B, Hq, Nq, kv_lora_rank). Query i of sequence b sees cached token j iff
j <= i + (kv_lens[b] - Nq); scale defaults to 1/sqrt(W).

Inputs are drawn like decode's (harness/workloads/decode/kv_cache.py): float32 from a generator
seeded by (seed, shape, lengths), then cast; slots no sequence owns hold random numbers; a paged
pool holds the pages in a seeded shuffled order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness.case import Case
from harness.workloads.decode.kv_cache import pages_of, seed_of, case_kv_lens
from harness.workloads.visibility import visible_pairs

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, eq=False)
class MlaInputs:
    q: "torch.Tensor"  # (B, Hq, Nq, W)
    latent_cache: "torch.Tensor"  # contiguous (B, Nmax, W) | paged (num_pages, page_size, W)
    kv_lens: "torch.Tensor"  # (B,) int32 on q's device
    block_table: "torch.Tensor | None"  # (B, max_pages) int32, -1 where unused; None = contiguous
    lens: tuple[int, ...]
    kv_lora_rank: int
    scale: float | None = None  # None = 1/sqrt(W)

    def call(self, fn):
        kw = {"kv_lens": self.kv_lens, "kv_lora_rank": self.kv_lora_rank, "block_table": self.block_table}
        if self.scale is not None:
            kw["scale"] = self.scale
        return fn(self.q, self.latent_cache, **kw)

    def named_tensors(self) -> dict:
        named = {"q": self.q, "latent_cache": self.latent_cache, "kv_lens": self.kv_lens,
                 "block_table": self.block_table}
        return {n: t for n, t in named.items() if t is not None}

    def tensors(self) -> tuple:
        return tuple(self.named_tensors().values())


def make_mla_inputs(case: Case, seed: int = 0) -> MlaInputs:
    """Seeded q, latent cache, lengths (and block table) on case.device in case.dtype."""
    import torch

    lens = case_kv_lens(case)
    B, Hq, Nq, W = case.batch, case.heads_q, case.seq_len_q, case.head_dim
    dtype, dev = getattr(torch, case.dtype), case.device
    gen = torch.Generator(device="cpu").manual_seed(seed_of(int(seed), "mla", B, Hq, Nq, W, lens))
    q = torch.randn((B, Hq, Nq, W), generator=gen).to(device=dev, dtype=dtype)
    seqs = [torch.randn((n, W), generator=gen) for n in lens]  # the logical cache, one sequence at a time
    junk = torch.Generator(device="cpu").manual_seed(seed_of(int(seed), "mla junk", B, W, lens))
    kv_lens = torch.tensor(lens, dtype=torch.int32, device=dev)
    extra = dict(lens=lens, kv_lora_rank=case.params.kv_lora_rank, scale=case.params.scale or None)
    if case.kv_layout == "contiguous":
        cache = torch.randn((B, max(lens), W), generator=junk)  # padding: random, never read
        for b, x in enumerate(seqs):
            cache[b, : lens[b]] = x
        return MlaInputs(q, cache.to(device=dev, dtype=dtype), kv_lens, None, **extra)
    ps = case.page_size
    pages = pages_of(lens, ps)
    order = torch.randperm(sum(pages), generator=junk).tolist()  # pool slot of the i-th logical page
    table = torch.full((B, max(pages)), -1, dtype=torch.int32)
    pool = torch.empty((sum(pages), ps, W))
    i = 0
    for b, x in enumerate(seqs):
        rows = torch.randn((pages[b] * ps, W), generator=junk)  # a junk tail in the last page
        rows[: lens[b]] = x
        slots = order[i : i + pages[b]]
        i += pages[b]
        table[b, : pages[b]] = torch.tensor(slots, dtype=torch.int32)
        pool[torch.tensor(slots)] = rows.view(pages[b], ps, W)
    return MlaInputs(q, pool.to(device=dev, dtype=dtype), kv_lens, table.to(dev), **extra)


def gather_latent(inputs: MlaInputs) -> list["torch.Tensor"]:
    """Per sequence, its latent rows in order, (L_b, W) (paged: read through the block table)."""
    out = []
    for b, n in enumerate(inputs.lens):
        if inputs.block_table is None:
            out.append(inputs.latent_cache[b, :n])
            continue
        ps = inputs.latent_cache.shape[1]
        idx = inputs.block_table[b, : -(-n // ps)].long()
        out.append(inputs.latent_cache.index_select(0, idx).reshape(-1, inputs.latent_cache.shape[2])[:n])
    return out


def reference_mla(inputs: MlaInputs) -> "torch.Tensor":
    """float64 CPU output (B, Hq, Nq, kv_lora_rank): per sequence, scores of every head against
    the whole latent rows, bottom-right causal, softmax, times the rows' first kv_lora_rank columns."""
    import torch

    q = inputs.q.detach().to("cpu", torch.float64)
    B, Hq, Nq, W = q.shape
    scale = 1.0 / math.sqrt(W) if inputs.scale is None else float(inputs.scale)
    outs = []
    for b, lat in enumerate(gather_latent(inputs)):
        lat = lat.to("cpu", torch.float64)  # (n, W)
        n = lat.shape[0]
        s = torch.matmul(q[b], lat.T) * scale  # (Hq, Nq, n)
        i = torch.arange(Nq).unsqueeze(1)
        j = torch.arange(n).unsqueeze(0)
        s = s.masked_fill(j > i + (n - Nq), float("-inf"))
        outs.append(torch.matmul(torch.softmax(s, dim=-1), lat[:, : inputs.kv_lora_rank]))  # (Hq, Nq, R)
    return torch.stack(outs)


def mla_flops(case: Case) -> int:
    """2·Hq·(W + R)·(visible query-token pairs summed over sequences): scores over the whole latent
    row (W = kv_lora_rank + qk_rope_head_dim), values over its first R = kv_lora_rank columns; for
    one query token 2·Hq·ΣKV·(576 + 512) at DeepSeek's sizes."""
    pairs = sum(visible_pairs(case.seq_len_q, n, causal=True) for n in case_kv_lens(case))
    return 2 * case.heads_q * (case.head_dim + case.params.kv_lora_rank) * pairs


def mla_min_bytes(case: Case) -> int:
    """q read, every cached latent row read once (shared by all heads), out written, kv_lens and
    the block-table entries of the pages used."""
    lens = case_kv_lens(case)
    e = case.element_bytes
    B, Hq, Nq, W, R = case.batch, case.heads_q, case.seq_len_q, case.head_dim, case.params.kv_lora_rank
    meta = 4 * B + (4 * sum(pages_of(lens, case.page_size)) if case.kv_layout == "paged" else 0)
    return e * (B * Hq * Nq * (W + R) + W * sum(lens)) + meta


def mla_input_bytes(case: Case) -> int:
    lens = case_kv_lens(case)
    tokens = case.batch * max(lens) if case.kv_layout != "paged" else sum(pages_of(lens, case.page_size)) * case.page_size
    return case.element_bytes * (case.batch * case.heads_q * case.seq_len_q * case.head_dim + tokens * case.head_dim)
