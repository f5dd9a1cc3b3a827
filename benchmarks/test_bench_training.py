"""Training-step targets for flash's FA2 backward (implementations/flash/backward.py).

    PYTHONPATH=. .venv/bin/python -m pytest -q -s benchmarks/test_bench_training.py   # ~1-2 min, 2 cores

Shape: B=1, Hq=Hkv=8, D=64, float32, no mask, N = 4096, 2 threads; seeded standard-normal q, k, v
and a seeded random upstream gradient (never zeros or ones). One step is
torch.autograd.grad(fn(q, k, v, causal=...), (q, k, v), dout), as the harness times
pass = "forward_backward".

Targets, all measured in this run:
- flash forward_backward throughput >= 0.6x sdpa's (CPU flash-attention backward), causal and
  non-causal: median over interleaved pairs (order alternating) of sdpa time / flash time;
- flash forward_backward peak memory above the inputs (harness.memory: the profiler's allocator
  events) <= 5% of naive's (plain autograd through implementations/naive/, non-causal: its
  causal peak is no larger), and flash's peak grows <= 2.2x from N = 2048 to 4096 (O(N)).
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from harness import registry
from harness.measure.peak_memory import measure_peak_bytes

THREADS = 2
N = 4096
SEED = 0
PAIRS = 5
MIN_THROUGHPUT_VS_SDPA = 0.6
MAX_MEMORY_FRACTION_OF_NAIVE = 0.05
MAX_GROWTH_2048_TO_4096 = 2.2


@pytest.fixture(autouse=True)
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


def _step(name: str, n: int, causal: bool):
    """A zero-argument forward+backward of `name`; inputs built here, outside any timing."""
    fn = registry.get(name).fn
    gen = torch.Generator().manual_seed(SEED)
    q, k, v = (torch.randn(1, 8, n, 64, generator=gen).requires_grad_() for _ in range(3))  # (B, H, N, D)
    dout = torch.randn(1, 8, n, 64, generator=gen)  # (B, H, N, D) upstream gradient

    def step():
        return torch.autograd.grad(fn(q, k, v, causal=causal), (q, k, v), dout)

    return step


def _interleaved(fn_a, fn_b, pairs: int) -> list[float]:
    """time_b / time_a for each interleaved pair (a b, b a, ...), after one warm-up each."""
    fn_a(), fn_b()
    ratios = []
    for i in range(pairs):
        times = {}
        for key, fn in ((("a", fn_a), ("b", fn_b)) if i % 2 == 0 else (("b", fn_b), ("a", fn_a))):
            t0 = time.perf_counter()
            fn()
            times[key] = time.perf_counter() - t0
        ratios.append(times["b"] / times["a"])
    return ratios


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_forward_backward_throughput_vs_sdpa(causal):
    pairs = _interleaved(_step("flash", N, causal), _step("sdpa", N, causal), PAIRS)
    ratio = statistics.median(pairs)
    report = (f"N={N} {'causal' if causal else 'non-causal'} threads={THREADS}: flash forward_backward "
              f"throughput / sdpa: median {ratio:.3f} (target >= {MIN_THROUGHPUT_VS_SDPA}; pairs "
              f"{', '.join(f'{r:.2f}' for r in pairs)})")
    print(report)
    assert ratio >= MIN_THROUGHPUT_VS_SDPA, report


def test_forward_backward_memory_vs_naive_and_growth():
    flash = {(n, c): measure_peak_bytes(_step("flash", n, c)) for n in (2048, N) for c in (False, True)}
    naive = measure_peak_bytes(_step("naive", N, False))
    mib = 2**20
    report = [f"forward_backward peak above inputs, threads={THREADS}: naive N={N} non-causal {naive / mib:.1f} MiB"]
    failures = []
    for causal in (False, True):
        kind = "causal" if causal else "non-causal"
        small, large = flash[(2048, causal)], flash[(N, causal)]
        fraction, growth = large / naive, large / small
        report.append(f"  flash {kind}: N=2048 {small / mib:.1f} MiB, N={N} {large / mib:.1f} MiB; "
                      f"{fraction:.2%} of naive (<= {MAX_MEMORY_FRACTION_OF_NAIVE:.0%}); "
                      f"growth x{growth:.2f} (<= {MAX_GROWTH_2048_TO_4096})")
        if fraction > MAX_MEMORY_FRACTION_OF_NAIVE:
            failures.append(f"flash {kind} at {fraction:.2%} of naive")
        if growth > MAX_GROWTH_2048_TO_4096:
            failures.append(f"flash {kind} grows x{growth:.2f}")
    print("\n".join(report))
    assert not failures, "; ".join(failures) + "\n" + "\n".join(report)
