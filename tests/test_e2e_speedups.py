"""e2e's arithmetic (harness/e2e/speedups.py): Amdahl's law, shares, paired model speed-ups. No
transformers needed."""

from __future__ import annotations

import math

import pytest

from harness.e2e.speedups import Instrumented, amdahl, phase_results


@pytest.mark.parametrize("share, k, expected", [
    (0.5, 2.0, 1 / (0.5 + 0.25)),
    (0.0, 10.0, 1.0),  # attention takes no time: nothing to gain
    (1.0, 3.0, 3.0),  # the model is all attention: the kernel's speed-up
    (0.2, 0.5, 1 / (0.8 + 0.4)),  # a slower kernel slows the model down
])
def test_amdahl(share, k, expected):
    assert amdahl(share, k) == pytest.approx(expected)


@pytest.mark.parametrize("share, k", [(-0.1, 2.0), (1.5, 2.0), (0.5, 0.0), (0.5, -1.0)])
def test_amdahl_refuses_impossible_inputs(share, k):
    with pytest.raises(ValueError):
        amdahl(share, k)


def _ins(model_s, kernel_s, call_s):
    return Instrumented(model_s, kernel_s, call_s, share=kernel_s / model_s, calls=2, paths={"prefill": 2})


def test_instrumented_share_and_breakdown():
    ins = _ins(1.0, 0.3, 0.35)
    assert ins.share == pytest.approx(0.3)
    assert ins.adapter_s == pytest.approx(0.05)
    assert ins.other_s == pytest.approx(0.65)
    # medians over repeats, divided by the units per call (decode steps)
    per_token = Instrumented.of([4.0, 8.0, 6.0], [1.0, 2.0, 3.0], [1.5, 2.5, 3.5], calls=16, paths={}, per=4)
    assert (per_token.model_s, per_token.kernel_s, per_token.call_s, per_token.calls) == (1.5, 0.5, 0.625, 4)
    assert per_token.layers_s is None
    assert per_token.n == 3
    # means, like the timed pass's block averages: the share is kernel / model time over all calls
    assert per_token.share == pytest.approx(6 / 18)


def test_phase_results_pair_rounds_and_predict_from_the_baselines_share():
    # baseline: attention 0.4 of 1.0 s; the other implementation's kernel is 4x faster (0.1 s)
    samples = {"base": [1.0, 2.0, 1.0], "fast": [0.7, 1.4, 0.7]}  # a slow round hits both alike
    ins = {"base": _ins(1.0, 0.4, 0.41), "fast": _ins(0.7, 0.1, 0.11)}
    base, fast = phase_results("prefill", samples, ins)
    assert base.model_speedup is None and base.kernel_speedup is None and base.amdahl_speedup is None
    assert fast.kernel_speedup == pytest.approx(4.0)
    assert fast.baseline_share == pytest.approx(0.4)
    assert fast.amdahl_speedup == pytest.approx(amdahl(0.4, 4.0)) == pytest.approx(1 / 0.7)
    # paired by round: every round's ratio is 1/0.7, so the CI is that point
    assert fast.model_speedup.median == pytest.approx(1 / 0.7)
    assert fast.model_speedup.low == pytest.approx(1 / 0.7) and fast.model_speedup.high == pytest.approx(1 / 0.7)
    assert fast.amdahl_gap == pytest.approx(0.0, abs=1e-12)
    d = fast.to_dict()
    assert d["instrumented"]["share"] == pytest.approx(0.1 / 0.7)
    assert set(d) >= {"phase", "impl", "time", "instrumented", "kernel_speedup", "amdahl_speedup",
                      "model_speedup", "amdahl_gap", "baseline_share"}


def test_phase_results_per_token():
    samples = {"a": [0.8, 0.8], "b": [0.4, 0.4]}  # 8 decode steps per call
    ins = {"a": _ins(0.1, 0.05, 0.05), "b": _ins(0.05, 0.0, 0.0)}
    a, b = phase_results("decode", samples, ins, per=8)
    assert a.time.median_s == pytest.approx(0.1)
    assert b.model_speedup.median == pytest.approx(2.0)
    assert b.kernel_speedup is None and b.amdahl_speedup is None and b.amdahl_gap is None  # no kernel time
    assert not math.isnan(b.time.median_s)


def test_share_projected_to_the_whole_depth():
    # 2 of 8 layers built: layers 0.6 s (attention 0.2 s of it), embedding + LM head 0.4 s
    ins = Instrumented(1.0, 0.2, 0.21, share=0.2, calls=2, paths={}, n=3, layers_s=0.6)
    assert ins.share_at_depth(2, 8) == pytest.approx(0.8 / (2.4 + 0.4))
    assert ins.share_at_depth(8, 8) == pytest.approx(0.2)  # the whole model: as measured
    assert Instrumented(1.0, 0.2, 0.21, share=0.2, calls=2, paths={}).share_at_depth(2, 8) is None  # no layer time
    samples = {"a": [1.0, 1.0], "b": [0.9, 0.9]}
    fast = Instrumented(0.9, 0.1, 0.11, share=0.1 / 0.9, calls=2, paths={}, n=3, layers_s=0.5)
    a, b = phase_results("prefill", samples, {"a": ins, "b": fast}, depth=(2, 8))
    assert b.projected["layers"] == 8
    assert b.projected["amdahl_speedup"] == pytest.approx(amdahl(0.8 / 2.8, 2.0))
    assert a.projected["share"] == pytest.approx(0.8 / 2.8) and "amdahl_speedup" not in a.projected
    whole = phase_results("prefill", samples, {"a": ins, "b": fast}, depth=(8, 8))
    assert whole[1].projected is None and whole[1].to_dict()["projected"] is None
