"""Decode: a few query tokens per sequence against a KV cache, `fn(q, k_cache, v_cache, *,
kv_lens, block_table=None, scale=None, sinks=None, k_scale=None, v_scale=None) -> out`
(docs/contracts.md "Decode").

Parameters: the cache layout (contiguous, or pages of `page_size` tokens reached through a block
table), each sequence's cached length (`kv_lens`; seq_len_kv = the longest, seq_len_q = query
tokens per sequence), the cache's storage type (`kv_dtype`: the case dtype, bfloat16 or float8
e4m3 with a per-tensor or per-kv-head scale, `kv_scale`), attention sinks and the softmax scale.
Inputs, float64 reference, FLOPs and bytes: kv_cache.py; the low-precision cache: kv_quant.py.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from harness.case import Case, WorkloadParams, common_id_parts, common_shape_bits, workload_params
from harness.support import YES, Support, no
from harness.workloads.axes import AXIS_MAX, SCALE_AXIS, SINKS_AXIS, Axis, choice, is_positive_int, pos_upto, upto
from harness.workloads.base import Workload, XAxis, split_by_lengths
from harness.workloads.decode import kv_cache, kv_quant

KV_LAYOUTS = ("contiguous", "paged")
KV_LENS_ALLOWED = ("a positive integer (every sequence that long), a list of positive integers "
                   "(one per sequence, inside the axis list: [[...]]) or a table "
                   "{uniform = [lo, hi]} with 0 < lo <= hi; lengths <= 16777216")


@workload_params
@dataclass(frozen=True)
class DecodeParams(WorkloadParams):
    workload = "decode"
    kv_layout: str = "contiguous"
    page_size: int = 0  # tokens per page (paged only)
    kv_lens: tuple[int, ...] = ()  # cached tokens of each sequence; () = seq_len_kv for every one
    kv_dtype: str = "same"  # the cache's storage type: "same" (the case dtype) | bfloat16 | float8_e4m3fn
    kv_scale: str = "tensor"  # float8 only: one float32 scale per cache tensor | per kv head
    sinks: bool = False  # a seeded logit per query head joins the softmax denominator
    scale: float = 0.0  # the softmax scale; 0 = 1/sqrt(head_dim)

    def layout_label(self) -> str:
        return self.kv_layout if self.kv_layout == "contiguous" else f"{self.kv_layout}{self.page_size}"

    def form_bits(self) -> list[str]:
        """Id words of the attention form, only where it differs from the plain one (ids of plain
        cases are the ones written before these parameters existed)."""
        bits = []
        if self.kv_dtype != "same":
            bits.append(kv_quant.label(self.kv_dtype, self.kv_scale))
        if self.sinks:
            bits.append("sinks")
        if self.scale:
            bits.append(f"scale{self.scale:g}")
        return bits

    def id_parts(self, case: Case) -> list[str]:
        return common_id_parts(case) + ["decode", self.layout_label(), kv_label(self.kv_lens), *self.form_bits()]

    def shape_bits(self, case: Case) -> list[str]:
        page = f"/{self.page_size}" if self.kv_layout == "paged" else ""
        return common_shape_bits(case) + [f"decode {self.kv_layout}{page}", *self.form_bits()]


def kv_label(kv_lens: tuple[int, ...]) -> str:
    """`kv8192` when every sequence has the same length, else `kv512..16384#1a2b3c` (min, max and
    a digest of the exact lengths, so two ragged batches never share an id)."""
    if not kv_lens:
        return "kv-"
    if len(set(kv_lens)) == 1:
        return f"kv{kv_lens[0]}"
    digest = hashlib.sha1(",".join(map(str, kv_lens)).encode()).hexdigest()[:6]
    return f"kv{min(kv_lens)}..{max(kv_lens)}#{digest}"


# --- kv_lens specs in a scenario: an int, a list of ints, or {uniform = [lo, hi]} ------------------


def _kv_len_ok(x: Any) -> bool:
    return is_positive_int(x) and x <= AXIS_MAX["seq_len"]


def is_kv_spec(v: Any) -> bool:
    """One kv_lens axis value: an int > 0, a non-empty list of them, or {uniform = [lo, hi]}."""
    if isinstance(v, dict):
        b = v.get("uniform")
        return (set(v) == {"uniform"} and isinstance(b, list) and len(b) == 2
                and all(_kv_len_ok(x) for x in b) and b[0] <= b[1])
    if isinstance(v, list):
        return bool(v) and len(v) <= AXIS_MAX["batch"] and all(_kv_len_ok(x) for x in v)
    return _kv_len_ok(v)


def kv_spec_key(v: Any):
    """A hashable form of a kv_lens spec: int, tuple of ints, or ("uniform", lo, hi)."""
    if isinstance(v, dict):
        return ("uniform", *v["uniform"])
    return tuple(v) if isinstance(v, list) else v


def expand_kv_spec(spec: Any, batch: int, seed: int) -> tuple[int, ...]:
    """A kv_spec_key value expanded to one length per sequence (ValueError when it cannot be)."""
    if isinstance(spec, tuple) and spec and spec[0] == "uniform":
        return kv_cache.kv_lengths({"uniform": list(spec[1:])}, batch, seed)
    return kv_cache.kv_lengths(list(spec) if isinstance(spec, tuple) else spec, batch, seed)


def check_cache_lengths(where, at: str, table: dict, values: dict[str, tuple], seed: int, query_key: str) -> None:
    """A paged grid gives page_size; every kv_lens spec expands for every batch; no sequence is
    shorter than its query tokens (the axis `query_key`). Shared by the cache workloads."""
    if "paged" in values["kv_layout"] and "page_size" not in table:
        raise where.error(f"{at}.page_size", "missing; allowed: a positive integer (tokens per page), required "
                                             'with kv_layout = "paged"')
    raw = table["kv_lens"]
    for j, spec in enumerate(values["kv_lens"]):
        for batch in values["batch"]:
            try:
                lens = expand_kv_spec(spec, batch, seed)
            except ValueError as exc:
                key = f"{at}.kv_lens[{j}]" if isinstance(raw, list) else f"{at}.kv_lens"
                raise where.bad(key, raw[j] if isinstance(raw, list) else raw,
                                f"{KV_LENS_ALLOWED} ({exc})") from None
            for nq in values["seq_len_q"]:
                if nq > min(lens):
                    raise where.bad(f"{at}.{query_key}", nq, f"a positive integer <= the shortest kv length "
                                    f"{min(lens)} (a sequence's queries are in its cache)")


def cache_x_axes(rows: list) -> list[tuple[XAxis, list]]:
    """KV cache length on the x-axis (one query-token count), else query tokens (one cache length)."""
    nq = sorted({int(r["seq_len_q"]) for r in rows})
    nk = sorted({int(r["seq_len_kv"]) for r in rows})
    if len(nq) == 1:
        tokens = f"{nq[0]} query token{'s' if nq[0] > 1 else ''}"
        return [(XAxis("seq_len_kv", "KV", f"KV cache length (longest sequence; {tokens})", tokens), rows)]
    if len(nk) == 1:
        return [(XAxis("seq_len_q", "Nq", f"query tokens per sequence (KV cache up to {nk[0]} tokens)",
                       f"KV {nk[0]}"), rows)]
    return split_by_lengths(rows)


class Decode(Workload):
    name = "decode"
    description = "query tokens against a KV cache (contiguous or paged), per-sequence lengths"
    params = DecodeParams
    axes = (
        Axis("query_tokens", "seq_len_q", upto(AXIS_MAX["seq_len"]),
             pos_upto(AXIS_MAX["seq_len"]) + " (query tokens per sequence)"),
        Axis("kv_lens", "kv_lens", is_kv_spec, KV_LENS_ALLOWED, kv_spec_key),
        choice("kv_layout", "kv_layout", KV_LAYOUTS),
        Axis("page_size", "page_size", upto(AXIS_MAX["seq_len"]), pos_upto(AXIS_MAX["seq_len"]) + " (tokens per page)"),
        choice("kv_dtype", "kv_dtype", kv_quant.KV_DTYPES),
        choice("kv_scale", "kv_scale", kv_quant.KV_SCALES),
        SINKS_AXIS,
        SCALE_AXIS,
    )
    defaults = {"seq_len_q": (1,), "kv_layout": ("contiguous",), "page_size": (0,), "kv_dtype": ("same",),
                "kv_scale": ("tensor",), "sinks": (False,), "scale": (0.0,)}
    product_order = ("device", "dtype", "batch", "heads_q", "heads_kv", "seq_len_q", "head_dim", "kv_layout",
                     "page_size", "kv_lens", "kv_dtype", "kv_scale", "sinks", "scale", "threads")
    required = ("kv_lens",)
    group_params = ("kv_layout", "page_size", "kv_dtype", "kv_scale", "sinks", "scale")
    label_causal = False  # decode is always causal over each sequence

    # ------------------------------------------------------------------ scenario
    def check_grid(self, where, at: str, table: dict, values: dict[str, tuple], seed: int) -> None:
        check_cache_lengths(where, at, table, values, seed, "query_tokens")
        kv_quant.check_grid(where, at, table, values)

    def make_case(self, f: dict[str, Any], impl: str, grid: str, seed: int) -> Case:
        lens = expand_kv_spec(f["kv_lens"], f["batch"], seed)
        return Case(impl=impl, batch=f["batch"], heads_q=f["heads_q"],
                    heads_kv=f["heads_q"] if f["heads_kv"] is None else f["heads_kv"], seq_len_q=f["seq_len_q"],
                    seq_len_kv=max(lens), head_dim=f["head_dim"], dtype=f["dtype"], device=f["device"],
                    causal=True,  # bottom-right causal over each sequence's length
                    threads=f["threads"], grid=grid, workload="decode", kv_layout=f["kv_layout"],
                    page_size=f["page_size"] if f["kv_layout"] == "paged" else 0, kv_lens=lens,
                    kv_dtype=f["kv_dtype"],
                    kv_scale=f["kv_scale"] if f["kv_dtype"] == "float8_e4m3fn" else "tensor",
                    sinks=f["sinks"], scale=f["scale"])

    # ------------------------------------------------------------------ registry
    def supports(self, impl_name: str, path, case: Case) -> Support:
        layouts = path.options.get("layouts", KV_LAYOUTS)
        if case.params.kv_layout not in layouts:
            return no(f"{impl_name} decodes from {', '.join(layouts)} caches, not {case.params.kv_layout}")
        return form_support(impl_name, path, case)

    # ------------------------------------------------------------------ inputs, reference, work
    def make_inputs(self, case: Case, seed: int):
        return kv_cache.make_decode_inputs(case, seed)

    def reference(self, case: Case, inputs):
        import torch

        return torch.arange(case.seq_len_q), kv_cache.reference_decode(inputs)  # every row: (B, Hq, Nq, D)

    def reference_metrics(self, case: Case, inputs, rows, ref) -> dict:
        """quant_error: how far the float64 attention over the dequantised cache (the reference the
        error rule uses) is from the float64 attention over the float32 cache it was made from."""
        if case.params.kv_dtype == "same":
            return {}
        return {"quant_error": kv_cache.quant_error(case, inputs, ref)}

    def reference_key(self, case: Case) -> str:
        return case.replace(impl="", grid="", threads=None).case_id

    def flops(self, case: Case) -> int:
        return kv_cache.decode_flops(case)

    def min_bytes(self, case: Case) -> int:
        return kv_cache.decode_min_bytes(case)

    def input_bytes(self, case: Case) -> int:
        return kv_cache.decode_input_bytes(case)

    # ------------------------------------------------------------------ report
    def x_axes(self, rows: list) -> list[tuple[XAxis, list]]:
        return cache_x_axes(rows)

    def label_bits(self, row) -> list[str]:
        bits = ["paged " + str(row["page_size"]) if row["kv_layout"] == "paged" else "contiguous"]
        form = {k: _field(row, k, d) for k, d in (("kv_dtype", "same"), ("kv_scale", "tensor"), ("sinks", False),
                                                  ("scale", 0.0))}
        if form["kv_dtype"] != "same":
            bits.append(kv_quant.label(form["kv_dtype"], form["kv_scale"]) + " cache")
        if form["sinks"]:
            bits.append("sinks")
        if form["scale"]:
            bits.append(f"scale {form['scale']:g}")
        return bits


def _field(row, key: str, default):
    """A report row's field, or its "off" default for rows that do not carry it."""
    try:
        return row[key]
    except KeyError:
        return default


# The forms beyond plain attention an implementation's decode path declares (register_decode's
# `forms=`): "sinks", "scale", "kv_bfloat16", "kv_float8_e4m3fn". Opt-in, like prefill variants.
def active_forms(case: Case) -> tuple[str, ...]:
    p = case.params
    forms = []
    if p.kv_dtype != "same":
        forms.append(f"kv_{p.kv_dtype}")
    if p.sinks:
        forms.append("sinks")
    if p.scale:
        forms.append("scale")
    return tuple(forms)


def form_support(impl_name: str, path, case: Case) -> Support:
    """An implementation runs a form only if its path declares it (`forms=`); a path may give a
    reason per form (`forms_missing={form: why}`) for the ones it cannot express."""
    declared = path.options.get("forms", ())
    why = path.options.get("forms_missing", {})
    for form in active_forms(case):
        if form not in declared:
            return no(why.get(form) or f"{impl_name} does not implement the {form} decode form "
                                       f"(declared: {', '.join(declared) or 'none'})")
    if case.params.kv_dtype != "same" and case.dtype != "float32":
        return no(f"a {case.params.kv_dtype} cache is read with float32 queries (dtype = float32), not {case.dtype}")
    return YES


WORKLOAD = Decode()
