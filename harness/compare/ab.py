"""The A/B gate: `attnbench check --against REF` measures a git revision and the current tree on
the same machine in the same job, so it needs no committed baseline and survives CPU-model and
torch changes between CI jobs.

REF is exported (git archive) into a temporary directory; a measurement worker is started there
(its own harness, implementations and plugins are what it imports) and one in the current tree.
Each shape is measured in alternating short blocks -- base, current, current, base, ... -- each
block the gate's usual interleaved rounds against the reference implementation in that process,
giving a per-block median ratio impl/reference. The A/B ratio of a block pair is
current ratio / base ratio: machine drift and load hit both sides of a pair alike. Its median and
bootstrap CI are judged like the baseline gate's (harness/compare/gate.py: suspected regressions
re-measured in fresh processes before they fail the job), with the base's ratio as baseline 1.0.
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
from harness.results.store import ResultsError

BLOCK_PAIRS = 6  # A/B block pairs per shape (re-measurement: twice as many)
ROUNDS_PER_BLOCK = 10  # interleaved rounds impl/reference inside one block


class BaseRevisionError(ResultsError):
    """The base revision cannot be measured (unknown, does not import, predates the A/B gate)."""


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


def _executor(tree: Path | None, slowdown: str | None = None):
    from harness.measure.shape_ratios import MALLOC_ENV, SLOWDOWN_ENV
    from harness.run.executor import LocalExecutor

    env = {}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    env[SLOWDOWN_ENV] = slowdown or ""  # the testing hook applies to one side only (see ab_settings)
    return LocalExecutor(env_defaults=MALLOC_ENV, env_overrides=env, cwd=str(tree) if tree else None)


def _block(executor, ref_case: Case, impls: list[str], reference: str, settings: gate.GateSettings,
           first: bool = True) -> dict:
    """One block on one side. Accuracy is checked in a side's first block of a shape; later blocks
    only time (and warm up briefly: the process has just run the same calls)."""
    from harness.run.executor import DONE, Job

    req = {"impls": impls, "reference": reference, "seed": settings.seed, "rounds": ROUNDS_PER_BLOCK,
           "min_block_s": settings.min_block_s, "warmup_s": settings.warmup_s if first else settings.warmup_s / 5,
           "check": first}
    reply = next(iter(executor.run([Job.for_shape(ref_case, req, settings.timeout_s)])))
    if reply.status != DONE:
        return {"failed": (reply.status, reply.message)}
    return reply.answer.get("results") or {}


def measure_ab(cases: Sequence[Case], reference: str, settings: gate.GateSettings, base_tree: Path,
               pairs: int = BLOCK_PAIRS, current_slowdown: str | None = None) -> list[gate.ImplResult]:
    """A/B ratios (current / base) per implementation and shape, in fresh worker processes."""
    shapes: dict[str, list[Case]] = {}
    for c in cases:
        shapes.setdefault(c.replace(impl=reference, grid="").case_id, []).append(c)
    out: list[gate.ImplResult] = []
    with _executor(base_tree) as base, _executor(None, current_slowdown) as cur:
        _start_together(base, cur)
        for group in shapes.values():
            ref_case = group[0].replace(impl=reference)
            impls = [c.impl for c in group]
            ratios: dict[str, list[float]] = {i: [] for i in impls}
            status: dict[str, tuple[str, str]] = {}
            for p in range(pairs):
                sides = (("base", base), ("cur", cur)) if p % 2 == 0 else (("cur", cur), ("base", base))
                got = {name: _block(ex, ref_case, impls, reference, settings, first=p == 0) for name, ex in sides}
                _check_base_protocol(got["base"])
                for impl in impls:
                    why = _failure(got["cur"], impl, "current") or _failure(got["base"], impl, "base")
                    if why:
                        status.setdefault(impl, why)
                        continue
                    b = statistics.median(got["base"][impl]["ratios"])
                    c = statistics.median(got["cur"][impl]["ratios"])
                    ratios[impl].append(c / b)
            for c in group:
                st, msg = status.get(c.impl, (vocab.OK, ""))
                out.append(gate.ImplResult(c, st, msg, tuple(ratios[c.impl]) if st == vocab.OK else ()))
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


def _check_base_protocol(answer: dict) -> None:
    failed = answer.get("failed")
    if failed and ("failed to start" in failed[1] or "did not start" in failed[1]):
        raise BaseRevisionError(f"the base revision's worker does not start: {failed[1][:300]}")
    if failed and "unknown request kind" in failed[1]:
        raise BaseRevisionError("the base revision predates the A/B gate (its worker has no 'shape' requests)")


def _failure(answer: dict, impl: str, side: str) -> tuple[str, str] | None:
    """(status, message) when this side did not give ratios for impl; NEW when the base lacks it."""
    if "failed" in answer:
        st, msg = answer["failed"]
        return st, f"{side}: {msg}"
    r = answer.get(impl)
    if r is None or (side == "base" and "RegistryError" in str(r.get("message", ""))):
        return (vocab.NEW, "not in the base revision") if side == "base" else (vocab.CRASHED, "no answer")
    if r.get("status") != vocab.OK or not r.get("ratios"):
        return r.get("status", vocab.ERROR), f"{side}: {r.get('message', '')}".strip()
    return None


def run_ab_gate(cases: Sequence[Case], *, reference: str, threshold, settings: gate.GateSettings, ref: str,
                repo: Path, current_slowdown: str | None = None, measure=None) -> gate.GateOutcome:
    """Measure, judge against 1.0 (no change), re-measure suspects in fresh processes, confirm."""
    with tempfile.TemporaryDirectory(prefix="attnbench-ab-") as tmp:
        sha = export_revision(ref, repo, Path(tmp))
        tree = Path(tmp) / "tree"
        if not (tree / "harness" / "run" / "worker.py").exists():
            raise BaseRevisionError(f"--against {ref} ({sha[:10]}) predates the A/B gate: it has no "
                                    f"harness/run/worker.py to measure with")

        def measure_(cs, ref_name, st, pairs=BLOCK_PAIRS):
            return measure_ab(cs, ref_name, st, tree, pairs, current_slowdown)

        results = (measure or measure_)(list(cases), reference, settings)
        rows = [_judge(r, threshold, reference) for r in results]
        suspects = [r.case for r in rows if r.verdict in (vocab.SUSPECTED, vocab.LEANING)]
        if suspects:
            again = {r.case.case_id: r for r in (measure or measure_)(suspects, reference, settings,
                                                                        pairs=2 * BLOCK_PAIRS)}
            missing = gate.ImplResult(suspects[0], vocab.OK, "the re-measurement did not report this case")
            rows = [gate.confirm(r, again.get(r.case.case_id, missing), threshold)
                    if r.verdict in (vocab.SUSPECTED, vocab.LEANING) else r for r in rows]
    warnings = [f"A/B against {ref} ({sha[:10]}): ratio = current / base of impl/{reference} ratios; 1.0 = no change"]
    n_inc = sum(r.verdict == vocab.INCONCLUSIVE for r in rows)
    if n_inc:
        warnings.append(f"{n_inc} case(s) too noisy to judge (inconclusive); the gate passes them")
    return gate.GateOutcome(rows=tuple(rows), threshold=threshold, reference=reference, device_key=f"A/B vs {ref}",
                            baseline_path=f"{ref} ({sha[:10]})", baseline_found=True, warnings=tuple(warnings))


def _judge(result: gate.ImplResult, threshold, reference: str) -> gate.GateRow:
    if result.status == vocab.NEW:
        return gate.GateRow(result.case, vocab.OK, vocab.NEW, message=result.message)
    fake_base = gate.Baseline(path="", device_key="", reference=reference,
                              entries={result.case.case_id: gate.BaselineEntry(1.0, 1.0, 1.0, 0.0, 0)})
    return dataclasses.replace(gate.judge(result, fake_base, threshold, reference), baseline_ratio=1.0)
