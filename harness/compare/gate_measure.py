"""The CI gate's measurement process: per shape, accuracy of every implementation, then their
times interleaved with the reference's, as per-round ratios impl_time / ref_time.

Why ratios: on shared CI machines absolute times drift 10-50% between runs; one implementation's
time over the reference's, measured in the same round of short alternating blocks (one block of
each, order rotating; harness.timing.time_interleaved), drifts a few percent (DESIGN.md "Noise").

Protocol (like harness/worker.py): run as `python -m harness.compare.gate_measure`; it writes {"ready": pid}
then answers each JSON request line on stdin with one JSON line, on a private copy of stdout
(fd 1 is pointed at stderr so implementations that print cannot corrupt the protocol).
Request:  {"case": <Case dict, impl = the reference>, "impls": [names], "reference": name,
           "seed": int, "rounds": int, "min_block_s": float, "warmup_s": float}
Answer:   {"results": {impl: {"status", "message", "ratios", "times_s", "max_abs_error",
           "rel_l2_error", "error_passed", "error_rule"}}}   (the reference included, no ratios)
A failing implementation (exception, OOM, wrong output) is that implementation's status; the
process itself only dies for a hard crash, which the parent (harness/gate.py, through
harness/isolation.Worker) records.

TESTING HOOK, not for normal use: ATTNBENCH_SLOWDOWN="flash=1.25[,naive=2]" makes each timed
call of those implementations take that factor longer (run it, then spin for the extra share of
its CPU time; see slowed()), so tests and benchmarks/gate_reliability.py can prove that the gate
catches a known slowdown. It exists only for that; `attnbench check` announces it when set.
"""

from __future__ import annotations

import math
import os
import time
import traceback
from typing import Callable

SLOWDOWN_ENV = "ATTNBENCH_SLOWDOWN"
# glibc malloc: never mmap, never trim, so freed memory is reused instead of returned to the OS.
# By default a call that allocates a 16 MiB score matrix mmaps it and page-faults it in on every
# call; the faults cost 20-100% extra, vary with the neighbours' load, and made naive's times
# bimodal (21 vs 30-50 ms at N=1024) and its ratios useless for a gate. Ignored by other mallocs.
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40), "MALLOC_TOP_PAD_": str(64 * 2**20)}


def parse_slowdown(text: str | None) -> dict[str, float]:
    """"flash=1.25,naive=2" -> {"flash": 1.25, "naive": 2.0}; ValueError naming what is wrong."""
    out: dict[str, float] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        try:
            factor = float(value)
        except ValueError:
            factor = math.nan
        if not sep or not name.strip() or not (math.isfinite(factor) and factor >= 1.0):
            raise ValueError(f"{SLOWDOWN_ENV}={text!r}: expected IMPL=FACTOR[,IMPL=FACTOR] with FACTOR >= 1, "
                             f"e.g. flash=1.25")
        out[name.strip()] = factor
    return out


def slowed(fn: Callable[[], object], factor: float, sync: Callable[[], None], *, cuda: bool = False
           ) -> Callable[[], object]:
    """fn, then busy work worth (factor - 1) x its typical cost: calls `factor` times longer.

    CPU: the cost is the calling thread's CPU time (time.thread_time), and the extra is spun until
    that clock has advanced by as much, so the extra work is preempted by neighbours exactly as
    real work is. (A wall-clock busy-wait is not: under load it burns more CPU than the slowdown
    it stands for, the scheduler then preempts the process more, and a 1.25x hook measured ~1.6x.)
    CUDA: wall time around a synchronised call. Typical = median of the last 15 calls, so one
    odd call does not set the extra."""
    clock = time.perf_counter if cuda else time.thread_time
    recent: list[float] = []

    def call():
        t0 = clock()
        out = fn()
        sync()
        t1 = clock()
        recent.append(t1 - t0)
        del recent[:-15]
        end = t1 + (factor - 1.0) * sorted(recent)[len(recent) // 2]
        while clock() < end:
            pass
        return out

    return call


class _Failed(Exception):
    """An implementation raised inside the timed loop; carries its name."""

    def __init__(self, name: str, exc: BaseException):
        super().__init__(name)
        self.name, self.exc = name, exc


def _guard(name: str, fn: Callable[[], object]) -> Callable[[], object]:
    def call():
        try:
            return fn()
        except Exception as exc:
            raise _Failed(name, exc) from exc

    return call


def _failure(exc: BaseException) -> dict:
    from harness.run.worker import is_oom

    return {"status": "oom" if is_oom(exc) else "error",
            "message": f"{type(exc).__name__}: {exc}".strip()[:2000],
            "traceback": "".join(traceback.format_exception(exc, limit=-3))[-2000:]}


def _accuracy(fn, inputs, case, rows, ref, naive_errs) -> dict:
    """Forward output on the checked rows vs the float64 reference (harness.measure.accuracy's rule)."""
    import torch

    from harness.measure import accuracy

    with torch.no_grad():
        out = fn(inputs.q, inputs.k, inputs.v, **inputs.call_kwargs())  # (B, Hq, Nq, D)
    if tuple(out.shape) != tuple(inputs.q.shape):
        return {"status": "wrong", "message": f"output shape {tuple(out.shape)} != q shape {tuple(inputs.q.shape)}"}
    errs = accuracy.errors(out[:, :, rows.to(out.device)], ref)
    verdict = accuracy.judge(case.dtype, errs, naive_errs)
    result = {"status": "ok", "message": "", "max_abs_error": errs.max_abs, "rel_l2_error": errs.rel_l2,
              "error_passed": verdict.passed, "error_rule": verdict.rule}
    if not verdict.passed:
        result.update(status="wrong", message=f"error check failed{' (NaN in output)' if errs.has_nan else ''}: "
                                              f"{verdict.rule} (got {verdict.value:.3g})")
    return result


def measure_shape(req: dict) -> dict:
    """Accuracy of every implementation on one shape, then their interleaved ratio samples."""
    import torch

    from harness.measure import accuracy
    from harness import registry
    from harness.measure import timing
    from harness.case import Case
    from harness.measure.inputs import make_inputs
    from harness.run.worker import build_callable

    ref_case = Case.from_dict(req["case"])
    reference = req["reference"]
    names = [reference] + [n for n in req["impls"] if n != reference]
    if ref_case.threads and ref_case.device == "cpu":
        torch.set_num_threads(ref_case.threads)
    is_cuda = ref_case.device.startswith("cuda")
    sync = torch.cuda.synchronize if is_cuda else (lambda: None)
    slowdown = parse_slowdown(os.environ.get(SLOWDOWN_ENV))

    # The same seeded inputs serve every implementation (inputs ignore impl; see harness/inputs).
    inputs = make_inputs(ref_case, int(req["seed"]))
    rows = accuracy.select_rows(ref_case.seq_len_q)
    kw = dict(causal=ref_case.causal, attn_mask=inputs.attn_mask, scale=None)
    ref = accuracy.reference_rows(inputs.q, inputs.k, inputs.v, rows, **kw)  # (B, Hq, R, D) float64
    naive_errs = None
    if ref_case.dtype in ("float16", "bfloat16"):
        naive_errs = accuracy.errors(accuracy.naive_rows(inputs.q, inputs.k, inputs.v, rows, **kw), ref)

    results: dict[str, dict] = {}
    fns: dict[str, Callable[[], object]] = {}
    for name in names:
        case = ref_case.replace(impl=name)
        try:
            impl = registry.get(name)
            support = impl.supports(case)
            if not support:
                results[name] = {"status": "skipped", "message": support.reason}
                continue
            results[name] = _accuracy(impl.fn, inputs, case, rows, ref, naive_errs)
            if results[name]["status"] == "ok":
                fn = build_callable(impl, inputs, case)
                if name in slowdown:
                    fn = slowed(fn, slowdown[name], sync, cuda=is_cuda)
                fns[name] = _guard(name, fn)
        except Exception as exc:  # this implementation's failure, not the process's
            results[name] = _failure(exc)

    # Interleaved timing; an implementation that raises mid-way is dropped and the rest re-timed.
    times: dict[str, list[float]] = {}
    while reference in fns and len(fns) > 1:
        try:
            times = timing.time_interleaved(fns, rounds=int(req["rounds"]), min_block_s=float(req["min_block_s"]),
                                            warmup_s=float(req["warmup_s"]), sync=sync if is_cuda else None)
            break
        except _Failed as failed:
            results[failed.name] = _failure(failed.exc)
            del fns[failed.name]
    if reference not in fns:
        for name, r in results.items():
            if name != reference and r["status"] == "ok":
                r["message"] = f"not timed: the reference {reference!r} failed"
    ref_times = times.get(reference, [])
    for name, samples in times.items():
        results[name]["times_s"] = samples
        if name != reference:  # same round -> same machine state: the ratio cancels the drift
            results[name]["ratios"] = [t / r for t, r in zip(samples, ref_times)]
    return {"results": results}


def _handle(req: dict) -> dict:
    try:
        return measure_shape(req)
    except Exception as exc:  # inputs or the float64 reference failed: every implementation fails
        fail = _failure(exc)
        return {"results": {n: dict(fail) for n in dict.fromkeys([req["reference"], *req["impls"]])}}


def main() -> int:
    from harness.run.worker import serve

    parse_slowdown(os.environ.get(SLOWDOWN_ENV))  # a bad hook value fails before any work
    return serve(_handle, lambda req: f"[gate worker {os.getpid()}] {req['case'].get('seq_len_q')} {req['impls']}",
                 json_default=_jsonable)


def _jsonable(obj):
    return float(obj) if isinstance(obj, (int, float)) else str(obj)


if __name__ == "__main__":
    raise SystemExit(main())
