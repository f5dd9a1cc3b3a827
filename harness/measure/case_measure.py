"""Measure one case in this process: does it fit, is it right, how much memory, how fast.

Order: support and memory fit (decided here, where the case runs), inputs and the float64
reference (harness.measure.core), one checked call, peak memory in a pass of its own, then timing.
An implementation's failure is this case's record, never an exception out of here.
"""

from __future__ import annotations

import time

from harness import vocab
from harness.case import Budget, Case
from harness.results.records import Measurement


def measure_case(case: Case, budget: Budget, seed: int) -> Measurement:
    started = time.perf_counter()
    from harness import registry
    from harness.measure import capacity, core
    from harness.measure.memory import device_memory_bytes

    impl = registry.get(case.impl)
    support = impl.supports(case)
    if not support:
        return Measurement(case, vocab.SKIPPED, support.reason)
    predicted = impl.predicted_peak_bytes(case)
    why = capacity.too_big(case, predicted, device_memory_bytes(case.device))
    if why:
        return Measurement(case, vocab.SKIPPED, why, predicted_peak_bytes=predicted)
    partial: dict = {"predicted_peak_bytes": predicted}
    try:
        import torch

        from harness.measure import flops, memory, stats

        if case.threads and case.device == "cpu":
            torch.set_num_threads(case.threads)
        prepared = core.prepare(case, seed)
        acc = core.check_impl(impl, prepared, case)
        partial.update(acc.fields())
        if acc.wrong:
            return Measurement(case, vocab.WRONG, acc.wrong, wall_s=time.perf_counter() - started, **partial)
        fn = core.build_callable(impl, prepared.inputs, case)
        partial["peak_bytes"] = memory.measure_peak_bytes(fn, case.device)
        t = _time(fn, case, budget)
        st = stats.summarize(t.samples_s)
        n_flops = flops.attention_flops(case)
        return Measurement(
            case,
            vocab.OK,
            samples_s=tuple(t.samples_s),
            calls_per_block=t.calls_per_block,
            timing_stopped=t.stopped,
            stats=st,
            flops=n_flops,
            tflops_per_s=flops.tflops_per_s(n_flops, st.median_s),
            wall_s=time.perf_counter() - started,
            extra={"threads": torch.get_num_threads()} if case.device == "cpu" else {},
            **partial,
        )
    except Exception as exc:  # the implementation's failure is this case's record, not ours
        f = core.failure(exc)
        return Measurement(case, f.status, f.message, wall_s=time.perf_counter() - started,
                           extra={"traceback": f.traceback}, **partial)


def _time(fn, case: Case, budget: Budget):
    from harness.measure import timing

    kw = dict(warmup_s=budget.warmup_s, min_time_s=budget.min_time_s, max_time_s=budget.max_time_s,
              target_spread=budget.target_spread)
    if case.device.startswith("cuda"):
        return timing.time_cuda(fn, l2_flush=budget.l2_flush, cuda_graph=budget.cuda_graph, **kw)
    return timing.time_cpu(fn, **kw)
