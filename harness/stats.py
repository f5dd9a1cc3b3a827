"""Derived statistics of raw timing samples: quantiles, spread, a bootstrap CI, a noise flag.

Spread is IQR / median (robust to the occasional outlier a shared machine produces). Thresholds
follow the measurement rules in DESIGN.md: ≥ 10% is noisy, ≥ 25% unreliable.
Confidence intervals are percentile bootstraps (of the median, or of the minimum for a ratio of
minimums) with a fixed seed, so the same samples always give the same interval. Every bootstrap of
attnbench lives here: summarize (one sample set, seconds), median_ci (one sample set, any unit:
the gate's ratios), ratio_ci (two sample sets: compare).

The distribution-free interval of a median (median_order_ci: two order statistics chosen from the
binomial distribution, no resampling, exact coverage >= the confidence for any continuous i.i.d.
samples) is what the sweep stops on (a relative half-width below `[budget] target_ci`) and what the
sequential A/B gate looks at (harness/compare/sequential.py).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Sequence

if TYPE_CHECKING:  # numpy is imported inside the functions: nothing heavy at import time
    import numpy as np

NOISY_SPREAD = 0.10
UNRELIABLE_SPREAD = 0.25
BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Stats:
    n: int
    median_s: float
    mean_s: float
    min_s: float
    max_s: float
    q1_s: float
    q3_s: float
    iqr_s: float
    spread: float  # IQR / median, dimensionless
    ci_low_s: float  # bootstrap CI of the median
    ci_high_s: float
    noise: str  # "ok" | "noisy" | "unreliable"

    @classmethod
    def from_dict(cls, d: dict) -> "Stats":
        """From a stored record; fields it lacks (older or hand-made records) are None."""
        return cls(**{f: d.get(f) for f in cls.__dataclass_fields__})


@dataclass(frozen=True)
class RatioStats:
    """Median and bootstrap 95% CI of ratio samples (harness.stats.median_ci), their IQR/median."""

    median: float
    ci_low: float
    ci_high: float
    spread: float  # IQR / median of the ratio samples
    n: int

    @classmethod
    def of(cls, ratios: Sequence[float]) -> "RatioStats | None":
        if not ratios:
            return None
        m = median_ci(ratios)
        return cls(m.median, m.low, m.high, spread(ratios), len(ratios))


class RatioCI(NamedTuple):
    ratio: float  # statistic(cur) / statistic(base)
    low: float
    high: float


class MedianCI(NamedTuple):
    median: float
    low: float
    high: float


class OrderCI(NamedTuple):
    """A distribution-free CI of the median: the order statistics x_(rank) and x_(n + 1 - rank)."""

    median: float
    low: float
    high: float
    rank: int  # 1-based rank of the lower bound
    confidence: float  # its exact (binomial) coverage, >= the confidence asked for

    @property
    def half_width(self) -> float:
        """(high - low) / 2 relative to the median (inf for a zero median)."""
        return _ratio(self.high - self.low, 2.0 * self.median)


STATISTICS = ("median", "min")  # what a bootstrap may resample


def _as_array(samples: Sequence[float], what: str) -> np.ndarray:
    import numpy as np

    x = np.asarray(list(samples), dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"{what}: need at least one sample, got {x.size}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what}: samples must be finite")
    return x


def spread(samples: Sequence[float]) -> float:
    """IQR / median; 0 for identical samples, inf when the median is 0 but the IQR is not."""
    import numpy as np

    x = _as_array(samples, "spread")
    q1, med, q3 = np.percentile(x, [25, 50, 75])
    return _ratio(float(q3 - q1), float(med))


def _ratio(iqr: float, median: float) -> float:
    if median == 0.0:
        return 0.0 if iqr == 0.0 else math.inf
    return iqr / abs(median)


def noise_level(spread_value: float) -> str:
    if spread_value >= UNRELIABLE_SPREAD:
        return "unreliable"
    if spread_value >= NOISY_SPREAD:
        return "noisy"
    return "ok"


def _bootstrap(x: np.ndarray, rng: np.random.Generator, resamples: int, statistic: str = "median") -> np.ndarray:
    """The statistic of `resamples` resamples (with replacement) of x."""
    import numpy as np

    if statistic not in STATISTICS:
        raise ValueError(f"statistic {statistic!r} is not allowed; allowed: {', '.join(STATISTICS)}")
    idx = rng.integers(0, x.size, size=(resamples, x.size))  # (R, n)
    return (np.median if statistic == "median" else np.min)(x[idx], axis=1)  # (R,)


def median_ci(samples: Sequence[float], *, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES,
              confidence: float = CONFIDENCE) -> MedianCI:
    """The median of samples in any unit (the gate's time ratios) with its percentile-bootstrap CI."""
    import numpy as np

    x = _as_array(samples, "median_ci")
    med = float(np.median(x))
    if x.size == 1:
        return MedianCI(med, med, med)
    meds = _bootstrap(x, np.random.default_rng(seed), resamples)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = (float(v) for v in np.quantile(meds, [alpha, 1.0 - alpha]))
    return MedianCI(med, lo, hi)


@functools.lru_cache(maxsize=4096)
def median_rank(n: int, alpha: float) -> tuple[int, float] | None:
    """(rank, coverage): the largest 1-based rank r with P(Bin(n, 1/2) <= r - 1) <= alpha / 2, so
    [x_(r), x_(n + 1 - r)] covers the median with probability coverage = 1 - 2 P(Bin <= r - 1)
    >= 1 - alpha; None when n is too small for that (2 / 2**n > alpha). Exact up to n = 600, a
    normal approximation beyond."""
    if n < 1 or not 0.0 < alpha < 1.0:
        return None
    if n > 600:
        from statistics import NormalDist

        z = NormalDist().inv_cdf(1.0 - alpha / 2.0)
        r = max(1, int(math.floor(n / 2.0 - z * math.sqrt(n) / 2.0)))
        return r, 1.0 - alpha
    from fractions import Fraction

    limit = Fraction(alpha) / 2 * (1 << n)  # compare integer counts: P(Bin <= k) * 2**n
    cum, rank = 0, 0
    for k in range(n // 2 + 1):
        cum += math.comb(n, k)
        if cum > limit:
            break
        rank = k + 1
    if rank == 0:
        return None
    tail = sum(math.comb(n, k) for k in range(rank))
    return rank, 1.0 - 2.0 * float(Fraction(tail, 1 << n))


def median_order_ci(samples: Sequence[float], confidence: float = CONFIDENCE) -> OrderCI | None:
    """The median with its distribution-free CI [x_(r), x_(n+1-r)] (median_rank); None when there
    are too few samples for that confidence (6 at 95%)."""
    x = sorted(float(v) for v in samples)
    got = median_rank(len(x), round(1.0 - confidence, 12))
    if got is None:
        return None
    r, coverage = got
    n = len(x)
    med = x[n // 2] if n % 2 else (x[n // 2 - 1] + x[n // 2]) / 2.0
    return OrderCI(med, x[r - 1], x[n - r], r, coverage)


class LogTCI(NamedTuple):
    """A t interval of the mean log ratio, back on the ratio scale."""

    center: float  # exp(mean log)
    low: float
    high: float


def _t_two_sided(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer df (the closed-form series; no scipy)."""
    theta = math.atan(t / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 0:
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        return s * total
    if df == 1:
        return 2.0 * theta / math.pi
    term, total = 1.0, 1.0
    for k in range(1, (df - 1) // 2):
        term *= c2 * (2 * k) / (2 * k + 1)
        total += term
    return 2.0 / math.pi * (theta + s * math.cos(theta) * total)


@functools.lru_cache(maxsize=1024)
def t_quantile(df: int, alpha: float) -> float:
    """The two-sided critical value: P(|T_df| < q) = 1 - alpha (bisection on the exact CDF)."""
    if df < 1 or not 0.0 < alpha < 1.0:
        raise ValueError(f"t_quantile: need df >= 1 and alpha in (0, 1), got {df}, {alpha}")
    lo, hi = 0.0, 1.0
    while _t_two_sided(hi, df) < 1.0 - alpha:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if _t_two_sided(mid, df) < 1.0 - alpha else (lo, mid)
        if hi - lo < 1e-12 * hi:
            break
    return hi


def log_t_ci(ratios: Sequence[float], alpha: float) -> LogTCI | None:
    """exp of the (1 - alpha) t interval of the mean of log(ratios); None for fewer than 2."""
    x = [math.log(r) for r in _as_array(ratios, "log_t_ci")]
    n = len(x)
    if n < 2:
        return None
    m = sum(x) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in x) / (n - 1))
    h = t_quantile(n - 1, alpha) * sd / math.sqrt(n)
    return LogTCI(math.exp(m), math.exp(m - h), math.exp(m + h))


def summarize(
    samples_s: Sequence[float],
    *,
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
) -> Stats:
    """Statistics of per-call times in seconds. Quantiles use linear interpolation (numpy's default)."""
    import numpy as np

    x = _as_array(samples_s, "summarize")
    q1, med, q3 = (float(v) for v in np.percentile(x, [25, 50, 75]))
    iqr = q3 - q1
    s = _ratio(iqr, med)
    _, lo, hi = median_ci(x, seed=seed, resamples=resamples, confidence=confidence)
    return Stats(
        n=int(x.size),
        median_s=med,
        mean_s=float(x.mean()),
        min_s=float(x.min()),
        max_s=float(x.max()),
        q1_s=q1,
        q3_s=q3,
        iqr_s=iqr,
        spread=s,
        ci_low_s=lo,
        ci_high_s=hi,
        noise=noise_level(s),
    )


def ratio_ci(
    base_samples: Sequence[float],
    cur_samples: Sequence[float],
    *,
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    statistic: str = "median",
) -> RatioCI:
    """statistic(cur) / statistic(base) -- the median, or the minimum -- with a percentile-bootstrap
    CI (both sides resampled independently). A ratio > 1 means `cur` is slower than `base`."""
    import numpy as np

    base = _as_array(base_samples, "ratio_ci base")
    cur = _as_array(cur_samples, "ratio_ci cur")
    stat = np.median if statistic == "median" else np.min
    if stat(base) <= 0.0:
        raise ValueError(f"ratio_ci: the base {statistic} must be positive")
    ratio = float(stat(cur) / stat(base))
    rng = np.random.default_rng(seed)
    base_stats = _bootstrap(base, rng, resamples, statistic)  # (R,)
    cur_stats = _bootstrap(cur, rng, resamples, statistic)  # (R,)
    with np.errstate(divide="ignore"):
        ratios = cur_stats / base_stats  # (R,)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = (float(v) for v in np.quantile(ratios, [alpha, 1.0 - alpha]))
    return RatioCI(ratio, lo, hi)
