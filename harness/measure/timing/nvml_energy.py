"""Energy per call from NVML's total-energy counter, or from mean power × time when it cannot be used.

nvmlDeviceGetTotalEnergyConsumption returns millijoules consumed since the driver was loaded
(Volta and newer). The counter does not tick continuously: it jumps every ~10-100 ms (coarser on
some boards), so a single before/after difference over a short window is wrong by up to one step
at each end. The sampler (telemetry.py) therefore reads the counter with every sample, and:

- **Window chosen by the counter's own updates.** Energy is taken between the first and the last
  sample at which the counter was seen to change, over the time between those two samples; the
  calls made in that span are attributed pro rata (calls × span / window: the timed region runs
  back-to-back blocks, so work is uniform in time). Both ends are then "just after an update", so
  the quantisation error of a whole step at each end is gone and what remains is the sampler's
  observation lag (≤ one sampling interval at each end, similar at both).
- **Enough updates or no counter.** The counter is used only if it changed at least
  MIN_COUNTER_UPDATES times during the window. Otherwise (or when it is missing, not supported,
  or reset during the case) energy per call is mean power × window / calls, and the result says
  so: energy_source = "power×time" and energy_note says why. A caller that wants the counter
  can keep its timed region going until TelemetrySampler.energy_ready() is true.
- **Wrap-around and reset.** A decrease from a value within 2^62 of 2^64 to a small value is
  the 64-bit counter wrapping: the difference is taken modulo 2^64. Any other decrease is a reset
  (driver reload, GPU reset): the energy across it is unknown, so the counter is not used.

Energy includes everything the GPU did in the window: idle gaps between blocks, and L2-flush
kernels when the timing flushes the cache — it is energy per timed call as the harness ran it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

COUNTER_MODULUS = 2**64  # nvmlDeviceGetTotalEnergyConsumption is an unsigned long long, in mJ
MIN_COUNTER_UPDATES = 3  # the counter must change at least this often within the window


@dataclass(frozen=True)
class EnergyEstimate:
    energy_per_call_j: float | None
    source: str | None  # "counter" | "power×time" | None (neither available)
    counter_updates: int  # how many times the counter changed in the window
    note: str | None  # why the counter was not used (None when it was)


def counter_steps(readings: Sequence[tuple[float, int]]) -> tuple[list[int], str | None]:
    """Differences between consecutive counter readings (t, mJ), wrap-around resolved.
    Returns (steps, None) or ([], reason) when the counter was reset in between."""
    steps = []
    for (_, prev), (_, cur) in zip(readings, readings[1:]):
        d = cur - prev
        if d < 0:
            if prev >= COUNTER_MODULUS - 2**62 and cur < 2**62:
                d += COUNTER_MODULUS  # 64-bit wrap-around
            else:
                return [], f"energy counter reset during the case ({prev} -> {cur} mJ)"
        steps.append(d)
    return steps, None


def estimate_energy(
    readings: Sequence[tuple[float, int]],
    *,
    calls: int,
    window_s: float,
    mean_power_w: float | None,
    min_updates: int = MIN_COUNTER_UPDATES,
) -> EnergyEstimate:
    """Energy per call from counter readings [(t, mJ), ...] taken across a window of window_s
    seconds in which `calls` calls ran; falls back to mean_power_w × window_s / calls."""
    note = None
    updates = 0
    if len(readings) < 2:
        note = "energy counter not readable"
    else:
        steps, note = counter_steps(readings)
        changed = [i + 1 for i, d in enumerate(steps) if d > 0]  # reading indices right after a change
        updates = len(changed)
        if note is None and updates < max(2, min_updates):
            note = (
                f"energy counter changed {updates} times in {window_s * 1e3:.0f} ms "
                f"(needs >= {max(2, min_updates)})"
            )
        if note is None and calls > 0 and window_s > 0:
            first, last = changed[0], changed[-1]
            span_s = readings[last][0] - readings[first][0]
            energy_mj = sum(steps[first:last])  # steps[i] goes from reading i to i+1
            if span_s > 0:
                calls_in_span = calls * span_s / window_s
                return EnergyEstimate(energy_mj / 1e3 / calls_in_span, "counter", updates, None)
            note = "energy counter updates not separated in time"
    if mean_power_w is not None and calls > 0 and window_s > 0:
        return EnergyEstimate(mean_power_w * window_s / calls, "power×time", updates, note)
    return EnergyEstimate(None, None, updates, note or "no power readings")


def tflops_per_watt(flops: float, seconds: float, watts: float) -> float | None:
    """(FLOPs / seconds) / watts in TFLOP/s per W (= TFLOP per joule); None if undefined."""
    if not flops or not seconds or not watts or seconds <= 0 or watts <= 0:
        return None
    return flops / seconds / 1e12 / watts


def gbytes_per_s_per_watt(nbytes: float, seconds: float, watts: float) -> float | None:
    """(bytes / seconds) / watts in GB/s per W (= GB per joule); None if undefined."""
    if not nbytes or not seconds or not watts or seconds <= 0 or watts <= 0:
        return None
    return nbytes / seconds / 1e9 / watts
