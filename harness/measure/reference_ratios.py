"""The CI gate's measurement of one shape: every implementation through the sweep's stages
(harness.measure.case_measure: support, memory fit, prepared inputs + float64 reference, the checked
call, the gradient check of a training pass, and after timing the guards -- inputs unchanged, last
timed output right, a call on fresh inputs right, not faster than the ceilings), timed interleaved
with the reference implementation (harness.measure.timing.cpu.time_interleaved) with a CPU
contention snapshot around the timing. Each implementation's answer is the sweep's record
(harness.results.records.Measurement): its per-round time over the reference's time in the same
round is `reference_ratios`, their median and CI the metrics ratio_median / ratio_ci_low /
ratio_ci_high, `contended` says whether the shape got the CPU it asked for.

Why ratios: on shared CI machines absolute times drift 10-50% between runs; one implementation's
time over the reference's, measured in the same round of short alternating blocks (one block of
each, order rotating), drifts a few percent (DESIGN.md "Noise").

Runs in a measurement worker (harness/run/worker.py, request kind "ratios"), reached through the
same executor as a sweep's cases.
Request:  {"case": <Case dict, impl = the reference>, "impls": [names], "reference": name,
           "seed": int, "rounds": int, "min_block_s": float, "warmup_s": float, "check": bool = true,
           "guards": bool = true, "warmup_calls": int = 2, "calls_per_block": {name: int} = {},
           "ceilings": {...} = {}}
("check": false skips the checked call, "guards": false the guards after timing: the A/B gate's
later blocks of a shape, re-timing in the process whose first block ran both; "calls_per_block":
the block sizes that process found in its first block -- those implementations get no warm-up.)
Answer:   {"measurements": [Measurement dicts]}   (the reference's first; it has no ratios; each
           timed one's calls_per_block is its block size)
Each implementation has its own copy of the seeded inputs (the same values), so one that writes
its inputs is caught and spoils nobody else's. A failing implementation (exception, OOM, wrong
output, a broken guard) is that implementation's record; the process itself only dies for a hard
crash, which the executor records.

The testing hook ATTNBENCH_SLOWDOWN (harness/measure/slowdown.py) applies here through the shared
stages, as in a sweep.
"""

from __future__ import annotations

import os
import time
from typing import Callable

from harness import vocab


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


def measure_ratios(req: dict) -> list:
    """Every implementation of one shape through the sweep's stages, timed interleaved with the
    reference; one Measurement each, the reference's first."""
    import torch

    from harness import registry, stats
    from harness.case import Case
    from harness.results.units import tflops_per_s
    from harness.workloads import workload_of
    from harness.measure.case_measure import Checked, admit, after_timing, check, failed, finish
    from harness.measure.timing import contention as cpu_contention, cpu as cpu_timing
    from harness.results.records import Measurement

    ref_case = Case.from_dict(req["case"])
    reference = req["reference"]
    names = [reference] + [n for n in dict.fromkeys(req["impls"]) if n != reference]
    seed = int(req["seed"])
    started = time.perf_counter()
    records: dict[str, Measurement] = {}
    ready: dict[str, Checked] = {}
    for name in names:
        case = ref_case.replace(impl=name)
        try:
            impl = registry.get(name)
        except registry.RegistryError as exc:
            records[name] = Measurement(case, vocab.ERROR, str(exc))
            continue
        partial = admit(impl, case, started)
        if isinstance(partial, Measurement):
            records[name] = partial
            continue
        try:
            c = check(impl, case, seed, partial, started, check_call=bool(req.get("check", True)),
                      guards_after=bool(req.get("guards", True)))
        except Exception as exc:  # this implementation's failure, not the process's
            records[name] = failed(case, exc, started, partial)
            continue
        if isinstance(c, Measurement):
            records[name] = c
        else:
            ready[name] = c

    # Interleaved timing; an implementation that raises mid-way is dropped and the rest re-timed.
    is_cuda = ref_case.device.startswith("cuda")
    times: dict[str, list[float]] = {}
    calls: dict[str, int] = {}
    busy = None
    while reference in ready and len(ready) > 1:
        fns = {name: _guard(name, c.timed) for name, c in ready.items()}
        sync = torch.cuda.synchronize if is_cuda else None
        before = cpu_contention.snapshot()
        try:
            calls = cpu_timing.block_sizes(fns, min_block_s=float(req["min_block_s"]), warmup_s=float(req["warmup_s"]),
                                           warmup_calls=int(req.get("warmup_calls", 2)), sync=sync,
                                           known=req.get("calls_per_block") or {})
            times = cpu_timing.time_interleaved(fns, rounds=int(req["rounds"]), min_block_s=float(req["min_block_s"]),
                                                sync=sync, calls_per_block=calls)
        except _Failed as f:
            c = ready.pop(f.name)
            records[f.name] = failed(c.case, f.exc, started, c.fields)
            continue
        if not is_cuda:
            busy = cpu_contention.assess(before, cpu_contention.snapshot(), threads=torch.get_num_threads())
        break

    from harness.measure import compile_time
    from harness.measure.guards import check_after_timing

    ref_times = times.get(reference, [])
    for name, c in ready.items():
        fields = dict(c.fields)
        metrics = dict(fields.pop("metrics", {}))
        extra = {"reference": reference, **fields.pop("extra", {})}
        extra.update(compile_time.extra(c.impl, c.compile_start))  # a shape compiled statically says so
        metrics.update(compile_time.metrics(c.impl, c.compile_start))
        if name not in times:  # not timed: the guards that need no timing still run
            why = (f"not timed: the reference {reference!r} failed" if name != reference
                   else "not timed: no other implementation of this shape to compare with")
            problem = (check_after_timing(c.impl, c.case, c.prepared, c.sums, c.timed, seed)
                       if req.get("guards", True) else "")
            records[name] = finish(c.case, vocab.WRONG if problem else vocab.OK, problem or why, started,
                                  {**fields, "metrics": metrics, "extra": extra})
            continue
        samples = tuple(times[name])
        st = stats.summarize(samples)
        status, message = (after_timing(c, seed, st.median_s, req.get("ceilings") or {})
                           if req.get("guards", True) else (vocab.OK, ""))
        ratios = tuple(t / r for t, r in zip(samples, ref_times)) if name != reference else ()
        if ratios:  # same round -> same machine state: the ratio cancels the drift
            mc = stats.median_ci(ratios)
            metrics.update(ratio_median=mc.median, ratio_ci_low=mc.low, ratio_ci_high=mc.high)
        if busy is not None:
            metrics.update(busy.metrics())
        if ref_case.device == "cpu":
            extra["threads"] = torch.get_num_threads()
        n_flops = workload_of(c.case).flops(c.case)
        records[name] = finish(c.case, status, message, started, {
            **fields, "samples_s": samples, "calls_per_block": calls.get(name, 0), "stats": st,
            "reference_ratios": ratios, "metrics": metrics,
            "extra": extra, "flops": n_flops, "tflops_per_s": tflops_per_s(n_flops, st.median_s),
            "contended": bool(busy and busy.contended), "contention": busy.reason if busy else ""})
    return [records[n] for n in names if n in records]


def handle(req: dict) -> dict:
    """The worker's handler for a "ratios" request: never raises for an implementation's fault."""
    from harness.measure.slowdown import SLOWDOWN_ENV, parse_slowdown

    parse_slowdown(os.environ.get(SLOWDOWN_ENV))  # a bad hook value fails loudly, before any work
    try:
        ms = measure_ratios(req)
    except Exception as exc:  # the harness itself failed on this shape: every implementation's record
        from harness.case import Case
        from harness.measure.checked_call import failure
        from harness.results.records import Measurement

        f = failure(exc)
        ref_case = Case.from_dict(req["case"])
        ms = [Measurement(ref_case.replace(impl=n), f.status, f.message, extra={"traceback": f.traceback})
              for n in dict.fromkeys([req["reference"], *req["impls"]])]
    return {"measurements": [m.to_dict() for m in ms]}
