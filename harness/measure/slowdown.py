"""TESTING HOOK, not for normal use: ATTNBENCH_SLOWDOWN="flash=1.25[,naive=2]" makes each timed
call of those implementations take that factor longer (run it, then spin for the extra share of
its CPU time; see slowed()), so tests and benchmarks/gate_reliability.py can prove that the gate
catches a known slowdown, and a sweep can be slowed on purpose for `attnbench compare`. Applied in
the shared measurement stage (harness.measure.case_measure.check), so the sweep and the gate are
slowed alike; `attnbench check` announces it when set, and a slowed record says so
(extra["testing_slowdown"]). It exists only for that.
"""

from __future__ import annotations

import math
import os
import time
from typing import Callable

SLOWDOWN_ENV = "ATTNBENCH_SLOWDOWN"


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


def slowdown_for(case) -> float | None:
    """The testing hook's factor for this case's implementation, or None."""
    return parse_slowdown(os.environ.get(SLOWDOWN_ENV)).get(case.impl)
