"""Measure one case in this process: does it fit, is it right, how much memory, how fast, and can
the figures be trusted.

Order: support and memory fit (decided here, where the case runs), inputs and the float64
reference (harness.measure.checked_call), one checked call, peak memory in a pass of its own, then timing
with CPU snapshots around it (harness.measure.timing.contention). After timing, the guards
(harness.measure.guards): inputs unchanged, the last timed call's output right, a call on fresh
inputs right (no cached output), and a rate no faster than the measured ceiling allows.
An implementation's failure is this case's record, never an exception out of here.
"""

from __future__ import annotations

import dataclasses
import time

from harness import vocab
from harness.case import Budget, Case
from harness.results.records import Measurement


def measure_case(case: Case, budget: Budget, seed: int, *, ceilings: dict | None = None) -> Measurement:
    started = time.perf_counter()
    from harness import registry
    from harness.measure import capacity, checked_call, guards
    from harness.measure.peak_memory import device_memory_bytes
    from harness.workloads import workload_of

    impl = registry.get(case.impl)
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
    partial: dict = {"predicted_peak_bytes": predicted}
    try:
        import torch

        from harness.measure import peak_memory
        from harness.results.units import tflops_per_s

        from harness import stats

        if case.threads and case.device == "cpu":
            if torch.get_num_threads() != case.threads:  # never called needlessly (run/worker.py)
                torch.set_num_threads(case.threads)
        from harness.measure import compile_time, kernel_names

        compile_start = compile_time.start(impl)  # compile time is recorded apart from latency
        prepared = checked_call.prepare(case, seed)
        sums = guards.checksums(prepared.inputs)  # before any call of the implementation
        acc = checked_call.check_impl(impl, prepared, case)
        partial.update(acc.fields())
        if acc.wrong:
            return _done(case, vocab.WRONG, acc.wrong, started, partial)
        grad_metrics = {}
        if case.pass_kind != "forward":
            gc = checked_call.check_impl_grads(impl, prepared, case)
            grad_metrics = gc.metrics
            if gc.wrong:
                return _done(case, vocab.WRONG, gc.wrong, started, {**partial, "metrics": grad_metrics})
        fn = checked_call.build_callable(impl, prepared, case)
        partial["peak_bytes"] = peak_memory.measure_peak_bytes(fn, case.device)
        last = guards.LastOutput(fn)
        n_flops, n_bytes = workload.flops(case), workload.min_bytes(case)
        t, contention, gpu_metrics, gpu_extra = _time(last, case, budget, n_flops, n_bytes)
        st = stats.summarize(t.samples_s)
        rate = tflops_per_s(n_flops, st.median_s)
        extra = {"threads": torch.get_num_threads()} if case.device == "cpu" else {}
        extra.update(gpu_extra)
        metrics = {**grad_metrics, **(contention.metrics() if contention else {}), **gpu_metrics,
                   "min_bytes": n_bytes, "gbytes_per_s": n_bytes / st.median_s / 1e9,
                   "arithmetic_intensity": n_flops / n_bytes}
        metrics.update(compile_time.metrics(impl, compile_start))
        extra.update(compile_time.extra(impl, compile_start))  # a shape compiled statically says so
        extra.update(kernel_names.record(impl, fn))  # which kernels ran (sdpa family, compiled code)
        ok = dict(samples_s=tuple(t.samples_s), calls_per_block=t.calls_per_block, timing_stopped=t.stopped,
                  stats=st, flops=n_flops, tflops_per_s=rate, metrics=metrics, extra=extra,
                  contended=bool(contention and contention.contended),
                  contention=contention.reason if contention else "")
        problem = guards.check_after_timing(impl, case, prepared, sums, last, seed)
        if problem:
            return _done(case, vocab.WRONG, problem, started, {**partial, **ok})
        suspect = guards.too_fast(case, st.median_s, n_flops, n_bytes, ceilings or {})
        if suspect:
            return _done(case, vocab.SUSPECT, suspect, started, {**partial, **ok})
        return _done(case, vocab.OK, _timing_note(t, st, budget), started, {**partial, **ok})
    except Exception as exc:  # the implementation's failure is this case's record, not ours
        f = checked_call.failure(exc)
        return _done(case, f.status, f.message, started, {**partial, "extra": {"traceback": f.traceback}})


def _done(case: Case, status: str, message: str, started: float, fields: dict) -> Measurement:
    known = {f.name for f in dataclasses.fields(Measurement)}
    return Measurement(case, status, message, wall_s=time.perf_counter() - started,
                       **{k: v for k, v in fields.items() if k in known})


def _timing_note(t, st, budget: Budget) -> str:
    """An OK case that hit max_time_s before its spread reached the target says so."""
    if t.stopped == "max_time" and st.spread >= budget.target_spread:
        return (f"timing stopped at max_time_s = {budget.max_time_s:g} s with IQR/median {st.spread:.0%} "
                f"(target {budget.target_spread:.0%})")
    return ""


def _time(fn, case: Case, budget: Budget, n_flops: float, n_bytes: float):
    """(Timing, CPU contention or None, GPU telemetry metrics, extra fields)."""
    from harness.measure.timing import contention, cpu as cpu_timing

    if case.device.startswith("cuda"):
        from harness.measure.timing.cuda import time_cuda_with_telemetry

        t, metrics, extra = time_cuda_with_telemetry(fn, case, budget, n_flops, n_bytes)
        return t, None, metrics, extra
    import torch

    kw = dict(warmup_s=budget.warmup_s, min_time_s=budget.min_time_s, max_time_s=budget.max_time_s,
              target_spread=budget.target_spread)
    before = contention.snapshot()
    t = cpu_timing.time_cpu(fn, **kw)
    return t, contention.assess(before, contention.snapshot(), threads=torch.get_num_threads()), {}, {}
