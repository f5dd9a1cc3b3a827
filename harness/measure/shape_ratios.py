"""The CI gate's measurement of one shape: accuracy of every implementation (harness.measure.checked_call),
then their times interleaved with the reference's, as per-round ratios impl_time / ref_time.

Why ratios: on shared CI machines absolute times drift 10-50% between runs; one implementation's
time over the reference's, measured in the same round of short alternating blocks (one block of
each, order rotating; harness.timing.time_interleaved), drifts a few percent (DESIGN.md "Noise").

Runs in a measurement worker (harness/run/worker.py, request kind "shape"), reached through the
same executor as a sweep's cases.
Request:  {"case": <Case dict, impl = the reference>, "impls": [names], "reference": name,
           "seed": int, "rounds": int, "min_block_s": float, "warmup_s": float, "check": bool = true}
Answer:   {"results": {impl: {"status", "message", "ratios", "times_s", "max_abs_error",
           "rel_l2_error", "error_passed", "error_rule"}}}   (the reference included, no ratios)
A failing implementation (exception, OOM, wrong output) is that implementation's status; the
process itself only dies for a hard crash, which the executor records.

TESTING HOOK, not for normal use: ATTNBENCH_SLOWDOWN="flash=1.25[,naive=2]" makes each timed
call of those implementations take that factor longer (run it, then spin for the extra share of
its CPU time; see slowed()), so tests and benchmarks/gate_reliability.py can prove that the gate
catches a known slowdown. It exists only for that; `attnbench check` announces it when set.
"""

from __future__ import annotations

import math
import os
import time
from typing import Callable

from harness import vocab

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
    from harness.measure.checked_call import failure

    f = failure(exc)
    return {"status": f.status, "message": f.message, "traceback": f.traceback}


def _accuracy(impl, prepared, case) -> dict:
    """Forward output on the checked rows vs the float64 reference (harness.measure.checked_call)."""
    from harness.measure.checked_call import check_impl

    acc = check_impl(impl, prepared, case)
    result = {"status": vocab.OK, "message": "", "max_abs_error": acc.max_abs_error,
              "rel_l2_error": acc.rel_l2_error, "error_passed": acc.error_passed, "error_rule": acc.error_rule}
    if acc.wrong:
        result.update(status=vocab.WRONG, message=acc.wrong)
    return result


def measure_shape(req: dict) -> dict:
    """Accuracy of every implementation on one shape, then their interleaved ratio samples."""
    import torch

    from harness import registry
    from harness.case import Case
    from harness.measure import checked_call
    from harness.measure.timing import cpu as cpu_timing

    ref_case = Case.from_dict(req["case"])
    reference = req["reference"]
    names = [reference] + [n for n in req["impls"] if n != reference]
    if ref_case.threads and ref_case.device == "cpu":
        if torch.get_num_threads() != ref_case.threads:
            torch.set_num_threads(ref_case.threads)
    is_cuda = ref_case.device.startswith("cuda")
    sync = torch.cuda.synchronize if is_cuda else (lambda: None)
    slowdown = parse_slowdown(os.environ.get(SLOWDOWN_ENV))

    # The same seeded inputs serve every implementation (inputs ignore impl; see measure/inputs).
    prepared = checked_call.prepare(ref_case, int(req["seed"]))

    results: dict[str, dict] = {}
    fns: dict[str, Callable[[], object]] = {}
    for name in names:
        case = ref_case.replace(impl=name)
        try:
            impl = registry.get(name)
            support = impl.supports(case)
            if not support:
                results[name] = {"status": vocab.SKIPPED, "message": support.reason}
                continue
            # "check": false (the A/B gate's later blocks of a shape already checked) skips the
            # accuracy call; an implementation that fails in the timed loop is still caught there
            results[name] = (_accuracy(impl, prepared, case) if req.get("check", True)
                             else {"status": vocab.OK, "message": ""})
            if results[name]["status"] == vocab.OK:
                fn = checked_call.build_callable(impl, prepared, case)
                if name in slowdown:
                    fn = slowed(fn, slowdown[name], sync, cuda=is_cuda)
                fns[name] = _guard(name, fn)
        except Exception as exc:  # this implementation's failure, not the process's
            results[name] = _failure(exc)

    # Interleaved timing; an implementation that raises mid-way is dropped and the rest re-timed.
    times: dict[str, list[float]] = {}
    while reference in fns and len(fns) > 1:
        try:
            times = cpu_timing.time_interleaved(fns, rounds=int(req["rounds"]), min_block_s=float(req["min_block_s"]),
                                            warmup_s=float(req["warmup_s"]), sync=sync if is_cuda else None)
            break
        except _Failed as failed:
            results[failed.name] = _failure(failed.exc)
            del fns[failed.name]
    if reference not in fns:
        for name, r in results.items():
            if name != reference and r["status"] == vocab.OK:
                r["message"] = f"not timed: the reference {reference!r} failed"
    ref_times = times.get(reference, [])
    for name, samples in times.items():
        results[name]["times_s"] = samples
        if name != reference:  # same round -> same machine state: the ratio cancels the drift
            results[name]["ratios"] = [t / r for t, r in zip(samples, ref_times)]
    return {"results": results}


def handle(req: dict) -> dict:
    """The worker's handler for a "shape" request: never raises for an implementation's fault."""
    parse_slowdown(os.environ.get(SLOWDOWN_ENV))  # a bad hook value fails loudly, before any work
    try:
        return measure_shape(req)
    except Exception as exc:  # inputs or the float64 reference failed: every implementation fails
        fail = _failure(exc)
        return {"results": {n: dict(fail) for n in dict.fromkeys([req["reference"], *req["impls"]])}}
