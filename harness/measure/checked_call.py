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
    # training passes: the seeded upstream gradient and the reference / naive gradients
    grad_out: "torch.Tensor | None" = None  # (B, Hq, Nq, D), the inputs' dtype and device
    ref_grads: dict | None = None  # {"dq", "dk", "dv"} float64 on the CPU
    naive_grads: dict | None = None  # same, in the inputs' dtype (low precision only)


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


def prepare(case: Case, seed: int) -> Prepared:
    """Seeded inputs and the float64 reference on the checked rows (harness.measure.accuracy);
    for training passes also the upstream gradient and the reference gradients
    (harness.measure.grad_reference). Inputs are made anew every time (an implementation may
    have spoiled the last ones); the reference of the last shape is reused."""
    from harness.measure import accuracy, grad_reference
    from harness.measure.inputs import make_inputs

    if case.is_decode:
        return _prepare_decode(case, seed)
    inputs = make_inputs(case, seed)
    # the same inputs whatever the implementation, thread count or pass kind
    key = (case.replace(impl="", grid="", threads=None, pass_kind="forward").case_id, seed)
    if key not in _REFERENCE_CACHE:
        rows = accuracy.rows_for(case.batch, case.heads_q, case.seq_len_q, case.seq_len_kv)
        kw = dict(causal=inputs.causal, attn_mask=inputs.attn_mask, scale=None, **inputs.variant_kwargs())
        ref = accuracy.reference_rows(inputs.q, inputs.k, inputs.v, rows, **kw)  # (B, Hq, R, D) float64
        naive_errs = None
        if case.dtype in ("float16", "bfloat16"):
            naive_errs = accuracy.errors(accuracy.naive_rows(inputs.q, inputs.k, inputs.v, rows, **kw), ref)
        _remember(key, (rows, ref, naive_errs, {}))
    rows, ref, naive_errs, grads = _REFERENCE_CACHE[key]
    if case.pass_kind != "forward" and not grads:
        g = grad_reference.upstream_grad(case, seed, like=inputs.q)
        gkw = dict(causal=inputs.causal, attn_mask=inputs.attn_mask)
        grads.update(grad_out=g, ref_grads=grad_reference.reference_grads(inputs.q, inputs.k, inputs.v, g, **gkw))
        if case.dtype in ("float16", "bfloat16"):
            grads["naive_grads"] = grad_reference.naive_grads(inputs.q, inputs.k, inputs.v, g, **gkw)
    if case.pass_kind == "forward":
        grads = {}
    return Prepared(case, inputs, rows, ref, naive_errs, **grads)


def _prepare_decode(case: Case, seed: int) -> Prepared:
    """Decode against a KV cache (harness.measure.kv_cache): the reference is every query row,
    per sequence from its gathered cache; the low-precision baseline is the registry's `naive`
    decode path in the same dtype."""
    import torch

    from harness import registry
    from harness.measure import accuracy
    from harness.measure.kv_cache import make_decode_inputs, reference_decode

    inputs = make_decode_inputs(case, seed)
    key = (case.replace(impl="", grid="", threads=None).case_id, seed)
    if key not in _REFERENCE_CACHE:
        ref = reference_decode(inputs)  # (B, Hq, Nq, D) float64
        naive_errs = None
        if case.dtype in ("float16", "bfloat16"):
            with torch.no_grad():
                naive = registry.get("naive").entry(case)(*inputs.args(), **inputs.kwargs())
            naive_errs = accuracy.errors(naive, ref)
        _remember(key, (torch.arange(case.seq_len_q), ref, naive_errs, {}))
    rows, ref, naive_errs, _ = _REFERENCE_CACHE[key]
    return Prepared(case, inputs, rows, ref, naive_errs)


def call(impl, case: Case, inputs):
    """One call of the implementation's function for this case's workload."""
    if case.is_decode:
        return impl.entry(case)(*inputs.args(), **inputs.kwargs())
    return impl.entry(case)(inputs.q, inputs.k, inputs.v, **inputs.call_kwargs())


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

    with torch.no_grad():
        out = call(impl, case, prepared.inputs)
    return check_output(out, prepared, case.dtype)


def check_impl_grads(impl, prepared: Prepared, case: Case):
    """One forward + backward of `impl` with the seeded upstream gradient, judged per gradient
    (harness.measure.grad_reference.check_grads)."""
    import torch

    from harness.measure.grad_reference import check_grads

    inputs = prepared.inputs
    with torch.enable_grad():
        out = impl.entry(case)(inputs.q, inputs.k, inputs.v, **inputs.call_kwargs())
        got = torch.autograd.grad(out, (inputs.q, inputs.k, inputs.v), prepared.grad_out)
    return check_grads(got, prepared.ref_grads, prepared.naive_grads, case.dtype)


def build_callable(impl, prepared: Prepared, case: Case) -> Callable[[], object]:
    """A zero-argument callable for the timed region; all set-up stays outside it. Training
    passes use the prepared seeded upstream gradient; `backward` builds the forward graph once,
    here, and each timed call replays the same backward (retain_graph)."""
    import torch

    fn = impl.entry(case)
    inputs = prepared.inputs
    if case.is_decode:
        args, kw = inputs.args(), inputs.kwargs()

        def decode():
            with torch.no_grad():
                return fn(*args, **kw)

        return decode
    kwargs = inputs.call_kwargs()
    q, k, v = inputs.q, inputs.k, inputs.v
    if case.pass_kind == "forward":

        def forward():
            with torch.no_grad():
                return fn(q, k, v, **kwargs)

        return forward
    grad_out = prepared.grad_out
    if case.pass_kind == "forward_backward":

        def forward_backward():
            out = fn(q, k, v, **kwargs)
            return torch.autograd.grad(out, (q, k, v), grad_out)

        return forward_backward
    with torch.enable_grad():
        out = fn(q, k, v, **kwargs)  # the graph, built once outside the timed region

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
