"""What a workload is: everything the harness needs to know about one kind of attention call.

A workload (prefill, decode, ...) owns, in its own module or package under harness/workloads/:
- its case parameters (a WorkloadParams dataclass: harness.case) and how they extend case ids;
- its scenario axes, their defaults, the order of the grid product, and its validation rules
  (one-line errors naming file, key, value and what is allowed);
- its registry rules: which implementations' paths can run a case (beyond device and dtype);
- its seeded inputs and the call of an implementation on them;
- its float64 reference and the low-precision baseline (the same rows through `naive`);
- the FLOPs and the minimum bytes of one call, and the bytes of its inputs (memory fit);
- how its cases are grouped and labelled in a report.
The harness (scenario, registry, measurement, report) asks the workload of a case through this
interface and never branches on a workload's name. Adding a workload = its module + an entry in
harness/workloads/__init__.py + the implementations that run it + a scenario + docs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

from harness.case import Case, WorkloadParams
from harness.support import YES, Support, no
from harness.workloads.axes import COMMON_AXES, COMMON_DEFAULTS, REQUIRED_AXES, Axis

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class XAxis:
    """How a report draws a group of cases: the column on the x-axis, its symbol and label, and
    a few words for the group's title."""

    column: str
    symbol: str
    label: str
    title: str = ""


class Workload:
    name: str = ""
    description: str = ""
    params: type[WorkloadParams]
    axes: tuple[Axis, ...] = ()  # this workload's own axes (the common ones are added)
    defaults: dict[str, tuple] = {}  # field -> values when a grid does not give the axis
    product_order: tuple[str, ...] = ()  # fields, slowest first (implementation varies fastest)
    required: tuple[str, ...] = ()  # keys a grid must give, beyond heads_q and head_dim
    group_params: tuple[str, ...] = ()  # parameters that split a report group, beyond the common ones
    label_causal: bool = True  # a report title says "causal" when a group is (decode always is)

    # ------------------------------------------------------------------ scenario
    def all_axes(self) -> dict[str, Axis]:
        return {a.key: a for a in (*COMMON_AXES, *self.axes)}

    def all_defaults(self) -> dict[str, tuple]:
        return {**COMMON_DEFAULTS, **self.defaults}

    def required_keys(self) -> tuple[str, ...]:
        return (*REQUIRED_AXES, *self.required)

    def check_table(self, where, at: str, table: dict) -> None:
        """Rules on the raw [[grid]] table before its axes are read (keys that go together)."""

    def check_grid(self, where, at: str, table: dict, values: dict[str, tuple], seed: int) -> None:
        """Rules on the parsed axis values of one grid (before expansion)."""

    def check_case(self, where, at: str, case: Case) -> None:
        """Rules on one expanded case (e.g. documents need self-attention)."""

    def expand(self, values: dict[str, tuple], impls: Iterable[str], grid: str, seed: int) -> list[Case]:
        """The product of the axes in product_order, implementation fastest; duplicates dropped."""
        order = self.product_order
        impls = tuple(impls)
        out: dict[Case, None] = {}
        for combo in itertools.product(*(values[f] for f in order)):
            first = self.make_case(dict(zip(order, combo)), impls[0], grid, seed)
            out.setdefault(first)
            for impl in impls[1:]:  # the same shape: only the implementation differs
                out.setdefault(first.with_impl(impl))
        return list(out)

    def make_case(self, fields: dict[str, Any], impl: str, grid: str, seed: int) -> Case:
        """One case from one combination of axis values (derived fields filled in)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ registry
    def supports(self, impl_name: str, path, case: Case) -> Support:
        """Workload rules for an implementation's path (registry.WorkloadPath), after device and
        dtype: e.g. the variants it declares, the cache layouts it reads."""
        return YES

    # ------------------------------------------------------------------ inputs, reference, work
    def make_inputs(self, case: Case, seed: int):
        """Seeded inputs: an object with `.q` (B, Hq, Nq, D), `.tensors()` (everything an
        implementation must not write) and `.call(fn)` (one call of an implementation)."""
        raise NotImplementedError

    def reference(self, case: Case, inputs) -> tuple["torch.Tensor", "torch.Tensor"]:
        """(rows, ref): the checked query rows (1-D index) and the float64 output on them,
        (B, Hq, R, Dv) on the CPU."""
        raise NotImplementedError

    def reference_metrics(self, case: Case, inputs, rows, ref) -> dict:
        """Metrics of the inputs themselves, computed once with the reference and recorded with
        every implementation's measurement (e.g. decode's `quant_error`: the error a low-precision
        cache brings before any kernel runs). Default: none."""
        return {}

    def naive_rows(self, case: Case, inputs, rows, naive: Callable | None) -> "torch.Tensor | None":
        """The checked rows as `naive` computes them in the case's dtype (the low-precision
        baseline of the error rule); `naive` is the registry's naive path for this workload."""
        if naive is None:
            return None
        import torch

        with torch.no_grad():
            return inputs.call(naive)[:, :, rows.to(inputs.q.device)]

    def reference_key(self, case: Case) -> str:
        """Cases with equal keys share inputs and reference (by default: all but impl, grid,
        threads and the pass kind)."""
        return case.replace(impl="", grid="", threads=None, pass_kind="forward").case_id

    def flops(self, case: Case) -> int:
        raise NotImplementedError

    def min_bytes(self, case: Case) -> int:
        raise NotImplementedError

    def input_bytes(self, case: Case) -> int:
        """Bytes of the inputs as allocated (what "memory above the inputs" is above)."""
        q = case.batch * case.heads_q * case.seq_len_q * case.head_dim
        kv = 2 * case.batch * case.heads_kv * case.seq_len_kv * case.head_dim
        return (q + kv) * case.element_bytes

    def timed_callable(self, fn: Callable, case: Case, prepared) -> Callable[[], object]:
        """A zero-argument callable for the timed region; all set-up stays outside it."""
        import torch

        inputs = prepared.inputs

        def call():
            with torch.no_grad():
                return inputs.call(fn)

        return call

    def gradient_reference(self, case: Case, seed: int, inputs) -> dict:
        """For a training pass: {"grad_out", "ref_grads", "naive_grads"?} (upstream gradient,
        float64 reference gradients, low-precision baseline). Workloads with only a forward pass
        never get here (unsupported_pass)."""
        raise NotImplementedError(f"the {self.name} workload has no gradient reference")

    def unsupported_pass(self, case: Case) -> str:
        """Why this case's pass cannot be measured, or ""."""
        return "" if case.pass_kind == "forward" else f"the {self.name} workload has only a forward pass"

    # ------------------------------------------------------------------ report
    def x_axes(self, rows: list) -> list[tuple[XAxis, list]]:
        """Split a report group's rows by x-axis: [(axis, rows), ...]. Default: prefill-style
        sequence lengths (self-attention N, or cross-attention Nq / Nk)."""
        return split_by_lengths(rows)

    def label_bits(self, row) -> list[str]:
        """Words this workload adds to a group's title (after the common ones)."""
        return []


def split_by_lengths(rs: list) -> list[tuple[XAxis, list]]:
    nq = sorted({int(r["seq_len_q"]) for r in rs})
    nk = sorted({int(r["seq_len_kv"]) for r in rs})
    if all(r["seq_len_q"] == r["seq_len_kv"] for r in rs):
        return [(XAxis("seq_len_q", "N", "sequence length N (Nq = Nk)"), rs)]
    if len(nq) == 1:
        return [(XAxis("seq_len_kv", "Nk", f"key/value length Nk (cross-attention, Nq = {nq[0]})", f"Nq {nq[0]}"), rs)]
    if len(nk) == 1:
        return [(XAxis("seq_len_q", "Nq", f"query length Nq (cross-attention, Nk = {nk[0]})", f"Nk {nk[0]}"), rs)]
    out = []
    for q in nq:  # both vary: one group per Nq, Nk on the x-axis
        out.extend(split_by_lengths([r for r in rs if int(r["seq_len_q"]) == q]))
    return out


def declared_variants_support(impl_name: str, declared: tuple[str, ...], active: tuple[str, ...]) -> Support:
    """Variants are opt-in: an implementation runs a case only if it declares every active one."""
    missing = [x for x in active if x not in declared]
    if not missing:
        return YES
    return no(f"{impl_name} does not implement the {', '.join(missing)} variant"
              f"{'s' if len(missing) > 1 else ''} (declared: {', '.join(declared) or 'none'})")
