"""The C allocator settings every measurement process runs with: glibc malloc keeps what is freed.

By default glibc hands an allocation above its mmap threshold (dynamic, at most 32 MiB) to mmap,
returns it to the OS on free, and trims the heap top when more than twice that threshold lies free
there. A call that allocates large temporaries (naive's and sdpa_math's (B, H, N, N) scores and
probabilities, chunked's (B, H, 128, N) blocks) then page-faults them in anew on every call: the
kernel zero-fills the pages, and the timed calls measure that as much as the attention. Measured
(2-core Xeon, B=1 H=8 D=64 N=4096 fp32, median of 6 calls, one process each):

    naive 454 -> 268 ms, naive causal 507 -> 305, sdpa_math 680 -> 431, sdpa_math causal 761 -> 473;
    chunked 260-390 ms from one process to the next -> 155-195 ms; chunked N=256x4096 bimodal
    (10 or 20-27 ms from call to call) -> 10 ms; flash / memory_efficient / sdpa 1-7% less.

How many pages a call faults in depends on the process's history (the dynamic threshold), so two
processes timing the same code disagreed by up to 50% (chunked), and the gate, which compares
processes, had found naive's ratios useless without these settings (21 vs 30-50 ms at N=1024).
Hence, for every measurement process (sweep, gate, A/B, Ray node): no mmap, no trim, a 64 MiB top
pad -- freed memory is reused, as the CUDA caching allocator reuses device
memory, and as the tcmalloc or jemalloc that PyTorch's own CPU launcher (torch.backends.xeon.run_cpu)
preloads keep freed memory for reuse. A steady-state call then costs its arithmetic and memory
traffic, not the OS's page zeroing.

With memory kept, where a large temporary lands depends on the heap's history, and that history
differs between processes that import different files: the A/B gate's base worker (its
`implementations` from an exported tree, one more PYTHONPATH entry) and current worker put naive's
and sdpa_math's score matrices at different offsets within a page -- a systematic difference between
the sides, which a re-measurement in fresh processes reproduced. On identical code (`attnbench check
--against HEAD`, 2-core Xeon, quiet) naive's A/B ratio came out 0.91-1.27 over 10 runs, with 2
FAILs, passes taking 15-22 s. So torch's own THP_MEM_ALLOC_ENABLE=1 too (c10's CPU allocator:
tensors of >= 2 MiB start at a page boundary, advised onto transparent huge pages): a large tensor
starts at the same offset whatever came before. 15 runs then gave 0.86-1.03, no FAIL, 11 clean
passes (the others 1-2 inconclusive rows), in 11-15 s. (THP_MEM_ALLOC_ENABLE=0 turns it off.)

The caller's environment wins, variable by variable: set MALLOC_MMAP_MAX_=65536,
MALLOC_TRIM_THRESHOLD_=131072 and MALLOC_TOP_PAD_=131072 (glibc's defaults) to measure what a
default glibc process pays; another allocator (LD_PRELOAD of jemalloc or tcmalloc) ignores these
variables. run.json records what the measurement processes got (collect_environment's
"malloc_env") and compare warns when two runs differ in it.
"""

from __future__ import annotations

import os

MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40), "MALLOC_TOP_PAD_": str(64 * 2**20)}
# torch's CPU allocator (c10) puts tensors of >= 2 MiB at a page boundary and advises huge pages
THP_ENV = {"THP_MEM_ALLOC_ENABLE": "1"}
MEASUREMENT_ENV = {**MALLOC_ENV, **THP_ENV}  # what every measurement process starts with
_MALLOPT_PARAM = {"MALLOC_MMAP_MAX_": -4, "MALLOC_TRIM_THRESHOLD_": -1, "MALLOC_TOP_PAD_": -2}  # glibc's M_*
# what a run records besides those: another allocator, preloaded, ignores them
_RECORDED_TOO = ("LD_PRELOAD", "GLIBC_TUNABLES")


def measurement_env(environ=None) -> dict[str, str]:
    """The allocator variables a measurement process started from `environ` (default: this
    process's environment) gets: MEASUREMENT_ENV under the caller's own values."""
    environ = os.environ if environ is None else environ
    return {k: environ.get(k, v) for k, v in MEASUREMENT_ENV.items()}


def record(environ=None) -> dict[str, str]:
    """For run.json: the MEASUREMENT_ENV variables as the measurement processes get them, plus
    LD_PRELOAD / GLIBC_TUNABLES where set."""
    environ = os.environ if environ is None else environ
    out = measurement_env(environ)
    out.update({k: environ[k] for k in _RECORDED_TOO if environ.get(k)})
    return out


def _glibc():
    """This process's C library through ctypes when it is glibc, else None."""
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def apply_here(environ=None) -> bool:
    """The same malloc settings for measurements made in this process (attnbench e2e times the
    model in the CLI's own process): mallopt() for each MALLOC_ENV variable the environment leaves
    unset (glibc read the ones it sets at start-up). False where the C library is not glibc.
    THP_ENV cannot follow: torch reads it once, at its first allocation, long before this."""
    environ = os.environ if environ is None else environ
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    mallopt = libc.mallopt
    for name, value in MALLOC_ENV.items():
        if name not in environ:
            mallopt(_MALLOPT_PARAM[name], int(value))
    return True


# The heap this process has faulted in and kept (reserve_heap), in bytes.
_RESERVED = {"bytes": 0}
RESERVE_FACTOR = 2  # the heap a case gets ready: this many times its predicted peak ...
RESERVE_SHARE_OF_AVAILABLE = 0.5  # ... but never more than this share of the memory available now


def keeps_freed_memory(environ=None) -> bool:
    """Do this process's own MALLOC_* variables keep freed memory (no mmap, a trim threshold of at
    least 1 GiB)? Only then does a heap made ready in advance stay ready."""
    environ = os.environ if environ is None else environ
    try:
        return environ.get("MALLOC_MMAP_MAX_") == "0" and int(environ.get("MALLOC_TRIM_THRESHOLD_", "0")) >= 2**30
    except ValueError:
        return False


def _available_bytes(meminfo: str = "/proc/meminfo") -> int | None:
    try:
        with open(meminfo) as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _address_space_headroom(status: str = "/proc/self/status") -> int | None:
    """Bytes left under this process's RLIMIT_AS (None: no cap, or unknown)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open(status) as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return max(0, soft - int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        return None
    return None


def reserve_heap(peak_bytes: int | None, environ=None, factor: float = RESERVE_FACTOR) -> int:
    """Fault in (malloc, write a byte of every page, free) `factor` x `peak_bytes` of heap before a
    case runs, so its calls find their temporaries' pages already mapped instead of growing the heap
    part-way through the timed calls. Without it a large case met one such growth at an unpredictable call
    (naive B=1 H=8 N=4096: one timed call of six faulted in 512 MiB, 324 ms among 248-253 ms; at
    N=2048 the third call, 100 ms among 61-65 ms), which alone widened the median's interval past
    the target. Only where freed memory is kept (keeps_freed_memory; glibc), only above what this
    process already reserved, and never past RESERVE_SHARE_OF_AVAILABLE of MemAvailable nor of
    what an address-space cap (the worker's budget.memory_limit_bytes) leaves: kept heap counts
    against that cap, and the threads' own arenas need room under it too. Returns
    the bytes newly faulted in (0: nothing to do or not possible). The calibration's read buffer
    reserves its own size (factor 1).

    The pages are faulted in 4 KiB at a time, not as transparent huge pages even where torch is told
    to advise them (THP_ENV): on the 2-core VM a huge page faulted into fresh memory cost ~1.3 s
    per GiB against ~0.2 s for 4 KiB pages."""
    import ctypes

    if not peak_bytes or peak_bytes <= 0 or not keeps_freed_memory(environ):
        return 0
    libc = _glibc()
    if libc is None:
        return 0
    want = int(factor * peak_bytes)
    for room in (_available_bytes(), _address_space_headroom()):
        if room is not None:
            want = min(want, int(RESERVE_SHARE_OF_AVAILABLE * room) + _RESERVED["bytes"])
    if want <= _RESERVED["bytes"]:
        return 0
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    ptr = libc.malloc(want)
    if not ptr:
        return 0
    try:
        _touch_pages(ptr, want)  # every page written: mapped, and kept after free
    finally:
        libc.free(ptr)
    added, _RESERVED["bytes"] = want - _RESERVED["bytes"], want
    return added


def _touch_pages(ptr: int, nbytes: int, page: int = 4096) -> None:
    """Write one byte of every page of [ptr, ptr + nbytes): the page faults without the memset
    (a strided fill through torch, which the measurement processes have imported anyway)."""
    import ctypes

    import torch

    buf = (ctypes.c_uint8 * nbytes).from_address(ptr)
    torch.frombuffer(buf, dtype=torch.uint8)[::page].fill_(1)

