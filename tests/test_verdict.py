"""The one judge (harness/compare/verdict.py): the same ratio interval gets the same verdict in
`attnbench compare`, the baseline gate and the A/B gate, at and around the band's edges."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.case import Case
from harness.compare import ab, gate, verdict
from harness.compare.runs import Threshold, compare_case
from harness.results.records import Measurement
from harness.stats import RatioStats, summarize
from harness.vocab import IMPROVED, INCONCLUSIVE, NOT_CONFIRMED, REGRESSED, UNCHANGED

T10 = Threshold.parse("10%")
UP, LO = T10.upper, T10.lower  # 1.1, 1/1.1
EPS = 1e-9

BOUNDARIES = [
    # (low, high, verdict): exactly on an edge counts as inside the band
    (UP + EPS, UP + 0.5, REGRESSED), (UP, UP + 0.5, INCONCLUSIVE), (UP, UP, UNCHANGED),
    (LO - 0.5, LO - EPS, IMPROVED), (LO - 0.5, LO, INCONCLUSIVE), (LO, LO, UNCHANGED),
    (LO, UP, UNCHANGED), (LO + EPS, UP - EPS, UNCHANGED),
    (LO - EPS, 1.0, INCONCLUSIVE),  # straddles the LOWER edge (the old gate called this unchanged)
    (1.0, UP + EPS, INCONCLUSIVE),  # straddles the upper edge
    (LO - 0.1, UP + 0.1, INCONCLUSIVE),  # wider than the band
]


@pytest.mark.parametrize("low, high, expected", BOUNDARIES)
def test_boundaries(low, high, expected):
    assert verdict.judge(low, high, T10).verdict == expected


@pytest.mark.parametrize("low, high, expected", BOUNDARIES)
def test_disturbed_is_never_regressed_or_improved_and_noise_is_no_veto(low, high, expected):
    d = verdict.judge(low, high, T10, disturbed=["current contended (other processes used 1.9 of 2 CPUs)"])
    assert d.verdict == (INCONCLUSIVE if expected in (REGRESSED, IMPROVED) else expected)
    if expected in (REGRESSED, IMPROVED):
        assert any("contended" in n and f"would be {expected}" in n for n in d.notes)
    n = verdict.judge(low, high, T10, noisy=["current IQR/median 31%"])
    assert n.verdict == expected and n.noisy and any("noisy" in x for x in n.notes)


def _samples(center: float, rel_sd: float, n: int = 30, seed: int = 0) -> tuple[float, ...]:
    rng = np.random.default_rng(seed)
    return tuple(float(x) for x in center * (1.0 + rel_sd * rng.standard_normal(n)))


CASE = Case("flash", seq_len_q=256, seq_len_kv=256, threads=1)
# ratio sample sets sweeping across both edges of the band, tight and wide
SETS = [(c, sd, seed) for c in (0.80, 0.88, 0.91, 0.95, 1.0, 1.05, 1.09, 1.12, 1.2, 1.4)
        for sd in (0.01, 0.05, 0.2) for seed in (0, 1)]


def _gate_row(ratios, contended=False):
    m = Measurement(CASE, "ok", reference_ratios=ratios, error_passed=True, contended=contended)
    b = 1.25  # a baseline ratio: the gate judges current / b
    scaled = gate.Evidence(m, tuple(r * b for r in ratios))
    return gate.judge(scaled, b, T10, "sdpa")


def _ab_row(ratios, contended=False):
    cur = Measurement(CASE, "ok", error_passed=True, contended=contended)
    return ab.judge(gate.Evidence(cur, tuple(ratios), Measurement(CASE, "ok", error_passed=True)), T10, "sdpa")


@pytest.mark.parametrize("center, sd, seed", SETS)
def test_same_interval_same_verdict_in_both_gates(center, sd, seed):
    ratios = _samples(center, sd, seed=seed)
    st = RatioStats.of(ratios)
    expected = verdict.judge(st.ci_low, st.ci_high, T10)
    g, a = _gate_row(ratios), _ab_row(ratios)
    assert g.verdict == a.verdict == expected.verdict
    assert g.noisy == a.noisy == expected.noisy
    assert _gate_row(ratios, True).verdict == _ab_row(ratios, True).verdict == (
        INCONCLUSIVE if expected.verdict in (REGRESSED, IMPROVED) else expected.verdict)


@pytest.mark.parametrize("center, sd, seed", SETS)
def test_compare_uses_the_same_judge(center, sd, seed):
    base_s, cur_s = _samples(1.0, 0.01, seed=99), _samples(center, sd, seed=seed)
    base = Measurement(CASE, "ok", samples_s=base_s, stats=summarize(base_s))
    cur = Measurement(CASE, "ok", samples_s=cur_s, stats=summarize(cur_s))
    cc = compare_case(base, cur, T10)
    assert cc.verdict == verdict.judge(cc.ci_low, cc.ci_high, T10).verdict


def test_sets_cover_every_verdict():
    got = {_gate_row(_samples(c, sd, seed=s)).verdict for c, sd, s in SETS}
    assert {REGRESSED, IMPROVED, UNCHANGED, INCONCLUSIVE} <= got


def test_noisy_clear_regression_is_regressed_in_compare():
    """The reported case: current IQR/median >= 25%, ratio ~1.43 with its whole CI above 1.1 was
    "inconclusive: current flagged unreliable ... would be regressed", exit 0. Now regressed, noisy."""
    base_s = _samples(1.0, 0.02, n=40, seed=3)
    cur_s = tuple(1.43 * x for x in (0.7, 0.75, 0.8, 0.9, 1.0, 1.0, 1.0, 1.15, 1.25, 1.3) * 4)
    cur_stats = summarize(cur_s)
    assert cur_stats.noise == "unreliable"
    cc = compare_case(Measurement(CASE, "ok", samples_s=base_s, stats=summarize(base_s)),
                      Measurement(CASE, "ok", samples_s=cur_s, stats=cur_stats), T10)
    assert cc.ci_low > UP and cc.verdict == REGRESSED and cc.is_regression and cc.noisy
    assert any("noisy" in n for n in cc.notes)


@pytest.mark.parametrize("first, again, expected", [
    ((1.3, 1.2, 1.4), (1.3, 1.2, 1.4), REGRESSED),  # confirmed
    ((1.3, 1.2, 1.4), (1.15, 1.02, 1.3), REGRESSED),  # a clear first needs only a consistent second
    ((1.3, 1.2, 1.4), (1.15, 0.98, 1.3), INCONCLUSIVE),  # ... whose CI excludes no change
    ((1.15, 1.05, 1.3), (1.15, 1.02, 1.3), INCONCLUSIVE),  # a leaning first needs a clear second
    ((1.15, 1.05, 1.3), (1.2, 1.12, 1.3), REGRESSED),
    ((1.3, 1.2, 1.4), (1.0, 0.95, 1.05), NOT_CONFIRMED),
])
def test_confirmation_policy(first, again, expected):
    f = verdict.judge(first[1], first[2], T10)
    assert verdict.needs_remeasure(f, first[0], T10)
    assert verdict.confirm(f, *again, T10).verdict == expected
    disturbed = verdict.confirm(f, *again, T10, disturbed=["current contended"])
    assert disturbed.verdict == INCONCLUSIVE


def test_nothing_to_confirm_below_the_band():
    assert not verdict.needs_remeasure(verdict.judge(0.95, 1.2, T10), 1.05, T10)
    assert not verdict.needs_remeasure(verdict.judge(0.95, 1.05, T10), 1.0, T10)
    assert math.isclose(UP * LO, 1.0)
