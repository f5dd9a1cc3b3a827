"""Peak memory a call allocates above what already existed (its inputs), and device capacity.

CUDA: the caching allocator's own counters (reset_peak_memory_stats / max_memory_allocated).
CPU: the torch profiler with profile_memory=True reports every CPU allocator event as a raw
"[memory]" Kineto event whose nbytes() is signed (+ allocate, − free). Sorted by time, their
running sum is the bytes held above the start; its maximum is the peak. This is run separately
from timing because profiling slows every op.

Two pitfalls found on torch 2.13 (see tests/test_memory.py):
- The aggregated FunctionEvents (prof.events(), key_averages()) are the wrong source: an
  allocation made inside an op is folded into that op's net cpu_memory_usage, so a temporary
  allocated and freed inside one op vanishes, and only allocations outside any op remain as
  "[memory]" rows. The raw Kineto events (prof.kineto_results.events()) keep every allocation.
- torch.profiler.profile() checks hasattr(torch, "_inductor") on start, which imports inductor
  and dynamo (~3 s once per process). The backend class torch.autograd.profiler.profile records
  the same events without that import, so it is used here.
"""

from __future__ import annotations

import os
from typing import Callable


def _is_cuda(device) -> bool:
    return str(device).split(":")[0] == "cuda"


def allocation_timeline(fn: Callable[[], object], op_names: list | None = None) -> tuple[list[int], object]:
    """Run fn under the profiler; return (signed CPU allocation sizes in time order, fn's result).
    op_names: a list that gets the names of the ops the call ran, in first-seen order (what
    harness.measure.kernel_names reports, from this same call)."""
    import torch
    from torch.autograd.profiler import profile

    with profile(use_cpu=True, use_kineto=True, profile_memory=True) as prof:
        result = fn()
    if op_names is not None:
        op_names.extend(dict.fromkeys(e.name for e in prof.function_events))
    events = [
        e
        for e in prof.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort(key=lambda e: e.start_ns())  # stable: same-ns events keep recording order
    return [int(e.nbytes()) for e in events], result


def peak_of(sizes: list[int]) -> int:
    """Maximum running sum of signed allocation sizes, floored at 0 (nothing held at the start).
    Frees of memory allocated before the window count too, as they do for the CUDA counters."""
    running = peak = 0
    for n in sizes:
        running += n
        peak = max(peak, running)
    return peak


def measure_peak_bytes(fn: Callable[[], object], device="cpu", op_names: list | None = None) -> int:
    """Peak bytes allocated while fn runs, above what was allocated just before it.

    fn's return value is kept alive until fn returns, so it counts (an output is memory the call
    needs); it is released afterwards. Inputs allocated before the call are excluded.
    op_names (CPU only; left empty on CUDA): filled with the names of the ops the call ran.
    """
    peak, result = measure_peak(fn, device, op_names)
    del result
    return peak


def measure_peak(fn: Callable[[], object], device="cpu", op_names: list | None = None) -> tuple[int, object]:
    """(peak bytes, fn's result): measure_peak_bytes for a call whose result is wanted too (the
    sweep's checked call is judged and measured at once)."""
    if _is_cuda(device):
        import torch

        dev = torch.device(device)
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        baseline = torch.cuda.memory_allocated(dev)
        result = fn()
        torch.cuda.synchronize(dev)
        return max(0, int(torch.cuda.max_memory_allocated(dev) - baseline)), result
    sizes, result = allocation_timeline(fn, op_names)
    return peak_of(sizes), result


def _meminfo_bytes(field: str) -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def device_memory_bytes(device="cpu", *, available: bool = False) -> int:
    """Total memory of the device in bytes (host RAM for "cpu"), or, with available=True, what
    is free now (MemAvailable / cudaMemGetInfo), for skipping cases predicted not to fit."""
    if _is_cuda(device):
        import torch

        dev = torch.device(device)
        if available:
            return int(torch.cuda.mem_get_info(dev)[0])
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return int(torch.cuda.get_device_properties(index).total_memory)
    found = _meminfo_bytes("MemAvailable" if available else "MemTotal")
    if found is not None:
        return found
    pages = os.sysconf("SC_AVPHYS_PAGES" if available else "SC_PHYS_PAGES")
    return int(pages) * int(os.sysconf("SC_PAGE_SIZE"))
