"""Prefill: the 2017 attention function over whole sequences, `fn(q, k, v, *, causal, attn_mask,
scale, [variant kwargs]) -> out`, forward or training passes (docs/contracts.md).

Parameters: a key-padding mask (and the fraction of keys it hides), the forms of current models
-- a value head dim of its own (`head_dim_v`, MLA prefill: Dqk 192, Dv 128), a softmax scale
override (`scale`, Gemma's query_pre_attn_scalar) -- and the variants: a sliding window, a soft
cap, ALiBi, packed documents (harness/workloads/visibility.py) and attention sinks (gpt-oss: a
logit per query head in the softmax denominator). Inputs: inputs.py; float64 reference:
reference.py (outputs) and gradients.py (training passes); what a pass counts and times:
passes.py. FLOPs: 2·B·Hq·(Dqk + Dv)·(visible pairs) for the forward (Q·Kᵀ and P·V; a window and
documents hide pairs, a padding mask does not: DESIGN "Measurement rules"), scaled by the pass.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

from harness.case import Case, WorkloadParams, common_id_parts, common_shape_bits, workload_params
from harness.support import Support
from harness.workloads.axes import (
    AXIS_MAX,
    SCALE_AXIS,
    SINKS_AXIS,
    Axis,
    boolean,
    choice,
    is_int,
    is_number,
    pos_upto,
    upto,
)
from harness.workloads.base import Workload, declared_variants_support
from harness.workloads.prefill import passes
from harness.workloads.visibility import document_lengths, visible_pairs

MASK_KINDS = ("none", "key_padding")
SCALE_MAX = 1e4  # 1/sqrt(D) is 0.03 to 1 in practice; 1e4 keeps float32 scores of sane inputs finite
VARIANTS = ("window", "softcap", "alibi", "document", "sinks")


@workload_params
@dataclass(frozen=True)
class PrefillParams(WorkloadParams):
    workload = "prefill"
    mask: str = "none"  # "none" or "key_padding"
    mask_fraction: float = 0.0  # fraction of keys padded away, for mask == "key_padding"
    # variants (docs/contracts.md "Variants"): a sliding window of `window` keys (bottom-right
    # aligned, implies causal), scores soft-capped at `softcap`, ALiBi biases, `documents` packed
    # documents (a seeded split of N; causal within each document). 0 / False = off.
    window: int = 0
    softcap: float = 0.0
    alibi: bool = False
    documents: int = 0
    # forms (docs/contracts.md "Prefill"): v's own head dim (0 = head_dim; stored as 0 when equal, so
    # a plain case keeps its id), the softmax scale (0 = 1/sqrt(head_dim)), attention sinks (a
    # variant: a seeded learned logit per query head joins the softmax denominator).
    head_dim_v: int = 0
    scale: float = 0.0
    sinks: bool = False

    @property
    def variants(self) -> tuple[str, ...]:
        """The active variants, by name (VARIANTS order); () for plain attention."""
        on = (self.window > 0, self.softcap > 0, self.alibi, self.documents > 0, self.sinks)
        return tuple(name for name, active in zip(VARIANTS, on) if active)

    def variant_bits(self) -> list[str]:
        """`dv128`, `sc0.0625`, then `w256`, `cap30`, `alibi`, `docs8`, `sinks` for what is set, in
        that order; nothing for a plain case."""
        bits = [f"dv{self.head_dim_v}"] if self.head_dim_v else []
        bits += [f"sc{self.scale:g}"] if self.scale > 0 else []
        bits += [f"w{self.window}"] if self.window > 0 else []
        bits += [f"cap{self.softcap:g}"] if self.softcap > 0 else []
        bits += ["alibi"] if self.alibi else []
        bits += [f"docs{self.documents}"] if self.documents > 0 else []
        return bits + (["sinks"] if self.sinks else [])

    def id_parts(self, case: Case) -> list[str]:
        mask = self.mask if self.mask == "none" else f"{self.mask}{self.mask_fraction:g}"
        return common_id_parts(case, mask) + self.variant_bits()  # plain cases: ids as ever

    def shape_bits(self, case: Case) -> list[str]:
        bits = common_shape_bits(case)
        if self.mask != "none":
            bits.insert(7 if case.causal else 6, f"pad{self.mask_fraction:g}")
        return bits + self.variant_bits()


@functools.lru_cache(maxsize=4096)
def _params(mask: str, mask_fraction: float, window: int, softcap: float, alibi: bool, documents: int,
            head_dim_v: int, scale: float, sinks: bool) -> PrefillParams:
    """One shared instance per combination: a grid repeats a few combinations over many shapes."""
    return PrefillParams(mask, mask_fraction, window, softcap, alibi, documents, head_dim_v, scale, sinks)


def value_dim(case: Case) -> int:
    """Dv, the head dim of v and of the output: head_dim_v, or head_dim when it is 0."""
    return case.params.head_dim_v or case.head_dim


def effective_causal(case: Case) -> bool:
    """A sliding window and packed documents are causal whatever `causal` says."""
    p = case.params
    return case.causal or p.window > 0 or p.documents > 0


def case_visible_pairs(case: Case) -> int:
    """visible_pairs for a case, its window and document split included."""
    p = case.params
    docs = document_lengths(case.seq_len_kv, p.documents) if p.documents > 0 else ()
    return visible_pairs(case.seq_len_q, case.seq_len_kv, effective_causal(case), p.window, docs)


class Prefill(Workload):
    name = "prefill"
    description = "whole sequences: forward or training passes, masks and variants"
    params = PrefillParams
    axes = (
        Axis("seq_len", "seq_len_q", upto(AXIS_MAX["seq_len"]), pos_upto(AXIS_MAX["seq_len"]) + " (sets seq_len_q = seq_len_kv)"),
        Axis("seq_len_q", "seq_len_q", upto(AXIS_MAX["seq_len"]), pos_upto(AXIS_MAX["seq_len"])),
        Axis("seq_len_kv", "seq_len_kv", upto(AXIS_MAX["seq_len"]), pos_upto(AXIS_MAX["seq_len"]) + " (omit: = seq_len_q)"),
        boolean("causal"),
        choice("mask", "mask", MASK_KINDS),
        Axis("mask_fraction", "mask_fraction", lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)", float),
        choice("pass", "pass_kind", passes.PASS_KINDS),
        Axis("window", "window", lambda v: is_int(v) and v >= 0, "an integer >= 0 (keys in the sliding window; 0 = none)"),
        Axis("softcap", "softcap", lambda v: is_number(v) and v >= 0, "a finite number >= 0 (the soft cap of the "
             "scores; 0 = none)", float),
        boolean("alibi"),
        Axis("documents", "documents", lambda v: is_int(v) and v >= 0,
             "an integer >= 0 (packed documents per sequence, self-attention only; 0 = none)"),
        Axis("head_dim_v", "head_dim_v", lambda v: is_int(v) and 0 <= v <= AXIS_MAX["head_dim"],
             f"an integer in [0, {AXIS_MAX['head_dim']}] (the head dim of v and of the output; 0 = head_dim)"),
        SCALE_AXIS,
        SINKS_AXIS,
    )
    defaults = {"seq_len_kv": (None,), "causal": (False,), "mask": ("none",), "mask_fraction": (0.0,),
                "pass_kind": ("forward",), "window": (0,), "softcap": (0.0,), "alibi": (False,), "documents": (0,),
                "head_dim_v": (0,), "scale": (0.0,), "sinks": (False,)}
    product_order = ("device", "dtype", "pass_kind", "batch", "heads_q", "heads_kv", "seq_len_q", "seq_len_kv",
                     "head_dim", "head_dim_v", "causal", "mask", "mask_fraction", "threads", "scale", "window",
                     "softcap", "alibi", "documents", "sinks")
    # a report group holds one value of each (variants and forms included: a sinks grid over window =
    # [0, 128] is two groups, each titled by its own bits)
    group_params = ("mask", "mask_fraction", "pass_kind", "head_dim_v", "scale", "window", "softcap", "alibi",
                    "documents", "sinks")

    # ------------------------------------------------------------------ scenario
    def check_table(self, where, at: str, table: dict) -> None:
        if "seq_len" in table:
            for other in ("seq_len_q", "seq_len_kv"):
                if other in table:
                    raise where.bad(f"{at}.{other}", table[other], "nothing when seq_len is given (seq_len sets "
                                    "both); use seq_len_q with seq_len_kv instead")
        elif "seq_len_q" not in table:
            raise where.error(f"{at}.seq_len_q", "missing; allowed: seq_len (self-attention) or seq_len_q with an "
                                                 "optional seq_len_kv")

    def make_case(self, f: dict[str, Any], impl: str, grid: str, seed: int) -> Case:
        window, docs = f["window"], f["documents"]
        dv = 0 if f["head_dim_v"] == f["head_dim"] else f["head_dim_v"]  # Dv = Dqk is the plain case
        return Case(impl=impl, batch=f["batch"], heads_q=f["heads_q"],
                    heads_kv=f["heads_q"] if f["heads_kv"] is None else f["heads_kv"], seq_len_q=f["seq_len_q"],
                    seq_len_kv=f["seq_len_q"] if f["seq_len_kv"] is None else f["seq_len_kv"],
                    head_dim=f["head_dim"], dtype=f["dtype"], device=f["device"],
                    causal=f["causal"] or window > 0 or docs > 0, pass_kind=f["pass_kind"], threads=f["threads"],
                    grid=grid, params=_params(
                        f["mask"], f["mask_fraction"] if f["mask"] != "none" else 0.0,  # no mask: moot
                        window, float(f["softcap"]), f["alibi"], docs, dv, float(f["scale"]), f["sinks"]))

    def check_case(self, where, at: str, case: Case) -> None:
        """A case's variants fit its shape: documents need self-attention and at most N documents;
        a scale stays where float32 scores cannot overflow (SCALE_MAX)."""
        if case.params.scale > SCALE_MAX:
            raise where.bad(f"{at}.scale", case.params.scale, f"a finite number in [0, {SCALE_MAX:g}] (the softmax "
                            f"scale; 0 = 1/sqrt(head_dim)); larger ones overflow float32 scores")
        docs = case.params.documents
        if docs and case.seq_len_q != case.seq_len_kv:
            raise where.bad(f"{at}.documents", docs, "0 with cross-attention (seq_len_q "
                            f"{case.seq_len_q} != seq_len_kv {case.seq_len_kv}); documents pack self-attention")
        if docs > case.seq_len_kv:
            raise where.bad(f"{at}.documents", docs,
                            f"an integer <= the sequence length {case.seq_len_kv} (one token per document at most)")

    # ------------------------------------------------------------------ registry
    def supports(self, impl_name: str, path, case: Case) -> Support:
        # Variants (window, softcap, alibi, document) are opt-in: params={"variants": (...)}.
        return declared_variants_support(impl_name, tuple(path.params.get("variants", ())), case.params.variants)

    def unsupported_pass(self, case: Case) -> str:
        # Dv != Dqk and a scale override are no variants: gradients.py has their float64 reference.
        if case.pass_kind != "forward" and case.params.variants:
            return (f"no float64 gradient reference for {', '.join(case.params.variants)} yet: variants are "
                    f"measured forward only")
        return ""

    # ------------------------------------------------------------------ inputs, reference, work
    def make_inputs(self, case: Case, seed: int):
        from harness.workloads.prefill.inputs import make_inputs

        return make_inputs(case, seed)

    def reference(self, case: Case, inputs):
        from harness.workloads.prefill.reference import reference_rows, rows_for

        rows = rows_for(case.batch, case.heads_q, case.seq_len_q, case.seq_len_kv)
        return rows, reference_rows(inputs.q, inputs.k, inputs.v, rows, **inputs.reference_kwargs())

    def naive_rows(self, case: Case, inputs, rows, naive: Callable | None):
        from harness.workloads.prefill.reference import naive_rows

        return naive_rows(inputs.q, inputs.k, inputs.v, rows, **inputs.reference_kwargs())

    def flops(self, case: Case) -> int:
        """Nominal FLOPs of one call of the case's pass (module docstring: what counts)."""
        dims = case.head_dim + value_dim(case)  # Q·Kᵀ over Dqk, P·V over Dv: 2 FLOPs per multiply-add
        forward = 2 * case.batch * case.heads_q * dims * case_visible_pairs(case)
        return passes.flops(forward, case.pass_kind)

    def _tensor_bytes(self, case: Case) -> passes.TensorBytes:
        e, dv = case.element_bytes, value_dim(case)
        rows_q, rows_kv = case.batch * case.heads_q * case.seq_len_q, case.batch * case.heads_kv * case.seq_len_kv
        return passes.TensorBytes(q=e * rows_q * case.head_dim, out=e * rows_q * dv, k=e * rows_kv * case.head_dim,
                                  v=e * rows_kv * dv)

    def min_bytes(self, case: Case) -> int:
        return passes.min_bytes(self._tensor_bytes(case), case.pass_kind)

    def input_bytes(self, case: Case) -> int:
        """q, k and v as allocated (v with Dv), and the sinks (Hq float32) when active."""
        t = self._tensor_bytes(case)
        return t.q + t.k + t.v + (4 * case.heads_q if case.params.sinks else 0)

    def timed_callable(self, fn: Callable, case: Case, prepared):
        i = prepared.inputs
        return passes.timed_call(fn, i.q, i.k, i.v, i.call_kwargs(), prepared.grad_out, case.pass_kind)

    def gradient_reference(self, case: Case, seed: int, inputs) -> dict:
        """grad_out, ref_grads (float64) and, for low precision, naive_grads."""
        from harness.workloads.prefill import gradients

        g = gradients.upstream_grad(case, seed, like=inputs.q, width=value_dim(case))  # shaped like out
        kw = dict(causal=inputs.causal, attn_mask=inputs.attn_mask, scale=inputs.scale or None)
        out = dict(grad_out=g, ref_grads=gradients.reference_grads(inputs.q, inputs.k, inputs.v, g, **kw))
        if case.dtype in ("float16", "bfloat16"):
            out["naive_grads"] = gradients.naive_grads(inputs.q, inputs.k, inputs.v, g, **kw)
        return out

    # ------------------------------------------------------------------ report
    def label_bits(self, row) -> list[str]:
        bits = [f"{row['mask']} {row['mask_fraction'] or 0:g}"] if row["mask"] and row["mask"] != "none" else []
        return bits + row.case.params.variant_bits()  # dv128 sc0.0625 w128 cap30 alibi docs8 sinks


WORKLOAD = Prefill()
