"""Compile time of torch.compile-based implementations, kept out of the latency.

An implementation registered with params={"compiled": True} exposes `fn.compile_seconds()`: the
seconds it has spent so far in calls that compiled a new graph (implementations/_shared/compile_support.py). The
case's share is the difference across its measurement -- the first case of a shape family in a
worker pays the compile, later ones record ~0 (compiled once, reused). Stored as
Measurement.metrics["compile_s"] (harness/results/metrics.py: label "compile", kind "info").
"""

from __future__ import annotations


def compile_clock(impl):
    """The implementation's compile_seconds() hook, or None."""
    if not getattr(impl, "params", {}).get("compiled"):
        return None
    hook = getattr(impl.fn, "compile_seconds", None)
    return hook if callable(hook) else None


def start(impl) -> float | None:
    clock = compile_clock(impl)
    return None if clock is None else float(clock())


def metrics(impl, started: float | None) -> dict:
    """{"compile_s": seconds compiled since start()} for compiled implementations, else {}."""
    clock = compile_clock(impl)
    if clock is None or started is None:
        return {}
    return {"compile_s": max(0.0, float(clock()) - started)}
