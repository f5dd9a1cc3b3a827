"""Measured ceilings: the matmul peak per device, dtype and thread count, in the worker that runs
the cases (so under the same process, threads and allocator as they are).

The runner asks for a calibration of every (device, dtype, threads) its cases use at the start of
a run and again at the end; run.json keeps both, the max as the ceiling, and whether they agree
(a ceiling measured once, in the parent, at fp32 and the parent's thread count, was 2-3.7x off
under load). A case whose achieved FLOP/s exceeds SUSPECT_FACTOR x its ceiling is `suspect`:
nothing computes attention faster than the same machine multiplies matrices.
"""

from __future__ import annotations

import time

from harness.results.ceilings import ceiling_key

CPU_SIZE, CUDA_SIZE = 1024, 8192
READ_BYTES_CPU, READ_BYTES_CUDA = 256 * 2**20, 2**30


def matmul_rate(device: str, dtype: str, threads: int | None, min_time_s: float = 0.3) -> dict:
    """Median FLOP/s of square matmuls (2·n³ FLOPs each) over ≥ min_time_s, with its spread
    (IQR/median of the per-call rates). The thread count is set for the measurement and restored."""
    import statistics

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
        bw_med, bw_best = _read_bandwidth(device, sync, min_time_s / 2)
        out_ = {"matmul_flops_per_s": med, "best_flops_per_s": rates[-1], "spread": (q[2] - q[0]) / med,
                "read_bytes_per_s": bw_med, "best_read_bytes_per_s": bw_best,
                "threads": torch.get_num_threads(), "samples": len(rates)}
        if kind == "cpu":
            c = contention.assess(before_cpu, contention.snapshot(), threads=torch.get_num_threads())
            out_.update(contended=c.contended, contention=c.reason)
        return out_
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _read_bandwidth(device: str, sync, min_time_s: float) -> tuple[float, float]:
    """(median, best) bytes/s of a streaming read: the sum of a 256 MiB fp32 tensor on the CPU
    (several times any last-level cache); on CUDA a device-to-device copy of 1 GiB (read + write
    counted)."""
    import statistics

    import torch

    kind = device.split(":")[0]
    n = (READ_BYTES_CUDA if kind == "cuda" else READ_BYTES_CPU) // 4
    gen = torch.Generator(device="cpu").manual_seed(1)
    x = torch.rand(n, generator=gen).to(device)  # never zeros
    y = torch.empty_like(x) if kind == "cuda" else None
    op = (lambda: y.copy_(x)) if kind == "cuda" else (lambda: x.sum())
    moved = 2 * 4 * n if kind == "cuda" else 4 * n
    op()
    sync()
    rates: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < min_time_s or len(rates) < 5:
        t0 = time.perf_counter()
        op()
        sync()
        rates.append(moved / (time.perf_counter() - t0))
    return statistics.median(rates), max(rates)


def calibrate(points: list[dict]) -> dict:
    """{key: rate dict} for each {"device", "dtype", "threads"} point; a failure is recorded as
    {"error": ...} for that point, never raised."""
    out = {}
    for p in points:
        key = ceiling_key(p["device"], p["dtype"], p.get("threads"))
        try:
            out[key] = matmul_rate(p["device"], p["dtype"], p.get("threads"))
        except Exception as exc:  # noqa: BLE001 - a ceiling we cannot measure is absent, said why
            out[key] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    return out


