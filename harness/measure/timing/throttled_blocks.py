"""Match timing blocks to telemetry samples: drop blocks that ran while the GPU was throttled, and
re-measure when too few clean blocks remain (`[budget] discard_throttled = true`).

A telemetry sample sees the device at one instant; what happened between two samples is unknown.
So a throttled sample at t_i stands for the whole span from the previous sample t_{i-1} to the next
one t_{i+1} (conservative: a throttle that began just after t_{i-1} is still caught), and a timing
block (start, end) is dropped when it intersects any such span (closed intervals). Block and sample
times must come from the same clock: time.perf_counter() on the host (TelemetrySample.t).

CUDA-event blocks have GPU times, not host times: cuda_block_times() places them on the host
clock from one host timestamp taken right after the synchronize that completed them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from harness.measure.timing.nvml_sampler import TelemetrySample

DEFAULT_MAX_ATTEMPTS = 3  # the first measurement + 2 re-measurements


@dataclass(frozen=True)
class BlockFilter:
    kept_s: tuple[float, ...]  # the per-call samples of the blocks that were kept, in order
    kept: tuple[int, ...]  # their block indices
    dropped: tuple[int, ...]  # indices of blocks that overlapped a throttled telemetry sample


def throttled_spans(telemetry: Sequence[TelemetrySample]) -> list[tuple[float, float]]:
    """(from, to) host-time spans each throttled sample stands for: previous to next sample."""
    ts = sorted(telemetry, key=lambda s: s.t)
    spans = []
    for i, s in enumerate(ts):
        if s.throttled:
            lo = ts[i - 1].t if i > 0 else s.t
            hi = ts[i + 1].t if i + 1 < len(ts) else s.t
            spans.append((lo, hi))
    return spans


def drop_throttled_blocks(
    samples_s: Sequence[float],
    block_times: Sequence[tuple[float, float]],
    telemetry: Sequence[TelemetrySample],
) -> BlockFilter:
    """Keep the timing samples whose block (start, end) overlapped no throttled telemetry sample."""
    if len(samples_s) != len(block_times):
        raise ValueError(f"{len(samples_s)} timing samples but {len(block_times)} block times")
    spans = throttled_spans(telemetry)
    kept, dropped = [], []
    for i, (start, end) in enumerate(block_times):
        hit = any(start <= hi and end >= lo for lo, hi in spans)
        (dropped if hit else kept).append(i)
    return BlockFilter(tuple(samples_s[i] for i in kept), tuple(kept), tuple(dropped))


def cuda_block_times(events: Sequence[tuple[object, object]], t_sync: float) -> list[tuple[float, float]]:
    """Host-clock (start, end) of blocks timed with CUDA events [(begin, end), ...], given
    t_sync = time.perf_counter() taken just after the synchronize that completed the last end
    event: each event's offset before that last event (Event.elapsed_time, ms) is subtracted."""
    if not events:
        return []
    last = events[-1][1]
    return [
        (t_sync - begin.elapsed_time(last) / 1e3, t_sync - end.elapsed_time(last) / 1e3)
        for begin, end in events
    ]


@dataclass(frozen=True)
class Unthrottled:
    samples_s: tuple[float, ...]  # kept samples of the chosen attempt
    dropped: int  # blocks dropped from the chosen attempt
    attempts: int  # measurements made (1 = no re-measurement)
    enough: bool  # the chosen attempt kept >= min_blocks
    result: object  # what `measure` returned for the chosen attempt (e.g. its Timing)
    note: str | None  # said when blocks were dropped or not enough remained


def measure_discarding_throttled(
    measure: Callable[[], tuple[object, Sequence[float], Sequence[tuple[float, float]], Sequence[TelemetrySample]]],
    *,
    min_blocks: int,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> Unthrottled:
    """Call measure() -> (result, samples_s, block_times, telemetry_samples); drop throttled
    blocks; if fewer than min_blocks remain, measure again, at most max_attempts times in all.
    Returns the first attempt with enough clean blocks, else the one that kept the most."""
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    best: tuple[BlockFilter, object] | None = None
    attempts = 0
    for attempts in range(1, max_attempts + 1):
        result, samples_s, block_times, telemetry = measure()
        f = drop_throttled_blocks(samples_s, block_times, telemetry)
        if best is None or len(f.kept) > len(best[0].kept):
            best = (f, result)
        if len(f.kept) >= min_blocks:
            best = (f, result)
            break
    f, result = best
    enough = len(f.kept) >= min_blocks
    note = None
    if f.dropped:
        note = f"dropped {len(f.dropped)} of {len(f.dropped) + len(f.kept)} blocks that overlapped throttling"
    if not enough:
        note = (f"only {len(f.kept)} unthrottled blocks (< {min_blocks}) after {attempts} measurements; "
                + (note or ""))
    return Unthrottled(f.kept_s, len(f.dropped), attempts, enough, result, note)
