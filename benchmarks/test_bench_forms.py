"""Forms-of-current-models target, side by side in one run (B=1, Hq=Hkv=8, N=4096, causal, float32,
2 threads, CPU):

    PYTHONPATH=$PWD .venv/bin/python -m pytest -q -s benchmarks/test_bench_forms.py   # ~1 min

- Dv != Dqk (MLA prefill, Dqk 192 = 128 + 64 rotary, Dv 128): flash within 1.15x of its own
  Dqk = Dv = 192 time scaled by FLOPs, i.e. t(192/128) / t(192/192) <= 1.15 * (192 + 128) / (192 + 192)
  -- the value side is computed Dv wide, with no hidden padding to the larger dim.
Shared machine: the ratio comes from calls interleaved round by round in this process (DESIGN.md,
"Noise"), the median over ROUNDS of each shape's time; the load average is printed with it.
"""

from __future__ import annotations

import os

from harness import registry
from harness.case import Case
from harness.workloads.prefill import WORKLOAD as PREFILL
from harness.workloads.prefill.inputs import make_inputs
# calls interleaved round by round (median per call), and the autouse fixture setting THREADS = 2
from test_bench_variants import THREADS, _interleaved, threads  # noqa: F401

ROUNDS = 7
N, HEADS, DQK, DV = 4096, 8, 192, 128
MAX_FLOP_SCALED_RATIO = 1.15


def test_flash_dv_smaller_than_dqk_costs_its_flops():
    flash = registry.get("flash").fn
    cases = {"dv128": Case(impl="flash", heads_q=HEADS, heads_kv=HEADS, seq_len_q=N, seq_len_kv=N, head_dim=DQK,
                           head_dim_v=DV, causal=True, threads=THREADS)}
    cases["dv192"] = cases["dv128"].replace(head_dim_v=0)
    inputs = {name: make_inputs(c, 0) for name, c in cases.items()}
    calls = {name: (lambda i=i: flash(i.q, i.k, i.v, causal=True)) for name, i in inputs.items()}
    t = _interleaved(calls, ROUNDS)
    flop_ratio = PREFILL.flops(cases["dv128"]) / PREFILL.flops(cases["dv192"])  # (192 + 128) / (192 + 192)
    ratio = t["dv128"] / t["dv192"]
    limit = MAX_FLOP_SCALED_RATIO * flop_ratio
    gflops = {n: PREFILL.flops(c) / t[n] / 1e9 for n, c in cases.items()}
    print(f"\nflash N={N} H={HEADS} causal fp32 t{THREADS}: Dqk {DQK}/Dv {DV} {t['dv128'] * 1e3:.0f} ms "
          f"({gflops['dv128']:.1f} GFLOP/s), Dqk = Dv = {DQK} {t['dv192'] * 1e3:.0f} ms ({gflops['dv192']:.1f} "
          f"GFLOP/s); time ratio {ratio:.3f}, FLOP ratio {flop_ratio:.3f}, flop-scaled {ratio / flop_ratio:.3f} "
          f"(target <= {MAX_FLOP_SCALED_RATIO}); load {os.getloadavg()[0]:.1f}")
    assert ratio <= limit, f"Dv {DV} costs {ratio / flop_ratio:.3f}x its FLOP share (> {MAX_FLOP_SCALED_RATIO})"
