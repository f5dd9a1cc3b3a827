"""The CI regression gate: ratios to a same-run reference, compared with a committed baseline.

Absolute times on shared CI machines drift 10-50% between runs; the ratio impl_time / ref_time of
interleaved short blocks drifts a few percent (DESIGN.md "Noise"). So every shape of the CI
scenario is measured through the sweep's stages (harness/measure/reference_ratios.py, in a worker
process: guards, memory fit and contention included), giving each implementation the sweep's
record (Measurement) with its per-round ratios to the reference (Measurement.reference_ratios).
Here each ratio's median and bootstrap CI, divided by the baseline's median ratio b (1.0 = no
change), is judged by the one judge (harness/compare/verdict.py, shared with `attnbench compare`
and the A/B gate): regressed / improved / unchanged / inconclusive; a contended measurement is
never regressed or improved; a noisy one is marked. A regression, and an inconclusive ratio whose
median is above the band, is re-measured in a fresh process with more rounds and decided by
verdict.confirm (with_confirmation below, shared with the A/B gate): "regressed" fails the job,
"inconclusive" and "not confirmed" pass (inconclusive with a warning).
Tuned with benchmarks/gate_reliability.py (false alarms and detections of a 25% slowdown under load).
A change to the reference implementation moves every ratio: re-baseline with --update-baseline.

Failures regardless of timing: error / wrong / oom / crashed / timeout / suspect, the guards'
failures included (an accuracy check that passed in the baseline and fails now is shown as
"regressed (error)"). With no baseline for this machine (device_key from
harness.results.environment) the gate reports ratios and passes unless something failed.
Nothing here formats text; harness/cli/check.py renders a GateOutcome.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from harness import vocab
from harness.case import Case
from harness.compare import verdict as judge_
from harness.compare.runs import Threshold, disturbances
from harness.compare.baseline import Baseline
from harness.results.records import Measurement
from harness.stats import RatioStats
from harness.results.store import ResultsError
from harness.vocab import (  # noqa: F401  (re-exported for harness/cli/check.py)
    IMPROVED, INCONCLUSIVE, NEW, NO_BASELINE, NOT_CONFIRMED, NOT_TIMED, REFERENCE, REGRESSED, REGRESSED_ERROR,
    SKIPPED, UNCHANGED,
)

if TYPE_CHECKING:
    from harness.run.executor import Executor

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
class Evidence:
    """What a gate judges for one case, whichever gate measured it: the current side's record,
    the ratio samples (baseline gate: the record's per-round ratios to the reference; A/B gate:
    per block pair, current ratio / base ratio) and, A/B only, the base side's record (None: the
    implementation is not in the base revision)."""

    record: Measurement
    samples: tuple[float, ...]
    base: Measurement | None = None
    stats: RatioStats | None = None  # the interval to judge (the sequential A/B gate's); None: of samples

    def ratio_stats(self) -> RatioStats | None:
        return self.stats if self.stats is not None else RatioStats.of(self.samples)

    @classmethod
    def of(cls, m: Measurement) -> "Evidence":
        return cls(m, tuple(m.reference_ratios))

    def disturbed(self) -> list[str]:
        out = disturbances("current", self.record)
        return out + (disturbances("base", self.base) if self.base is not None else [])


@dataclass(frozen=True)
class GateRow:
    case: Case
    status: str
    verdict: str
    baseline_ratio: float | None = None
    current: RatioStats | None = None
    remeasured: RatioStats | None = None
    message: str = ""
    notes: tuple[str, ...] = ()  # the judge's: noisy, contended, re-measurement
    noisy: bool = False
    contended: bool = False
    pending: bool = False  # judged, awaiting its re-measurement (never in a GateOutcome)

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


Measure = Callable[[list[Case], str, GateSettings], list[Measurement]]


# ------------------------------------------------------------------------------------ cases


def gate_cases(scenario, reference: str) -> list[Case]:
    """The scenario's cases minus the reference's own (the worker adds it to every shape)."""
    return [c for c in scenario.cases() if c.impl != reference]


def shapes_of(cases: Sequence[Case], reference: str) -> list[tuple[Case, list[Case]]]:
    """Cases grouped by shape (every parameter but the implementation): [(the reference's case of
    the shape, [its cases])], in first-seen order. Both gates measure a shape at a time."""
    shapes: dict[str, tuple[Case, list[Case]]] = {}
    for c in cases:
        ref_case = c.replace(impl=reference, grid="")
        shapes.setdefault(ref_case.case_id, (c.replace(impl=reference), []))[1].append(c)
    return list(shapes.values())


def gate_device_key(cases: Sequence[Case], environment: dict) -> str:
    """harness.results.environment.device_key for the scenario's device and thread count."""
    from harness.results.environment import device_key

    device = next((c.device for c in cases if c.device.startswith("cuda")), "cpu")
    threads = {c.threads for c in cases}  # one fixed count keys the file; otherwise torch's default
    fixed = threads.pop() if len(threads) == 1 and None not in threads else None
    return device_key(environment, device=device, threads=fixed)


# ------------------------------------------------------------------------------------ judging


def judge(ev: Evidence, baseline_ratio: float | None, threshold: Threshold, reference: str, *,
          base_error_passed: bool | None = None, missing: str = NEW) -> GateRow:
    """First-pass verdict of one case; `baseline_ratio` None gives the verdict `missing` (NEW: not
    in the baseline / the base revision; NO_BASELINE: no baseline at all). Rows whose judgement
    needs a re-measurement come back pending (with_confirmation)."""
    m = ev.record
    stats = ev.ratio_stats()
    row = dict(case=m.case, status=m.status, baseline_ratio=baseline_ratio, current=stats, message=m.message,
               contended=bool(m.contended or (ev.base is not None and ev.base.contended)))
    if m.status in FAIL_STATUSES:
        regressed_error = m.status == vocab.WRONG and base_error_passed is True
        return GateRow(verdict=REGRESSED_ERROR if regressed_error else m.status, **row)
    if m.status == vocab.SKIPPED:
        return GateRow(verdict=SKIPPED, **row)
    if m.case.impl == reference:
        return GateRow(verdict=REFERENCE, **row)
    if baseline_ratio is None:
        return GateRow(verdict=missing, **row)
    if stats is None:
        return GateRow(verdict=NOT_TIMED, **row)
    j = judge_.judge(stats.ci_low / baseline_ratio, stats.ci_high / baseline_ratio, threshold,
                     disturbed=ev.disturbed(), noisy=_noisy(stats))
    pending = judge_.needs_remeasure(j, stats.median / baseline_ratio, threshold)
    return GateRow(verdict=j.verdict, notes=j.notes, noisy=j.noisy, pending=pending, **row)


def _noisy(stats: RatioStats | None) -> list[str]:
    from harness.stats import UNRELIABLE_SPREAD

    if stats is None or stats.spread < UNRELIABLE_SPREAD:
        return []
    return [f"ratio IQR/median {stats.spread:.0%}"]


def confirm(row: GateRow, again: Evidence | None, threshold: Threshold) -> GateRow:
    """A pending row after its re-measurement in a fresh process (harness.compare.verdict.confirm)."""
    done = dict(pending=False)
    if again is None:
        return dataclasses.replace(row, verdict=INCONCLUSIVE, notes=(*row.notes, "the re-measurement did not "
                                                                                 "report this case"), **done)
    m = again.record
    stats = again.ratio_stats()
    if m.status in FAIL_STATUSES:
        return dataclasses.replace(row, status=m.status, verdict=m.status, remeasured=stats,
                                   message=f"re-measurement: {m.message}", **done)
    if stats is None:
        return dataclasses.replace(row, verdict=INCONCLUSIVE, remeasured=None,
                                   notes=(*row.notes, f"re-measurement gave no ratios: {m.message}"), **done)
    b = row.baseline_ratio
    first = judge_.Judgement(row.verdict, row.notes, row.noisy)
    j = judge_.confirm(first, stats.median / b, stats.ci_low / b, stats.ci_high / b, threshold,
                       disturbed=again.disturbed(), noisy=_noisy(stats))
    return dataclasses.replace(row, verdict=j.verdict, remeasured=stats, notes=(*row.notes, *j.notes),
                               noisy=j.noisy, contended=row.contended or bool(m.contended), **done)


def with_confirmation(rows: Sequence[GateRow], threshold: Threshold,
                      remeasure: Callable[[list[Case]], Sequence[Evidence]]) -> list[GateRow]:
    """Re-measure the pending rows (one call, fresh processes) and confirm each: the one place
    both gates confirm a suspected regression."""
    pending = [r.case for r in rows if r.pending]
    if not pending:
        return list(rows)
    again = {e.record.case.case_id: e for e in remeasure(pending)}
    return [confirm(r, again.get(r.case.case_id), threshold) if r.pending else r for r in rows]


def outcome_warnings(rows: Sequence[GateRow]) -> list[str]:
    out = []
    n_inc = sum(r.verdict == INCONCLUSIVE for r in rows)
    if n_inc:
        out.append(f"{n_inc} case(s) too noisy or disturbed to judge (inconclusive); the gate passes them")
    n_busy = sum(r.contended for r in rows)
    if n_busy:
        out.append(f"{n_busy} case(s) measured while other processes took the CPU they asked for (contended): "
                   f"no regression or improvement is called on them")
    return out


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
    entries = baseline.entries if baseline is not None else {}

    def judged(m: Measurement) -> GateRow:
        e = entries.get(m.case.case_id)
        return judge(Evidence.of(m), e.ratio_median if e else None, threshold, reference,
                     base_error_passed=e.error_passed if e else None, missing=NEW if baseline else NO_BASELINE)

    rows = [judged(m) for m in measure(list(cases), reference, settings)]
    longer = dataclasses.replace(settings, rounds=settings.rounds * settings.remeasure_rounds_factor)
    rows = with_confirmation(rows, threshold,
                             lambda cs: [Evidence.of(m) for m in measure(cs, reference, longer)])
    warnings = []
    if baseline is None:
        warnings.append(f"no baseline for {device_key}; run attnbench check --update-baseline")
    warnings += outcome_warnings(rows)
    return GateOutcome(rows=tuple(rows), threshold=threshold, reference=reference, device_key=device_key,
                       baseline_path=str(baseline_path), baseline_found=baseline is not None, warnings=tuple(warnings))


def ratios_request(impls: Sequence[str], reference: str, settings: GateSettings, *, rounds: int | None = None,
                   warmup_s: float | None = None, check: bool = True) -> dict:
    """The worker request of one shape (harness.measure.reference_ratios), less its case."""
    return {"impls": list(impls), "reference": reference, "seed": settings.seed,
            "rounds": settings.rounds if rounds is None else rounds, "min_block_s": settings.min_block_s,
            "warmup_s": settings.warmup_s if warmup_s is None else warmup_s, "check": check}


def records_of(reply, ref_case: Case, group: Sequence[Case]) -> dict[str, Measurement]:
    """impl -> record of one shape's reply; a reply that is not done (crash, timeout) is every
    implementation's record, an implementation missing from the answer is crashed."""
    from harness.run.executor import DONE

    cases = [ref_case, *group]
    if reply.status != DONE:
        return {c.impl: Measurement(c, reply.status, reply.message) for c in cases}
    got = {}
    for d in (reply.answer or {}).get("measurements") or []:
        m = Measurement.from_dict(d)
        got[m.case.impl] = m
    return {c.impl: got.get(c.impl) or Measurement(c, vocab.CRASHED, "no answer for it") for c in cases}


def measure_in_subprocess(cases: list[Case], reference: str, settings: GateSettings,
                          executor: "Executor | None" = None) -> list[Measurement]:
    """Every shape through an executor (default: one local worker process, so torch imports
    once); a shape that kills or hangs its worker is recorded as crashed / timeout and the next
    shape gets a new process. The reference's record of each shape comes first."""
    from harness.run.executor import Job, LocalExecutor

    groups = shapes_of(cases, reference)
    jobs = {}
    for ref_case, group in groups:
        job = Job.for_ratios(ref_case, ratios_request([c.impl for c in group], reference, settings),
                             settings.timeout_s)
        jobs[job.key] = (job, ref_case, group)
    out: list[Measurement] = []
    own = executor is None
    executor = executor or LocalExecutor()
    try:
        for reply in executor.run([job for job, _, _ in jobs.values()]):
            _, ref_case, group = jobs[reply.job.key]
            out += records_of(reply, ref_case, group).values()
    finally:
        if own:
            executor.close()
    return out


# ------------------------------------------------------------------------------------ baselines


def measure_for_baseline(cases: Sequence[Case], reference: str, settings: GateSettings,
                         measure: Measure | None = None) -> list[Measurement]:
    """settings.baseline_repeats fresh measurements, ratios pooled per case; the first failure of
    a case wins (a case that failed once must not become a baseline); contended if any was."""
    measure = measure or measure_in_subprocess
    pooled: dict[str, Measurement] = {}
    for _ in range(max(1, settings.baseline_repeats)):
        for r in measure(list(cases), reference, settings):
            prev = pooled.get(r.case.case_id)
            if prev is None or (prev.status == "ok" and r.status != "ok"):
                pooled[r.case.case_id] = r
            elif prev.status == "ok":
                pooled[r.case.case_id] = dataclasses.replace(
                    prev, reference_ratios=prev.reference_ratios + r.reference_ratios,
                    contended=prev.contended or r.contended, contention=prev.contention or r.contention)
    return list(pooled.values())
