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

SUSPECT_FACTOR = 1.5  # headroom for a ceiling measured while a neighbour was busy
DISAGREE_FACTOR = 0.15  # start and end further apart than this (beyond their spreads): say so
CPU_SIZE, CUDA_SIZE = 1024, 8192
READ_BYTES_CPU, READ_BYTES_CUDA = 256 * 2**20, 2**30


def ceiling_key(device: str, dtype: str, threads: int | None) -> str:
    """`cpu/float32/t2`, `cpu/float32/tdefault`, `cuda/bfloat16` (threads do not matter on CUDA)."""
    kind = device.split(":")[0]
    if kind == "cuda":
        return f"cuda/{dtype}"
    return f"cpu/{dtype}/t{threads}" if threads else f"cpu/{dtype}/tdefault"


def case_ceiling_key(case) -> str:
    return ceiling_key(case.device, case.dtype, case.threads)


def matmul_rate(device: str, dtype: str, threads: int | None, min_time_s: float = 0.3) -> dict:
    """Median FLOP/s of square matmuls (2·n³ FLOPs each) over ≥ min_time_s, with its spread
    (IQR/median of the per-call rates). The thread count is set for the measurement and restored."""
    import statistics

    import torch

    from harness.measure import contention

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


def combine(start: dict, end: dict | None) -> dict:
    """run.json's calibration: per key the start and end measurements; the max median rates as
    the ceilings the report shows (matmul FLOP/s, read bytes/s); the best calls of uncontended
    measurements as the ones `suspect` is judged against; and `agree` = whether start and end
    are within DISAGREE_FACTOR plus their spreads."""
    out = {}
    for key, s in start.items():
        e = (end or {}).get(key)
        sides = [x for x in (s, e) if x and "matmul_flops_per_s" in x]
        quiet = [x for x in sides if not x.get("contended")]
        entry = {"start": s, "end": e}
        for field, best in (("matmul_flops_per_s", "best_flops_per_s"), ("read_bytes_per_s", "best_read_bytes_per_s")):
            vals = [x[field] for x in sides if x.get(field)]
            entry[field] = max(vals) if vals else None
            bests = [x[best] for x in quiet if x.get(best)]
            entry[f"best_uncontended_{best.removeprefix('best_')}"] = max(bests) if bests else None
        rates = [x["matmul_flops_per_s"] for x in sides]
        if len(rates) == 2:
            lo, hi = sorted(rates)
            allowed = DISAGREE_FACTOR + max(s.get("spread", 0.0), e.get("spread", 0.0))
            entry["agree"] = (hi - lo) / hi <= allowed
        out[key] = entry
    return out


def suspect_ceilings(calibration: dict | None) -> dict[str, dict]:
    """{key: {"flops_per_s", "bytes_per_s"}} a case must not beat by SUSPECT_FACTOR: the best
    calls measured while nothing else was busy. A ceiling measured under contention is no bound
    (absent)."""
    out = {}
    for k, v in (calibration or {}).items():
        if not isinstance(v, dict):
            continue
        c = {"flops_per_s": v.get("best_uncontended_flops_per_s"),
             "bytes_per_s": v.get("best_uncontended_read_bytes_per_s")}
        c = {name: float(x) for name, x in c.items() if isinstance(x, (int, float))}
        if c:
            out[k] = c
    return out


def ceilings_of(calibration: dict | None, field: str = "matmul_flops_per_s") -> dict[str, float]:
    """{key: ceiling} from run.json's calibration (this format, or the older
    {"cpu_matmul_flops_per_s": x} for the matmul peak)."""
    out = {}
    for key, v in (calibration or {}).items():
        if isinstance(v, dict) and isinstance(v.get(field), (int, float)):
            out[key] = float(v[field])
        elif field == "matmul_flops_per_s" and key.endswith("_matmul_flops_per_s") and isinstance(v, (int, float)):
            out[key.removesuffix("_matmul_flops_per_s")] = float(v)  # legacy: per device only
    return out


def lookup(ceilings: dict, case):
    """The ceiling for a case: its own key, else the device's legacy one."""
    return ceilings.get(case_ceiling_key(case)) or ceilings.get(case.device.split(":")[0])
