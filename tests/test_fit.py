"""Scaling-exponent fits: exact power laws, noise, constant overhead, degenerate inputs."""

import math

import numpy as np
import pytest

from harness.report.fit import Fit, fit_largest, fit_power_law

NS = [2**k for k in range(8, 15)]  # 256 .. 16384


@pytest.mark.parametrize("a,c", [(2.0, 3e-9), (1.0, 4096.0), (0.5, 1.0), (-1.0, 7.0), (0.0, 2.5)])
def test_exact_power_law(a, c):
    f = fit_power_law(NS, [c * n**a for n in NS])
    assert isinstance(f, Fit)
    assert f.exponent == pytest.approx(a, abs=1e-9)
    assert f.coefficient == pytest.approx(c, rel=1e-9)
    assert f.r2 == pytest.approx(1.0)
    assert (f.n_points, f.n_min, f.n_max) == (len(NS), 256, 16384)
    assert f.predict(1000) == pytest.approx(c * 1000**a, rel=1e-9)


def test_noisy_power_law_is_close_and_r2_below_one():
    rng = np.random.default_rng(0)
    ys = [2e-3 * n**1.5 * math.exp(rng.normal(0, 0.05)) for n in NS]
    f = fit_power_law(NS, ys)
    assert f.exponent == pytest.approx(1.5, abs=0.05)
    assert 0.98 < f.r2 < 1.0


def test_two_points_fit_exactly_and_repeated_sizes_are_allowed():
    assert fit_power_law([10, 100], [1, 100]).exponent == pytest.approx(2.0)
    f = fit_power_law([10, 10, 100, 100], [0.9, 1.1, 90, 110])
    assert f.exponent == pytest.approx(2.0, abs=0.01) and f.n_points == 4


@pytest.mark.parametrize("ns,ys", [([], []), ([128], [1.0]), ([64, 64, 64], [1.0, 2.0, 3.0])])
def test_too_little_to_fit_gives_none(ns, ys):
    assert fit_power_law(ns, ys) is None


@pytest.mark.parametrize(
    "ns,ys,match",
    [
        ([1, 2, 4], [1.0, 0.0, 4.0], "ys must be finite and > 0"),
        ([1, 2, 4], [1.0, -2.0, 4.0], "ys must be finite and > 0"),
        ([0, 2, 4], [1.0, 2.0, 4.0], "ns must be finite and > 0"),
        ([1, 2, 4], [1.0, float("nan"), 4.0], "ys must be finite"),
        ([1, 2, 4], [1.0, float("inf"), 4.0], "ys must be finite"),
        ([1, 2, 4], [1.0, 2.0], "equal length"),
    ],
)
def test_values_without_a_logarithm_raise(ns, ys, match):
    with pytest.raises(ValueError, match=match):
        fit_power_law(ns, ys)


def test_fit_largest_ignores_the_overhead_dominated_small_sizes():
    ns = [2**k for k in range(1, 11)]  # 2 .. 1024
    ys = [1e3 + n**2 for n in ns]  # a constant overhead hides N^2 at small N
    full = fit_power_law(ns, ys)
    top = fit_largest(ns, ys)
    assert full.exponent < 1.3  # the all-points fit is badly off
    assert top.n_points == 5 and top.n_min == 64 and top.n_max == 1024  # the top half
    assert top.exponent == pytest.approx(2.0, abs=0.1)
    assert top.exponent > full.exponent + 0.6


def test_fit_largest_uses_at_least_three_sizes_and_drops_bad_points():
    assert fit_largest([256, 512, 1024, 2048], [1.0, 4.0, 16.0, 64.0]).n_points == 3
    assert fit_largest([256, 512], [1.0, 4.0]) is None  # fewer than 3 sizes
    f = fit_largest([256, 512, 1024, 2048, 4096], [1.0, None, 16.0, 0.0, 256.0])  # failed cases
    assert f.n_points == 3 and f.exponent == pytest.approx(2.0)
    assert fit_largest([256, 512, 1024], [1.0, float("nan"), 16.0]) is None
