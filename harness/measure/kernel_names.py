"""Which kernels actually ran: a short torch.profiler pass over a few calls of a case's callable,
keeping the names of the dispatched attention / matmul ATen ops and of compiled (Inductor C++ or
Triton) kernels. Recorded for implementations registered with params={"report_kernels": True}
(the sdpa family, flex, compiled_naive) as Measurement.extra["kernels"], shown in the report.

SDPA picks its backend at run time (e.g. aten::_scaled_dot_product_flash_attention_for_cpu vs the
math fallback aten::_scaled_dot_product_attention_math), and a compiled function may fall back to
eager code; the names say which happened on this machine.
"""

from __future__ import annotations

from typing import Callable

CALLS = 3  # a compiled function may take another path after its first calls
ONE_CALL_S = 0.05  # calls at least this long: one profiled call (three would add seconds per case)
MAX_NAMES = 12
# Substrings that make a profiler event worth reporting (lower case).
KEEP = ("attention", "flash", "sdpa", "flex", "triton", "cpp_fused", "cpp_flex", "compiled",
        "aten::bmm", "aten::mm", "aten::baddbmm", "aten::matmul", "aten::_softmax", "aten::softmax")


def wanted(impl) -> bool:
    return bool(getattr(impl, "params", {}).get("report_kernels"))


def pick(names) -> list[str]:
    """The interesting ones of op names in first-seen order (at most MAX_NAMES; the most specific
    first: attention / compiled kernels before matmuls)."""
    keep = [n for n in dict.fromkeys(names) if any(k in n.lower() for k in KEEP)]
    specific = [n for n in keep if not n.startswith(("aten::bmm", "aten::mm", "aten::baddbmm", "aten::matmul"))]
    return (specific + [n for n in keep if n not in specific])[:MAX_NAMES]


def dispatched_kernels(fn: Callable[[], object], calls: int = CALLS) -> list[str]:
    """The interesting ops run by `calls` calls of fn (pick). On a machine without CUDA through
    the profiler's backend class, as harness/measure/peak_memory.py does: torch.profiler.profile
    imports Inductor on first use (0.85 s per process on a 2-core Xeon)."""
    import torch

    if not torch.cuda.is_available():
        from torch.autograd.profiler import profile as cpu_profile

        with cpu_profile(use_cpu=True, use_kineto=True) as prof:
            for _ in range(calls):
                fn()
        return pick(e.name for e in prof.function_events)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    return pick(e.name for e in prof.events())


def record(impl, fn: Callable[[], object], per_call_s: float | None = None, seen: list | None = None) -> dict:
    """{"kernels": [...]} for implementations that asked for it, else {}; a profiler failure is
    recorded as the reason, never raised. per_call_s (the measured median): a slow call is
    profiled once (it has run many times already: its path is settled). seen: the op names of a
    call already profiled for its memory (a CPU case's checked call, or for compiled code a call
    after timing): used as they are, no call more."""
    if not wanted(impl):
        return {}
    if seen:
        return {"kernels": pick(seen)}
    try:
        calls = 1 if per_call_s is not None and per_call_s >= ONE_CALL_S else CALLS
        return {"kernels": dispatched_kernels(fn, calls)}
    except Exception as exc:  # the profiler is a diagnostic: it must not fail the case
        return {"kernels": [], "kernels_error": f"{type(exc).__name__}: {exc}"[:300]}
