"""The one measurement core, shared by the sweep (harness.run.worker) and the gate
(harness.measure.shape_ratios): prepare a case (seeded inputs, float64 reference rows, the
same-dtype naive error), check an implementation's output against them, build the callable that is
timed, and turn an exception into a status. Nothing here times, formats or writes files.
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
    from harness.measure.inputs import Inputs

OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory")
MESSAGE_CHARS = 2000
TRACEBACK_CHARS = 4000


@dataclass(frozen=True, eq=False)
class Prepared:
    """Everything an accuracy check of one shape needs, computed once for all implementations."""

    case: Case  # the shape (its impl is irrelevant: inputs ignore it)
    inputs: "Inputs"
    rows: "torch.Tensor"  # query rows compared with the reference
    reference: "torch.Tensor"  # (B, Hq, R, D) float64 reference on those rows
    naive_errors: "Errors | None"  # the naive same-dtype error (low precision only)


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


def prepare(case: Case, seed: int) -> Prepared:
    """Seeded inputs and the float64 reference on the checked rows (harness.measure.accuracy)."""
    from harness.measure import accuracy
    from harness.measure.inputs import make_inputs

    inputs = make_inputs(case, seed)
    rows = accuracy.select_rows(case.seq_len_q)
    kw = dict(causal=inputs.causal, attn_mask=inputs.attn_mask, scale=None, **inputs.variant_kwargs())
    ref = accuracy.reference_rows(inputs.q, inputs.k, inputs.v, rows, **kw)  # (B, Hq, R, D) float64
    naive_errs = None
    if case.dtype in ("float16", "bfloat16"):
        naive_errs = accuracy.errors(accuracy.naive_rows(inputs.q, inputs.k, inputs.v, rows, **kw), ref)
    return Prepared(case, inputs, rows, ref, naive_errs)


def check_output(out, prepared: Prepared, dtype: str) -> Accuracy:
    """Judge one output (B, Hq, Nq, D) against the prepared reference rows."""
    from harness.measure import accuracy

    q = prepared.inputs.q
    if not hasattr(out, "shape") or tuple(out.shape) != tuple(q.shape):
        got = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
        return Accuracy(wrong=f"output shape {got} != q shape {tuple(q.shape)}")
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


def check_impl(impl, prepared: Prepared, case: Case) -> Accuracy:
    """One forward call of `impl` on the prepared inputs, judged."""
    import torch

    inputs = prepared.inputs
    with torch.no_grad():
        out = impl.entry(case)(inputs.q, inputs.k, inputs.v, **inputs.call_kwargs())
    return check_output(out, prepared, case.dtype)


def build_callable(impl, inputs: "Inputs", case: Case) -> Callable[[], object]:
    """A zero-argument callable for the timed region; all set-up stays outside it."""
    import torch

    fn = impl.entry(case)
    kwargs = inputs.call_kwargs()
    q, k, v = inputs.q, inputs.k, inputs.v
    if case.pass_kind == "forward":

        def forward():
            with torch.no_grad():
                return fn(q, k, v, **kwargs)

        return forward
    if case.pass_kind == "forward_backward":
        grad_out = torch.randn_like(q)

        def forward_backward():
            out = fn(q, k, v, **kwargs)
            return torch.autograd.grad(out, (q, k, v), grad_out)

        return forward_backward
    # backward only: the graph is built once outside the timed region and replayed.
    out = fn(q, k, v, **kwargs)
    grad_out = torch.randn_like(out)

    def backward():
        return torch.autograd.grad(out, (q, k, v), grad_out, retain_graph=True)

    return backward


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
