"""Did a CPU case get the CPU it asked for? Snapshots around its timed region.

A spread inside one run says nothing about a neighbour that was busy the whole time: on the 2-core
machines here, one competing busy process made `naive` N=256 32x slower with a tight spread. So
around the timed blocks we read
- our own process CPU time (all threads; the worker runs nothing but the case),
- the machine's busy and steal time from /proc/stat (all CPUs),
- the number of runnable threads from /proc/loadavg,
and derive the CPU other processes used while we were timed. The case is `contended` when what
was left for us is less than the threads it asked for (minus a quarter core of slack for the
kernel and daemons) and we did not get it (our own CPU time below FULL_SHARE of threads x wall:
a neighbour at a lower priority -- a niced job -- busies the machine but yields the CPU to us),
or when the hypervisor stole more than 5% of the machine.

Without /proc (not Linux) only our own CPU share is recorded and nothing is flagged.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

SLACK_CORES = 0.25  # background kernel/daemon work that never counts as contention
MAX_STEAL_SHARE = 0.05
FULL_SHARE = 0.9  # own CPU time / (threads x wall) at which we got what we asked for, whatever the machine's load


@dataclass(frozen=True)
class CpuSnapshot:
    wall_s: float
    own_cpu_s: float  # this process, every thread
    busy_ticks: int | None  # machine: user+nice+system+irq+softirq, all CPUs
    steal_ticks: int | None
    total_ticks: int | None
    runnable: int | None  # runnable threads right now (loadavg's 4th field, numerator)


@dataclass(frozen=True)
class Contention:
    threads: int  # CPU threads the case asked for
    cpus: int  # CPUs this process may run on
    own_cpu_share: float  # own CPU time / (wall × threads)
    others_cores: float | None  # cores' worth of CPU other processes used meanwhile
    steal_share: float | None  # stolen / total machine time
    runnable_max: int | None
    contended: bool
    reason: str  # why contended ("" when not)

    def metrics(self) -> dict:
        return {"cpu_share": self.own_cpu_share, "others_cores": self.others_cores,
                "steal_share": self.steal_share, "runnable_threads": self.runnable_max}


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _proc_stat() -> tuple[int, int, int] | None:
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return user + nice + system + irq + softirq, steal, sum(fields[:8])


def _runnable() -> int | None:
    try:
        with open("/proc/loadavg") as f:
            return int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None


def _clock_ticks_per_s() -> float:
    try:
        return float(os.sysconf("SC_CLK_TCK"))
    except (AttributeError, ValueError, OSError):
        return 100.0


def snapshot() -> CpuSnapshot:
    stat = _proc_stat()
    busy, steal, total = stat if stat else (None, None, None)
    return CpuSnapshot(time.perf_counter(), time.process_time(), busy, steal, total, _runnable())


def assess(before: CpuSnapshot, after: CpuSnapshot, threads: int, cpus: int | None = None,
           ticks_per_s: float | None = None) -> Contention:
    """Compare two snapshots taken around a timed region run with `threads` threads."""
    cpus = cpus or usable_cpus()
    hz = ticks_per_s or _clock_ticks_per_s()
    wall = max(after.wall_s - before.wall_s, 1e-9)
    own = max(after.own_cpu_s - before.own_cpu_s, 0.0)
    own_share = own / (wall * max(threads, 1))
    runnable = [r for r in (before.runnable, after.runnable) if r is not None]
    others = steal = None
    reasons = []
    if before.busy_ticks is not None and after.busy_ticks is not None:
        busy_s = (after.busy_ticks - before.busy_ticks) / hz
        others = max(busy_s - own, 0.0) / wall
        total = after.total_ticks - before.total_ticks
        steal = (after.steal_ticks - before.steal_ticks) / total if total > 0 else 0.0
        left = cpus - others
        if left < min(threads, cpus) - SLACK_CORES and own_share < FULL_SHARE:
            reasons.append(f"other processes used {others:.2f} of {cpus} CPUs, leaving {max(left, 0):.2f} "
                           f"for {threads} threads")
        if steal > MAX_STEAL_SHARE:
            reasons.append(f"the hypervisor stole {steal:.0%} of the CPU time")
    return Contention(threads, cpus, own_share, others, steal, max(runnable) if runnable else None,
                      bool(reasons), "; ".join(reasons))
