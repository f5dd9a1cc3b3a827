"""Two runs -> one verdict per case -> an exit code. Pure computation: nothing here formats text
(harness/cli/compare.py renders tables, Markdown and JSON from these dataclasses).

Cases are matched by case_id (every parameter, the implementation included). For a case measured
in both runs the timing verdict comes from a bootstrap CI of the ratio current/base of the chosen
metric, computed from the raw samples (harness.stats.ratio_ci), judged by the one judge
(harness.compare.verdict.judge, shared with the gate):

    regressed     CI low  > 1 + t
    improved      CI high < 1 / (1 + t)     (symmetric on a log scale: +10% and its inverse)
    unchanged     the whole CI inside [1 / (1 + t), 1 + t]
    inconclusive  the CI straddles a bound, or there are too few samples to resample, or a
                  regression/improvement was measured while either side was contended or
                  throttled (a bias the interval cannot see)
A noisy side (IQR/median >= 25%, DESIGN.md "Noise") is no veto: its noise is already in the
bootstrap interval, so the verdict stands, marked noisy.

Before timing: a status change (ok -> crashed / wrong / ...) is its own verdict, and a regression
when a case that was ok now fails; an accuracy check that passed and now fails is
"regressed (error)". After timing: peak memory above the inputs that grew by more than the
threshold (and by more than the metric's floor) is "regressed (memory)". The checks and growth
metrics come from the metrics table (harness/results/metrics.py: judge = "pass" / "growth").
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from harness.case import Case
from harness.results.environment import malloc_settings
from harness.results.metrics import LOWER, judged
from harness.compare.verdict import judge
from harness.results.records import Measurement, last_by_case
from harness.results.store import (RESULTS_FILE, ResultsError, duplicate_case_ids, duplicates_note,
                                   read_measurements, read_run_info)
from harness.vocab import (
    COMPARE_VERDICTS, FAILED_STATUSES, IMPROVED, INCONCLUSIVE, MISSING, NEW, REGRESSED, REGRESSION_VERDICTS, STATUS_CHANGED, UNCHANGED,
)

VERDICTS = COMPARE_VERDICTS

METRICS = {"median": "median_s", "min": "min_s"}
MIN_SAMPLES = 3  # fewer raw samples than this on either side: no CI, the verdict is inconclusive
UNRELIABLE = "unreliable"

_THRESHOLD_RE = re.compile(r"^\s*(?:(?P<metric>[A-Za-z_]+)\s*:)?"  # optional "median:" / "min:"
                           r"\s*(?P<num>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?P<pct>%)?\s*$")


@dataclass(frozen=True)
class Threshold:
    """How much slower counts as a regression, and on which statistic.

    Parsed from pytest-benchmark-style strings: "10%", "0.1" (a bare number is a fraction),
    "median:10%", "min:5%". The band of "no change" is [1 / (1 + fraction), 1 + fraction].
    """

    fraction: float = 0.10
    metric: str = "median"

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"threshold metric {self.metric!r} is not allowed; allowed: {', '.join(METRICS)}")
        if not (0.0 < self.fraction <= 10.0):
            raise ValueError(f"threshold {self.fraction!r} is not allowed; allowed: a fraction in (0, 10]")

    @classmethod
    def parse(cls, text: str, default_metric: str = "median") -> "Threshold":
        allowed = "e.g. '10%', '0.1', 'median:10%' or 'min:5%'"
        m = _THRESHOLD_RE.match(str(text))
        if not m:
            raise ValueError(f"threshold {text!r} is not understood; allowed: {allowed}")
        metric = (m.group("metric") or default_metric).lower()
        if metric not in METRICS:
            raise ValueError(f"threshold {text!r}: metric {metric!r} is not allowed; allowed: "
                             f"{', '.join(METRICS)} ({allowed})")
        num = float(m.group("num"))
        if m.group("pct"):
            fraction = num / 100.0
        elif num >= 1.0:  # "10" could mean 10% or 1000%: refuse to guess
            raise ValueError(f"threshold {text!r} is ambiguous: a bare number is a fraction in (0, 1); "
                             f"write '{num:g}%' for a percentage")
        else:
            fraction = num
        if not (0.0 < fraction <= 10.0):
            raise ValueError(f"threshold {text!r} is not allowed; allowed: more than 0% and at most 1000%")
        return cls(fraction=fraction, metric=metric)

    @property
    def upper(self) -> float:
        return 1.0 + self.fraction

    @property
    def lower(self) -> float:
        return 1.0 / (1.0 + self.fraction)

    @property
    def stat_key(self) -> str:
        return METRICS[self.metric]

    def __str__(self) -> str:
        return f"{self.metric}:{self.fraction * 100:g}%"


@dataclass(frozen=True)
class CaseComparison:
    case_id: str
    case: Case
    verdict: str
    base_status: str | None = None  # None: the case is not in that run
    current_status: str | None = None
    base_value_s: float | None = None  # the threshold's metric (median_s or min_s)
    current_value_s: float | None = None
    ratio: float | None = None  # current / base; > 1 is slower
    ci_low: float | None = None
    ci_high: float | None = None
    base_peak_bytes: int | None = None
    current_peak_bytes: int | None = None
    base_error_passed: bool | None = None
    current_error_passed: bool | None = None
    notes: tuple[str, ...] = ()
    noisy: bool = False  # a side's spread was unreliable (the verdict stands: the CI carries it)

    @property
    def memory_ratio(self) -> float | None:
        if self.base_peak_bytes and self.current_peak_bytes is not None:
            return self.current_peak_bytes / self.base_peak_bytes
        return None

    @property
    def is_regression(self) -> bool:
        if self.verdict == STATUS_CHANGED:
            return self.base_status == "ok" and self.current_status in FAILED_STATUSES
        return self.verdict in REGRESSION_VERDICTS


@dataclass(frozen=True)
class Comparison:
    base_label: str
    current_label: str
    threshold: Threshold
    cases: tuple[CaseComparison, ...]
    warnings: tuple[str, ...] = ()
    base_environment: dict = field(default_factory=dict)
    current_environment: dict = field(default_factory=dict)

    @property
    def regressions(self) -> tuple[CaseComparison, ...]:
        return tuple(c for c in self.cases if c.is_regression)

    @property
    def exit_code(self) -> int:
        """0: no regression, 1: at least one (the CLI maps usage errors to 2)."""
        return 1 if self.regressions else 0

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.cases:
            out[c.verdict] = out.get(c.verdict, 0) + 1
        return out


# ------------------------------------------------------------------------------------ one case


def bootstrap_ratio(base: Sequence[float], cur: Sequence[float], metric: str, *, seed: int = 0,
                    resamples: int = 1000, confidence: float = 0.95) -> tuple[float, float, float]:
    """(ratio, low, high) of metric(cur) / metric(base) with a percentile-bootstrap CI."""
    from harness.stats import ratio_ci

    r = ratio_ci(base, cur, seed=seed, resamples=resamples, confidence=confidence, statistic=metric)
    return float(r.ratio), float(r.low), float(r.high)


def disturbances(side: str, m: Measurement) -> list[str]:
    """Why a side's times are biased in a way its interval cannot show: contended CPU, throttled GPU."""
    out = []
    if m.contended:
        out.append(f"{side} contended (did not get the CPU it asked for{': ' + m.contention if m.contention else ''})")
    if (m.metrics or {}).get("throttled"):
        out.append(f"{side} throttled (GPU clocks or power)")
    return out


def _value(m: Measurement, threshold: Threshold) -> float | None:
    v = getattr(m.stats, threshold.stat_key, None)
    if v is None and m.samples_s:
        v = float(np.median(m.samples_s)) if threshold.metric == "median" else float(min(m.samples_s))
    return None if v is None else float(v)


def compare_case(base: Measurement | None, cur: Measurement | None, threshold: Threshold) -> CaseComparison:
    """The verdict for one case_id present in at least one of the runs."""
    some = cur if cur is not None else base
    assert some is not None, "compare_case needs at least one measurement"
    common = dict(case_id=some.case.case_id, case=some.case)
    if base is None:
        return CaseComparison(verdict=NEW, current_status=cur.status, current_value_s=_value(cur, threshold),
                              current_peak_bytes=cur.peak_bytes, current_error_passed=cur.error_passed,
                              **common)
    if cur is None:
        return CaseComparison(verdict=MISSING, base_status=base.status, base_value_s=_value(base, threshold),
                              base_peak_bytes=base.peak_bytes, base_error_passed=base.error_passed, **common)
    fields = dict(
        base_status=base.status, current_status=cur.status,
        base_value_s=_value(base, threshold), current_value_s=_value(cur, threshold),
        base_peak_bytes=base.peak_bytes, current_peak_bytes=cur.peak_bytes,
        base_error_passed=base.error_passed, current_error_passed=cur.error_passed,
        **common,
    )
    notes: list[str] = []
    if base.status != cur.status:
        why = f": {cur.message}" if cur.message else ""
        return CaseComparison(verdict=STATUS_CHANGED, notes=(f"{base.status} -> {cur.status}{why}",), **fields)
    if cur.status != "ok":
        return CaseComparison(verdict=UNCHANGED, notes=(f"{cur.status} in both runs",), **fields)
    for m in judged("pass"):  # a check that passed before and fails now
        if m.value(base) is True and m.value(cur) is False:
            return CaseComparison(verdict=m.verdict, notes=(f"{m.title}: now fails ({cur.error_rule})",), **fields)

    # timing
    ratio = low = high = None
    if fields["base_value_s"] and fields["current_value_s"] is not None:
        ratio = fields["current_value_s"] / fields["base_value_s"]
    noisy = False
    if len(base.samples_s) >= MIN_SAMPLES and len(cur.samples_s) >= MIN_SAMPLES:
        ratio, low, high = bootstrap_ratio(base.samples_s, cur.samples_s, threshold.metric)
        flagged = [f"{side} IQR/median {m.stats.spread:.0%}" if m.stats and m.stats.spread is not None
                   else f"{side} unreliable" for side, m in (("base", base), ("current", cur))
                   if m.noise == UNRELIABLE]
        disturbed = disturbances("base", base) + disturbances("current", cur)
        verdict, judged_notes, noisy = judge(low, high, threshold, disturbed=disturbed, noisy=flagged)
        notes += judged_notes
    else:
        verdict = INCONCLUSIVE
        notes.append(f"fewer than {MIN_SAMPLES} raw samples on a side: no confidence interval")

    # memory and other "growth" metrics: deterministic enough that the threshold alone decides,
    # above each metric's absolute floor.
    for m in judged("growth"):
        b, c = m.value(base), m.value(cur)
        if b is None or c is None:
            continue
        worse = (c - b) if m.better == LOWER else (b - c)
        if worse > max(threshold.fraction * abs(b), m.floor):
            if verdict == REGRESSED:
                notes.append(f"{m.title} also regressed")
            else:
                if verdict != UNCHANGED:
                    notes.append(f"timing: {verdict}")
                verdict = m.verdict
    return CaseComparison(verdict=verdict, ratio=ratio, ci_low=low, ci_high=high, notes=tuple(notes), noisy=noisy,
                          **fields)


# ------------------------------------------------------------------------------------ two runs


def _same_device(cc: CaseComparison, base, cur, base_env, cur_env) -> CaseComparison:
    """A case measured on two different device models is never judged on its timing: the
    verdict becomes inconclusive and the note names both models."""
    from harness.results.devices import UNKNOWN, device_model_of

    if base is None or cur is None:
        return cc
    a, b = device_model_of(base, base_env), device_model_of(cur, cur_env)
    if a == b or UNKNOWN in (a, b):
        return cc
    note = f"measured on different devices: {a} -> {b}"
    verdict = INCONCLUSIVE if cc.verdict in (REGRESSED, IMPROVED, UNCHANGED) else cc.verdict
    return dataclasses.replace(cc, verdict=verdict, notes=(*cc.notes, note))


def compare_measurements(base: Sequence[Measurement], current: Sequence[Measurement], threshold: Threshold,
                         *, base_label: str = "base", current_label: str = "current",
                         base_environment: dict | None = None, current_environment: dict | None = None,
                         ) -> Comparison:
    b, c = last_by_case(base), last_by_case(current)
    ids = list(b) + [i for i in c if i not in b]  # base order first, then new cases
    cases = tuple(_same_device(compare_case(b.get(i), c.get(i), threshold), b.get(i), c.get(i),
                               base_environment, current_environment) for i in ids)
    warnings = tuple(_environment_warnings(base_environment or {}, current_environment or {}))
    return Comparison(base_label=base_label, current_label=current_label, threshold=threshold, cases=cases,
                      warnings=warnings, base_environment=dict(base_environment or {}),
                      current_environment=dict(current_environment or {}))


def compare_runs(base_dir: str | Path, current_dir: str | Path, threshold: Threshold) -> Comparison:
    """Read two run directories (ResultsError names the file if one is unusable) and compare them.
    A side without any record is an error (nothing to judge must never pass a gate)."""
    base_info, cur_info = read_run_info(base_dir), read_run_info(current_dir)
    base_ms, cur_ms = read_measurements(base_dir), read_measurements(current_dir)
    for side, d, ms in (("BASE", base_dir, base_ms), ("CURRENT", current_dir, cur_ms)):
        if not ms:
            raise ResultsError(f"{Path(d) / RESULTS_FILE}: {side} run has no case records; nothing to compare")
    env = (base_info.get("environment"), cur_info.get("environment"))
    c = compare_measurements(
        base_ms, cur_ms, threshold,
        base_label=str(base_info.get("run_id") or base_dir), current_label=str(cur_info.get("run_id") or current_dir),
        base_environment=env[0] if isinstance(env[0], dict) else {},
        current_environment=env[1] if isinstance(env[1], dict) else {},
    )
    extra = _input_warnings(base_dir, current_dir, base_info, cur_info, base_ms, cur_ms, c)
    return dataclasses.replace(c, warnings=tuple(extra) + c.warnings) if extra else c


def _input_warnings(base_dir, current_dir, base_info: dict, cur_info: dict, base_ms, cur_ms,
                    c: Comparison) -> list[str]:
    """What makes a comparison of these two runs doubtful: different scenarios, no case in
    common, a results file with duplicate records (the last of each is used)."""
    out = []

    def scenario_name(info):
        s = info.get("scenario")
        return s.get("name") if isinstance(s, dict) else None

    b, k = scenario_name(base_info), scenario_name(cur_info)
    if b != k:
        out.append(f"the runs are of different scenarios ({b!r} -> {k!r}): only cases with equal "
                   f"parameters are compared")
    if not any(cc.verdict not in (NEW, MISSING) for cc in c.cases):
        out.append(f"no case is in both runs ({len(base_ms)} missing, {len(cur_ms)} new): nothing "
                   f"was compared")
    for d, ms in ((base_dir, base_ms), (current_dir, cur_ms)):
        dups = duplicate_case_ids(ms)
        if dups:
            out.append(duplicates_note(d, dups))
    return out


# What harness.env.collect_environment records that changes absolute times.
_ENV_KEYS = ("cpu_model", "cpu_family_model", "cpu_capability", "torch_threads", "torch_version",
             "torch_cuda_version", "python_version")


def _gpu_names(env: dict) -> list:
    return [g.get("name") for g in env.get("gpus") or [] if isinstance(g, dict)]


def _environment_warnings(base: dict, cur: dict) -> list[str]:
    """Absolute times from different machines or software are not comparable: say so."""
    out = []
    for key in _ENV_KEYS:
        if key in base and key in cur and base[key] != cur[key]:
            out.append(f"environment differs: {key} {base[key]!r} -> {cur[key]!r}")
    if _gpu_names(base) != _gpu_names(cur) and (_gpu_names(base) or _gpu_names(cur)):
        out.append(f"environment differs: GPUs {_gpu_names(base)!r} -> {_gpu_names(cur)!r}")
    if base and cur and base.get("malloc_env") != cur.get("malloc_env"):
        out.append(f"environment differs: malloc_env {malloc_settings(base)} -> {malloc_settings(cur)} (calls that allocate "
                   f"large temporaries pay page faults under glibc's defaults, and where they land depends on the "
                   f"process's history without THP_MEM_ALLOC_ENABLE=1: harness/measure/machine/allocator.py)")
    return out
