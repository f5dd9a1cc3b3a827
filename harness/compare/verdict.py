"""The one judge: a ratio's confidence interval and a threshold band -> a verdict.

`attnbench compare` (two runs), the baseline gate and the A/B gate all call `judge`; the two gates
also share `needs_remeasure` and `confirm` (what a re-measurement in a fresh process must show).
So the same interval gets the same verdict everywhere.

A ratio r = current / base (> 1 slower). With the band [1/(1+t), 1+t] (Threshold.lower, .upper),
symmetric on a log scale, and [low, high] the ratio's bootstrap CI:

    regressed     low  > upper
    improved      high < lower
    unchanged     lower <= low and high <= upper     (the whole CI inside the band)
    inconclusive  the CI straddles an edge of the band

- A disturbed side -- a CPU case that did not get the CPU it asked for (contended), a GPU whose
  clocks were throttled -- biases the times in a way the interval cannot see: a regressed or
  improved verdict becomes inconclusive, with a note naming the disturbance and the verdict it
  would have been. (unchanged stays: a disturbance did not make a change appear.)
- Noise is not a veto: a wide spread already widens the bootstrap interval, so an interval
  entirely beyond the band is a verdict. A noisy side only adds a note (and `noisy` is set).

Confirmation (the gates only; a compare of two stored runs cannot re-measure): a first verdict of
regressed, or an inconclusive interval whose median is above the band (the ratio leans towards a
regression but the interval does not settle it), is re-measured in a fresh process with more
samples. Then:
- the re-measurement is disturbed                    -> inconclusive
- it alone is a regression (judge() says regressed)  -> regressed
- the first was a clear regression, the re-measurement's median is above the band and its CI
  excludes no change (low > 1)                       -> regressed (consistent with a clear first)
- its median is still above the band                 -> inconclusive
- otherwise                                          -> not confirmed (passes)
Tuned with benchmarks/gate_reliability.py (0 false alarms under load, a 25% slowdown caught).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

from harness.vocab import IMPROVED, INCONCLUSIVE, NOT_CONFIRMED, REGRESSED, UNCHANGED


class Judgement(NamedTuple):
    verdict: str
    notes: tuple[str, ...] = ()
    noisy: bool = False


def judge(low: float, high: float, threshold, *, disturbed: Sequence[str] = (),
          noisy: Sequence[str] = ()) -> Judgement:
    """The verdict of a ratio CI [low, high] against the threshold band (any object with .upper
    and .lower, e.g. harness.compare.runs.Threshold). `disturbed`: why a side's times are biased
    (e.g. "current contended (...)"); `noisy`: why a side is noisy. Both are notes."""
    if low > threshold.upper:
        verdict = REGRESSED
    elif high < threshold.lower:
        verdict = IMPROVED
    elif low >= threshold.lower and high <= threshold.upper:
        verdict = UNCHANGED
    else:
        verdict = INCONCLUSIVE
    notes = [f"noisy: {'; '.join(noisy)} (the interval carries it)"] if noisy else []
    if disturbed and verdict in (REGRESSED, IMPROVED):
        notes.append(f"{'; '.join(disturbed)}: would be {verdict}")
        verdict = INCONCLUSIVE
    return Judgement(verdict, tuple(notes), bool(noisy))


def decisive(verdict: str) -> bool:
    """Whether a verdict settles the question (the sequential gate stops looking): regressed,
    improved or unchanged; inconclusive asks for more samples."""
    return verdict in (REGRESSED, IMPROVED, UNCHANGED)


def needs_remeasure(first: Judgement, median: float, threshold) -> bool:
    """A gate re-measures a regression, and an inconclusive ratio whose median is above the band."""
    return first.verdict == REGRESSED or (first.verdict == INCONCLUSIVE and median > threshold.upper)


def confirm(first: Judgement, median: float, low: float, high: float, threshold, *,
            disturbed: Sequence[str] = (), noisy: Sequence[str] = ()) -> Judgement:
    """The final verdict of a case whose first judgement needed a re-measurement; (median, low,
    high) is the re-measurement's ratio and CI (1.0 = no change)."""
    again = judge(low, high, threshold, disturbed=disturbed, noisy=noisy)
    noisy_all = first.noisy or again.noisy
    if disturbed:
        return Judgement(INCONCLUSIVE, (f"re-measurement {'; '.join(disturbed)}",), noisy_all)
    clear_first = first.verdict == REGRESSED
    if again.verdict == REGRESSED or (clear_first and median > threshold.upper and low > 1.0):
        return Judgement(REGRESSED, again.notes, noisy_all)
    if median > threshold.upper:
        return Judgement(INCONCLUSIVE, ("re-measurement above the threshold, but its CI is not clear of it",
                                        *again.notes), noisy_all)
    return Judgement(NOT_CONFIRMED, ("re-measurement within the threshold", *again.notes), noisy_all)
