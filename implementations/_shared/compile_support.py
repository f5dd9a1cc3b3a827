"""What the torch.compile-based implementations (flex, compiled_naive) share: can the compiler run
here, and how long it spent compiling.

torch.compile's CPU backend (Inductor) writes C++ and builds it with the system compiler, so it is
available only where one is found; on CUDA it needs Triton. Compile time is kept apart from the
latency: every call of a compiled function goes through `timed_call`, which adds the call's
duration to the implementation's compile total when Dynamo produced a new graph during it (a first
call for a shape family, or a recompile). The harness reads the total through the function's
`compile_seconds` attribute (harness/measure/compile_time.py) and records the difference per case as
Measurement.metrics["compile_s"]. The duration of a compiling call includes that one call's run.
"""

from __future__ import annotations

import shutil
import time
from functools import lru_cache

from harness.registry import YES, Support, no


@lru_cache(maxsize=None)
def compiler_available(device_kind: str) -> Support:
    """torch.compile can build kernels for `device_kind` here (a C++ compiler / Triton)."""
    try:
        import torch._dynamo  # noqa: F401
        import torch._inductor  # noqa: F401
    except Exception as exc:  # a torch build without the compiler stack
        return no(f"torch.compile is unavailable in this torch build: {exc}")
    if device_kind == "cpu":
        if not any(shutil.which(c) for c in ("g++", "c++", "clang++", "gcc", "cc")):
            return no("torch.compile on the CPU needs a C++ compiler (g++ / clang++); none found on PATH")
        return YES
    try:
        import triton  # noqa: F401
    except Exception:
        return no("torch.compile on CUDA needs Triton, which is not installed")
    return YES


RECOMPILE_LIMIT = 64


def allow_recompiles() -> None:
    """Raise Dynamo's per-function recompile limit (default 8) to RECOMPILE_LIMIT: every compiled
    flex_attention shares one code object, hence one limit, and past it Dynamo silently runs the
    function eagerly -- FlexAttention then materialises the whole score matrix."""
    import torch._dynamo

    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    setattr(cfg, name, max(getattr(cfg, name), RECOMPILE_LIMIT))


class CompileClock:
    """Seconds spent in calls that compiled a new graph, for one implementation."""

    def __init__(self) -> None:
        self.total_s = 0.0
        self.compiles = 0

    def __call__(self) -> float:  # fn.compile_seconds = clock
        return self.total_s

    def timed_call(self, fn, *args, **kwargs):
        from torch._dynamo.utils import counters

        before = counters["stats"]["unique_graphs"]
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        if counters["stats"]["unique_graphs"] != before:
            self.total_s += time.perf_counter() - t0
            self.compiles += 1
        return out
