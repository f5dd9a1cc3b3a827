"""What the torch.compile-based implementations (flex, compiled_naive) share: can the compiler run
here, and how long it spent compiling.

torch.compile's CPU backend (Inductor) writes C++ and builds it with the system compiler, so it is
available only where one is found; on CUDA it needs Triton. Compile time is kept apart from the
latency: every call of a compiled function goes through `timed_call`, which adds the call's
duration to the implementation's compile total when Dynamo produced a new graph during it (a first
call for a shape family, or a recompile). The harness reads the total through the function's
`compile_seconds` attribute (harness/measure/compile_time.py) and records the difference per case as
Measurement.metrics["compile_s"]. The duration of a compiling call includes that one call's run.

Dynamic shapes with a static fallback (`ShapeCompiled`): each compiled function is
torch.compile(fn, dynamic=True), reused across shapes. Inductor can fail to compile a dynamic-shape
graph that it compiles fine with static shapes (seen with torch's CPU FlexAttention template: the
generated C++ did not compile, "'cur_qSplitSize5' was not declared", for one shape after others
had compiled, while the same shape alone was fine). When the first call of a shape fails *in the
compiler* (`compile_failure`: Dynamo's BackendCompilerFailed / InductorError, Inductor's
CppCompileError or lowering errors -- never the function's own errors, nor out-of-memory), that
shape is compiled again with dynamic=False and always called through the static artefact; other
shapes keep the dynamic one. The clock keeps a one-line note per fallback, recorded with the case
(harness/measure/compile_time.py: Measurement.extra["compile"]); a failure of the static compile is
the case's error.
"""

from __future__ import annotations

import shutil
import time
from functools import lru_cache
from typing import Callable

from harness.registry import YES, Support, no


@lru_cache(maxsize=None)
def compiler_available(device_kind: str) -> Support:
    """torch.compile can build kernels for `device_kind` here (a C++ compiler / Triton). Looked up,
    not imported: importing Dynamo and Inductor costs ~1 s, which `attnbench list` would pay for
    nothing (a compile imports them when it runs)."""
    missing = [m for m in ("torch._dynamo", "torch._inductor") if not _found(m)]
    if missing:  # a torch build without the compiler stack
        return no(f"torch.compile is unavailable in this torch build (no {', '.join(missing)})")
    if device_kind == "cpu":
        if not any(shutil.which(c) for c in ("g++", "c++", "clang++", "gcc", "cc")):
            return no("torch.compile on the CPU needs a C++ compiler (g++ / clang++); none found on PATH")
        return YES
    if not _found("triton"):
        return no("torch.compile on CUDA needs Triton, which is not installed")
    return YES


def _found(module: str) -> bool:
    """Is `module` importable (found on the path; a submodule's parent is imported to look)?"""
    from importlib.util import find_spec

    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):
        return False


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
    """Seconds spent in calls that compiled a new graph, for one implementation, and a note per shape
    compiled statically after its dynamic compile failed (`notes`, oldest first)."""

    def __init__(self) -> None:
        self.total_s = 0.0
        self.compiles = 0
        self.notes: list[str] = []

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


NOTE_CHARS = 300
_OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory")


def _chain(exc: BaseException, limit: int = 8) -> list[BaseException]:
    """exc and what it wraps: BackendCompilerFailed.inner_exception, __cause__, __context__."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo and len(seen) < limit:
        e = todo.pop(0)
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [getattr(e, "inner_exception", None), e.__cause__, e.__context__]
    return seen


def _is_oom(exc: BaseException) -> bool:
    import torch

    oom = (MemoryError,) + ((torch.OutOfMemoryError,) if hasattr(torch, "OutOfMemoryError") else ())
    return isinstance(exc, oom) or any(m in str(exc).lower() for m in _OOM_MARKERS)


def _compiler_exception_types() -> tuple[type, ...]:
    from torch._dynamo import exc as dynamo_exc
    from torch._inductor import exc as inductor_exc

    names = ((dynamo_exc, "BackendCompilerFailed"), (dynamo_exc, "InternalTorchDynamoError"),
             (inductor_exc, "InductorError"), (inductor_exc, "CppCompileError"),
             (inductor_exc, "LoweringException"), (inductor_exc, "SubgraphLoweringException"),
             (inductor_exc, "CppWrapperCodegenError"))
    return tuple(t for mod, name in names if isinstance(t := getattr(mod, name, None), type))


def compile_failure(exc: BaseException) -> str | None:
    """One line saying how torch.compile failed, when `exc` is the compiler failing to build the
    function (a Dynamo backend failure, an Inductor C++ compile or lowering error); None when it is
    anything else -- the function's own error (wrong inputs, which Dynamo reports as
    TorchRuntimeError while tracing), or running out of memory anywhere in the chain."""
    chain = _chain(exc)
    if any(_is_oom(e) for e in chain):
        return None
    if not isinstance(exc, _compiler_exception_types()):
        return None
    inner = chain[-1] if len(chain) > 1 else exc
    inner = next((e for e in chain[1:] if type(e).__module__.startswith("torch._inductor")), inner)
    lines = [ln.strip() for ln in str(inner).splitlines() if ln.strip()]
    line = next((ln for ln in lines if "error" in ln.lower() and ln.lower() != "c++ compile error"),
                lines[0] if lines else "")
    head = type(exc).__name__ if inner is exc else f"{type(exc).__name__}: {type(inner).__name__}"
    return f"{head}: {line}"[:NOTE_CHARS]


def _signature(args, kwargs) -> tuple:
    """What tells one shape from another in a call: every tensor's shape, dtype and device (including
    those inside objects such as a BlockMask one level down) and every plain scalar argument."""
    import torch

    def one(x):
        if isinstance(x, torch.Tensor):
            return ("T", tuple(x.shape), str(x.dtype), str(x.device))
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        if isinstance(x, (tuple, list)):
            return tuple(one(y) for y in x)
        fields = getattr(x, "__dict__", None)
        if isinstance(fields, dict):  # e.g. a BlockMask: its tensors' shapes
            return (type(x).__name__,) + tuple((k, one(v)) for k, v in sorted(fields.items())
                                               if isinstance(v, torch.Tensor))
        return type(x).__name__  # a callable (score_mod): its captured tensors follow the case's shape

    return tuple(one(a) for a in args) + tuple((k, one(v)) for k, v in sorted(kwargs.items()))


class ShapeCompiled:
    """torch.compile(fn, dynamic=True), and for the shapes whose dynamic compile fails in the
    compiler, torch.compile(fn, dynamic=False) (see the module docstring). Calls go through `clock`."""

    def __init__(self, fn: Callable, clock: CompileClock, *, name: str = "") -> None:
        self.fn = fn
        self.clock = clock
        self.name = name or getattr(fn, "__name__", "fn")
        self.dynamic = _compile(fn, dynamic=True)
        self.static = None  # compiled on the first fallback
        self.static_shapes: dict[tuple, str] = {}  # call signature -> why its dynamic compile failed

    def __call__(self, *args, **kwargs):
        sig = _signature(args, kwargs)
        if sig in self.static_shapes:
            return self.clock.timed_call(self._static(), *args, **kwargs)
        t0 = time.perf_counter()
        try:
            return self.clock.timed_call(self.dynamic, *args, **kwargs)
        except Exception as exc:
            why = compile_failure(exc)
            if why is None:
                raise
            self.clock.total_s += time.perf_counter() - t0  # the failed compile is compile time too
            self.static_shapes[sig] = why
        try:
            out = self.clock.timed_call(self._static(), *args, **kwargs)
        except Exception as exc:  # the case's error (or oom), as torch raised it
            exc.add_note(f"{self.name}: compiled with dynamic=False after the dynamic-shape compile failed ({why})")
            raise
        self.clock.notes.append(f"{self.name}: the dynamic-shape compile failed for this shape ({why}); "
                                "compiled it with dynamic=False")
        return out

    def _static(self):
        if self.static is None:
            self.static = _compile(self.fn, dynamic=False)
        return self.static


def _compile(fn: Callable, *, dynamic: bool):
    """torch.compile(fn, dynamic=...): the one place the compiled implementations compile (tests
    replace it to inject a compiler failure)."""
    import torch

    return torch.compile(fn, dynamic=dynamic)
