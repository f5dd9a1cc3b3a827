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
current ratio / base ratio: machine drift and load hit both sides of a pair alike. Its median and
bootstrap CI are judged by the one judge against 1.0 (no change), and suspected regressions are
re-measured in fresh processes and confirmed exactly as in the baseline gate
(harness/compare/gate.py: judge, with_confirmation).
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
from harness.compare import gate
from harness.results.records import Measurement
from harness.results.store import ResultsError

BLOCK_PAIRS = 6  # A/B block pairs per shape (re-measurement: twice as many)
ROUNDS_PER_BLOCK = 10  # interleaved rounds impl/reference inside one block


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

    from harness.measure.reference_ratios import MALLOC_ENV
    from harness.measure.slowdown import SLOWDOWN_ENV
    from harness.run.executor import LocalExecutor

    path = [_harness_root(), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    if base is not None:
        path.insert(0, str(base))
    env = {"PYTHONPATH": os.pathsep.join(path),
           SLOWDOWN_ENV: slowdown or ""}  # the testing hook applies to one side only
    return LocalExecutor(env_defaults=MALLOC_ENV, env_overrides=env, cwd=str(base) if base is not None else None)


def _catalogue(executor, base: Path) -> set[str]:
    """The base worker's implementation names; BaseRevisionError when its implementations do not
    import with this harness, or when the package it imported is not the base revision's."""
    from harness.run.executor import DONE, Job

    reply = next(iter(executor.run([Job.for_catalogue()])))
    if reply.status != DONE:
        raise BaseRevisionError(f"the base revision's implementations do not import with this harness: cannot be "
                                f"measured ({reply.message[:300]})")
    want = (base / "implementations").resolve()
    got = [Path(p).resolve() for p in reply.answer.get("implementations") or []]
    if want not in got:
        raise BaseRevisionError(f"the base worker imported implementations from {got}, not {want}")
    return set(reply.answer.get("names") or ())


def _block(executor, ref_case: Case, impls: list[str], reference: str, settings: gate.GateSettings,
           group: list[Case], first: bool = True) -> dict[str, Measurement]:
    """One block on one side: impl -> record. The checked call runs in a side's first block of a
    shape; later blocks only time (warm up briefly: the process has just run the same calls) and
    run the guards after timing."""
    from harness.run.executor import Job

    req = gate.ratios_request(impls, reference, settings, rounds=ROUNDS_PER_BLOCK,
                              warmup_s=settings.warmup_s if first else settings.warmup_s / 5, check=first)
    reply = next(iter(executor.run([Job.for_ratios(ref_case, req, settings.timeout_s)])))
    return gate.records_of(reply, ref_case, [c for c in group if c.impl in impls])


def merge_blocks(blocks: Sequence[Measurement]) -> Measurement:
    """One side's record of a case over its blocks: the first failing block's record, else the
    first block's (it ran the checked call) with every block's samples and ratios, contended if
    any block was."""
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
    why = "; ".join(dict.fromkeys(m.contention for m in blocks if m.contended and m.contention))
    return dataclasses.replace(first, samples_s=samples, reference_ratios=ratios, metrics=metrics,
                               stats=stats.summarize(samples) if samples else first.stats,
                               contended=any(m.contended for m in blocks), contention=why)


def measure_ab(cases: Sequence[Case], reference: str, settings: gate.GateSettings, base: Path,
               pairs: int = BLOCK_PAIRS, current_slowdown: str | None = None) -> list[gate.Evidence]:
    """Per case: the current side's record, the base side's (None: not in the base revision) and
    the A/B ratios (current / base, one per block pair), in fresh worker processes."""
    out: list[gate.Evidence] = []
    with _executor(base) as base_ex, _executor(None, current_slowdown) as cur_ex:
        _start_together(base_ex, cur_ex)
        in_base = _catalogue(base_ex, base)
        for ref_case, group in gate.shapes_of(cases, reference):
            impls = [c.impl for c in group]
            sides = {"base": (base_ex, [i for i in impls if i in in_base] if reference in in_base else []),
                     "cur": (cur_ex, impls)}
            got: dict[str, list[dict[str, Measurement]]] = {"base": [], "cur": []}
            for p in range(pairs):
                for side in (("base", "cur") if p % 2 == 0 else ("cur", "base")):
                    ex, names = sides[side]
                    if names:
                        got[side].append(_block(ex, ref_case, names, reference, settings, group, first=p == 0))
            cur_ref = merge_blocks([b[reference] for b in got["cur"]])
            out.append(gate.Evidence(cur_ref, (), None))
            for c in group:
                cur = merge_blocks([b[c.impl] for b in got["cur"]])
                if c.impl not in sides["base"][1]:
                    out.append(gate.Evidence(cur, (), None))
                    continue
                base_m = merge_blocks([b[c.impl] for b in got["base"]])
                ratios = tuple(statistics.median(cb[c.impl].reference_ratios) / statistics.median(bb[c.impl].reference_ratios)
                               for cb, bb in zip(got["cur"], got["base"])
                               if cb[c.impl].reference_ratios and bb[c.impl].reference_ratios)
                out.append(gate.Evidence(cur, ratios if base_m.status == vocab.OK else (), base_m))
    return out


def _start_together(*executors) -> None:
    """Start the workers side by side: each spends seconds importing torch, which need not add up.
    A worker that fails to start here is started (and its failure recorded) by its first job."""
    import threading

    def start(ex):
        try:
            ex.worker.start()
        except RuntimeError:
            pass

    threads = [threading.Thread(target=start, args=(ex,)) for ex in executors]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


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

        def measure_(cs, ref_name, st, pairs=BLOCK_PAIRS):
            return measure_ab(cs, ref_name, st, folder, pairs, current_slowdown)

        measure = measure or measure_
        rows = [judge(ev, threshold, reference) for ev in measure(list(cases), reference, settings)]
        rows = gate.with_confirmation(rows, threshold,
                                      lambda cs: measure(cs, reference, settings, pairs=2 * BLOCK_PAIRS))
    warnings = [f"A/B against {ref} ({sha[:10]}): ratio = current / base of impl/{reference} ratios; 1.0 = no change",
                *gate.outcome_warnings(rows)]
    return gate.GateOutcome(rows=tuple(rows), threshold=threshold, reference=reference, device_key=f"A/B vs {ref}",
                            baseline_path=f"{ref} ({sha[:10]})", baseline_found=True, warnings=tuple(warnings))
