"""Human scales for stored SI values: seconds, bytes, durations. The only number formatting that
more than one consumer (console, report, compare) shares."""

from __future__ import annotations

import math


def fmt_time_s(t: float | None) -> str:
    if t is None:
        return "-"
    if t >= 1:
        return f"{t:.2f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.2f} ms"
    return f"{t * 1e6:.1f} us"


def fmt_bytes(n: int | float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def fmt_duration_s(t: float) -> str:
    t = int(round(t))
    return f"{t // 60}m{t % 60:02d}s" if t >= 60 else f"{t}s"


def fmt_number(v: float | None, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


def tflops_per_s(flops: int | float, time_s: float) -> float:
    """FLOPs per second in units of 10¹²."""
    if time_s <= 0 or not math.isfinite(time_s):
        raise ValueError(f"time_s must be positive and finite, got {time_s}")
    return flops / time_s / 1e12
