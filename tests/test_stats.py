import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.stats import NOISY_SPREAD, UNRELIABLE_SPREAD, noise_level, ratio_ci, spread, summarize


def test_summary_of_known_samples():
    s = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s.n, s.median_s, s.mean_s, s.min_s, s.max_s) == (5, 3.0, 3.0, 1.0, 5.0)
    assert (s.q1_s, s.q3_s, s.iqr_s) == (2.0, 4.0, 2.0)
    assert s.spread == pytest.approx(2.0 / 3.0)
    assert s.noise == "unreliable"
    assert s.ci_low_s <= 3.0 <= s.ci_high_s


def test_constant_samples_are_ok_with_a_point_interval():
    s = summarize([0.002] * 10)
    assert s.spread == 0.0 and s.noise == "ok"
    assert s.ci_low_s == s.ci_high_s == 0.002


def test_single_sample():
    s = summarize([0.5])
    assert s.n == 1 and s.median_s == s.ci_low_s == s.ci_high_s == 0.5 and s.spread == 0.0


def test_noise_thresholds_are_inclusive():
    assert (NOISY_SPREAD, UNRELIABLE_SPREAD) == (0.10, 0.25)
    assert noise_level(0.0999) == "ok"
    assert noise_level(0.10) == "noisy"
    assert noise_level(0.2499) == "noisy"
    assert noise_level(0.25) == "unreliable"
    assert noise_level(math.inf) == "unreliable"


def test_noise_from_samples():
    # median 1.0, q1 0.97, q3 1.03 -> spread 0.06: ok; widen to 0.15: noisy
    assert summarize([0.94, 0.97, 1.0, 1.03, 1.06]).noise == "ok"
    assert summarize([0.85, 0.925, 1.0, 1.075, 1.15]).noise == "noisy"


def test_spread_edge_cases():
    assert spread([1.0, 2.0, 3.0]) == pytest.approx(1.0 / 2.0)
    assert spread([0.0, 0.0, 0.0]) == 0.0
    assert spread([0.0, 0.0, 0.0, 1.0, 1.0]) == math.inf
    with pytest.raises(ValueError):
        spread([])


def test_bad_samples_raise():
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError):
        summarize([1.0, float("nan")])


def test_bootstrap_is_deterministic_per_seed():
    rng = np.random.default_rng(7)
    x = list(rng.lognormal(0.0, 0.3, size=25))
    a, b, c = summarize(x, seed=0), summarize(x, seed=0), summarize(x, seed=1)
    assert (a.ci_low_s, a.ci_high_s) == (b.ci_low_s, b.ci_high_s)
    assert (a.ci_low_s, a.ci_high_s) != (c.ci_low_s, c.ci_high_s)


def test_ci_narrows_with_more_samples():
    rng = np.random.default_rng(1)
    small = summarize(rng.normal(1.0, 0.1, size=10))
    large = summarize(rng.normal(1.0, 0.1, size=400))
    assert (large.ci_high_s - large.ci_low_s) < (small.ci_high_s - small.ci_low_s) / 3


def test_ci_covers_the_true_median_most_of_the_time():
    rng = np.random.default_rng(2)
    true_median = 1.0  # lognormal(0, s) has median e^0
    hits = 0
    for trial in range(60):
        s = summarize(rng.lognormal(0.0, 0.5, size=31), seed=trial, resamples=400)
        hits += s.ci_low_s <= true_median <= s.ci_high_s
    assert hits >= 50  # nominal 95%; percentile bootstrap of a median is a bit liberal


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(1e-6, 10.0), min_size=1, max_size=60))
def test_order_invariants(xs):
    s = summarize(xs, resamples=200)
    assert s.min_s <= s.q1_s <= s.median_s <= s.q3_s <= s.max_s
    assert s.min_s <= s.ci_low_s <= s.ci_high_s <= s.max_s
    assert s.min_s <= s.mean_s * (1 + 1e-12) and s.mean_s <= s.max_s * (1 + 1e-12)
    assert s.spread >= 0 and s.noise in ("ok", "noisy", "unreliable")


def test_ratio_ci_detects_a_slowdown():
    rng = np.random.default_rng(3)
    base = rng.normal(1.0, 0.02, size=30)
    cur = rng.normal(1.2, 0.024, size=30)
    r = ratio_ci(base, cur)
    assert r.ratio == pytest.approx(np.median(cur) / np.median(base))
    assert 1.1 < r.low <= r.ratio <= r.high < 1.3
    ratio, low, high = r  # unpacks as a tuple
    assert (ratio, low, high) == tuple(r)


def test_ratio_ci_of_equal_distributions_contains_one():
    rng = np.random.default_rng(4)
    r = ratio_ci(rng.normal(1.0, 0.05, size=40), rng.normal(1.0, 0.05, size=40))
    assert r.low < 1.0 < r.high
    assert r.high - r.low < 0.1


def test_ratio_ci_rejects_bad_base():
    with pytest.raises(ValueError):
        ratio_ci([0.0, 0.0, 0.0], [1.0])
    with pytest.raises(ValueError):
        ratio_ci([], [1.0])


def test_stats_is_frozen():
    s = summarize([1.0, 2.0])
    with pytest.raises(AttributeError):
        s.median_s = 0.0
