"""CUDA timing with NVML telemetry around it (harness.measure.timing.nvml_sampler): clocks, power,
temperature, throttle reasons and energy per call for the timed region, and with
`[budget] discard_throttled = true` the samples timed while NVML saw throttling dropped (and the
case re-measured when too few remain).

The energy window: the timed region is extended (up to max_time_s) until the energy counter has
advanced several times (TelemetrySampler.energy_ready), since it updates only every ~10-100 ms;
energy per call is taken between the first and last counter changes and the calls inside them,
or from mean power × time when the counter did not advance enough (the record says which).
Without NVML the fields are absent and `telemetry_reason` says why; nothing fails.
"""

from __future__ import annotations

import dataclasses

from harness.case import Budget, Case

NUMERIC_FIELDS = ("energy_per_call_j", "mean_power_w", "sm_clock_min_mhz", "sm_clock_median_mhz",
                  "sm_clock_max_mhz", "mem_clock_median_mhz", "max_temperature_c", "tflops_per_w",
                  "gbytes_per_s_per_w")
MIN_CLEAN_BLOCKS = 5


def time_cuda_with_telemetry(fn, case: Case, budget: Budget, flops: float, nbytes: float):
    """(Timing, metrics dict, extra dict) for a CUDA case."""
    import torch

    from harness.measure.timing import cpu as cpu_timing, cuda_events
    from harness.measure.timing.nvml_sampler import TelemetrySampler
    from harness.measure.timing.throttled_blocks import measure_discarding_throttled

    index = torch.device(case.device).index
    index = torch.cuda.current_device() if index is None else index
    kw = dict(warmup_s=budget.warmup_s, min_time_s=budget.min_time_s, max_time_s=budget.max_time_s,
              target_ci=budget.target_ci, l2_flush=budget.l2_flush, cuda_graph=budget.cuda_graph,
              device=case.device)
    sampler: list = []

    def once():
        blocks: list = []
        with TelemetrySampler(index) as tel:
            t = cuda_events.time_cuda(fn, block_times=blocks, until=tel.energy_ready, **kw)
        sampler[:] = [tel, t]
        return t, t.samples_s, blocks, tel.samples

    extra: dict = {}
    if budget.discard_throttled:
        kept = measure_discarding_throttled(once, min_blocks=MIN_CLEAN_BLOCKS)
        t = kept.result
        if kept.dropped or kept.attempts > 1:
            t = cpu_timing.with_interval(dataclasses.replace(t, samples_s=tuple(kept.samples_s),
                                                             n_blocks=len(kept.samples_s)))
            extra["throttled_blocks_dropped"] = kept.dropped
            extra["throttle_attempts"] = kept.attempts
        if kept.note:
            extra["throttle_note"] = kept.note
    else:
        t = once()[0]
    tel = sampler[0]
    calls = t.n_blocks * t.calls_per_block
    summary = tel.summary(calls, flops=flops, nbytes=nbytes)
    if summary is None:
        extra["telemetry_reason"] = tel.reason
        return t, {}, extra
    d = summary.to_dict()
    metrics = {k: d[k] for k in NUMERIC_FIELDS if d.get(k) is not None}
    metrics["throttled"] = bool(summary.throttled)
    extra["telemetry"] = {k: v for k, v in d.items() if k not in NUMERIC_FIELDS}
    return t, metrics, extra
