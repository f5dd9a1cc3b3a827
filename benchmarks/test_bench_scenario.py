"""pytest-benchmark over a scenario: every case of the scenario becomes one benchmark.

    pytest benchmarks/test_bench_scenario.py                         # scenario "smoke"
    ATTNBENCH_SCENARIO=default pytest benchmarks/test_bench_scenario.py --benchmark-save=base
    pytest benchmarks/test_bench_scenario.py --benchmark-compare --benchmark-compare-fail=median:10%

Peak memory above the inputs and the error against the float64 reference go into `extra_info`
(measured outside the timed region). CUDA work is synchronised inside the timed callable.
Cases an implementation does not support here are skipped with the reason.
"""

from __future__ import annotations

import os

import pytest

from harness.measure import accuracy
from harness.workloads.prefill import reference as prefill_reference
from harness.measure import peak_memory
from harness import registry
from harness.workloads.prefill.inputs import make_inputs
from harness.scenario.load import load_scenario

SCENARIO = load_scenario(os.environ.get("ATTNBENCH_SCENARIO", "smoke"))
CASES = [c for c in SCENARIO.cases() if c.pass_kind == "forward"]


def _synchronised(fn, device: str):
    if not device.startswith("cuda"):
        return fn
    import torch

    def call():
        out = fn()
        torch.cuda.synchronize()
        return out

    return call


@pytest.mark.parametrize("case", CASES, ids=[c.case_id for c in CASES])
def test_attention(benchmark, case):
    import torch

    impl = registry.get(case.impl)
    support = impl.supports(case)
    if not support:
        pytest.skip(support.reason)
    inputs = make_inputs(case, SCENARIO.seed)
    kwargs = inputs.call_kwargs()

    def forward():
        with torch.no_grad():
            return impl.fn(inputs.q, inputs.k, inputs.v, **kwargs)

    out = forward()
    rows = prefill_reference.select_rows(case.seq_len_q)
    ref = prefill_reference.reference_rows(inputs.q, inputs.k, inputs.v, rows, **kwargs)
    errs = accuracy.errors(out[:, :, rows.to(out.device)], ref)
    naive = None
    if case.dtype != "float32":
        naive = accuracy.errors(prefill_reference.naive_rows(inputs.q, inputs.k, inputs.v, rows, **kwargs), ref)
    verdict = accuracy.judge(case.dtype, errs, naive)
    benchmark.group = f"{case.grid} " + case.case_id.split("/", 1)[1]
    benchmark.extra_info.update(
        case_id=case.case_id,
        peak_bytes=peak_memory.measure_peak_bytes(forward, case.device),
        max_abs_error=errs.max_abs,
        rel_l2_error=errs.rel_l2,
        error_passed=verdict.passed,
    )
    assert verdict.passed, f"{case.case_id}: {verdict.rule}"
    benchmark(_synchronised(forward, case.device))  # rounds and time follow --benchmark-* options
