"""The A/B gate: `attnbench check --against REF` measures a git revision and the current tree on
the same machine in the same job, so it needs no committed baseline and survives CPU-model and
torch changes between CI jobs.

One measurement path: both sides run THIS harness (the measurement worker, the sweep's stages,
guards and contention included: harness/measure/reference_ratios.py); they differ only in the
`implementations` package they import. REF is exported (git archive) into a temporary directory;
the base side's worker runs in a folder holding only a link `implementations -> <REF>/implementations`,
first on PYTHONPATH, then this harness's own root, so `harness` is this one. Plugins (entry points,
PYTHONPATH) load from the environment on both sides, so a plugin is compared, not reported new.
A base revision whose implementations do not import with this harness's registry cannot be
measured: BaseRevisionError (exit 2; .ci/run then falls back to the baseline gate).

Each shape is measured in alternating short blocks -- base, current, current, base, ... -- each
block the gate's usual interleaved rounds against the reference implementation in that process,
giving a per-block median ratio impl/reference. The A/B ratio of a block pair is
current ratio / base ratio: machine drift and load hit both sides of a pair alike. Pairs go on
while an implementation is undecided (harness/compare/sequential.py); the decision's interval is
judged by the one judge against 1.0 (no change), and suspected regressions are re-measured in
fresh processes and confirmed exactly as in the baseline gate (harness/compare/gate.py: judge,
with_confirmation). What each block runs besides its rounds (checks, guards, warm-up): BlockKind.
"""

from __future__ import annotations

import dataclasses
import statistics
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Sequence

from harness import vocab
from harness.case import Case
from harness.compare import gate, sequential
from harness.results.records import Measurement
from harness.results.store import ResultsError

ROUNDS_PER_BLOCK = 4  # interleaved rounds impl/reference inside one block (one block pair = one sample)


class BaseRevisionError(ResultsError):
    """The base revision cannot be measured (unknown to git, or its implementations do not import
    with this harness)."""


def export_revision(ref: str, repo: Path, dest: Path) -> str:
    """`git archive` REF of `repo` into dest; returns the commit. BaseRevisionError for a REF git
    does not know (a shallow clone has no parent commits)."""
    r = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise BaseRevisionError(f"--against {ref}: not a revision of {repo} (a shallow clone lacks history: "
                                f"fetch it, e.g. git fetch --unshallow)")
    sha = r.stdout.strip()
    tar = dest / "base.tar"
    subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", "-o", str(tar), sha], check=True)
    with tarfile.open(tar) as t:
        t.extractall(dest / "tree", filter="data")
    tar.unlink()
    return sha


def base_folder(tree: Path, dest: Path) -> Path:
    """A folder holding only `implementations` -> the base tree's package: first on the base
    worker's PYTHONPATH, so that package is the base's and everything else (harness) is ours."""
    pkg = tree / "implementations"
    if not (pkg / "__init__.py").is_file():
        raise BaseRevisionError(f"{tree.name}: has no implementations package: cannot be measured")
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "implementations").symlink_to(pkg.resolve(), target_is_directory=True)
    return dest


def _harness_root() -> str:
    import harness

    return str(Path(harness.__file__).resolve().parent.parent)


def _executor(base: Path | None, slowdown: str | None = None):
    """A local worker running this harness; with `base`, that folder's implementations first."""
    import os

    from harness.measure.slowdown import SLOWDOWN_ENV
    from harness.run.executor import LocalExecutor

    path = [_harness_root(), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    if base is not None:
        path.insert(0, str(base))
    env = {"PYTHONPATH": os.pathsep.join(path),
           SLOWDOWN_ENV: slowdown or ""}  # the testing hook applies to one side only
    return LocalExecutor(env_overrides=env, cwd=str(base) if base is not None else None)


def _catalogue(executor, base: Path, reply=None) -> set[str]:
    """The base worker's implementation names (from `reply`, its catalogue job's reply, when
    given); BaseRevisionError when its implementations do not import with this harness, or when
    the package it imported is not the base revision's."""
    from harness.run.executor import DONE, Job

    reply = reply or next(iter(executor.run([Job.for_catalogue()])))
    if reply.status != DONE:
        raise BaseRevisionError(f"the base revision's implementations do not import with this harness: cannot be "
                                f"measured ({reply.message[:300]})")
    want = (base / "implementations").resolve()
    got = [Path(p).resolve() for p in reply.answer.get("implementations") or []]
    if want not in got:
        raise BaseRevisionError(f"the base worker imported implementations from {got}, not {want}")
    return set(reply.answer.get("names") or ())


@dataclasses.dataclass(frozen=True)
class BlockKind:
    """What one block runs besides the timed rounds. The current side's first block of a shape
    runs the checked call and the guards (the sweep's stages); the base revision's first block
    only times (it was checked when it was the current side), unless the current side came out
    wrong: then one base block through the same stages says whether the base passed (`regressed
    (error)`) or not (plain `wrong`). Later blocks re-time the same callables in the same
    process, with the block sizes of that process's first block and no warm-up. A
    re-measurement's fresh processes time only (the first measurement checked both sides' calls)."""

    check: bool = False
    guards: bool = False
    warm_up: bool = True  # False: reuse `calls_per_block` from the side's first block

    @classmethod
    def first(cls, side: str, checked: bool) -> "BlockKind":
        return cls(check=checked and side == "cur", guards=checked and side == "cur")


LATER = BlockKind(warm_up=False)


def _block(executor, ref_case: Case, impls: list[str], reference: str, settings: gate.GateSettings,
           group: list[Case], kind: BlockKind, calls: dict[str, int] | None = None) -> dict[str, Measurement]:
    """One block on one side: impl -> record (see BlockKind for what runs besides the rounds)."""
    from harness.run.executor import Job

    req = gate.ratios_request(impls, reference, settings, rounds=ROUNDS_PER_BLOCK,
                              warmup_s=settings.warmup_s if kind.warm_up else 0.0, check=kind.check)
    req.update(guards=kind.guards)
    if not kind.warm_up:
        req.update(warmup_calls=1, calls_per_block=dict(calls or {}))
    reply = next(iter(executor.run([Job.for_ratios(ref_case, req, settings.timeout_s)])))
    return gate.records_of(reply, ref_case, [c for c in group if c.impl in impls])


def merge_blocks(blocks: Sequence[Measurement], contended: bool | None = None) -> Measurement:
    """One side's record of a case over its blocks: the first failing block's record, else the
    first block's (it ran the checked call) with every block's samples and ratios; contended if any
    block was, unless `contended` says otherwise (the A/B gate: no contended block pair was a sample)."""
    from harness import stats

    bad = next((m for m in blocks if m.status != vocab.OK), None)
    if bad is not None:
        return bad
    first = blocks[0]
    samples = tuple(x for m in blocks for x in m.samples_s)
    ratios = tuple(x for m in blocks for x in m.reference_ratios)
    metrics = dict(first.metrics)
    if ratios:
        mc = stats.median_ci(ratios)
        metrics.update(ratio_median=mc.median, ratio_ci_low=mc.low, ratio_ci_high=mc.high)
    busy = any(m.contended for m in blocks) if contended is None else contended
    reasons = [m.contention for m in blocks if m.contended and m.contention]
    why = (f"{reasons[0]}" + (f" ({len(reasons)} of {len(blocks)} blocks)" if len(blocks) > 1 else "")
           if busy and reasons else "")
    return dataclasses.replace(first, samples_s=samples, reference_ratios=ratios, metrics=metrics,
                               stats=stats.summarize(samples) if samples else first.stats,
                               contended=busy, contention=why)


def _pair_ratio(cur: Measurement, base: Measurement) -> float | None:
    """current block's median impl/reference ratio over the base block's (None: one was not timed)."""
    if cur.status != vocab.OK or base.status != vocab.OK or not cur.reference_ratios or not base.reference_ratios:
        return None
    return statistics.median(cur.reference_ratios) / statistics.median(base.reference_ratios)


def measure_ab(cases: Sequence[Case], reference: str, settings: gate.GateSettings, base: Path, threshold,
               plan: sequential.Plan = sequential.PLAN, current_slowdown: str | None = None,
               checked: bool = True) -> list[gate.Evidence]:
    """Per case: the current side's record, the base side's (None: not in the base revision) and
    the A/B ratios (current / base, one per clean block pair) with the sequential decision's
    interval, in fresh worker processes. Block pairs go on while an implementation of the shape is
    undecided (harness/compare/sequential.py: Track, which also says how a pair with a contended
    block counts); decided ones leave the blocks. A side is recorded contended only when the
    evidence judged holds such a pair (the judge then calls no regression or improvement).
    checked=False: a re-measurement, whose first blocks only time (BlockKind)."""
    out: list[gate.Evidence] = []
    with _executor(base) as base_ex, _executor(None, current_slowdown) as cur_ex:
        replies = _start_together(base_ex, cur_ex) or [None]
        in_base = _catalogue(base_ex, base, replies[0])
        sides = {"base": base_ex, "cur": cur_ex}
        for ref_case, group in gate.shapes_of(cases, reference):
            impls = [c.impl for c in group]
            both = [i for i in impls if i in in_base] if reference in in_base else []
            tracks = {i: sequential.Track(threshold, plan) for i in both}
            got: dict[str, dict[str, list[Measurement]]] = {"base": {}, "cur": {}}
            calls: dict[str, dict[str, int]] = {"base": {}, "cur": {}}  # block sizes of each side's first block
            stopped: set[str] = set()  # failed or not timed: its record says why
            for p in range(plan.max_pairs + plan.max_disturbed):
                open_ = [i for i in both if i not in stopped and not tracks[i].done]
                if p > 0 and not open_:
                    break
                names = {"base": both if p == 0 else open_, "cur": impls if p == 0 else open_}
                block = {}
                for side in ("base", "cur") if p % 2 == 0 else ("cur", "base"):
                    if not names[side]:
                        continue
                    kind = BlockKind.first(side, checked) if p == 0 else LATER
                    block[side] = _block(sides[side], ref_case, names[side], reference, settings, group, kind,
                                         calls[side])
                    for name, m in block[side].items():
                        got[side].setdefault(name, []).append(m)
                        if p == 0 and m.calls_per_block:
                            calls[side][name] = m.calls_per_block
                if p == 0 and checked:
                    _check_base_where_current_is_wrong(base_ex, ref_case, both, reference, settings, group, block,
                                                       got["base"])
                for i in (both if p == 0 else open_):
                    cur, bas = block["cur"][i], block["base"][i]
                    r = _pair_ratio(cur, bas)
                    if r is None:
                        stopped.add(i)
                    else:
                        tracks[i].add(r, disturbed=bool(cur.contended or bas.contended))
            out.append(gate.Evidence(merge_blocks(got["cur"][reference]), (), None))
            for c in group:
                if c.impl not in both:
                    out.append(gate.Evidence(merge_blocks(got["cur"][c.impl]), (), None))
                    continue
                track = tracks[c.impl]
                samples, interval, busy = track.evidence()
                cur = merge_blocks(got["cur"][c.impl], contended=None if busy else False)
                base_m = merge_blocks(got["base"][c.impl], contended=None if busy else False)
                if cur.status == vocab.OK:
                    cur = dataclasses.replace(cur, metrics={**cur.metrics, "ab_pairs": track.draws,
                                                            "ab_contended_pairs": track.disturbed_pairs})
                if base_m.status != vocab.OK:
                    out.append(gate.Evidence(cur, (), base_m))
                else:
                    out.append(gate.Evidence(cur, samples, base_m, stats=interval))
    return out


def _check_base_where_current_is_wrong(base_ex, ref_case: Case, both: list[str], reference: str,
                                       settings: gate.GateSettings, group: list[Case], block: dict,
                                       base_got: dict[str, list[Measurement]]) -> None:
    """The current side's first block found implementations wrong: one base block of them
    through the same stages (checked call, guards), first in their base records, so the judge can
    tell `regressed (error)` (the base passed) from plain `wrong` (wrong in both)."""
    wrong = [i for i in both if block["cur"][i].status == vocab.WRONG and block["base"][i].status == vocab.OK]
    if not wrong:
        return
    checked = _block(base_ex, ref_case, wrong, reference, settings, group, BlockKind(check=True, guards=True))
    for i in wrong:
        base_got[i].insert(0, checked[i])


def _start_together(*executors) -> list:
    """Start the workers side by side and have each import its implementations (a catalogue job):
    each spends seconds importing torch and the implementations, which need not add up, and none
    of it is timed. Returns the catalogue replies (None for a worker that failed to start here:
    its first job starts it again and records the failure)."""
    import threading

    from harness.run.executor import Job

    replies: list = [None] * len(executors)

    def start(i, ex):
        try:
            ex.worker.start()
            replies[i] = next(iter(ex.run([Job.for_catalogue()])))
        except RuntimeError:
            pass

    threads = [threading.Thread(target=start, args=(i, ex)) for i, ex in enumerate(executors)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return replies


def judge(ev: gate.Evidence, threshold, reference: str) -> gate.GateRow:
    """The gate's judge with the base side's ratio as baseline 1.0 (NEW when the base lacks it)."""
    if ev.base is None:
        return gate.judge(ev, None, threshold, reference, missing=vocab.NEW)
    passed = ev.base.error_passed if ev.base.status == vocab.OK else None  # wrong in both: plain `wrong`
    row = gate.judge(ev, 1.0, threshold, reference, base_error_passed=passed)
    if ev.base.status != vocab.OK and row.verdict == vocab.NOT_TIMED:
        return dataclasses.replace(row, message=f"base revision: {ev.base.status}: {ev.base.message}"[:300])
    return row


def run_ab_gate(cases: Sequence[Case], *, reference: str, threshold, settings: gate.GateSettings, ref: str,
                repo: Path, current_slowdown: str | None = None, measure=None) -> gate.GateOutcome:
    """Measure, judge against 1.0 (no change), re-measure suspects in fresh processes, confirm."""
    with tempfile.TemporaryDirectory(prefix="attnbench-ab-") as tmp:
        sha = export_revision(ref, repo, Path(tmp))
        folder = base_folder(Path(tmp) / "tree", Path(tmp) / "base")

        def measure_(cs, ref_name, st, plan, checked=True):
            return measure_ab(cs, ref_name, st, folder, threshold, plan, current_slowdown, checked=checked)

        measure = measure or measure_
        rows = [judge(ev, threshold, reference) for ev in measure(list(cases), reference, settings, sequential.PLAN)]
        rows = gate.with_confirmation(rows, threshold,
                                      lambda cs: measure(cs, reference, settings, sequential.PLAN, checked=False))
    warnings = [f"A/B against {ref} ({sha[:10]}): ratio = current / base of impl/{reference} ratios; 1.0 = no change",
                *gate.outcome_warnings(rows)]
    return gate.GateOutcome(rows=tuple(rows), threshold=threshold, reference=reference, device_key=f"A/B vs {ref}",
                            baseline_path=f"{ref} ({sha[:10]})", baseline_found=True, warnings=tuple(warnings))
