"""Wall-clock (CPU) timing of a zero-argument callable, and the stopping rule and Timing record
that CUDA-event timing (harness/measure/timing/cuda_events.py) shares; raw samples kept.

A sample is one block of `calls_per_block` back-to-back calls; its value is the block time
divided by the calls, so per-call seconds whatever the block size. Blocks continue until the
measurement phase has lasted `min_time_s` and the 95% CI of the median of the samples so far
(distribution-free, harness.stats.median_order_ci) is within +-`target_ci` of the median (relative
half-width), or until `max_time_s` — and past it until CI_SAMPLES (the fewest with that interval)
unless they would take longer than OVERRUN x max_time_s; always at least MIN_SAMPLES. A precision
target, not a test:
stopping on the interval's width does not move where the interval lies. The Timing keeps the
interval it reached (median_ci_low_s, median_ci_high_s, ci_half_width; None below 6 samples).
Warm-up calls are discarded. Nothing here formats text: results are a frozen Timing.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import time
from dataclasses import dataclass
from typing import Callable

from harness.stats import median_order_ci

MIN_SAMPLES = 3  # even when one call outlasts max_time_s
CI_SAMPLES = 6  # the fewest samples with a 95% CI of the median (harness.stats.median_order_ci)
# A slow case (a call of more than max_time_s / CI_SAMPLES) goes past max_time_s to CI_SAMPLES, so it
# reports an interval, as long as that ends within OVERRUN x max_time_s; slower ones stop at
# max_time_s with what they have (at least MIN_SAMPLES) and say they have no interval.
OVERRUN = 4.0


@dataclass(frozen=True)
class Timing:
    samples_s: tuple[float, ...]  # per-call seconds, one per block
    calls_per_block: int
    n_blocks: int
    total_time_s: float  # measurement phase only, warm-up excluded
    stopped: str  # "precision" (the median's CI reached the target) | "max_time" (time cap hit)
    warmup_s: float  # time actually spent warming up
    timer: str = "perf_counter"  # "perf_counter" | "cuda_event"
    l2_flush: bool = False
    cuda_graph: bool = False  # True only when graph replay was actually used
    graph_fallback_reason: str | None = None  # why capture failed, when cuda_graph was asked for
    median_ci_low_s: float | None = None  # the 95% CI of the median reached (None: too few samples)
    median_ci_high_s: float | None = None
    ci_half_width: float | None = None  # (high - low) / 2 / median


def _should_stop(samples: list[float], elapsed_s: float, min_time_s, max_time_s, target_ci):
    """Return "precision", "max_time" or None (keep going)."""
    if len(samples) < MIN_SAMPLES:
        return None
    if elapsed_s >= min_time_s:
        ci = median_order_ci(samples)
        if ci is not None and ci.half_width <= target_ci:
            return "precision"  # (even if the cap was reached at the same block)
    if elapsed_s >= max_time_s:
        short = CI_SAMPLES - len(samples)
        if short > 0 and elapsed_s + short * sorted(samples)[len(samples) // 2] <= OVERRUN * max_time_s:
            return None  # a slow case: a few more samples give it an interval
        return "max_time"
    return None


def with_interval(t: "Timing") -> "Timing":
    """t with the 95% CI of its samples' median (what a stop on precision looked at)."""
    ci = median_order_ci(t.samples_s)
    if ci is None:
        return dataclasses.replace(t, median_ci_low_s=None, median_ci_high_s=None, ci_half_width=None)
    return dataclasses.replace(t, median_ci_low_s=ci.low, median_ci_high_s=ci.high, ci_half_width=ci.half_width)


def _check_budget(warmup_s, min_time_s, max_time_s, target_ci):
    if warmup_s < 0 or min_time_s < 0 or max_time_s < 0:
        raise ValueError("warmup_s, min_time_s and max_time_s must be >= 0")
    if max_time_s < min_time_s:
        raise ValueError(f"max_time_s ({max_time_s}) must be >= min_time_s ({min_time_s})")
    if target_ci < 0:
        raise ValueError(f"target_ci must be >= 0, got {target_ci}")


# A warm-up may end before warmup_s once it is steady: STEADY_CALLS calls in a row within
# STEADY_WITHIN of the fastest of them, over at least STEADY_MIN_S (time_cpu's steady=True).
STEADY_CALLS = 3
STEADY_WITHIN = 0.03
STEADY_MIN_S = 0.01


def _steady(recent: list[float], elapsed_s: float) -> bool:
    last = recent[-STEADY_CALLS:]
    return (len(last) == STEADY_CALLS and elapsed_s >= STEADY_MIN_S
            and max(last) <= (1.0 + STEADY_WITHIN) * min(last))


def _warmup_cpu(fn: Callable, warmup_s: float, one_call_enough_s: float = math.inf, min_calls: int = 2,
                steady: bool = False) -> tuple[float, float]:
    """Call fn until warmup_s has passed and at least min_calls times (steady=True: or, before
    that, until the calls are steady, _steady). Returns (time spent, per-call estimate).

    Two calls by default because the first is cold (lazy init, allocator, page faults): sizing blocks from it
    alone would give a fast function one call per block. A first call that already took
    ≥ one_call_enough_s (the measurement's max_time_s) is not repeated.
    """
    start = time.perf_counter()
    recent: list[float] = []
    while True:
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        recent = (recent + [t1 - t0])[-5:]
        if t1 - start >= warmup_s and (len(recent) >= min(min_calls, 5) or recent[0] >= one_call_enough_s):
            break
        if steady and _steady(recent, t1 - start):
            break
    # The fastest recent call: the first calls are cold and too slow.
    return time.perf_counter() - start, min(recent)


def _calls_for(per_call_s: float, min_block_s: float) -> int:
    if min_block_s <= 0:
        return 1
    return max(1, math.ceil(min_block_s / max(per_call_s, 1e-9)))


def time_cpu(
    fn: Callable[[], object],
    *,
    warmup_s: float = 0.1,
    min_time_s: float = 0.5,
    max_time_s: float = 5.0,
    target_ci: float = 0.02,
    min_block_s: float = 0.01,
    warmup_calls: int = 2,
    previous_call_s: float | None = None,
    steady: bool = False,
) -> Timing:
    """Time fn with time.perf_counter. Blocks last ≥ min_block_s so timer overhead (~100 ns)
    is negligible. The garbage collector is paused during blocks (as timeit does) so a collection
    triggered by someone else's garbage does not land in one sample. warmup_calls: the fewest
    warm-up calls (1 where fn has just been called, e.g. the sweep's checked call).
    previous_call_s: how long a call made just before took (the sweep's checked call): when it
    alone lasted warmup_s and min_block_s, it was the warm-up -- the one call a warm-up would make
    -- and blocks are one call each; no warm-up call is made (a slow case saves one call). When it
    overstated a call (a cold first call, a compile), the first block is short: it becomes the
    warm-up and sizes the blocks. steady=True: the warm-up ends before warmup_s once STEADY_CALLS
    calls in a row agree within STEADY_WITHIN (the sweep, whose checked call ran just before)."""
    _check_budget(warmup_s, min_time_s, max_time_s, target_ci)
    unsized = previous_call_s is not None and previous_call_s >= max(warmup_s, min_block_s)
    if unsized:  # that call was the warm-up
        warm_s, per_call_s = previous_call_s, previous_call_s
    else:
        warm_s, per_call_s = _warmup_cpu(fn, warmup_s, one_call_enough_s=max_time_s, min_calls=max(1, warmup_calls),
                                         steady=steady)
    calls = _calls_for(per_call_s, min_block_s)
    samples: list[float] = []
    gc_was_enabled = gc.isenabled()
    start = time.perf_counter()
    try:
        gc.disable()
        while True:
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            t1 = time.perf_counter()
            if unsized and not samples and t1 - t0 < min_block_s:
                # the previous call (profiled) overstated a call: this one is the warm-up, and sizes the blocks
                warm_s += t1 - t0
                calls = _calls_for((t1 - t0) / calls, min_block_s)
                continue
            samples.append((t1 - t0) / calls)
            stopped = _should_stop(samples, t1 - start, min_time_s, max_time_s, target_ci)
            if stopped:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return with_interval(Timing(
        samples_s=tuple(samples),
        calls_per_block=calls,
        n_blocks=len(samples),
        total_time_s=time.perf_counter() - start,
        stopped=stopped,
        warmup_s=warm_s,
    ))


def block_sizes(fns: dict[str, Callable[[], object]], *, min_block_s: float, warmup_s: float,
                sync: Callable[[], None] | None = None, warmup_calls: int = 2,
                known: dict[str, int] | None = None) -> dict[str, int]:
    """Calls per block of each callable (blocks of >= min_block_s), from a warm-up of >= warmup_s
    and >= warmup_calls calls (at least one); callables with a size in `known` are not called."""
    do_sync = sync or (lambda: None)
    calls = {n: int(c) for n, c in (known or {}).items() if n in fns and int(c) >= 1}
    for name, f in fns.items():
        if name in calls:
            continue

        def synced(f=f):
            f()
            do_sync()

        _, per_call_s = _warmup_cpu(synced, warmup_s, min_calls=max(1, warmup_calls))
        calls[name] = _calls_for(per_call_s, min_block_s)
    return calls


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    *,
    rounds: int = 20,
    min_block_s: float = 0.01,
    warmup_s: float = 0.05,
    sync: Callable[[], None] | None = None,
    warmup_calls: int = 2,
    calls_per_block: dict[str, int] | None = None,
) -> dict[str, list[float]]:
    """Per-call seconds for each callable, measured in alternating short blocks.

    Round r runs one block of every callable, starting at a different one each round (the order
    rotates), so slow drift of the machine (frequency, neighbours) hits every callable alike and
    ratios between them stay meaningful. `sync` (e.g. torch.cuda.synchronize) is called before
    and after each block for asynchronous devices. warmup_calls: the fewest warm-up calls of each
    (1 where the process has just run the same calls). calls_per_block: block sizes already known
    (from an earlier measurement of the same callables in this process): those callables get no
    warm-up at all -- a round's first block may run cold, which the median of the rounds absorbs.
    Returns {name: [rounds samples]}.
    """
    if not fns:
        raise ValueError("time_interleaved: no callables given")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    names = list(fns)
    do_sync = sync or (lambda: None)

    calls = block_sizes(fns, min_block_s=min_block_s, warmup_s=warmup_s, sync=sync, warmup_calls=warmup_calls,
                        known=calls_per_block)

    out: dict[str, list[float]] = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()
    try:
        gc.disable()
        for r in range(rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                fn, n = fns[name], calls[name]
                do_sync()
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                do_sync()
                out[name].append((time.perf_counter() - t0) / n)
    finally:
        if gc_was_enabled:
            gc.enable()
    return out
