"""A serving step as packed (varlen) tensors: seeded inputs, the float64 reference, FLOPs, bytes
and what padding the batch would waste.

The contract (docs/contracts.md, "Serving"): fn(q, k, v, *, cu_seqlens_q, cu_seqlens_k,
max_seqlen_q, max_seqlen_k, scale=None) -> out, FlashAttention's varlen layout. q (Tq, Hq, D): the
new tokens of every sequence, concatenated; k, v (Tk, Hkv, D): every sequence's cached tokens then
its new ones, concatenated; cu_seqlens_q / cu_seqlens_k int32 (S+1,) the cumulative lengths; out
(Tq, Hq, D). Query i of sequence s (n_s new tokens, c_s cached) sees its key j iff j <= i + c_s
(bottom-right causal); query head h uses kv head h // (Hq / Hkv).

Inputs are drawn like the other workloads' (harness/workloads/prefill/inputs.py): standard normal
in float32 on the CPU from a generator seeded by (seed, heads, head dim, lengths) only, then cast
and moved, so every implementation, dtype and device sees the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness.case import Case
from harness.workloads.visibility import visible_pairs

if TYPE_CHECKING:  # torch is imported inside functions: nothing heavy at import time
    import torch

ALL_ROWS_MAX_PAIRS = 2**25  # Hq·Σ n_s·(c_s + n_s) up to which every query row is checked
SAMPLED_ROWS = 512  # else about this many rows, spread over the sequences (each keeps >= 2 or all)


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no truth value to compare with
class ServingInputs:
    packed_q: "torch.Tensor"  # (Tq, Hq, D)
    k: "torch.Tensor"  # (Tk, Hkv, D)
    v: "torch.Tensor"  # (Tk, Hkv, D)
    cu_seqlens_q: "torch.Tensor"  # (S+1,) int32, on q's device
    cu_seqlens_k: "torch.Tensor"  # (S+1,) int32
    q_lens: tuple[int, ...]  # new tokens per sequence (host)
    cached_lens: tuple[int, ...]  # cached tokens per sequence (host)
    scale: float | None = None

    @property
    def q(self) -> "torch.Tensor":
        """The queries as the harness's checks see every workload's: (1, Hq, Tq, D), a view."""
        return self.packed_q.permute(1, 0, 2).unsqueeze(0)

    def kwargs(self) -> dict:
        return {"cu_seqlens_q": self.cu_seqlens_q, "cu_seqlens_k": self.cu_seqlens_k,
                "max_seqlen_q": max(self.q_lens),
                "max_seqlen_k": max(n + c for n, c in zip(self.q_lens, self.cached_lens)), "scale": self.scale}

    def call(self, fn):
        """One call of an implementation's serving function; its (Tq, Hq, D) output is returned as
        the view (1, Hq, Tq, D) the harness compares (anything else is returned as is)."""
        out = fn(self.packed_q, self.k, self.v, **self.kwargs())
        if hasattr(out, "dim") and out.dim() == 3:
            return out.permute(1, 0, 2).unsqueeze(0)
        return out

    def named_tensors(self) -> dict:
        return {"q": self.packed_q, "k": self.k, "v": self.v, "cu_seqlens_q": self.cu_seqlens_q,
                "cu_seqlens_k": self.cu_seqlens_k}

    def tensors(self) -> tuple:
        return tuple(self.named_tensors().values())


def case_lengths(case: Case) -> tuple[tuple[int, ...], tuple[int, ...]]:
    p = case.params
    if not p.q_lens or len(p.q_lens) != len(p.cached_lens):
        raise ValueError(f"serving case needs q_lens and cached_lens of one length, got {p.q_lens}, {p.cached_lens}")
    return tuple(p.q_lens), tuple(p.cached_lens)


def cumulative(lens) -> list[int]:
    out = [0]
    for n in lens:
        out.append(out[-1] + n)
    return out


def make_serving_inputs(case: Case, seed: int = 0) -> ServingInputs:
    import torch

    from harness.workloads.serving.spec import seed_of

    q_lens, cached = case_lengths(case)
    k_lens = tuple(n + c for n, c in zip(q_lens, cached))
    Hq, Hkv, D = case.heads_q, case.heads_kv, case.head_dim
    if Hq % Hkv:
        raise ValueError(f"heads_q ({Hq}) must be a multiple of heads_kv ({Hkv})")
    dtype, dev = getattr(torch, case.dtype), case.device
    gen = torch.Generator(device="cpu").manual_seed(seed_of(int(seed), "serving-inputs", Hq, Hkv, D, q_lens, cached))
    q = torch.randn((sum(q_lens), Hq, D), generator=gen).to(device=dev, dtype=dtype)  # (Tq, Hq, D)
    k = torch.randn((sum(k_lens), Hkv, D), generator=gen).to(device=dev, dtype=dtype)  # (Tk, Hkv, D)
    v = torch.randn((sum(k_lens), Hkv, D), generator=gen).to(device=dev, dtype=dtype)  # (Tk, Hkv, D)
    cu_q = torch.tensor(cumulative(q_lens), dtype=torch.int32, device=dev)  # (S+1,)
    cu_k = torch.tensor(cumulative(k_lens), dtype=torch.int32, device=dev)  # (S+1,)
    scale = case.params.scale or None  # 0 = the default 1/sqrt(D)
    return ServingInputs(q, k, v, cu_q, cu_k, q_lens, cached, scale)


def reference_rows(case: Case) -> "torch.Tensor":
    """Packed query rows to check: every row while the float64 reference is affordable, else
    per sequence its first and last rows and evenly spaced ones between (every sequence is checked)."""
    import torch

    from harness.workloads.prefill.reference import select_rows

    q_lens, cached = case_lengths(case)
    if case.heads_q * sum(n * (n + c) for n, c in zip(q_lens, cached)) <= ALL_ROWS_MAX_PAIRS:
        return torch.arange(sum(q_lens))
    per_seq = max(2, SAMPLED_ROWS // len(q_lens))
    starts = cumulative(q_lens)
    return torch.cat([select_rows(n, per_seq) + s0 for n, s0 in zip(q_lens, starts)])


def reference(inputs: ServingInputs, rows: "torch.Tensor") -> "torch.Tensor":
    """float64 CPU output on packed query `rows`, (1, Hq, R, D): one sequence at a time (only its
    keys copied to float64), its rows against its own keys, heads expanded, bottom-right causal
    against its cached prefix."""
    import torch

    q, k, v = inputs.packed_q.detach(), inputs.k.detach(), inputs.v.detach()  # float64 per sequence below
    Hq, D = q.shape[1], q.shape[2]
    group = Hq // k.shape[1]
    scale = 1.0 / math.sqrt(D) if inputs.scale is None else float(inputs.scale)
    cu_q, cu_k = cumulative(inputs.q_lens), cumulative(n + c for n, c in zip(inputs.q_lens, inputs.cached_lens))
    seq_of = torch.bucketize(rows, torch.tensor(cu_q[1:]), right=True)  # (R,) sequence of each row
    out = torch.empty(Hq, rows.numel(), D, dtype=torch.float64)
    for s in seq_of.unique().tolist():
        pick = (seq_of == s).nonzero().squeeze(1)  # positions in `rows`
        i = rows[pick] - cu_q[s]  # (r,) query index within the sequence
        ks, vs = (t[cu_k[s]:cu_k[s + 1]].to("cpu", torch.float64).transpose(0, 1).repeat_interleave(group, dim=0)
                  for t in (k, v))  # (Hq, n+c, D) each
        qs = q[rows[pick].to(q.device)].to("cpu", torch.float64).transpose(0, 1)  # (Hq, r, D)
        scores = torch.matmul(qs, ks.transpose(-1, -2)) * scale  # (Hq, r, n+c)
        j = torch.arange(ks.shape[1]).unsqueeze(0)  # (1, n+c)
        scores = scores.masked_fill(j > (i + inputs.cached_lens[s]).unsqueeze(1), float("-inf"))
        out[:, pick] = torch.matmul(torch.softmax(scores, dim=-1), vs)  # (Hq, r, D)
    return out.unsqueeze(0)  # (1, Hq, R, D)


# --- work counts ----------------------------------------------------------------------------------


def serving_pairs(q_lens, cached_lens) -> int:
    """Visible (query, key) pairs of the step: each sequence bottom-right causal over its keys."""
    return sum(visible_pairs(n, n + c, causal=True) for n, c in zip(q_lens, cached_lens))


def serving_flops(case: Case) -> int:
    """4·Hq·D·Σ_s visible pairs (Q·Kᵀ and P·V, 2 FLOPs per multiply-add)."""
    return 4 * case.heads_q * case.head_dim * serving_pairs(*case_lengths(case))


def serving_min_bytes(case: Case) -> int:
    """q read and out written (Tq·Hq·D each), k and v read once (Tk·Hkv·D each), in the case's
    dtype, plus the two int32 cu_seqlens (S+1 each)."""
    q_lens, cached = case_lengths(case)
    tq, tk = sum(q_lens), sum(q_lens) + sum(cached)
    e = case.element_bytes
    return e * case.head_dim * (2 * tq * case.heads_q + 2 * tk * case.heads_kv) + 2 * 4 * (len(q_lens) + 1)


def serving_input_bytes(case: Case) -> int:
    q_lens, cached = case_lengths(case)
    tq, tk = sum(q_lens), sum(q_lens) + sum(cached)
    return case.element_bytes * case.head_dim * (tq * case.heads_q + 2 * tk * case.heads_kv)


def padding_waste(q_lens, cached_lens) -> tuple[float, float]:
    """What padding every sequence to the longest one costs (sdpa's padded path does that):
    (packed / padded tokens, q and k together, and the fraction of the padded call's score pairs
    -- S·max_q·max_k, all computed by a masked dense call -- that no sequence needs)."""
    S = len(q_lens)
    k_lens = [n + c for n, c in zip(q_lens, cached_lens)]
    mq, mk = max(q_lens), max(k_lens)
    if not (mq and mk):  # no new token anywhere (a hand-made case): nothing to pad
        return 1.0, 0.0
    token_ratio = (sum(q_lens) + sum(k_lens)) / (S * (mq + mk))
    waste = 1.0 - serving_pairs(q_lens, cached_lens) / (S * mq * mk)
    return token_ratio, waste
