"""The checked call, shared by the sweep (harness.run.worker) and the gate: prepare a case (its
workload's seeded inputs, float64 reference rows, the same-dtype naive error), check an
implementation's output against them, build the callable that is timed, and turn an exception into
a status. Nothing here times, formats or writes files, and nothing branches on a workload.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from harness import vocab
from harness.case import Case

if TYPE_CHECKING:  # torch is imported inside functions
    import torch

    from harness.measure.accuracy import Errors

OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory")
MESSAGE_CHARS = 2000
TRACEBACK_CHARS = 4000


@dataclass(frozen=True, eq=False)
class Prepared:
    """Everything an accuracy check of one shape needs, computed once for all implementations."""

    case: Case  # the shape (its impl is irrelevant: inputs ignore it)
    inputs: object  # the workload's inputs: .q, .tensors(), .call(fn)
    rows: "torch.Tensor"  # query rows compared with the reference
    reference: "torch.Tensor"  # (B, Hq, R, Dv) float64 reference on those rows
    naive_errors: "Errors | None"  # the naive same-dtype error (low precision only)
    # training passes: the seeded upstream gradient and the reference / naive gradients
    grad_out: "torch.Tensor | None" = None  # (B, Hq, Nq, D), the inputs' dtype and device
    ref_grads: dict | None = None  # {"dq", "dk", "dv"} float64 on the CPU
    naive_grads: dict | None = None  # same, in the inputs' dtype (low precision only)
    metrics: dict | None = None  # the workload's reference_metrics (of the inputs, not of a call)


@dataclass(frozen=True)
class Accuracy:
    """The error of one output against the reference; `wrong` says why it failed, else ""."""

    max_abs_error: float | None = None
    rel_l2_error: float | None = None
    naive_max_abs_error: float | None = None
    error_passed: bool | None = None
    error_rule: str = ""
    error_rows: int | None = None
    wrong: str = ""

    def fields(self) -> dict:
        """The Measurement fields this check fills."""
        d = dict(self.__dict__)
        d.pop("wrong")
        return d


@dataclass(frozen=True)
class Failure:
    status: str  # oom | error
    message: str
    traceback: str


# The last shapes' references: a sweep measures several implementations of a shape in a row, each
# checked on the shape's inputs and on one set of fresh inputs (harness.measure.guards).
_REFERENCE_CACHE: dict = {}
_CACHE_ENTRIES = 2


def _remember(key, value) -> None:
    while len(_REFERENCE_CACHE) >= _CACHE_ENTRIES:
        _REFERENCE_CACHE.pop(next(iter(_REFERENCE_CACHE)))  # the oldest
    _REFERENCE_CACHE[key] = value


def prepare(case: Case, seed: int, *, reference: bool = True) -> Prepared:
    """Seeded inputs and the float64 reference on the checked rows, from the case's workload
    (harness/workloads); for training passes also the upstream gradient and the reference
    gradients. Inputs are made anew every time (an implementation may have spoiled the last
    ones); the reference of the last shapes is reused. reference=False (a forward pass timed with
    no check and no guards, e.g. the A/B gate's re-measurement): inputs only, rows and reference
    None, unless the reference is cached already."""
    from harness import registry
    from harness.measure import accuracy
    from harness.workloads import workload_of

    wl = workload_of(case)
    inputs = wl.make_inputs(case, seed)
    key = (wl.reference_key(case), seed)  # the same inputs whatever the implementation
    if not reference and case.pass_kind == "forward" and key not in _REFERENCE_CACHE:
        return Prepared(case, inputs, None, None, None, metrics={})
    if key not in _REFERENCE_CACHE:
        rows, ref = wl.reference(case, inputs)  # (R,), (B, Hq, R, Dv) float64
        naive_errs = None
        if case.dtype in ("float16", "bfloat16"):
            path = registry.get("naive").paths.get(case.workload)
            base = wl.naive_rows(case, inputs, rows, path.fn if path else None)
            naive_errs = None if base is None else accuracy.errors(base, ref)  # None: no low-precision rule
        _remember(key, (rows, ref, naive_errs, {}, wl.reference_metrics(case, inputs, rows, ref)))
    rows, ref, naive_errs, grads, metrics = _REFERENCE_CACHE[key]
    if case.pass_kind != "forward" and not grads:
        grads.update(wl.gradient_reference(case, seed, inputs))
    if case.pass_kind == "forward":
        grads = {}
    return Prepared(case, inputs, rows, ref, naive_errs, **grads, metrics=metrics)


def call(impl, case: Case, inputs):
    """One call of the implementation's function for this case's workload."""
    return inputs.call(impl.entry(case))


def check_output(out, prepared: Prepared, dtype: str) -> Accuracy:
    """Judge one output (B, Hq, Nq, Dv) against the prepared reference rows."""
    from harness.measure import accuracy

    q, ref = prepared.inputs.q, prepared.reference
    want = (*q.shape[:3], ref.shape[-1])
    if not hasattr(out, "shape") or tuple(out.shape) != tuple(want):
        got = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
        return Accuracy(wrong=f"output shape {got} != expected {tuple(want)}")
    errs = accuracy.errors(out[:, :, prepared.rows.to(out.device)], prepared.reference)
    verdict = accuracy.judge(dtype, errs, prepared.naive_errors)
    naive = prepared.naive_errors
    result = Accuracy(
        max_abs_error=errs.max_abs,
        rel_l2_error=errs.rel_l2,
        naive_max_abs_error=None if naive is None else naive.max_abs,
        error_passed=verdict.passed,
        error_rule=verdict.rule,
        error_rows=int(prepared.rows.numel()),
    )
    if not verdict.passed:
        nan = " (NaN in output)" if errs.has_nan else ""
        return Accuracy(**{**result.fields(), "wrong": f"error check failed{nan}: {verdict.rule} (got {verdict.value:.3g})"})
    return result


def check_impl(impl, prepared: Prepared, case: Case, around: Callable | None = None) -> Accuracy:
    """One forward call of `impl` on the prepared inputs, judged. around(fn) -> fn(): runs the call
    (the sweep measures its peak memory there)."""
    import torch

    with torch.no_grad():
        run = lambda: call(impl, case, prepared.inputs)  # noqa: E731
        out = around(run) if around is not None else run()
    return check_output(out, prepared, case.dtype)


def check_impl_grads(impl, prepared: Prepared, case: Case):
    """One forward + backward of `impl` with the seeded upstream gradient, judged per gradient
    (harness.measure.accuracy.check_grads)."""
    import torch

    from harness.measure.accuracy import check_grads

    inputs = prepared.inputs
    with torch.enable_grad():
        out = call(impl, case, inputs)
        got = torch.autograd.grad(out, (inputs.q, inputs.k, inputs.v), prepared.grad_out)
    return check_grads(got, prepared.ref_grads, prepared.naive_grads, case.dtype)


def build_callable(impl, prepared: Prepared, case: Case) -> Callable[[], object]:
    """A zero-argument callable for the timed region, from the case's workload (training passes:
    harness/workloads/prefill/passes.py); all set-up stays outside it."""
    from harness.workloads import workload_of

    return workload_of(case).timed_callable(impl.entry(case), case, prepared)


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    import torch

    if isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in OOM_MARKERS)


def failure(exc: BaseException) -> Failure:
    """An implementation's exception as its case's status: oom or error, with a short traceback."""
    status = vocab.OOM if is_oom(exc) else vocab.ERROR
    message = f"{type(exc).__name__}: {exc}".strip()[:MESSAGE_CHARS]
    tb = "".join(traceback.format_exception(exc, limit=-3))[-TRACEBACK_CHARS:]
    return Failure(status, message, tb)
