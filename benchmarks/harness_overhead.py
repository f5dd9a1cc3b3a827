"""Does the harness report what a plain timing loop would? Harness median vs a perf_counter loop.

    python benchmarks/harness_overhead.py [--reps 7] [--scenario default]

For a few cases of the scenario's budget, in one process, alternating `--reps` times:
- harness: harness.measure.case_measure.measure_case (what `attnbench run` records: inputs, accuracy check,
  memory pass, adaptive timing) -> the reported median;
- plain: the same callable timed call by call with time.perf_counter for as long as the harness
  timed -> the median per-call time.
Prints the ratio harness / plain per repetition and its median per case. Target: within 3%
(|median ratio - 1| <= 0.03). Exit 1 when a case misses it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

CASES = [  # (impl, N): a fused kernel, the tiled one, a small fast call (overhead shows most there)
    ("sdpa", 1024),
    ("flash", 1024),
    ("naive", 256),
    ("sdpa", 256),
]
TARGET = 0.03


def plain_loop_median_s(fn, duration_s: float) -> float:
    for _ in range(3):  # warm-up
        fn()
    times = []
    end = time.perf_counter() + duration_s
    while time.perf_counter() < end or len(times) < 5:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--scenario", default="default", help="whose budget to use (default: default)")
    args = ap.parse_args(argv)



    from harness import registry
    from harness.case import Case
    from harness.scenario.load import load_scenario
    from harness.measure.case_measure import measure_case
    from harness.measure.checked_call import build_callable, prepare

    scenario = load_scenario(args.scenario)
    budget = scenario.budget
    print(f"budget of {scenario.name}: {budget}")
    failed = []
    for impl_name, n in CASES:
        case = Case(impl=impl_name, batch=1, heads_q=8, heads_kv=8, seq_len_q=n, seq_len_kv=n,
                    head_dim=64, dtype="float32", device="cpu")
        fn = build_callable(registry.get(impl_name), prepare(case, scenario.seed), case)
        ratios = []
        for _ in range(args.reps):
            m = measure_case(case, budget, scenario.seed)
            if m.status != "ok":
                print(f"{impl_name} N={n}: {m.status}: {m.message}")
                return 1
            harness_s = m.median_s
            timed_s = sum(m.samples_s) * m.calls_per_block
            plain_s = plain_loop_median_s(fn, max(timed_s, budget.min_time_s))
            ratios.append(harness_s / plain_s)
        med = statistics.median(ratios)
        ok = abs(med - 1) <= TARGET
        failed += [] if ok else [impl_name]
        print(f"{impl_name:>6} N={n:<5} harness/plain median {med:.3f}  "
              f"(reps: {' '.join(f'{r:.3f}' for r in ratios)})  {'ok' if ok else 'MISSED'}")
    print(f"target |harness/plain - 1| <= {TARGET:.0%}: {'met' if not failed else 'missed for ' + ', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
