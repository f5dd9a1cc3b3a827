"""The torch.compile'd implementations (flex, compiled_naive): few, small cases sharing one compile
per shape family -- each family costs ~5-30 s to compile on a 2-core CPU, so these are marked slow.
Also the harness side: compile time as metrics["compile_s"], kernel names from the profiler pass."""

from __future__ import annotations

import pytest
import torch

from harness import registry
from harness.case import Budget, Case
from harness.measure import checked_call, kernel_names
from harness.measure.compile_time import metrics as compile_metrics
from harness.measure.compile_time import start as compile_start
from harness.measure.case_measure import measure_case
from harness.results.metrics import metric

ALL_VARIANTS = dict(window=5, softcap=2.0, alibi=True, documents=3)
QUICK = Budget(warmup_s=0.01, min_time_s=0.02, max_time_s=0.05)


def _runnable(name: str) -> registry.Implementation:
    impl = registry.get(name)
    s = impl.available("cpu")
    if not s:
        pytest.skip(f"{name}: {s.reason}")
    return impl


def test_compiled_implementations_declare_themselves():
    for name in ("flex", "compiled_naive"):
        impl = registry.get(name)
        assert impl.params["compiled"] and impl.params["report_kernels"]
        assert set(impl.params["variants"]) == {"window", "softcap", "alibi", "document", "sinks"}
        assert callable(impl.fn.compile_seconds)
        bwd = impl.supports(Case(impl=name, pass_kind="backward"))
        assert not bwd and "forward" in bwd.reason
    assert metric("compile_s").unit == "s" and metric("compile_s").kind == "info"
    assert metric("compile_s").label == "compile"


def test_compile_metric_is_the_clock_difference():
    class Fn:
        t = 1.5

        def compile_seconds(self):
            return self.t

    class Impl:
        params = {"compiled": True}
        fn = Fn()

    impl = Impl()
    s = compile_start(impl)
    impl.fn.t = 4.0
    assert compile_metrics(impl, s) == {"compile_s": 2.5}
    assert compile_metrics(registry.get("flash"), compile_start(registry.get("flash"))) == {}


def test_sdpa_records_the_kernel_that_ran():
    case = Case(impl="sdpa", heads_q=2, heads_kv=2, seq_len_q=64, seq_len_kv=64, head_dim=16, causal=True, window=8)
    m = measure_case(case, QUICK, 0)
    assert m.status == "ok", m.message
    names = m.extra["kernels"]
    assert any("scaled_dot_product" in n for n in names), names
    assert "compile_s" not in m.metrics
    assert kernel_names.record(registry.get("flash"), lambda: None) == {}  # not asked for


@pytest.mark.slow
@pytest.mark.parametrize("name", ["flex", "compiled_naive"])
def test_compiled_matches_reference_and_compiles_once_per_family(name):
    impl = _runnable(name)
    shapes = [(37, 37, 4, 2), (70, 70, 4, 2)]  # one family (GQA, every variant); N is dynamic
    for dtype in ("float32", "bfloat16"):  # bfloat16 is a family of its own: one shape only
        for nq, nk, hq, hkv in shapes if dtype == "float32" else shapes[:1]:
            case = Case(impl=name, heads_q=hq, heads_kv=hkv, seq_len_q=nq, seq_len_kv=nk, head_dim=16, dtype=dtype,
                        causal=True, **ALL_VARIANTS)
            acc = checked_call.check_impl(impl, checked_call.prepare(case, 0), case)
            assert not acc.wrong, f"{case.case_id}: {acc.wrong}"
    # cross attention with a window, ALiBi and a cap, plus a padding mask (rows with no key: zeros)
    case = Case(impl=name, heads_q=2, heads_kv=2, seq_len_q=45, seq_len_kv=20, head_dim=16, causal=True,
                window=4, softcap=3.0, alibi=True, mask="key_padding", mask_fraction=0.3)
    acc = checked_call.check_impl(impl, checked_call.prepare(case, 0), case)
    assert not acc.wrong, acc.wrong
    # the same family again at a new length: no new compile
    before = impl.fn.compile_seconds()
    case = Case(impl=name, heads_q=4, heads_kv=2, seq_len_q=90, seq_len_kv=90, head_dim=16, causal=True, **ALL_VARIANTS)
    acc = checked_call.check_impl(impl, checked_call.prepare(case, 0), case)
    assert not acc.wrong
    assert impl.fn.compile_seconds() == before, "a new sequence length recompiled the family"
    # and that shape once more, as a timing loop calls it (flex: its block mask now comes from the cache)
    acc = checked_call.check_impl(impl, checked_call.prepare(case, 1), case)
    assert not acc.wrong
    assert impl.fn.compile_seconds() == before, "the same shape's second call recompiled the family"


@pytest.mark.slow
def test_flex_case_records_compile_time_and_kernels():
    _runnable("flex")
    case = Case(impl="flex", heads_q=4, heads_kv=2, seq_len_q=64, seq_len_kv=64, head_dim=16, causal=True,
                **ALL_VARIANTS)
    m = measure_case(case, QUICK, 0)
    assert m.status == "ok", m.message
    assert m.metrics["compile_s"] >= 0.0
    assert any("Compiled" in n or "flex" in n.lower() for n in m.extra["kernels"]), m.extra["kernels"]
    again = measure_case(case, QUICK, 0)
    assert again.metrics["compile_s"] < 0.5 * max(m.metrics["compile_s"], 1e-9) or m.metrics["compile_s"] == 0.0
    torch.compiler.reset()  # leave no compiled state behind for other modules
