"""Compile time of torch.compile-based implementations, kept out of the latency, and what the
compiler had to do differently for a case.

An implementation registered with params={"compiled": True} exposes `fn.compile_seconds()`: the
seconds it has spent so far in calls that compiled a new graph (implementations/_shared/compile_support.py). The
case's share is the difference across its measurement -- the first case of a shape family in a
worker pays the compile, later ones record ~0 (compiled once, reused). Stored as
Measurement.metrics["compile_s"] (harness/results/metrics.py: label "compile", kind "info").

It may also expose `fn.compile_notes`: a growing list of one-line notes, one per shape compiled
statically because its dynamic-shape compile failed in the compiler (compile_support.ShapeCompiled).
The notes added during a case are stored as Measurement.extra["compile"] (joined by "; "), so an
`ok` record says its figures come from a statically compiled function.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mark:
    """The implementation's compile state when a case started."""

    seconds: float
    notes: int


def compile_clock(impl):
    """The implementation's compile_seconds() hook, or None."""
    if not getattr(impl, "params", {}).get("compiled"):
        return None
    hook = getattr(impl.fn, "compile_seconds", None)
    return hook if callable(hook) else None


def compile_notes(impl) -> list:
    """The implementation's compile notes so far ([] when it keeps none)."""
    if compile_clock(impl) is None:
        return []
    notes = getattr(impl.fn, "compile_notes", None)
    return list(notes) if isinstance(notes, (list, tuple)) else []


def start(impl) -> Mark | None:
    clock = compile_clock(impl)
    return None if clock is None else Mark(float(clock()), len(compile_notes(impl)))


def metrics(impl, started: Mark | None) -> dict:
    """{"compile_s": seconds compiled since start()} for compiled implementations, else {}."""
    clock = compile_clock(impl)
    if clock is None or started is None:
        return {}
    return {"compile_s": max(0.0, float(clock()) - started.seconds)}


def extra(impl, started: Mark | None) -> dict:
    """{"compile": the notes added since start()} when there are any, else {}."""
    if started is None:
        return {}
    new = [str(n) for n in compile_notes(impl)[started.notes:]]
    return {"compile": "; ".join(new)} if new else {}
