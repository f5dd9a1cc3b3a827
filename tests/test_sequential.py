"""The sequential A/B decision (harness/compare/sequential.py) on synthetic streams of pair ratios:
where it stops, what it decides, and its error rates under the null over the repeated looks
(simulated with a fixed seed: no timing, no processes)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.compare import sequential
from harness.compare.runs import Threshold
from harness.compare.sequential import PLAN, Look, Plan, Sequence, Track
from harness.stats import log_t_ci, median_order_ci, median_rank, t_quantile
from harness.vocab import IMPROVED, INCONCLUSIVE, REGRESSED, UNCHANGED

T = Threshold.parse("12%")


def _stream(center: float, rel_sd: float, rng, heavy: bool = False):
    while True:
        e = rng.standard_t(3) / math.sqrt(3) if heavy else rng.standard_normal()
        yield center * math.exp(rel_sd * e)


def _run(stream, plan: Plan = PLAN) -> Sequence:
    s = Sequence(T, plan)
    while not s.done:
        s.add(next(stream))
    return s


def test_plan_spends_alpha_over_fixed_looks():
    assert math.isclose(PLAN.alpha, 0.05) and [lk.pairs for lk in PLAN.looks] == [5, 7, 10, 14]
    with pytest.raises(ValueError):
        Plan((Look(6, 0.01), Look(4, 0.01)))  # looks must grow
    with pytest.raises(ValueError):
        Plan((Look(1, 0.01),))  # a t interval needs two samples


@pytest.mark.parametrize("center, verdict", [(1.0, UNCHANGED), (1.3, REGRESSED), (0.75, IMPROVED)])
def test_a_clear_answer_stops_at_the_first_look(center, verdict):
    s = _run(_stream(center, 0.01, np.random.default_rng(0)))
    assert s.decision.final and s.decision.verdict == verdict and len(s.samples) == PLAN.looks[0].pairs


def test_an_unclear_ratio_runs_to_the_last_look_and_is_inconclusive():
    s = _run(_stream(1.12, 0.03, np.random.default_rng(1)))  # on the band's edge
    assert len(s.samples) == PLAN.max_pairs and s.decision.final and s.decision.verdict == INCONCLUSIVE
    with pytest.raises(ValueError):
        s.add(1.0)  # decided: no more samples


def test_decisions_only_at_planned_looks_and_the_interval_is_the_looks():
    s = Sequence(T)
    first = [1.0, 1.2, 0.8, 1.1, 1.0]
    assert len(first) == PLAN.looks[0].pairs
    for r in first[:-1]:
        assert s.add(r) is None and s.stats() is None
    d = s.add(first[-1])
    assert d is not None and d.pairs == 5
    ci = log_t_ci(first, PLAN.looks[0].alpha)
    st = s.stats()
    assert (st.median, st.ci_low, st.ci_high, st.n) == (ci.center, ci.low, ci.high, 5)


@pytest.mark.parametrize("heavy", [False, True])
@pytest.mark.parametrize("edge", ["upper", "lower"])
def test_error_rate_at_the_band_edge_is_at_most_alpha_over_two(heavy, edge):
    """True ratio exactly on an edge of the band: 'regressed'/'improved' (beyond it) and
    'unchanged' (inside it) are both wrong there. Over all the looks each happens with
    probability <= alpha / 2 = 2.5% (Bonferroni); 4000 simulated sequences, normal and heavy-tailed
    (t3) log-noise."""
    center = T.upper if edge == "upper" else T.lower
    rng = np.random.default_rng(20260101 + heavy)
    n, beyond, inside = 4000, 0, 0
    for _ in range(n):
        v = _run(_stream(center, 0.04, rng, heavy)).decision.verdict
        beyond += v in (REGRESSED, IMPROVED)
        inside += v == UNCHANGED
    assert beyond / n <= PLAN.alpha / 2 and inside / n <= PLAN.alpha / 2


def test_no_change_is_rarely_called_a_change_under_noise():
    rng = np.random.default_rng(7)
    verdicts = [_run(_stream(1.0, 0.08, rng, heavy=True)).decision.verdict for _ in range(2000)]
    assert sum(v in (REGRESSED, IMPROVED) for v in verdicts) <= 2  # the edge is 1.4 noise SDs away
    assert verdicts.count(UNCHANGED) > 1500


def test_a_25_percent_slowdown_is_found_at_moderate_noise():
    rng = np.random.default_rng(3)
    verdicts = [_run(_stream(1.25, 0.04, rng)).decision.verdict for _ in range(500)]
    assert verdicts.count(REGRESSED) >= 490


def _track(ratios, disturbed: bool) -> Track:
    t = Track(T)
    for r in ratios:
        t.add(r, disturbed=disturbed)
    return t


def test_track_clean_pairs_decide_undisturbed():
    t = _track((1.3, 1.31, 1.29, 1.3, 1.3), disturbed=False)
    assert t.done
    samples, st, busy = t.evidence()
    assert samples == (1.3, 1.31, 1.29, 1.3, 1.3) and st.ci_low > T.upper and not busy


def test_track_disturbed_pairs_are_not_clean_samples():
    t = _track((1.3, 1.31, 1.29, 1.3, 1.3), disturbed=True)
    assert not t.done and t.clean.samples == [] and t.disturbed_pairs == 5
    t.add(1.3, disturbed=True)
    t.add(1.3, disturbed=True)
    assert t.done and t.disturbed_pairs == PLAN.max_disturbed == 7  # the machine stays busy: stop
    samples, st, busy = t.evidence()
    assert busy and len(samples) == 5 and st.ci_low > T.upper  # its decisive look; disturbed: the judge will not call it


def test_track_all_pairs_may_say_unchanged():
    t = _track((1.0, 1.01, 0.99, 1.0, 1.0), disturbed=True)
    assert t.done
    samples, st, busy = t.evidence()
    assert busy and len(samples) == 5 and T.lower <= st.ci_low and st.ci_high <= T.upper


def test_track_too_few_pairs_has_no_interval():
    t = Track(T)
    t.add(1.0, disturbed=False)
    assert t.evidence() == ((1.0,), None, False)


# --- harness.stats: the exact quantities the decisions rest on ------------------------------------


@pytest.mark.parametrize("df, alpha, q", [(1, 0.05, 12.7062047), (2, 0.05, 4.3026527), (3, 0.0125, 5.3919451),
                                          (7, 0.05, 2.3646243), (30, 0.01, 2.7499957)])
def test_t_quantile_matches_tables(df, alpha, q):
    assert t_quantile(df, alpha) == pytest.approx(q, rel=1e-6)


def test_median_rank_is_the_binomial_order_statistic():
    assert median_rank(5, 0.05) is None  # 2 / 32 > 0.05
    r, cov = median_rank(6, 0.05)
    assert r == 1 and cov == pytest.approx(1 - 2 / 64)
    r, cov = median_rank(20, 0.05)
    assert r == 6 and cov == pytest.approx(1 - 2 * sum(math.comb(20, k) for k in range(6)) / 2**20)
    assert median_rank(5000, 0.05)[0] == pytest.approx(2500 - 1.96 * math.sqrt(5000) / 2, abs=1)


def test_median_order_ci_coverage_by_simulation():
    rng = np.random.default_rng(11)
    hits = 0
    for _ in range(3000):
        ci = median_order_ci(rng.exponential(size=15))  # skewed: true median ln 2
        hits += ci.low <= math.log(2) <= ci.high
    assert hits / 3000 >= 0.95
    ci = median_order_ci([3.0, 1.0, 2.0, 5.0, 4.0, 6.0, 7.0])
    assert (ci.median, ci.low, ci.high, ci.rank) == (4.0, 1.0, 7.0, 1) and ci.half_width == pytest.approx(0.75)
    assert median_order_ci([1.0] * 5) is None


def test_sequential_module_keeps_one_judge():
    from harness.compare import verdict

    assert sequential.judge_ is verdict
