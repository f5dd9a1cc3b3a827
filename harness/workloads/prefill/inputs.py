"""Seeded inputs for one prefill case: q, k, v, the optional key-padding mask and variant inputs.

Every implementation of a case must see exactly the same numbers, so values are drawn in float32
on the CPU from a generator seeded by (seed, shape) only, then cast and moved. The seed ignores
impl, dtype, device, threads, pass kind and masking: the same shape gets the same q/k/v whichever
implementation, dtype or device runs it, so a float16 CUDA case and a float32 CPU case differ
only by the rounding of their inputs.

Attention sinks (gpt-oss) are drawn after q, k and v from the same generator, so a case with sinks
sees the same q, k, v as without: one float32 logit per query head, N(0, 1)·2 (SINK_STD) -- the
size of the learned sinks of gpt-oss's released checkpoints, which sit within a few units of 0, so
a sink takes a visible share of the softmax on some heads and almost none on others.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness.case import Case

if TYPE_CHECKING:  # torch is imported inside functions: nothing heavy at import time
    import torch

SINK_STD = 2.0  # sinks ~ N(0, SINK_STD²), float32, one per query head


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no truth value to compare with
class Inputs:
    q: "torch.Tensor"  # (B, Hq, Nq, D)
    k: "torch.Tensor"  # (B, Hkv, Nk, D)
    v: "torch.Tensor"  # (B, Hkv, Nk, Dv)
    attn_mask: "torch.Tensor | None"  # (B, 1, 1, Nk) bool, True = may attend; None = no mask
    causal: bool  # True also for a window or documents (they are causal)
    window: int = 0  # variants (harness/workloads/visibility.py): 0 / False / None = off
    softcap: float = 0.0
    alibi: bool = False
    doc_ids: "torch.Tensor | None" = None  # (Nk,) int64 document index per position
    sinks: "torch.Tensor | None" = None  # (Hq,) float32 sink logit per query head
    scale: float = 0.0  # the softmax scale; 0 = the implementation's default 1/sqrt(D)

    def variant_kwargs(self) -> dict:
        """window=, softcap=, alibi=, doc_ids=, sinks= -- only those that are active, so an
        implementation that knows no variant is called exactly as before."""
        kw: dict = {"window": self.window} if self.window > 0 else {}
        if self.softcap > 0:
            kw["softcap"] = self.softcap
        if self.alibi:
            kw["alibi"] = True
        if self.doc_ids is not None:
            kw["doc_ids"] = self.doc_ids
        if self.sinks is not None:
            kw["sinks"] = self.sinks
        return kw

    def call_kwargs(self) -> dict:
        """Keyword arguments for an implementation call: fn(q, k, v, **inputs.call_kwargs()); scale=
        only when the case overrides it."""
        scale = {"scale": self.scale} if self.scale > 0 else {}
        return {"causal": self.causal, "attn_mask": self.attn_mask, **scale, **self.variant_kwargs()}

    def reference_kwargs(self) -> dict:
        """Keyword arguments of the float64 reference (harness/workloads/prefill/reference.py)."""
        return dict(causal=self.causal, attn_mask=self.attn_mask, scale=self.scale or None, **self.variant_kwargs())

    def call(self, fn):
        """One call of an implementation's prefill function on these inputs."""
        return fn(self.q, self.k, self.v, **self.call_kwargs())

    def named_tensors(self) -> dict:
        """Every input tensor by name, for checksumming (an implementation must not write them)."""
        named = {"q": self.q, "k": self.k, "v": self.v, "attn_mask": self.attn_mask, "doc_ids": self.doc_ids,
                 "sinks": self.sinks}
        return {n: t for n, t in named.items() if t is not None}

    def tensors(self) -> tuple:
        return tuple(self.named_tensors().values())


def input_seed(case: Case, seed: int) -> int:
    """A 63-bit seed from (seed, shape); stable across processes and Python versions
    (hash() is salted per process, so it is not used)."""
    key = (
        int(seed),
        case.batch,
        case.heads_q,
        case.heads_kv,
        case.seq_len_q,
        case.seq_len_kv,
        case.head_dim,
    )
    digest = hashlib.sha256(repr(key).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def padded_key_counts(batch: int, seq_len_kv: int, mask_fraction: float) -> list[int]:
    """How many trailing keys are padded away in each batch row.

    Row b pads round(fraction * Nk * f_b) keys with f_b rising linearly from 0.5 to 1.5 across the
    batch (f = 1 when B = 1), so rows differ (as real padded batches do) while the mean padded
    fraction stays about `mask_fraction`. Below a fraction of 1 every row keeps at least one key;
    only mask_fraction == 1 pads rows completely (their outputs are then zeros by contract).
    """
    if not 0.0 <= mask_fraction <= 1.0:
        raise ValueError(f"mask_fraction must be in [0, 1], got {mask_fraction}")
    if mask_fraction == 1.0:
        return [seq_len_kv] * batch
    counts = []
    for b in range(batch):
        factor = 1.0 if batch == 1 else 0.5 + b / (batch - 1)
        n = round(mask_fraction * seq_len_kv * factor)
        counts.append(max(0, min(n, seq_len_kv - 1)))
    return counts


def key_padding_mask(batch: int, seq_len_kv: int, mask_fraction: float, device="cpu"):
    """Boolean (B, 1, 1, Nk) mask, True = may attend; row b's last padded_key_counts[b] keys False."""
    import torch

    counts = padded_key_counts(batch, seq_len_kv, mask_fraction)
    keep = torch.tensor([seq_len_kv - c for c in counts]).unsqueeze(1)  # (B, 1)
    positions = torch.arange(seq_len_kv).unsqueeze(0)  # (1, Nk)
    mask = positions < keep  # (B, Nk)
    return mask.reshape(batch, 1, 1, seq_len_kv).to(device)  # (B, 1, 1, Nk)


def make_inputs(case: Case, seed: int = 0) -> Inputs:
    """Standard-normal q, k, v for `case` on case.device in case.dtype (v with the value head dim
    Dv), plus its mask, document ids and sinks (module docstring).

    For pass kinds with a backward pass q, k and v are leaf tensors that require grad.
    """
    import torch

    if case.mask not in ("none", "key_padding"):
        raise ValueError(f"unknown mask kind {case.mask!r}; allowed: none, key_padding")
    dtype = getattr(torch, case.dtype)
    gen = torch.Generator(device="cpu").manual_seed(input_seed(case, seed))
    B, Hq, Hkv = case.batch, case.heads_q, case.heads_kv
    Nq, Nk, D = case.seq_len_q, case.seq_len_kv, case.head_dim
    q = torch.randn((B, Hq, Nq, D), generator=gen, dtype=torch.float32)  # (B, Hq, Nq, D)
    k = torch.randn((B, Hkv, Nk, D), generator=gen, dtype=torch.float32)  # (B, Hkv, Nk, D)
    Dv = case.head_dim_v or D
    v = torch.randn((B, Hkv, Nk, Dv), generator=gen, dtype=torch.float32)  # (B, Hkv, Nk, Dv)
    sinks = None
    if case.sinks:  # drawn last: q, k, v stay those of the same case without sinks
        sinks = (torch.randn((Hq,), generator=gen, dtype=torch.float32) * SINK_STD).to(case.device)  # (Hq,)
    needs_grad = case.pass_kind in ("backward", "forward_backward")
    q, k, v = (t.to(device=case.device, dtype=dtype).requires_grad_(needs_grad) for t in (q, k, v))
    mask = None
    if case.mask == "key_padding":
        mask = key_padding_mask(B, Nk, case.mask_fraction, device=case.device)  # (B, 1, 1, Nk)
    doc_ids = None
    if case.documents > 0:  # a seeded split depending on (N, documents) only: visibility.py
        from harness.workloads.visibility import document_ids

        doc_ids = torch.tensor(document_ids(Nk, case.documents), dtype=torch.long, device=case.device)
    return Inputs(q=q, k=k, v=v, attn_mask=mask, causal=case.causal or case.window > 0 or case.documents > 0, window=case.window,
                  softcap=float(case.softcap), alibi=case.alibi, doc_ids=doc_ids, sinks=sinks, scale=float(case.scale))
