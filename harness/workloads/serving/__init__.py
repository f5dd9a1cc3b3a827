"""Serving: one step of a continuous-batching server -- prefill chunks (each after its own cached
prefix) and decode sequences, packed without padding, `fn(q, k, v, *, cu_seqlens_q, cu_seqlens_k,
max_seqlen_q, max_seqlen_k, scale=None) -> out` (docs/contracts.md, "Serving").

The sequences come from a batch spec (`batch_spec`, spec.py: `2x2048p+32x1d@4096`, seeded
`U(lo,hi)` lengths); a case stores the expanded lengths. Common fields: batch = the number of
sequences S, seq_len_q = Tq (new tokens in the step), seq_len_kv = Tk (keys in the step), causal
(always: each sequence bottom-right causal against its cached prefix). Inputs, float64 reference,
FLOPs, bytes, the padding waste: packed.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.case import Case, WorkloadParams, common_id_parts, common_shape_bits, workload_params
from harness.workloads.axes import SCALE_AXIS, Axis
from harness.workloads.base import Workload, XAxis
from harness.workloads.serving import packed
from harness.workloads.serving.spec import (
    GRAMMAR,
    MAX_SPEC_CHARS,
    lengths_digest,
    parse_batch_spec,
    sequence_lengths,
)


@workload_params
@dataclass(frozen=True)
class ServingParams(WorkloadParams):
    workload = "serving"
    batch_spec: str = ""  # canonical spec text (spec.BatchSpec.text)
    q_lens: tuple[int, ...] = ()  # new tokens per sequence
    cached_lens: tuple[int, ...] = ()  # cached tokens per sequence (keys = cached + new)
    scale: float = 0.0  # softmax scale; 0 = 1/sqrt(head_dim)
    # Derived from the lengths (recomputed, whatever is passed), recorded with the case: what
    # padding every sequence to the longest costs (packed.padding_waste; sdpa's padded path pays it).
    padded_token_ratio: float = 1.0  # packed / padded tokens (q and k together)
    padded_flop_waste: float = 0.0  # fraction of a padded dense call's score pairs no sequence needs

    def __post_init__(self):
        if self.q_lens and len(self.q_lens) == len(self.cached_lens):
            ratio, waste = packed.padding_waste(self.q_lens, self.cached_lens)
            object.__setattr__(self, "padded_token_ratio", ratio)
            object.__setattr__(self, "padded_flop_waste", waste)

    def spec_label(self) -> str:
        """The spec, with a digest of the drawn lengths when it has distributions."""
        if "U(" in self.batch_spec:  # a distribution: the drawn lengths are not in the text
            return f"{self.batch_spec}#{lengths_digest(self.q_lens, self.cached_lens)}"
        return self.batch_spec or "-"

    def id_parts(self, case: Case) -> list[str]:
        scale = [f"scale{self.scale:g}"] if self.scale else []
        return common_id_parts(case) + ["serving", self.spec_label(), *scale]

    def shape_bits(self, case: Case) -> list[str]:
        scale = [f"scale {self.scale:g}"] if self.scale else []
        return common_shape_bits(case) + [f"serving {self.spec_label()}", *scale]


def _spec_text_ok(v: Any) -> bool:
    return isinstance(v, str) and 0 < len(v) <= MAX_SPEC_CHARS


class Serving(Workload):
    name = "serving"
    description = "one continuous-batching step: packed prefill chunks with cached prefixes and decode sequences"
    params = ServingParams
    axes = (Axis("batch_spec", "batch_spec", _spec_text_ok, GRAMMAR), SCALE_AXIS)
    defaults = {"scale": (0.0,)}
    product_order = ("device", "dtype", "heads_q", "heads_kv", "head_dim", "batch_spec", "scale", "threads")
    required = ("batch_spec",)
    group_params = ("batch_spec",)
    label_causal = False  # always causal per sequence

    # ------------------------------------------------------------------ scenario
    def check_table(self, where, at: str, table: dict) -> None:
        if "batch" in table:
            raise where.bad(f"{at}.batch", table["batch"], 'nothing with workload = "serving" (the sequences '
                            "are the batch_spec's)")

    def check_grid(self, where, at: str, table: dict, values: dict[str, tuple], seed: int) -> None:
        raw = table["batch_spec"]
        for text in values["batch_spec"]:
            try:
                parse_batch_spec(text)
            except ValueError as exc:
                key = f"{at}.batch_spec[{raw.index(text)}]" if isinstance(raw, list) else f"{at}.batch_spec"
                raise where.error(key, str(exc)) from None

    def make_case(self, f: dict[str, Any], impl: str, grid: str, seed: int) -> Case:
        spec = parse_batch_spec(f["batch_spec"])
        q_lens, cached = sequence_lengths(spec, seed)
        return Case(impl=impl, batch=len(q_lens), heads_q=f["heads_q"],
                    heads_kv=f["heads_q"] if f["heads_kv"] is None else f["heads_kv"], seq_len_q=sum(q_lens),
                    seq_len_kv=sum(q_lens) + sum(cached), head_dim=f["head_dim"], dtype=f["dtype"],
                    device=f["device"], causal=True, threads=f["threads"], grid=grid, workload="serving",
                    batch_spec=spec.text, q_lens=q_lens, cached_lens=cached, scale=float(f["scale"]))

    # ------------------------------------------------------------------ inputs, reference, work
    def make_inputs(self, case: Case, seed: int):
        return packed.make_serving_inputs(case, seed)

    def reference(self, case: Case, inputs):
        rows = packed.reference_rows(case)
        return rows, packed.reference(inputs, rows)

    def flops(self, case: Case) -> int:
        return packed.serving_flops(case)

    def min_bytes(self, case: Case) -> int:
        return packed.serving_min_bytes(case)

    def input_bytes(self, case: Case) -> int:
        return packed.serving_input_bytes(case)

    # ------------------------------------------------------------------ report
    def x_axes(self, rows: list) -> list[tuple[XAxis, list]]:
        return [(XAxis("seq_len_kv", "Tk", "keys in the step (every sequence's cached + new tokens)"), rows)]

    def label_bits(self, row) -> list[str]:
        p = row.case.params
        try:
            prefill, decode = parse_batch_spec(p.batch_spec).counts()
            mix = f"{prefill} prefill + {decode} decode, "
        except ValueError:  # a hand-made record without a spec
            mix = ""
        return [f"serving {p.spec_label()} ({mix}{row['seq_len_q']} new tokens; padded to the longest: "
                f"{p.padded_token_ratio:.0%} of its tokens used, {p.padded_flop_waste:.0%} of its FLOPs wasted)"]


WORKLOAD = Serving()
