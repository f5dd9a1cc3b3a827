"""Measured ceilings: the matmul peak and the streaming-read bandwidth per device, dtype and thread
count, in the worker that runs the cases (so under the same process, threads and allocator as they
are).

The runner asks for a calibration of every (device, dtype, threads) its cases use at the start of
a run and again at the end; run.json keeps both, the max as the ceiling, and whether they agree
(a ceiling measured once, in the parent, at fp32 and the parent's thread count, was 2-3.7x off
under load). A case whose achieved FLOP/s exceeds SUSPECT_FACTOR x its ceiling is `suspect`:
nothing computes attention faster than the same machine multiplies matrices.

The read ceiling is the best of several streaming reads, not one: a single 256 MiB sum was
~1.4x below a 1 GiB sum measured in the same rounds on a 2-core VM (so a decode kernel showed 54%
"of bandwidth" against it and 38% against the 1 GiB sum), and the read rate of one machine
ranged 24-50 GB/s by size and moment. So every point reads one buffer in several patterns --
a sum (one stream, a reduction), a dot product of its two halves (two streams at once, like a
decode step's K and V) and a copy of one half onto the other (read + write counted, like the
CUDA device copy) -- at sizes of at least READ_LLC_FACTOR x the last-level cache, up to
READ_MAX_BYTES, interleaved in rounds; each method's median is kept, the largest is the ceiling,
and the spread between them is recorded (harness.results.ceilings reads them).

TESTING HOOK, not for normal use: ATTNBENCH_QUICK_CALIBRATION=1 in the worker's environment makes
every calibration small -- a QUICK_READ_BYTES read buffer and QUICK_PROBE_S probes: ~0.3-0.5 s
instead of 1-4 s on a 2-core VM, where filling the 1 GiB buffer alone takes ~0.9 s -- for a test
suite that runs dozens of sweeps to check everything but the ceilings' values (tests/conftest.py
sets it). Each ceiling measured so says so (`testing_quick_calibration`). There, in back-to-back
runs, its read ceiling was within ~10% of the full one (a 128 MiB buffer read ~1.6x faster, partly
from that VM's large cache) and its matmul peak alike. Unset, a user's calibration is the full one.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from harness.results.ceilings import ceiling_key

CPU_SIZE, CUDA_SIZE = 1024, 8192
READ_MAX_BYTES = 2**30  # the largest read buffer (fp32), CPU and CUDA
READ_MIN_BYTES = 2**26  # below this, when even that cannot be allocated, no read ceiling
READ_LLC_FACTOR = 4  # a read size counts only when it is at least this many times the last-level cache
READ_ROUNDS = (3, 6)  # at least 3 rounds of every read method, at most 6
CUDA_CALLS = 10  # CUDA calls per timed read sample (one call is well under a millisecond)
PROBE_S = 0.3  # the matmul probe's least time; the reads take at least half of it (READ_ROUNDS)
QUICK_ENV = "ATTNBENCH_QUICK_CALIBRATION"  # testing hook (module docstring)
QUICK_READ_BYTES = READ_MAX_BYTES // 4
QUICK_PROBE_S = 0.1
CACHE_DIR = Path("/sys/devices/system/cpu/cpu0/cache")
RESERVE_MARGIN_BYTES = 2**23  # above the read buffer's size in the heap reserved for it (alignment, headers)


def matmul_rate(device: str, dtype: str, threads: int | None, min_time_s: float = PROBE_S,
                read_buffer=None) -> dict:
    """Median FLOP/s of square matmuls (2·n³ FLOPs each) over ≥ min_time_s, with its spread
    (IQR/median of the per-call rates); with a `read_buffer` (ReadBuffer) also the read ceiling
    (read_rates) under the same thread count. The thread count is set for the measurement and
    restored."""
    import torch

    from harness.measure.timing import contention

    kind = device.split(":")[0]
    n = CUDA_SIZE if kind == "cuda" else CPU_SIZE
    t = getattr(torch, dtype)
    before = torch.get_num_threads()
    if threads and kind == "cpu":
        if torch.get_num_threads() != threads:  # never called needlessly (run/worker.py)
            torch.set_num_threads(threads)
    try:
        gen = torch.Generator(device="cpu").manual_seed(0)
        a = torch.randn((n, n), generator=gen).to(device=device, dtype=t)  # (n, n)
        b = torch.randn((n, n), generator=gen).to(device=device, dtype=t)  # (n, n)
        out = torch.empty((n, n), device=device, dtype=t)
        sync = torch.cuda.synchronize if kind == "cuda" else (lambda *_: None)
        torch.mm(a, b, out=out)  # warm-up: BLAS thread pool, page faults, kernels
        sync()
        times: list[float] = []
        before_cpu = contention.snapshot()
        start = time.perf_counter()
        while time.perf_counter() - start < min_time_s or len(times) < 5:
            t0 = time.perf_counter()
            torch.mm(a, b, out=out)
            sync()
            times.append(time.perf_counter() - t0)
        rates = sorted(2 * n**3 / x for x in times)
        q = statistics.quantiles(rates, n=4) if len(rates) >= 2 else [rates[0]] * 3
        med = statistics.median(rates)
        del a, b, out
        out_ = {"matmul_flops_per_s": med, "best_flops_per_s": rates[-1], "spread": (q[2] - q[0]) / med,
                "threads": torch.get_num_threads(), "samples": len(rates)}
        if read_buffer is not None:
            out_.update(read_rates(read_buffer, sync, min_time_s / 2))
        if kind == "cpu":
            c = contention.assess(before_cpu, contention.snapshot(), threads=torch.get_num_threads())
            out_.update(contended=c.contended, contention=c.reason)
        return out_
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


# ---------------------------------------------------------------- the read ceiling


def llc_bytes(cache_dir: Path = CACHE_DIR) -> int | None:
    """The largest data or unified cache of cpu0 (sysfs: index*/size, e.g. "32768K"), else None."""
    sizes = []
    for d in sorted(cache_dir.glob("index*")):
        try:
            if (d / "type").read_text().strip() == "Instruction":
                continue
            sizes.append(parse_size((d / "size").read_text()))
        except (OSError, ValueError):
            continue
    return max(sizes) if sizes else None


def parse_size(text: str) -> int:
    """"480K" -> 491520, "32M" -> 33554432, "1G", or plain bytes."""
    s = text.strip().upper().removesuffix("B")
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(s[-1:], 1)
    return int(float(s.rstrip("KMG")) * scale)


def read_sizes(buffer_bytes: int, llc: int | None) -> tuple[list[int], str]:
    """The sizes the sum reads: the whole buffer, and a quarter of it when that too is at least
    READ_LLC_FACTOR x the last-level cache (unknown cache: both); with a note when even the whole
    buffer is under that (a read partly served from the cache then: said, not hidden)."""
    floor = READ_LLC_FACTOR * llc if llc else 0
    sizes = [s for s in (buffer_bytes, buffer_bytes // 4) if s >= max(floor, READ_MIN_BYTES)] or [buffer_bytes]
    note = ""
    if buffer_bytes < floor:
        note = (f"{READ_LLC_FACTOR}x the last-level cache ({_size(llc)}) is more than the largest read "
                f"({_size(buffer_bytes)}); the reads may be partly served from that cache")
    return sizes, note


class ReadBuffer:
    """One float32 buffer (all ones: written, so every page is mapped and never the zero page) and
    the reads over it: {name: (call, bytes moved)}. Allocated once per calibration and shared by
    its points; READ_MAX_BYTES, halved until it fits (a worker's memory cap)."""

    def __init__(self, device: str = "cpu", max_bytes: int = READ_MAX_BYTES, llc: int | None = None):
        import torch

        self.kind = device.split(":")[0]
        self.note = ""
        size = max_bytes
        if self.kind == "cpu":  # the heap the cases will reuse, faulted in 4 KiB at a time (allocator)
            from harness.measure.machine import allocator

            allocator.reserve_heap(size + RESERVE_MARGIN_BYTES, factor=1.0)
        while True:
            try:
                self.buf = torch.empty(size // 4, device=device).fill_(1.0)  # (n,) fp32
                break
            except (RuntimeError, MemoryError) as exc:  # torch's CPU OOM is a RuntimeError
                if size // 2 < READ_MIN_BYTES:
                    raise
                self.note = f"{_size(max_bytes)} could not be allocated ({type(exc).__name__}); "
                size //= 2
        self.bytes = size
        self.llc = llc if llc is not None or self.kind == "cuda" else llc_bytes()
        self.sizes, note = read_sizes(size, self.llc if self.kind == "cpu" else None)
        self.note = (self.note + note).strip("; ")
        self.probes = self._probes()

    def _probes(self) -> dict:
        import torch

        buf, half = self.buf, self.buf.numel() // 2
        a, b = buf[:half], buf[half: 2 * half]  # (n/2,) each, the two halves
        out = {f"sum {_size(s)}": (lambda v=buf[: s // 4]: v.sum(), s) for s in self.sizes}
        out[f"dot 2 x {_size(4 * half)}"] = (lambda: torch.dot(a, b), 8 * half)
        out[f"copy {_size(4 * half)}"] = (lambda: b.copy_(a), 8 * half)  # read + write counted
        return out


def read_rates(rb: ReadBuffer, sync, min_time_s: float) -> dict:
    """Every read method of `rb` in interleaved rounds (a warm-up round first, then READ_ROUNDS,
    stopping after min_time_s): per method the median and best bytes/s; the ceiling is the largest
    median (`read_bytes_per_s`, its method `read_method`), `best_read_bytes_per_s` the best call of
    any, `read_spread` = (largest - smallest median) / largest."""
    calls = CUDA_CALLS if rb.kind == "cuda" else 1
    rates: dict[str, list[float]] = {k: [] for k in rb.probes}
    for fn, _ in rb.probes.values():  # warm-up: BLAS, kernels, the thread pool
        fn()
    sync()
    start = time.perf_counter()
    lo, hi = READ_ROUNDS
    for i in range(hi):
        if i >= lo and time.perf_counter() - start >= min_time_s:
            break
        for name, (fn, nbytes) in rb.probes.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            sync()
            rates[name].append(calls * nbytes / (time.perf_counter() - t0))
    methods = {name: {"bytes": rb.probes[name][1], "bytes_per_s": statistics.median(r), "best_bytes_per_s": max(r),
                      "samples": len(r)} for name, r in rates.items()}
    winner = max(methods, key=lambda k: methods[k]["bytes_per_s"])
    meds = [m["bytes_per_s"] for m in methods.values()]
    out = {"read_bytes_per_s": max(meds), "best_read_bytes_per_s": max(m["best_bytes_per_s"] for m in methods.values()),
           "read_method": winner, "read_spread": (max(meds) - min(meds)) / max(meds), "read_methods": methods}
    if rb.kind == "cpu":
        out["llc_bytes"] = rb.llc
    if rb.note:
        out["read_note"] = rb.note
    return out


def _size(n: int | None) -> str:
    if not n:
        return "?"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n} B"


def quick_settings(environ=None) -> dict:
    """calibrate()'s keyword arguments under the testing hook ATTNBENCH_QUICK_CALIBRATION=1 (module
    docstring); {} -- the full calibration -- when it is unset, empty or "0"."""
    value = (os.environ if environ is None else environ).get(QUICK_ENV, "").strip()
    if value in ("", "0"):
        return {}
    return {"read_max_bytes": QUICK_READ_BYTES, "min_time_s": QUICK_PROBE_S,
            "testing": f"{QUICK_ENV}={value}: a {_size(QUICK_READ_BYTES)} read buffer, {QUICK_PROBE_S:g} s probes"}


def calibrate(points: list[dict], read_max_bytes: int = READ_MAX_BYTES, min_time_s: float = PROBE_S,
              testing: str = "") -> dict:
    """{key: rate dict} for each {"device", "dtype", "threads"} point; a failure is recorded as
    {"error": ...} for that point, never raised. One read buffer per device serves every point; a
    buffer that cannot be made costs the read ceiling only ("read_error"), not the matmul peak.
    `testing` (quick_settings) is recorded in every point as `testing_quick_calibration`."""
    out, buffers, errors = {}, {}, {}
    try:
        for p in points:
            key, dev = ceiling_key(p["device"], p["dtype"], p.get("threads")), p["device"]
            if dev not in buffers and dev not in errors:
                try:
                    buffers[dev] = ReadBuffer(dev, read_max_bytes)
                except Exception as exc:  # noqa: BLE001 - no read ceiling, said why
                    errors[dev] = f"{type(exc).__name__}: {exc}"[:300]
            try:
                out[key] = matmul_rate(dev, p["dtype"], p.get("threads"), min_time_s, read_buffer=buffers.get(dev))
            except Exception as exc:  # noqa: BLE001 - a ceiling we cannot measure is absent, said why
                out[key] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                continue
            if dev in errors:
                out[key]["read_error"] = errors[dev]
            if testing:
                out[key]["testing_quick_calibration"] = testing
    finally:
        buffers.clear()  # 1 GiB per device: never kept past the calibration
    return out
