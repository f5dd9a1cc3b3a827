"""Measure one case, in a worker process: correctness, then memory, then time.

The only module (with runner.py) that combines inputs, accuracy, memory, timing, stats and FLOPs.
Run as `python -m harness.run.worker`: it reads one JSON request per line on stdin and answers one
JSON Measurement per line on a private copy of stdout (fd 1 is pointed at stderr so that an
implementation's prints cannot corrupt the protocol).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Callable

from harness.case import Case
from harness.results.store import Measurement

OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory")


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    import torch

    if isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in OOM_MARKERS)


def build_callable(impl, inputs, case: Case):
    """A zero-argument callable for the timed region; all setup stays outside it."""
    import torch

    kwargs = inputs.call_kwargs()
    q, k, v = inputs.q, inputs.k, inputs.v
    if case.pass_kind == "forward":

        def forward():
            with torch.no_grad():
                return impl.fn(q, k, v, **kwargs)

        return forward
    if case.pass_kind == "forward_backward":
        grad_out = torch.randn_like(q)

        def forward_backward():
            out = impl.fn(q, k, v, **kwargs)
            return torch.autograd.grad(out, (q, k, v), grad_out)

        return forward_backward
    # backward only: the graph is built once outside the timed region and replayed.
    out = impl.fn(q, k, v, **kwargs)
    grad_out = torch.randn_like(out)

    def backward():
        return torch.autograd.grad(out, (q, k, v), grad_out, retain_graph=True)

    return backward


def _check_accuracy(impl, inputs, case: Case) -> dict:
    """Compare the forward output on a subset of query rows with the float64 reference."""
    import torch

    from harness.measure import accuracy

    with torch.no_grad():
        out = impl.fn(inputs.q, inputs.k, inputs.v, **inputs.call_kwargs())
    if tuple(out.shape) != tuple(inputs.q.shape):
        return {"wrong": f"output shape {tuple(out.shape)} != q shape {tuple(inputs.q.shape)}"}
    rows = accuracy.select_rows(case.seq_len_q)
    kw = dict(causal=case.causal, attn_mask=inputs.attn_mask, scale=None)
    ref = accuracy.reference_rows(inputs.q, inputs.k, inputs.v, rows, **kw)
    errs = accuracy.errors(out[:, :, rows.to(out.device)], ref)
    naive_errs = None
    if case.dtype in ("float16", "bfloat16"):
        naive_out = accuracy.naive_rows(inputs.q, inputs.k, inputs.v, rows, **kw)
        naive_errs = accuracy.errors(naive_out, ref)
    verdict = accuracy.judge(case.dtype, errs, naive_errs)
    result = dict(
        max_abs_error=errs.max_abs,
        rel_l2_error=errs.rel_l2,
        naive_max_abs_error=None if naive_errs is None else naive_errs.max_abs,
        error_passed=verdict.passed,
        error_rule=verdict.rule,
        error_rows=int(rows.numel()),
    )
    if not verdict.passed:
        nan = " (NaN in output)" if errs.has_nan else ""
        result["wrong"] = f"error check failed{nan}: {verdict.rule}"
    return result


def measure_case(case: Case, budget: dict, seed: int) -> Measurement:
    """Measure `case` in this process. Never raises for a failing implementation."""
    started = time.perf_counter()
    from harness import registry

    impl = registry.get(case.impl)
    support = impl.supports(case)
    if not support:
        return Measurement(case, "skipped", support.reason)
    predicted = impl.predicted_peak_bytes(case)
    partial: dict = {"predicted_peak_bytes": predicted}
    try:
        import torch

        from harness.measure import flops
        from harness.measure import memory
        from harness.measure import stats
        from harness.measure import timing
        from harness.measure.inputs import make_inputs

        if case.threads and case.device == "cpu":
            torch.set_num_threads(case.threads)
        inputs = make_inputs(case, seed)
        partial.update(_check_accuracy(impl, inputs, case))
        if "wrong" in partial:
            msg = partial.pop("wrong")
            return Measurement(case, "wrong", msg, wall_s=time.perf_counter() - started, **partial)
        fn = build_callable(impl, inputs, case)
        partial["peak_bytes"] = memory.measure_peak_bytes(fn, case.device)
        time_kw = dict(
            warmup_s=budget["warmup_s"],
            min_time_s=budget["min_time_s"],
            max_time_s=budget["max_time_s"],
            target_spread=budget["target_spread"],
        )
        if case.device.startswith("cuda"):
            t = timing.time_cuda(
                fn,
                l2_flush=budget.get("l2_flush", False),
                cuda_graph=budget.get("cuda_graph", False),
                **time_kw,
            )
        else:
            t = timing.time_cpu(fn, **time_kw)
        st = stats.summarize(t.samples_s)
        n_flops = flops.attention_flops(case)
        return Measurement(
            case,
            "ok",
            samples_s=tuple(t.samples_s),
            calls_per_block=t.calls_per_block,
            timing_stopped=t.stopped,
            stats=st.to_dict() if hasattr(st, "to_dict") else _asdict(st),
            flops=n_flops,
            tflops_per_s=flops.tflops_per_s(n_flops, st.median_s),
            wall_s=time.perf_counter() - started,
            extra={"threads": torch.get_num_threads()} if case.device == "cpu" else {},
            **partial,
        )
    except Exception as exc:  # the implementation's failure is this case's record, not ours
        status = "oom" if is_oom(exc) else "error"
        msg = f"{type(exc).__name__}: {exc}".strip()
        tb = traceback.format_exc(limit=-3)
        return Measurement(
            case,
            status,
            msg[:2000],
            wall_s=time.perf_counter() - started,
            extra={"traceback": tb[-4000:]},
            **{k: v for k, v in partial.items() if k in Measurement.__dataclass_fields__},
        )


def _asdict(obj) -> dict:
    import dataclasses

    return dataclasses.asdict(obj)


def _apply_memory_limit(limit_bytes: int | None) -> None:
    """Cap this process's address space so a runaway allocation fails here (as an OOM record)
    instead of inviting the kernel's OOM killer onto the whole machine."""
    if not limit_bytes:
        return
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (int(limit_bytes), int(limit_bytes)))


def serve(handle: Callable[[dict], dict], banner: Callable[[dict], str], json_default=None) -> int:
    """The worker side of the protocol (harness/isolation.py), shared with harness.compare.gate_measure:
    a private copy of stdout for answers (fd 1 then points at stderr, so an implementation's
    prints cannot corrupt the protocol), torch and the catalogue imported before {"ready": pid},
    then one JSON answer per JSON request line."""
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import torch  # noqa: F401  (import cost paid before the first request, not inside it)

    from harness import registry

    registry.ensure_loaded()
    proto.write(json.dumps({"ready": os.getpid()}) + "\n")
    proto.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        print(banner(req), file=sys.stderr, flush=True)
        proto.write(json.dumps(handle(req), default=json_default) + "\n")
        proto.flush()
    return 0


def _handle(req: dict) -> dict:
    return measure_case(Case.from_dict(req["case"]), req["budget"], int(req["seed"])).to_dict()


def main() -> int:
    _apply_memory_limit(int(os.environ.get("ATTNBENCH_MEMORY_LIMIT_BYTES", "0")) or None)
    return serve(_handle, lambda req: f"[worker {os.getpid()}] {Case.from_dict(req['case']).case_id}")


if __name__ == "__main__":
    raise SystemExit(main())
