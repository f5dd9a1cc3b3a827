"""Scaling exponents: fit y = c · N^a by least squares on (log N, log y).

Pure functions, no formatting. A straight line in log–log space is the usual way to read how an
attention kernel scales: naive attention holds (N × N) score matrices, so its memory grows like
N^2; tiled kernels (FlashAttention, Dao et al. 2022, §3) keep O(N) memory, and every exact
kernel does O(N^2) work, so latency tends to N^2 once N is large.

At small N a constant overhead (dispatch, allocation, Python) dominates and flattens the curve,
pulling a fit over every point below the asymptotic exponent. `fit_largest` therefore fits only
the largest sizes: the top half of the distinct N, and never fewer than 3 (all of them when there
are 3 or 4). That is the choice the report uses; it says which N range each fit covered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

MIN_FIT_SIZES = 3  # the report fits only when at least this many distinct N ran OK


@dataclass(frozen=True)
class Fit:
    exponent: float  # a in y = c · N^a
    coefficient: float  # c, in the units of y
    r2: float  # coefficient of determination of the log–log line; 1.0 = exact power law
    n_points: int
    n_min: float = math.nan  # smallest and largest N that took part
    n_max: float = math.nan

    def predict(self, n: float) -> float:
        return self.coefficient * n**self.exponent


def fit_power_law(ns: Sequence[float], ys: Sequence[float]) -> Fit | None:
    """Least-squares fit of log y = log c + a · log N.

    Returns None when there is nothing to fit: fewer than 2 points, or fewer than 2 distinct N.
    Raises ValueError for inputs that have no logarithm (N or y zero, negative, NaN or inf) or
    for sequences of different lengths — callers drop such points first, on purpose.
    """
    n = np.asarray(list(ns), dtype=np.float64)  # (P,)
    y = np.asarray(list(ys), dtype=np.float64)  # (P,)
    if n.shape != y.shape or n.ndim != 1:
        raise ValueError(f"fit_power_law: ns and ys must be 1-D and of equal length, got {n.shape} and {y.shape}")
    for name, arr in (("ns", n), ("ys", y)):
        bad = ~np.isfinite(arr) | (arr <= 0)
        if bad.any():
            raise ValueError(
                f"fit_power_law: {name} must be finite and > 0 for a log–log fit; "
                f"got {arr[bad][0]!r} at index {int(np.flatnonzero(bad)[0])}"
            )
    if n.size < 2 or np.unique(n).size < 2:
        return None
    x, z = np.log(n), np.log(y)  # (P,), (P,)
    a, b = np.polyfit(x, z, 1)
    resid = z - (a * x + b)  # (P,)
    ss_res = float(resid @ resid)
    ss_tot = float(((z - z.mean()) ** 2).sum())
    # A flat y (ss_tot = 0) is fitted exactly by slope 0: call that a perfect fit.
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res <= 1e-24 else 0.0)
    return Fit(float(a), float(math.exp(b)), float(r2), int(n.size), float(n.min()), float(n.max()))


def fit_largest(ns: Sequence[float], ys: Sequence[float], min_sizes: int = MIN_FIT_SIZES) -> Fit | None:
    """Fit over the largest sizes only: the top half of the distinct N, at least `min_sizes`.

    Points with a non-positive or non-finite N or y are dropped first (a failed or unmeasured
    case), then None is returned unless at least `min_sizes` distinct N remain.
    """
    pairs = [
        (float(n), float(y))
        for n, y in zip(ns, ys)
        if n is not None and y is not None and _positive(n) and _positive(y)
    ]
    sizes = sorted({n for n, _ in pairs})
    if len(sizes) < max(2, min_sizes):
        return None
    keep = max(min_sizes, math.ceil(len(sizes) / 2))
    cutoff = sizes[-keep]
    chosen = [(n, y) for n, y in pairs if n >= cutoff]
    return fit_power_law([n for n, _ in chosen], [y for _, y in chosen])


def _positive(v) -> bool:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return False
    return math.isfinite(f) and f > 0
