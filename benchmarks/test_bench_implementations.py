"""pytest-benchmark of the built-in implementations at the reference CPU shape, plus the targets.

    .venv/bin/pytest benchmarks/test_bench_implementations.py        # about 2-3 minutes, 2 cores

Shape: B=1, Hq=Hkv=8, D=64, float32, non-causal, no mask, N = Nq = Nk in {1024, 4096}, on the
CPU with torch's default thread count (recorded in extra_info). Inputs are seeded standard
normals from harness.inputs.make_inputs, never zeros. Per case, outside the timed region: one
call under the profiler for the peak bytes above the inputs (harness.measure.peak_memory), which also warms
up; then benchmark.pedantic with a warm-up round and as many rounds as fit ROUND_BUDGET_S
(at least MIN_ROUNDS), so naive at N=4096 (seconds per call) stays affordable.

The last test checks the targets on the results of this same run, at N = 4096:
- flash throughput >= 0.8x sdpa's (time <= 1.25x) and >= 2.5x naive's;
- peak extra memory of flash and of memory_efficient <= 2% of naive's.
test_flash_causal_targets checks, with 2 threads and ratios of interleaved pairs in one run: flash
causal time <= 0.75x flash non-causal at N = 1024 and 4096, and flash causal throughput >= 0.9x
sdpa causal at N = 4096.
Absolute times on a shared machine drift 10-50% from one test to the next, while ratios of
interleaved runs drift a few percent (DESIGN.md, "Noise"). So each time ratio is taken from the two
benchmarks' medians and, only when that misses the target, confirmed by re-measuring the two in
interleaved pairs -- a suspected miss must reproduce side by side to fail the test.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from harness.measure import peak_memory
from harness import registry
from harness.case import Case
from harness.workloads.prefill.inputs import make_inputs

IMPLS = ["naive", "chunked", "memory_efficient", "flash", "sdpa", "sdpa_math", "sdpa_flash"]
SEQ_LENS = [1024, 4096]
TARGET_N = 4096
ROUND_BUDGET_S = 4.0  # timed seconds per case, roughly
MIN_ROUNDS, MAX_ROUNDS = 3, 15
SEED = 0

FLASH_VS_SDPA_MAX_TIME = 1.25  # flash time / sdpa time
FLASH_VS_NAIVE_MIN_SPEEDUP = 2.5  # naive time / flash time
MEMORY_MAX_FRACTION_OF_NAIVE = 0.02
CONFIRM_PAIRS = 7
CONFIRM_PAIRS_NAIVE = 3  # naive takes seconds per call at N=4096

# (impl, N) -> {"median_s", "min_s", "peak_bytes"}: filled by the benchmarks, read by the last test.
RESULTS: dict[tuple[str, int], dict] = {}


def _case(name: str, n: int) -> Case:
    return Case(impl=name, batch=1, heads_q=8, heads_kv=8, seq_len_q=n, seq_len_kv=n, head_dim=64)


def _forward(name: str, n: int):
    impl = registry.get(name)
    inputs = make_inputs(_case(name, n), SEED)
    kwargs = inputs.call_kwargs()

    def forward():
        with torch.no_grad():
            return impl.fn(inputs.q, inputs.k, inputs.v, **kwargs)

    return forward


@pytest.mark.parametrize("n", SEQ_LENS, ids=[f"n{n}" for n in SEQ_LENS])
@pytest.mark.parametrize("name", IMPLS)
def test_implementation(benchmark, name, n):
    case = _case(name, n)
    support = registry.get(name).supports(case)
    if not support:
        pytest.skip(f"{name}: {support.reason}")
    forward = _forward(name, n)

    started = time.perf_counter()
    peak = peak_memory.measure_peak_bytes(forward, "cpu")  # also the first (warm-up) call
    call_s = time.perf_counter() - started  # an over-estimate: profiling slows every op
    rounds = max(MIN_ROUNDS, min(MAX_ROUNDS, int(ROUND_BUDGET_S / max(call_s, 1e-6))))

    benchmark.group = f"B1 H8 D64 fp32 cpu N={n}"
    benchmark.extra_info.update(
        impl=name,
        seq_len=n,
        threads=torch.get_num_threads(),
        peak_bytes=peak,
        predicted_peak_bytes=registry.get(name).predicted_peak_bytes(case),
    )
    benchmark.pedantic(forward, rounds=rounds, warmup_rounds=1, iterations=1)
    if benchmark.stats is not None:  # None under --benchmark-disable
        stats = benchmark.stats.stats
        RESULTS[(name, n)] = {"median_s": stats.median, "min_s": stats.min, "peak_bytes": peak}


def _interleaved_ratio(fn_a, fn_b, pairs: int) -> list[float]:
    """Time a and b alternately (a b, b a, ...) and return time_a / time_b per pair."""
    fn_a(), fn_b()  # warm-up
    ratios = []
    for i in range(pairs):
        order = (fn_a, fn_b) if i % 2 == 0 else (fn_b, fn_a)
        times = {}
        for fn in order:
            t0 = time.perf_counter()
            fn()
            times[fn] = time.perf_counter() - t0
        ratios.append(times[fn_a] / times[fn_b])
    return ratios


def test_targets_met_at_4096():
    needed = [(name, TARGET_N) for name in ("naive", "memory_efficient", "flash", "sdpa")]
    missing = [key for key in needed if key not in RESULTS]
    if missing:
        pytest.skip(f"run the whole file with timing enabled; no results for {missing}")
    res = {name: RESULTS[(name, TARGET_N)] for name, _ in needed}
    report = [f"N={TARGET_N}, threads={torch.get_num_threads()}:"]
    report += [
        f"  {name:16s} median {r['median_s'] * 1e3:9.1f} ms   peak {r['peak_bytes'] / 2**20:9.2f} MiB"
        for name, r in res.items()
    ]
    failures = []

    flash_vs_sdpa = res["flash"]["median_s"] / res["sdpa"]["median_s"]
    report.append(f"  flash / sdpa time (benchmark medians): {flash_vs_sdpa:.3f} (target <= {FLASH_VS_SDPA_MAX_TIME})")
    if flash_vs_sdpa > FLASH_VS_SDPA_MAX_TIME:
        pairs = _interleaved_ratio(_forward("flash", TARGET_N), _forward("sdpa", TARGET_N), CONFIRM_PAIRS)
        flash_vs_sdpa = statistics.median(pairs)
        report.append(
            f"  flash / sdpa time, confirmed by {CONFIRM_PAIRS} interleaved pairs: median {flash_vs_sdpa:.3f} "
            f"(pairs {', '.join(f'{r:.2f}' for r in pairs)})"
        )
        if flash_vs_sdpa > FLASH_VS_SDPA_MAX_TIME:
            failures.append(f"flash takes {flash_vs_sdpa:.2f}x sdpa's time (> {FLASH_VS_SDPA_MAX_TIME})")

    speedup = res["naive"]["median_s"] / res["flash"]["median_s"]
    report.append(f"  naive / flash time (benchmark medians): {speedup:.2f} (target >= {FLASH_VS_NAIVE_MIN_SPEEDUP})")
    if speedup < FLASH_VS_NAIVE_MIN_SPEEDUP:
        pairs = _interleaved_ratio(_forward("naive", TARGET_N), _forward("flash", TARGET_N), CONFIRM_PAIRS_NAIVE)
        speedup = statistics.median(pairs)
        report.append(
            f"  naive / flash time, confirmed by {CONFIRM_PAIRS_NAIVE} interleaved pairs: median {speedup:.2f} "
            f"(pairs {', '.join(f'{r:.2f}' for r in pairs)})"
        )
        if speedup < FLASH_VS_NAIVE_MIN_SPEEDUP:
            failures.append(f"flash is only {speedup:.2f}x faster than naive (< {FLASH_VS_NAIVE_MIN_SPEEDUP})")

    naive_peak = res["naive"]["peak_bytes"]
    for name in ("flash", "memory_efficient"):
        fraction = res[name]["peak_bytes"] / naive_peak
        report.append(f"  {name} peak / naive peak: {fraction:.4f} (target <= {MEMORY_MAX_FRACTION_OF_NAIVE})")
        if fraction > MEMORY_MAX_FRACTION_OF_NAIVE:
            failures.append(f"{name} peaks at {fraction:.2%} of naive's memory (> {MEMORY_MAX_FRACTION_OF_NAIVE:.0%})")

    print("\n".join(report))
    assert not failures, "; ".join(failures) + "\n" + "\n".join(report)


# ---------------------------------------------------------------------------------------------
# flash causal targets (B=1 H=8 D=64 fp32, 2 threads), measured side by side in this test: causal
# must cost <= 0.75x non-causal flash at N = 1024 and 4096 (it does about half the work), and
# causal flash must reach >= 0.9x causal sdpa's throughput at N = 4096. Each ratio is the median
# of interleaved pairs (order alternating), so machine-wide drift cancels.

CAUSAL_THREADS = 2
CAUSAL_VS_FULL_MAX_TIME = 0.75  # flash causal time / flash non-causal time
CAUSAL_VS_SDPA_MIN_THROUGHPUT = 0.9  # sdpa causal time / flash causal time, at N = 4096
CAUSAL_PAIRS = {1024: 21, 4096: 7}


def _fn_call(name: str, n: int, causal: bool):
    impl = registry.get(name)
    case = Case(impl=name, batch=1, heads_q=8, heads_kv=8, seq_len_q=n, seq_len_kv=n, head_dim=64, causal=causal)
    inputs = make_inputs(case, SEED)  # seeded standard normals
    kwargs = inputs.call_kwargs()

    def forward():
        with torch.no_grad():
            return impl.fn(inputs.q, inputs.k, inputs.v, **kwargs)

    return forward


@pytest.mark.parametrize("n", SEQ_LENS, ids=[f"n{n}" for n in SEQ_LENS])
def test_flash_causal_targets(n):
    before = torch.get_num_threads()
    torch.set_num_threads(CAUSAL_THREADS)
    try:
        causal, full = _fn_call("flash", n, True), _fn_call("flash", n, False)
        pairs = _interleaved_ratio(causal, full, CAUSAL_PAIRS[n])
        vs_full = statistics.median(pairs)
        report = [f"N={n}, threads={CAUSAL_THREADS}: flash causal / non-causal time: median {vs_full:.3f} "
                  f"(target <= {CAUSAL_VS_FULL_MAX_TIME}; pairs {', '.join(f'{r:.2f}' for r in pairs)})"]
        failures = [] if vs_full <= CAUSAL_VS_FULL_MAX_TIME else [f"causal/non-causal {vs_full:.3f}"]
        if n == TARGET_N:
            pairs = _interleaved_ratio(_fn_call("sdpa", n, True), causal, CAUSAL_PAIRS[n])
            thr = statistics.median(pairs)
            report.append(f"N={n}: flash causal throughput / sdpa causal: median {thr:.3f} "
                          f"(target >= {CAUSAL_VS_SDPA_MIN_THROUGHPUT}; pairs {', '.join(f'{r:.2f}' for r in pairs)})")
            if thr < CAUSAL_VS_SDPA_MIN_THROUGHPUT:
                failures.append(f"flash causal at {thr:.3f}x sdpa causal throughput")
    finally:
        torch.set_num_threads(before)
    print("\n".join(report))
    assert not failures, "; ".join(failures) + "\n" + "\n".join(report)
