"""Measure one case in this process: does it fit, is it right, how much memory, how fast, and can
the figures be trusted.

Stages, shared by the sweep (measure_case, below) and the gate (harness.measure.reference_ratios,
which times several implementations interleaved with a reference instead of one alone):
1. admit: support and memory fit (decided here, where the case runs);
2. check: inputs and the float64 reference (harness.measure.checked_call), one checked call (and a
   gradient check for training passes), the callable to time, wrapped so the last output is kept;
3. timing with CPU snapshots around it (harness.measure.timing.contention); a slow case's checked
   call is its warm-up;
4. after_timing: the guards (harness.measure.guards): inputs unchanged, the last timed call's output
   right, a call on fresh inputs right (no cached output), and a rate no faster than the measured
   ceiling allows.
The sweep's memory pass (peak memory, and on the CPU the ops that ran) is the checked call of a
forward pass, run under the profiler; compiled code (whose first call compiles) and training passes
(whose timed callable is not the checked call) get a profiled call of their own after timing. Never
the guard's call on fresh inputs: that one runs as the timed calls do, so an implementation that
computes only when the profiler watches is caught.
An implementation's failure is this case's record, never an exception out of here.

TESTING HOOK, not for normal use: ATTNBENCH_SLOWDOWN (harness.measure.slowdown) makes the
timed calls of the named implementations slower, in a sweep as in the gate; the record says so
(extra["testing_slowdown"]).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from harness import vocab
from harness.case import Budget, Case
from harness.results.records import Measurement


@dataclass
class Checked:
    """A case past its checks, ready to be timed: its own prepared inputs and their checksums (so
    a write to them is caught), the timed callable (keeping its last output), the fields so far."""

    impl: object
    case: Case
    prepared: object  # harness.measure.checked_call.Prepared
    sums: dict
    timed: object  # harness.measure.guards.LastOutput
    fields: dict  # Measurement fields measured so far (accuracy, predicted memory, metrics)
    compile_start: float | None = None
    last_call_s: float | None = None  # how long the last untimed call (the checked one) took


def admit(impl, case: Case, started: float) -> Measurement | dict:
    """Stage 1: the record of a case that is not run (unsupported, no gradient reference, does not
    fit, a plugin hook failed), else the fields so far ({"predicted_peak_bytes": ...})."""
    from harness import registry
    from harness.measure import capacity
    from harness.measure.peak_memory import device_memory_bytes
    from harness.workloads import workload_of

    workload = workload_of(case)
    try:
        support = impl.supports(case)
        if not support:
            return Measurement(case, vocab.SKIPPED, support.reason)
        why = workload.unsupported_pass(case)
        if why:
            return Measurement(case, vocab.SKIPPED, why)
        predicted = impl.predicted_peak_bytes(case)
    except registry.HookError as exc:  # a plugin's hook failed: this case's record, not the worker's
        return Measurement(case, vocab.ERROR, str(exc), wall_s=time.perf_counter() - started)
    why = capacity.too_big(case, predicted, device_memory_bytes(case.device))
    if why:
        return Measurement(case, vocab.SKIPPED, why, predicted_peak_bytes=predicted)
    return {"predicted_peak_bytes": predicted}


def check(impl, case: Case, seed: int, partial: dict, started: float, *, check_call: bool = True,
          guards_after: bool = True, around=None) -> Checked | Measurement:
    """Stage 2: prepared inputs, the checked call (check_call=False skips it: the A/B gate's later
    blocks of a shape, whose first block checked it), the gradient check of a training pass, the
    timed callable. Fills `partial` as it goes; raises for the implementation's exception (the
    caller maps it with failed()). guards_after=False: the caller runs no guards after timing, so
    with no checked call either, a forward pass needs no float64 reference. around(fn) -> fn():
    runs the checked call (the sweep's memory pass)."""
    import torch

    from harness.measure import checked_call, compile_time, guards
    from harness.measure.machine import allocator
    from harness.measure.slowdown import slowdown_for

    if case.threads and case.device == "cpu":
        if torch.get_num_threads() != case.threads:  # never called needlessly (run/worker.py)
            torch.set_num_threads(case.threads)
    compile_start = compile_time.start(impl)  # compile time is recorded apart from latency
    prepared = checked_call.prepare(case, seed, reference=check_call or guards_after)
    sums = guards.checksums(prepared.inputs)  # before any call of the implementation
    if prepared.metrics:
        partial["metrics"] = dict(prepared.metrics)
    if case.device == "cpu":  # the heap its calls will use, faulted in now, not during the timed calls
        allocator.reserve_heap(partial.get("predicted_peak_bytes"))
    last_call_s = None
    if check_call:
        t0 = time.perf_counter()
        acc = checked_call.check_impl(impl, prepared, case, around)
        last_call_s = time.perf_counter() - t0
        partial.update(acc.fields())
        if acc.wrong:
            return finish(case, vocab.WRONG, acc.wrong, started, partial)
    if case.pass_kind != "forward":
        t0 = time.perf_counter()
        gc = checked_call.check_impl_grads(impl, prepared, case)
        last_call_s = time.perf_counter() - t0
        partial["metrics"] = {**partial.get("metrics", {}), **gc.metrics}
        if gc.wrong:
            return finish(case, vocab.WRONG, gc.wrong, started, partial)
    fn = checked_call.build_callable(impl, prepared, case)
    factor = slowdown_for(case)
    if factor:
        fn = slowed_callable(fn, factor, case)
        partial["extra"] = {"testing_slowdown": factor}
    return Checked(impl, case, prepared, sums, guards.LastOutput(fn), partial, compile_start, last_call_s)


def slowed_callable(fn, factor: float, case: Case):
    import torch

    from harness.measure.slowdown import slowed

    cuda = case.device.startswith("cuda")
    return slowed(fn, factor, torch.cuda.synchronize if cuda else (lambda: None), cuda=cuda)


def after_timing(c: Checked, seed: int, median_s: float, ceilings: dict | None) -> tuple[str, str]:
    """Stage 4: (status, message) after the timed calls: `wrong` when a guard fails, `suspect` when
    faster than the ceilings allow, else ok."""
    from harness.measure import guards
    from harness.workloads import workload_of

    problem = guards.check_after_timing(c.impl, c.case, c.prepared, c.sums, c.timed, seed)
    if problem:
        return vocab.WRONG, problem
    wl = workload_of(c.case)
    suspect = guards.too_fast(c.case, median_s, wl.flops(c.case), wl.min_bytes(c.case), ceilings or {})
    if suspect:
        return vocab.SUSPECT, suspect
    return vocab.OK, ""


def failed(case: Case, exc: BaseException, started: float, partial: dict) -> Measurement:
    """The implementation's exception as this case's record."""
    from harness.measure import checked_call

    f = checked_call.failure(exc)
    return finish(case, f.status, f.message, started, {**partial, "extra": {"traceback": f.traceback}})


def measure_case(case: Case, budget: Budget, seed: int, *, ceilings: dict | None = None) -> Measurement:
    started = time.perf_counter()
    from harness import registry

    impl = registry.get(case.impl)
    partial = admit(impl, case, started)
    if isinstance(partial, Measurement):
        return partial
    try:
        import torch

        from harness import stats
        from harness.measure import compile_time, kernel_names, peak_memory
        from harness.results.units import tflops_per_s
        from harness.workloads import workload_of

        # The memory pass: the checked call of an eager forward pass, profiled (its peak memory and,
        # on the CPU, the ops it ran); else a profiled call of the timed callable after timing.
        names = [] if kernel_names.wanted(impl) and case.device == "cpu" else None
        peak = {}

        def profiled(call):
            peak["bytes"], out = peak_memory.measure_peak(call, case.device, op_names=names)
            return out

        in_check = case.pass_kind == "forward" and not getattr(impl, "params", {}).get("compiled")
        c = check(impl, case, seed, partial, started, around=profiled if in_check else None)
        if isinstance(c, Measurement):
            return c
        partial = c.fields
        fn = c.timed.fn
        workload = workload_of(case)
        n_flops, n_bytes = workload.flops(case), workload.min_bytes(case)
        t, contention, gpu_metrics, gpu_extra = _time(c.timed, case, budget, n_flops, n_bytes, c.last_call_s)
        st = stats.summarize(t.samples_s)
        if "bytes" not in peak:
            profiled(fn)  # not through c.timed: the guards judge the last timed call's output
        partial["peak_bytes"] = peak["bytes"]
        status, message = after_timing(c, seed, st.median_s, ceilings)
        rate = tflops_per_s(n_flops, st.median_s)
        extra = {"threads": torch.get_num_threads()} if case.device == "cpu" else {}
        extra.update(gpu_extra)
        extra.update(partial.pop("extra", {}))
        metrics = {**partial.pop("metrics", {}), **(contention.metrics() if contention else {}), **gpu_metrics,
                   **interval_metrics(t, budget), "min_bytes": n_bytes, "gbytes_per_s": n_bytes / st.median_s / 1e9,
                   "arithmetic_intensity": n_flops / n_bytes}
        metrics.update(compile_time.metrics(impl, c.compile_start))
        extra.update(compile_time.extra(impl, c.compile_start))  # a shape compiled statically says so
        extra.update(kernel_names.record(impl, fn, st.median_s, seen=names))  # which kernels ran (sdpa family, compiled code)
        ok = dict(samples_s=tuple(t.samples_s), calls_per_block=t.calls_per_block, timing_stopped=t.stopped,
                  stats=st, flops=n_flops, tflops_per_s=rate, metrics=metrics, extra=extra,
                  contended=bool(contention and contention.contended),
                  contention=contention.reason if contention else "")
        return finish(case, status, message or _timing_note(t, st, budget), started, {**partial, **ok})
    except Exception as exc:  # the implementation's failure is this case's record, not ours
        return failed(case, exc, started, partial)


def finish(case: Case, status: str, message: str, started: float, fields: dict) -> Measurement:
    """The record from the fields measured so far (unknown keys dropped)."""
    known = {f.name for f in dataclasses.fields(Measurement)}
    return Measurement(case, status, message, wall_s=time.perf_counter() - started,
                       **{k: v for k, v in fields.items() if k in known})


def interval_metrics(t, budget: Budget) -> dict:
    """The 95% CI of the median the timing reached, and the target it stopped on (or not)."""
    return {"median_ci_low_s": t.median_ci_low_s, "median_ci_high_s": t.median_ci_high_s,
            "ci_half_width": t.ci_half_width, "ci_target": budget.target_ci}


def _timing_note(t, st, budget: Budget) -> str:
    """An OK case that hit max_time_s before its median's CI reached the target says so, with the
    width it got."""
    if t.stopped == "precision":
        return ""
    got = "no CI (too few samples)" if t.ci_half_width is None else f"median CI +-{t.ci_half_width:.1%}"
    if t.ci_half_width is None or t.ci_half_width > budget.target_ci:
        return (f"precision target not reached: {got} at max_time_s = {budget.max_time_s:g} s "
                f"(target +-{budget.target_ci:.1%}, {t.n_blocks} samples)")
    return ""


def _time(fn, case: Case, budget: Budget, n_flops: float, n_bytes: float, previous_call_s: float | None = None):
    """(Timing, CPU contention or None, GPU telemetry metrics, extra fields). previous_call_s: how
    long the call just before (the checked call) took."""
    from harness.measure.timing import contention, cpu as cpu_timing

    if case.device.startswith("cuda"):
        from harness.measure.timing.cuda import time_cuda_with_telemetry

        t, metrics, extra = time_cuda_with_telemetry(fn, case, budget, n_flops, n_bytes)
        return t, None, metrics, extra
    import torch

    kw = dict(warmup_s=budget.warmup_s, min_time_s=budget.min_time_s, max_time_s=budget.max_time_s,
              target_ci=budget.target_ci)
    before = contention.snapshot()
    # the checked call came just before: one warm-up call at least, none when it alone lasted the
    # warm-up time; the warm-up ends early once its calls are steady
    t = cpu_timing.time_cpu(fn, warmup_calls=1, previous_call_s=previous_call_s, steady=True, **kw)
    return t, contention.assess(before, contention.snapshot(), threads=torch.get_num_threads()), {}, {}
