"""The CI regression gate: ratios to a same-run reference, compared with a committed baseline.

Absolute times on shared CI machines drift 10-50% between runs; the ratio impl_time / ref_time of
interleaved short blocks drifts a few percent (DESIGN.md "Noise"). So for every case of the CI
scenario the gate measurement (harness/measure/shape_ratios.py, in a worker process) returns per-round ratio samples, and here:

    b = baseline median ratio,  t = threshold,  [lo, hi] = bootstrap 95% CI of the median ratio
    suspected     lo > b(1+t)            re-measured in a fresh process with twice the rounds:
                                         "regressed" if its median is again > b(1+t) and its CI
                                         excludes b (no change)
    leaning       lo <= b(1+t) < median  (too noisy to tell) re-measured the same way: "regressed"
                                         only if the re-measurement alone is a clear regression,
                                         its CI low > b(1+t)
    after a re-measurement that does not confirm: "inconclusive" if its median is still above
    b(1+t), else "not confirmed"; both pass (inconclusive with a warning)
    improved      hi < b/(1+t)
    inconclusive  the CI straddles b(1+t), median below  (passes, with a warning)
    unchanged     otherwise
Tuned with benchmarks/gate_reliability.py (false alarms and detections of a 25% slowdown under load).
A change to the reference implementation moves every ratio: re-baseline with --update-baseline.

Failures regardless of timing: error / wrong / oom / crashed / timeout (an accuracy check that
passed in the baseline and fails now is shown as "regressed (error)"). With no baseline for this
machine (device_key from harness.measure.machine.environment) the gate reports ratios and passes unless something failed.
Nothing here formats text; harness/cli/check.py renders a GateOutcome.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from harness import vocab
from harness.case import Case
from harness.compare.runs import Threshold
from harness.results.store import ResultsError
from harness.vocab import (  # verdicts; SUSPECTED and LEANING are never final
    IMPROVED, INCONCLUSIVE, LEANING, NEW, NO_BASELINE, NOT_CONFIRMED, NOT_TIMED, REFERENCE, REGRESSED,
    REGRESSED_ERROR, SKIPPED, SUSPECTED, UNCHANGED,
)

if TYPE_CHECKING:
    from harness.run.executor import Executor

BASELINE_SCHEMA = "attnbench-gate-baseline"
BASELINE_VERSION = 1
BASELINE_HISTORY = ("Schema history (readers reject unknown versions): "
                    "1 - 2026-11-23: per-case median of impl/reference per-round time ratios, their 95% CI "
                    "and IQR/median, accuracy; environment, device_key, reference and gate settings.")
BASELINE_DIR = Path("results") / "baselines"
DEFAULT_THRESHOLD = "12%"
FAIL_STATUSES = vocab.FAILED_STATUSES



@dataclass(frozen=True)
class GateSettings:
    """How each shape is timed. rounds x (one block per implementation + the reference)."""

    rounds: int = 60
    min_block_s: float = 0.004  # short blocks: neighbours' drift is shared by adjacent blocks
    warmup_s: float = 0.05
    timeout_s: float = 120.0  # per shape; the worker is killed and the shape recorded "timeout"
    seed: int = 0
    remeasure_rounds_factor: int = 2  # a suspect's re-measurement runs longer: a tighter CI to decide on
    baseline_repeats: int = 3  # --update-baseline pools this many fresh processes: its noise counts in every run


@dataclass(frozen=True)
class ImplResult:
    """One implementation on one shape, as the gate worker reported it."""

    case: Case
    status: str  # ok | skipped | error | wrong | oom | crashed | timeout
    message: str = ""
    ratios: tuple[float, ...] = ()  # per-round impl_time / ref_time; empty for the reference itself
    max_abs_error: float | None = None
    rel_l2_error: float | None = None
    error_passed: bool | None = None
    error_rule: str = ""


@dataclass(frozen=True)
class RatioStats:
    median: float
    ci_low: float
    ci_high: float
    spread: float  # IQR / median of the ratio samples
    n: int

    @classmethod
    def of(cls, ratios: Sequence[float]) -> "RatioStats | None":
        if not ratios:
            return None
        from harness.stats import summarize

        s = summarize(ratios)  # units are irrelevant: the *_s fields hold ratios here
        return cls(s.median_s, s.ci_low_s, s.ci_high_s, s.spread, s.n)


@dataclass(frozen=True)
class BaselineEntry:
    ratio_median: float
    ratio_ci_low: float
    ratio_ci_high: float
    ratio_spread: float
    n: int
    error_passed: bool | None = None
    max_abs_error: float | None = None


@dataclass(frozen=True)
class Baseline:
    path: str
    device_key: str
    reference: str
    entries: dict[str, BaselineEntry]  # by case_id
    environment: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    created_at: str = ""


@dataclass(frozen=True)
class GateRow:
    case: Case
    status: str
    verdict: str
    baseline_ratio: float | None = None
    current: RatioStats | None = None
    remeasured: RatioStats | None = None
    message: str = ""

    @property
    def failed(self) -> bool:
        return self.status in FAIL_STATUSES or self.verdict in (REGRESSED, REGRESSED_ERROR)


@dataclass(frozen=True)
class GateOutcome:
    rows: tuple[GateRow, ...]
    threshold: Threshold
    reference: str
    device_key: str
    baseline_path: str
    baseline_found: bool
    warnings: tuple[str, ...] = ()

    @property
    def failures(self) -> tuple[GateRow, ...]:
        return tuple(r for r in self.rows if r.failed)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            key = r.status if r.status in FAIL_STATUSES and r.verdict != REGRESSED_ERROR else r.verdict
            out[key] = out.get(key, 0) + 1
        return out


Measure = Callable[[list[Case], str, GateSettings], list[ImplResult]]


# ------------------------------------------------------------------------------------ cases


def gate_cases(scenario, reference: str) -> list[Case]:
    """The scenario's cases minus the reference's own (the worker adds it to every shape)."""
    return [c for c in scenario.cases() if c.impl != reference]


def gate_device_key(cases: Sequence[Case], environment: dict) -> str:
    """harness.results.environment.device_key for the scenario's device and thread count."""
    from harness.results.environment import device_key

    device = next((c.device for c in cases if c.device.startswith("cuda")), "cpu")
    threads = {c.threads for c in cases}  # one fixed count keys the file; otherwise torch's default
    fixed = threads.pop() if len(threads) == 1 and None not in threads else None
    return device_key(environment, device=device, threads=fixed)


def baseline_path_for(key: str, root: Path = BASELINE_DIR) -> Path:
    return Path(root) / (re.sub(r"[^A-Za-z0-9_.-]+", "-", key).strip("-") + ".json")


# ------------------------------------------------------------------------------------ judging


def judge(result: ImplResult, baseline: Baseline | None, threshold: Threshold, reference: str) -> GateRow:
    """First-pass verdict of one result; SUSPECTED rows still need confirmation."""
    base = baseline.entries.get(result.case.case_id) if baseline else None
    b = base.ratio_median if base else None
    stats = RatioStats.of(result.ratios)
    row = dict(case=result.case, status=result.status, baseline_ratio=b, current=stats, message=result.message)
    if result.status in FAIL_STATUSES:
        regressed_error = result.status == "wrong" and base is not None and base.error_passed is True
        return GateRow(verdict=REGRESSED_ERROR if regressed_error else result.status, **row)
    if result.status == "skipped":
        return GateRow(verdict=SKIPPED, **row)
    if result.case.impl == reference:
        return GateRow(verdict=REFERENCE, **row)
    if stats is None:
        return GateRow(verdict=NOT_TIMED, **row)
    if baseline is None:
        return GateRow(verdict=NO_BASELINE, **row)
    if base is None:
        return GateRow(verdict=NEW, **row)
    return GateRow(verdict=first_pass_verdict(stats, b, threshold), **row)


def first_pass_verdict(stats: RatioStats, baseline_ratio: float, threshold: Threshold) -> str:
    upper, lower = baseline_ratio * threshold.upper, baseline_ratio * threshold.lower
    if stats.ci_low > upper:
        return SUSPECTED
    if stats.median > upper:
        return LEANING
    if stats.ci_high < lower:
        return IMPROVED
    if stats.ci_high > upper:
        return INCONCLUSIVE
    return UNCHANGED


def confirm(row: GateRow, again: ImplResult, threshold: Threshold) -> GateRow:
    """A suspected regression after its re-measurement in a fresh process."""
    stats = RatioStats.of(again.ratios)
    if again.status in FAIL_STATUSES:
        return GateRow(row.case, again.status, again.status, row.baseline_ratio, row.current, stats,
                       f"re-measurement: {again.message}")
    if stats is None:
        return GateRow(row.case, row.status, INCONCLUSIVE, row.baseline_ratio, row.current, None,
                       f"re-measurement gave no ratios: {again.message}")
    upper = row.baseline_ratio * threshold.upper
    # A clear first measurement needs only a consistent second one; a noisy one needs a clear second.
    needed = row.baseline_ratio if row.verdict == SUSPECTED else upper
    if stats.median > upper and stats.ci_low > needed:
        verdict, msg = REGRESSED, ""
    elif stats.median > upper:
        verdict, msg = INCONCLUSIVE, "re-measurement above the threshold, but its CI is not clear of it"
    else:
        verdict, msg = NOT_CONFIRMED, "re-measurement within the threshold"
    return GateRow(row.case, row.status, verdict, row.baseline_ratio, row.current, stats, msg)


# ------------------------------------------------------------------------------------ running


def run_gate(cases: Sequence[Case], *, reference: str, threshold: Threshold, baseline: Baseline | None,
             device_key: str, baseline_path: str | Path, measure: Measure | None = None,
             settings: GateSettings = GateSettings()) -> GateOutcome:
    """Measure, judge, re-measure suspects in a fresh process, confirm. `measure` is injectable
    (tests); by default each call measures through a new local executor."""
    if baseline is not None and baseline.reference != reference:
        raise ResultsError(f"{baseline_path}: baseline ratios are against {baseline.reference!r}, not "
                           f"{reference!r}; use --reference {baseline.reference} or update the baseline")
    measure = measure or measure_in_subprocess
    results = measure(list(cases), reference, settings)
    rows = [judge(r, baseline, threshold, reference) for r in results]
    suspects = [r.case for r in rows if r.verdict in (SUSPECTED, LEANING)]
    if suspects:
        longer = dataclasses.replace(settings, rounds=settings.rounds * settings.remeasure_rounds_factor)
        again = {r.case.case_id: r for r in measure(suspects, reference, longer)}
        missing = ImplResult(suspects[0], "ok", "the re-measurement did not report this case")
        rows = [confirm(r, again.get(r.case.case_id, missing), threshold) if r.verdict in (SUSPECTED, LEANING)
                else r for r in rows]
    warnings = []
    if baseline is None:
        warnings.append(f"no baseline for {device_key}; run attnbench check --update-baseline")
    n_inc = sum(r.verdict == INCONCLUSIVE for r in rows)
    if n_inc:
        warnings.append(f"{n_inc} case(s) too noisy to judge (inconclusive); the gate passes them")
    return GateOutcome(rows=tuple(rows), threshold=threshold, reference=reference, device_key=device_key,
                       baseline_path=str(baseline_path), baseline_found=baseline is not None, warnings=tuple(warnings))


def measure_in_subprocess(cases: list[Case], reference: str, settings: GateSettings,
                          executor: "Executor | None" = None) -> list[ImplResult]:
    """Every shape through an executor (default: one local worker process, so torch imports
    once); a shape that kills or hangs its worker is recorded as crashed / timeout and the next
    shape gets a new process."""
    from harness.measure.shape_ratios import MALLOC_ENV
    from harness.run.executor import DONE, Job, LocalExecutor

    shapes: dict[str, list[Case]] = {}
    for c in cases:  # shape = every parameter but the implementation
        shapes.setdefault(c.replace(impl=reference, grid="").case_id, []).append(c)
    jobs = []
    for group in shapes.values():
        ref_case = group[0].replace(impl=reference)
        req = {"impls": [c.impl for c in group], "reference": reference, "seed": settings.seed,
               "rounds": settings.rounds, "min_block_s": settings.min_block_s, "warmup_s": settings.warmup_s}
        jobs.append((Job.for_shape(ref_case, req, settings.timeout_s), group))
    groups = {job.key: (job.case, group) for job, group in jobs}
    out: list[ImplResult] = []
    own = executor is None
    executor = executor or LocalExecutor(env_defaults=MALLOC_ENV)
    try:
        for reply in executor.run([job for job, _ in jobs]):
            ref_case, group = groups[reply.job.key]
            if reply.status != DONE:
                out += [ImplResult(c, reply.status, reply.message) for c in [ref_case, *group]]
                continue
            for c in [ref_case, *group]:
                r = reply.answer["results"].get(c.impl) or {"status": vocab.CRASHED, "message": "no answer for it"}
                out.append(ImplResult(
                    c, r["status"], r.get("message", ""), tuple(r.get("ratios") or ()), r.get("max_abs_error"),
                    r.get("rel_l2_error"), r.get("error_passed"), r.get("error_rule", "")))
    finally:
        if own:
            executor.close()
    return out


# ------------------------------------------------------------------------------------ baselines


def read_baseline(path: str | Path) -> Baseline:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ResultsError(f"{p}: no such baseline file") from None
    except (OSError, ValueError) as exc:  # ValueError: bad JSON, or not UTF-8
        raise ResultsError(f"{p}: not a readable JSON baseline ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != BASELINE_SCHEMA:
        raise ResultsError(f"{p}: not an attnbench gate baseline (schema {BASELINE_SCHEMA!r} expected)")
    if data.get("schema_version") != BASELINE_VERSION:
        raise ResultsError(f"{p}: baseline schema_version {data.get('schema_version')!r} is not supported; "
                           f"this attnbench reads version {BASELINE_VERSION} "
                           f"(re-run attnbench check --update-baseline)")
    try:
        entries = {cid: BaselineEntry(**e) for cid, e in data["cases"].items()}
        return Baseline(path=str(p), device_key=data["device_key"], reference=data["reference"], entries=entries,
                        environment=data.get("environment") or {}, settings=data.get("settings") or {},
                        created_at=data.get("created_at", ""))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ResultsError(f"{p}: malformed baseline ({type(exc).__name__}: {exc})") from None


def measure_for_baseline(cases: Sequence[Case], reference: str, settings: GateSettings,
                         measure: Measure | None = None) -> list[ImplResult]:
    """settings.baseline_repeats fresh measurements, ratios pooled per case; the first failure of
    a case wins (a case that failed once must not become a baseline)."""
    measure = measure or measure_in_subprocess
    pooled: dict[str, ImplResult] = {}
    for _ in range(max(1, settings.baseline_repeats)):
        for r in measure(list(cases), reference, settings):
            prev = pooled.get(r.case.case_id)
            if prev is None or (prev.status == "ok" and r.status != "ok"):
                pooled[r.case.case_id] = r
            elif prev.status == "ok":
                pooled[r.case.case_id] = dataclasses.replace(prev, ratios=prev.ratios + r.ratios)
    return list(pooled.values())


def make_baseline(results: Sequence[ImplResult], *, path: str | Path, device_key: str, reference: str,
                  environment: dict, settings: GateSettings) -> Baseline:
    entries = {}
    for r in results:
        stats = RatioStats.of(r.ratios)
        if r.status == "ok" and stats is not None:
            entries[r.case.case_id] = BaselineEntry(stats.median, stats.ci_low, stats.ci_high, stats.spread, stats.n,
                                                    r.error_passed, r.max_abs_error)
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return Baseline(path=str(path), device_key=device_key, reference=reference, entries=entries,
                    environment=dict(environment), settings=asdict(settings), created_at=created)


def write_baseline(b: Baseline) -> Path:
    """Versioned JSON, written atomically; sorted keys so a re-baseline diffs cleanly in review."""
    payload = {
        "_comment": "attnbench CI gate baseline, written by `attnbench check --update-baseline`. " + BASELINE_HISTORY,
        "schema": BASELINE_SCHEMA, "schema_version": BASELINE_VERSION, "created_at": b.created_at,
        "device_key": b.device_key, "reference": b.reference, "environment": b.environment,
        "settings": b.settings, "cases": {cid: asdict(e) for cid, e in sorted(b.entries.items())},
    }
    p = Path(b.path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, p)
    return p
