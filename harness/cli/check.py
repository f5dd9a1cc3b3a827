"""`attnbench check`: the CI regression gate (harness/compare/gate.py, A/B: harness/compare/ab.py)
on scenarios/ci.toml.

Exit codes: 0 pass (possibly with warnings: inconclusive cases, no baseline for this machine),
1 fail (error / wrong / crash / timeout, or a timing regression confirmed by re-measurement),
2 usage or file errors.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

from harness.cli.console import case_shape, table
from harness.cli.errors import UsageError
from harness.compare import baseline as bl, gate

PASS_COUNTS = (gate.UNCHANGED, gate.IMPROVED, gate.INCONCLUSIVE)


def add_parser(sub) -> None:
    p = sub.add_parser("check", help="CI gate: measure the current tree against a git revision (--against REF, "
                                     "A/B on this machine) or against the committed baseline",
                       description="The CI regression gate, on scenarios/ci.toml unless --scenario says "
                                   "otherwise. Every implementation is timed in short blocks interleaved with "
                                   "a reference implementation; its time ratio to the reference is judged, never "
                                   "an absolute time. With --against REF the git revision REF and the current "
                                   "tree are measured side by side on this machine (A/B: no baseline file "
                                   "needed). Without it the ratios are compared with the committed "
                                   "results/baselines/<device_key>.json (--update-baseline writes it). Suspected "
                                   "regressions are re-measured in a fresh process before they fail. Exit 0 "
                                   "pass, 1 fail (an error, a wrong result or a confirmed regression), 2 usage "
                                   "error or a revision that cannot be measured.")
    p.add_argument("--scenario", default="ci", metavar="TOML", help="scenario name or path (default: ci)")
    p.add_argument("--baseline", metavar="FILE", help="baseline file (default: results/baselines/<device_key>.json)")
    p.add_argument("--update-baseline", action="store_true", help="measure and (re)write the baseline, then exit")
    p.add_argument("--against", metavar="REF",
                   help="A/B mode: measure git revision REF (e.g. origin/main, HEAD~1) and the current tree "
                        "side by side on this machine; no baseline file needed")
    p.add_argument("--threshold", default=gate.DEFAULT_THRESHOLD, metavar="T",
                   help="allowed growth of a ratio, e.g. 15%% or 0.15 (default: %(default)s)")
    p.add_argument("--reference", metavar="IMPL", help="reference implementation (default: the scenario's)")
    p.add_argument("--rounds", type=int, metavar="N", help=f"interleaved rounds per shape (default: "
                                                           f"{gate.GateSettings.rounds})")
    p.add_argument("--min-block-ms", type=float, metavar="MS", help="shortest timed block (default: "
                                                                    f"{gate.GateSettings.min_block_s * 1e3:g})")
    p.add_argument("--json", metavar="FILE", help="also write the outcome as JSON to FILE")
    p.set_defaults(func=cmd_check)


def cmd_check(args) -> int:
    from harness import registry
    from harness.compare.runs import Threshold
    from harness.measure.machine.environment import collect_environment
    from harness.measure.slowdown import SLOWDOWN_ENV, parse_slowdown
    from harness.scenario.load import load_scenario

    try:
        threshold = Threshold.parse(args.threshold)
        slowdown = parse_slowdown(os.environ.get(SLOWDOWN_ENV))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if threshold.metric != "median":
        raise UsageError(f"--threshold {args.threshold}: the gate compares median ratios; give e.g. 12%")
    if slowdown and args.update_baseline:
        raise UsageError(f"{SLOWDOWN_ENV} is set: a baseline measured with the testing hook would be wrong")
    if args.rounds is not None and args.rounds < 3:
        raise UsageError(f"--rounds {args.rounds} is not allowed; allowed: an integer >= 3")
    if args.min_block_ms is not None and args.min_block_ms <= 0:
        raise UsageError(f"--min-block-ms {args.min_block_ms:g} is not allowed; allowed: a number > 0")
    scenario = load_scenario(args.scenario)
    reference = args.reference or scenario.reference
    registry.get(reference)  # an unknown name lists the known ones (exit 2)
    cases = gate.gate_cases(scenario, reference)
    if not cases:
        raise UsageError(f"{scenario.path}: no implementation to check besides the reference {reference!r}")
    settings = gate.GateSettings(timeout_s=scenario.budget.case_timeout_s, seed=scenario.seed)
    if args.rounds is not None:
        settings = dataclasses.replace(settings, rounds=args.rounds)
    if args.min_block_ms is not None:
        settings = dataclasses.replace(settings, min_block_s=args.min_block_ms / 1e3)
    env = collect_environment()
    key = gate.gate_device_key(cases, env)
    path = Path(args.baseline) if args.baseline else bl.baseline_path_for(key)
    shapes = len({c.replace(impl=reference, grid="").case_id for c in cases})
    impls = sorted({c.impl for c in cases})
    print(f"gate: {len(impls)} implementations x {shapes} shapes against {reference!r} on {key} "
          f"({settings.rounds} rounds)", file=sys.stderr)
    if slowdown:
        print(f"gate: TESTING HOOK {SLOWDOWN_ENV} active: {slowdown}", file=sys.stderr)

    if args.against:
        if args.update_baseline or args.baseline:
            raise UsageError("--against measures the base revision itself: drop --baseline / --update-baseline")
        from harness.compare import ab

        outcome = ab.run_ab_gate(cases, reference=reference, threshold=threshold, settings=settings,
                                 ref=args.against, repo=Path.cwd(), current_slowdown=os.environ.get(SLOWDOWN_ENV))
        print(format_outcome(outcome))
        if args.json:
            _write_json(args.json, outcome)
        return outcome.exit_code
    if args.update_baseline:
        return _update(cases, reference, threshold, settings, env, key, path)
    baseline = bl.read_baseline(path) if (args.baseline or path.exists()) else None
    outcome = gate.run_gate(cases, reference=reference, threshold=threshold, baseline=baseline, device_key=key,
                            baseline_path=path, settings=settings)
    extra = ()
    if baseline is not None and baseline.device_key != key:
        extra = (f"baseline {path} was written on {baseline.device_key}, this machine is {key}",)
    print(format_outcome(outcome, extra))
    if args.json:
        _write_json(args.json, outcome, extra)
    return outcome.exit_code


def _update(cases, reference, threshold, settings, env, key, path) -> int:
    results = gate.measure_for_baseline(cases, reference, settings)
    rows = tuple(gate.judge(gate.Evidence.of(r), None, threshold, reference, missing=gate.NO_BASELINE)
                 for r in results)
    outcome = gate.GateOutcome(rows, threshold, reference, key, str(path), baseline_found=False)
    print(format_table(outcome))
    if not outcome.passed:
        print(f"\ngate: FAIL ({_counts(outcome)}); baseline NOT written: fix the failures first")
        return 1
    b = bl.make_baseline(results, path=path, device_key=key, reference=reference, environment=env,
                           settings=settings)
    bl.write_baseline(b)
    busy = [r.case.impl for r in results if r.contended]
    if busy:
        print(f"warning: {len(busy)} case(s) contended while measured ({', '.join(sorted(set(busy)))}): "
              f"other processes took CPU; consider re-running on a quiet machine")
    print(f"\nbaseline written: {path} ({len(b.entries)} cases, {key})")
    return 0


def to_dict(o: gate.GateOutcome, extra_warnings: tuple[str, ...] = ()) -> dict:
    def stats(s):
        return None if s is None else dataclasses.asdict(s)

    rows = [{"case_id": r.case.case_id, "impl": r.case.impl, "status": r.status, "verdict": r.verdict,
             "failed": r.failed, "baseline_ratio": r.baseline_ratio, "current": stats(r.current),
             "remeasured": stats(r.remeasured), "message": r.message, "notes": list(r.notes), "noisy": r.noisy,
             "contended": r.contended} for r in o.rows]
    return {"passed": o.passed, "exit_code": o.exit_code, "counts": o.counts(), "reference": o.reference,
            "device_key": o.device_key, "baseline_path": o.baseline_path, "baseline_found": o.baseline_found,
            "threshold": o.threshold.fraction, "warnings": [*o.warnings, *extra_warnings], "rows": rows}


def _write_json(path, o: gate.GateOutcome, extra_warnings=()) -> None:
    import json

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(to_dict(o, extra_warnings), indent=2) + "\n")


# ------------------------------------------------------------------------------------ rendering


def _ci(s) -> str:
    return "-" if s is None else f"{s.median:.3f} [{s.ci_low:.3f}, {s.ci_high:.3f}]"


def format_table(o: gate.GateOutcome) -> str:
    rows = []
    for r in o.rows:
        verdict = r.verdict.upper() if r.failed else r.verdict
        rows.append([r.case.impl, case_shape(r.case), r.status,
                     "-" if r.baseline_ratio is None else f"{r.baseline_ratio:.3f}", _ci(r.current),
                     _ci(r.remeasured), verdict, "; ".join(x for x in (r.message[:100], *r.notes) if x)])
    headers = ["impl", "case", "status", "baseline", f"ratio to {o.reference} [95% CI]", "re-measured", "verdict",
               "note"]
    return table(headers, rows)


def _counts(o: gate.GateOutcome) -> str:
    counts = o.counts()
    shown = [f"{counts.pop(k, 0)} {k}" for k in PASS_COUNTS]
    counts.pop(gate.REFERENCE, None)
    failed = [f"{n} {k}" for k, n in sorted(counts.items()) if k in (*gate.FAIL_STATUSES, gate.REGRESSED,
                                                                        gate.REGRESSED_ERROR)]
    rest = [f"{n} {k}" for k, n in sorted(counts.items()) if f"{n} {k}" not in failed]
    return ", ".join(failed + shown + rest)


def format_outcome(o: gate.GateOutcome, extra_warnings: tuple[str, ...] = ()) -> str:
    lines = [format_table(o), ""]
    lines.append(f"baseline: {o.baseline_path}" if o.baseline_found else f"baseline: none ({o.baseline_path})")
    lines.append(f"threshold: a ratio more than {o.threshold.fraction * 100:g}% above its baseline, "
                 f"confirmed by a re-measurement")
    lines += [f"warning: {w}" for w in (*o.warnings, *extra_warnings)]
    lines.append(f"gate: {'PASS' if o.passed else 'FAIL'} ({_counts(o)})")
    return "\n".join(lines)
