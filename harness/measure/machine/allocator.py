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
processes, had found naive's ratios useless without these settings (21 vs 30-50 ms at N=1024). Hence, for every measurement process (sweep, gate, A/B, Ray node): no mmap, no
trim, a 64 MiB top pad -- freed memory is reused, as the CUDA caching allocator reuses device
memory, and as the tcmalloc or jemalloc that PyTorch's own CPU launcher (torch.backends.xeon.run_cpu)
preloads keep freed memory for reuse. A steady-state call then costs its arithmetic and memory
traffic, not the OS's page zeroing.

The caller's environment wins, variable by variable: set MALLOC_MMAP_MAX_=65536,
MALLOC_TRIM_THRESHOLD_=131072 and MALLOC_TOP_PAD_=131072 (glibc's defaults) to measure what a
default glibc process pays; another allocator (LD_PRELOAD of jemalloc or tcmalloc) ignores these
variables. run.json records what the measurement processes got (collect_environment's
"malloc_env") and compare warns when two runs differ in it.
"""

from __future__ import annotations

import os

MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40), "MALLOC_TOP_PAD_": str(64 * 2**20)}
_MALLOPT_PARAM = {"MALLOC_MMAP_MAX_": -4, "MALLOC_TRIM_THRESHOLD_": -1, "MALLOC_TOP_PAD_": -2}  # glibc's M_*
# what a run records besides those: another allocator, preloaded, ignores them
_RECORDED_TOO = ("LD_PRELOAD", "GLIBC_TUNABLES")


def measurement_env(environ=None) -> dict[str, str]:
    """The allocator variables a measurement process started from `environ` (default: this
    process's environment) gets: MALLOC_ENV under the caller's own values."""
    environ = os.environ if environ is None else environ
    return {k: environ.get(k, v) for k, v in MALLOC_ENV.items()}


def record(environ=None) -> dict[str, str]:
    """For run.json: the MALLOC_ENV variables as the measurement processes get them, plus
    LD_PRELOAD / GLIBC_TUNABLES where set."""
    environ = os.environ if environ is None else environ
    out = measurement_env(environ)
    out.update({k: environ[k] for k in _RECORDED_TOO if environ.get(k)})
    return out


def apply_here(environ=None) -> bool:
    """The same settings for measurements made in this process (attnbench e2e times the model in
    the CLI's own process): mallopt() for each MALLOC_ENV variable the environment leaves unset
    (glibc read the ones it sets at start-up). False where the C library is not glibc."""
    import ctypes
    import platform

    environ = os.environ if environ is None else environ
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    for name, value in MALLOC_ENV.items():
        if name not in environ:
            mallopt(_MALLOPT_PARAM[name], int(value))
    return True
