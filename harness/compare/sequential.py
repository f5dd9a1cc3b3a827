"""The sequential A/B decision: look at an implementation's ratio-of-ratios after a planned number
of block pairs, stop as soon as the interval decides, and keep the error rates at `alpha` over all
the looks.

Samples: one A/B ratio per clean block pair (the current block's median impl/reference ratio over
the base block's; harness/compare/ab.py). Each is a ratio of two medians of several interleaved
rounds, so its logarithm is close to normal, and pairs are independent units (whatever a block
shares -- its process, the load of its second -- stays inside the pair). The interval at a look is
the t interval of the mean log ratio (harness.stats.log_t_ci), back on the ratio scale.

Repeated looks: a Bonferroni split of alpha over a FIXED schedule of K looks (PLAN below) (Look.pairs,
Look.alpha; the alphas sum to `alpha`). By the union bound the chance that the interval misses the
true ratio at ANY look is at most that sum, whatever the dependence between looks, so a verdict the
one judge gives at the stopping look (harness/compare/verdict.py: regressed / improved = the
interval beyond the band, unchanged = inside it) is wrong with probability <= alpha / 2 in each
direction. Why not the alternatives: Pocock / O'Brien-Fleming boundaries spend alpha more
efficiently but rest on a normal model of the cumulative statistic with a known variance (ours is
estimated from 5-14 pairs); a distribution-free interval of the median (order statistics) or a
time-uniform confidence sequence needs 7-20 pairs before its first useful width, ~2x the wall time
(tried: 65 s for a clear pass against ~40 s for the fixed design). tests/test_sequential.py
checks the error rates by simulation, heavy-tailed noise included.

Decided: the judge's verdict of the interval is not inconclusive. When the last look is still
undecided the decision is final and inconclusive ("the round budget ended").

Disturbed pairs (a block of the pair contended: other processes took the CPU it asked for; the
judge never calls a regression or an improvement on such times) -- Track: every pair feeds the
`all` sequence, clean pairs also the `clean` one. The implementation stops when the clean sequence
decides (its verdict counts as undisturbed), when the all-pairs sequence says unchanged (a
disturbance does not make a change appear, so the judge keeps unchanged), or after half as many
disturbed pairs as the last look (a machine that stays busy: judged on all pairs, disturbed ->
inconclusive unless unchanged); so at most 14 + 7 pairs. Each sequence spends its own
alpha, so a wrong `unchanged` has probability <= alpha / 2 from either, <= alpha together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence as Seq

from harness.compare import verdict as judge_
from harness.stats import LogTCI, RatioStats, log_t_ci, spread


@dataclass(frozen=True)
class Look:
    pairs: int  # clean block pairs at this look
    alpha: float  # its share of the error rate


@dataclass(frozen=True)
class Plan:
    looks: tuple[Look, ...]

    def __post_init__(self):
        ns = [lk.pairs for lk in self.looks]
        if not ns or ns[0] < 2 or ns != sorted(set(ns)) or any(not 0 < lk.alpha < 1 for lk in self.looks):
            raise ValueError(f"a plan needs increasing look sizes >= 2 and alphas in (0, 1), got {self.looks}")

    @property
    def alpha(self) -> float:
        return sum(lk.alpha for lk in self.looks)

    @property
    def max_pairs(self) -> int:
        return self.looks[-1].pairs

    @property
    def max_disturbed(self) -> int:
        """Disturbed pairs after which an implementation stops (the machine stays busy)."""
        return max(1, self.max_pairs // 2)

    def look_at(self, n: int) -> Look | None:
        return next((lk for lk in self.looks if lk.pairs == n), None)


# alpha = 0.05 over four looks at 5, 7, 10 and 14 clean pairs, the largest share at the first look:
# most implementations of a change are clearly unchanged (or clearly slower) at the first look, and
# with few degrees of freedom the t quantile is steep in alpha (t_4 at 0.98 is 3.75, at 0.9875
# 4.32: a 13% narrower interval for the look that decides most), while the later looks, with more
# degrees of freedom, lose little (t_6 3.71 instead of 3.52). With blocks of 4 rounds
# (harness/compare/ab.py), five pairs cost 40 rounds against four pairs of 6-round blocks' 48, and
# decide more often: the t quantile falls faster with the pairs (3.75 / sqrt 5 against 4.54 / 2)
# than a block median's noise grows with fewer rounds (about sqrt(6 / 4)).
PLAN = Plan((Look(5, 0.02), Look(7, 0.01), Look(10, 0.01), Look(14, 0.01)))


@dataclass(frozen=True)
class Decision:
    interval: LogTCI
    verdict: str  # the judge's verdict of the interval (no disturbance considered)
    pairs: int  # samples it was taken on
    final: bool  # decided, or the last look

    def stats(self, ratios: Seq[float]) -> RatioStats:
        """The interval as the gate's RatioStats (what the judge and the report see)."""
        ci = self.interval
        return RatioStats(ci.center, ci.low, ci.high, spread(ratios[:self.pairs]), self.pairs)


def look(ratios: Seq[float], threshold, plan: Plan = PLAN) -> Decision | None:
    """The decision at a planned look (None when len(ratios) is not a look of the plan)."""
    lk = plan.look_at(len(ratios))
    if lk is None:
        return None
    ci = log_t_ci(ratios, lk.alpha)
    if ci is None:
        raise ValueError(f"look at {lk.pairs} pairs: too few for alpha {lk.alpha} (plan {plan})")
    verdict = judge_.judge(ci.low, ci.high, threshold).verdict
    return Decision(ci, verdict, len(ratios), judge_.decisive(verdict) or lk is plan.looks[-1])


class Sequence:
    """One implementation's stream of A/B ratios, looked at on the plan's schedule."""

    def __init__(self, threshold, plan: Plan = PLAN):
        self.threshold, self.plan = threshold, plan
        self.samples: list[float] = []
        self.decision: Decision | None = None  # at the last look taken

    @property
    def done(self) -> bool:
        return self.decision is not None and self.decision.final

    def add(self, ratio: float) -> Decision | None:
        """One more sample; the decision when this is a look."""
        if self.done:
            raise ValueError("this sequence has decided: it takes no more samples")
        self.samples.append(float(ratio))
        d = look(self.samples, self.threshold, self.plan)
        if d is not None:
            self.decision = d
        return d

    def stats(self) -> RatioStats | None:
        """The interval at the last look (None: fewer samples than the first look)."""
        return None if self.decision is None else self.decision.stats(self.samples)


class Track:
    """One implementation's A/B pairs, clean and disturbed (see the module's note)."""

    def __init__(self, threshold, plan: Plan = PLAN):
        self.plan = plan
        self.clean, self.all = Sequence(threshold, plan), Sequence(threshold, plan)
        self.draws = 0

    def add(self, ratio: float, disturbed: bool) -> None:
        if self.done:
            raise ValueError("this implementation has stopped: it takes no more pairs")
        self.draws += 1
        if not self.all.done:
            self.all.add(ratio)
        if not disturbed:
            self.clean.add(ratio)

    @property
    def disturbed_pairs(self) -> int:
        return self.draws - len(self.clean.samples)

    def _all_unchanged(self) -> bool:
        return self.all.decision is not None and self.all.decision.verdict == judge_.UNCHANGED

    @property
    def done(self) -> bool:
        return self.clean.done or self._all_unchanged() or self.disturbed_pairs >= self.plan.max_disturbed

    def evidence(self) -> tuple[tuple[float, ...], RatioStats | None, bool]:
        """(samples, interval, disturbed) to judge: the clean sequence's when it decided, the
        all-pairs one's when it says unchanged, else the clean one's last look, else the all-pairs
        one's; interval None when neither reached a look (too few pairs: the caller's fallback)."""
        c, a = self.clean, self.all
        busy = self.disturbed_pairs > 0
        if c.done:
            return tuple(c.samples[:c.decision.pairs]), c.stats(), False
        if self._all_unchanged() or (c.decision is None and a.decision is not None):
            return tuple(a.samples[:a.decision.pairs]), a.stats(), busy
        if c.decision is not None:
            return tuple(c.samples[:c.decision.pairs]), c.stats(), False
        return tuple(a.samples), None, busy
