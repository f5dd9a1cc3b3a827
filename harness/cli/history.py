"""`attnbench history RUN... | RESULTS_DIR`: trends per case over many runs and their change points.

Rendering only; trends and change points come from harness.compare.history, plots and the report
section from harness.report.history_plots. Exit codes: 0 (a change point is a finding, not a
failure: the regression gate is `attnbench check`), 2 for usage or file errors (one line on
stderr, via harness.cli.main): no such path, a directory with no runs, fewer than 3 runs, a
damaged run.json.
"""

from __future__ import annotations

import json

from harness.cli.console import fmt_time_s, md_cell, md_table
from harness.cli.errors import UsageError
from harness.compare.history import History, Trend, load_history

FORMATS = ("text", "md", "json")


def add_parser(sub) -> None:
    p = sub.add_parser("history", help="trends over many runs; find the run where a case changed",
                       description="Order runs by start time, follow each case's median (per environment: "
                                   "runs from different machines or torch versions are never mixed) and "
                                   "report the runs where its level stepped, with the commit. Exit 0, or 2 "
                                   "on a usage or file error.")
    p.add_argument("paths", nargs="+", metavar="RUN",
                   help="run directories, or a results directory holding run directories")
    p.add_argument("--min-step", default="5%", metavar="S",
                   help="smallest relative step reported, e.g. 5%% or 0.05 (default: %(default)s)")
    p.add_argument("--format", choices=FORMATS, default="text", help="output format (default: text)")
    p.add_argument("--out", metavar="DIR", help="also write index.html, report.md and trend PNGs here")
    p.set_defaults(func=cmd_history)


def _min_step(text: str) -> float:
    from harness.compare.runs import Threshold

    try:
        t = Threshold.parse(text)
    except ValueError as exc:
        raise UsageError(f"--min-step: {str(exc).replace('threshold', 'step')}") from None
    if ":" in text:
        raise UsageError(f"--min-step {text!r}: give a fraction or a percentage, e.g. 5%")
    return t.fraction


def cmd_history(args) -> int:
    history = load_history(args.paths, min_step=_min_step(args.min_step))
    if args.out:
        from harness.report.history_plots import write_history_report

        out = write_history_report(history, args.out, fmt_time=fmt_time_s)
    print(render(history, args.format))
    if args.out:
        import sys

        print(f"report: {out / 'index.html'}", file=sys.stderr)
    return 0


def render(h: History, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(to_dict(h), indent=2, sort_keys=True)
    if fmt == "md":
        return format_markdown(h)
    return format_text(h)


# ------------------------------------------------------------------------------------ renderers


def _commit(c: str | None, dirty: bool | None = None) -> str:
    return "-" if not c else c[:12] + ("+dirty" if dirty else "")


def environments_line(h: History) -> str:
    n = len(h.environments)
    if n == 1:
        return f"1 environment: {h.environments[0]}"
    return f"{n} environments; trends are per environment: {', '.join(h.environments)}"


def summary_line(h: History) -> str:
    cps = [cp for _, cp in h.change_points]
    slower = sum(cp.direction == "slower" for cp in cps)
    head = f"{len(cps)} change point(s) ({slower} slower, {len(cps) - slower} faster)" if cps else "no change points"
    return (f"{head} in {len(h.trends)} trends over {len(h.runs)} runs "
            f"({h.runs[0].run_id} .. {h.runs[-1].run_id}); min step {h.min_step * 100:g}%")


def change_line(t: Trend, cp) -> str:
    return (f"{t.case_id} [{t.environment}]: {cp.relative_step * 100:+.1f}% ({cp.direction}) at run {cp.run_id} "
            f"({cp.started_at}, commit {_commit(cp.git_commit, cp.git_dirty)}; previous {cp.previous_run_id}, "
            f"commit {_commit(cp.previous_commit)}): {fmt_time_s(cp.before_median_s)} -> "
            f"{fmt_time_s(cp.after_median_s)}, z {cp.z:.1f}")


def format_text(h: History) -> str:
    lines = [change_line(t, cp) for t, cp in h.change_points]
    thin = [t for t in h.trends if t.note]
    if lines:
        lines.append("")
    lines += [f"warning: {w}" for w in h.warnings]
    if thin:
        lines.append(f"note: {len(thin)} trend(s) have too few ok runs to judge (at least 4 needed)")
    lines += [environments_line(h), summary_line(h)]
    return "\n".join(lines)


HEADERS = ["case", "environment", "step", "first run after", "started at", "commit", "before", "after", "z"]


def format_markdown(h: History) -> str:
    lines = ["### attnbench history", "", environments_line(h) + ".", ""]
    if h.change_points:
        lines += md_table(HEADERS, [
            [f"`{t.case_id}`", t.environment, f"{cp.relative_step * 100:+.1f}% ({cp.direction})", cp.run_id,
             cp.started_at, _commit(cp.git_commit, cp.git_dirty), fmt_time_s(cp.before_median_s),
             fmt_time_s(cp.after_median_s), f"{cp.z:.1f}"] for t, cp in h.change_points])
        lines.append("")
    lines += [f"> warning: {md_cell(w)}" for w in h.warnings]
    lines.append(f"**{summary_line(h)}**")
    return "\n".join(lines)


def to_dict(h: History) -> dict:
    trends = []
    for t in h.trends:
        trends.append({
            "environment": t.environment, "case_id": t.case_id, "impl": t.case.impl, "params": t.case.comparable(),
            "noise_log": t.noise, "spread": t.spread, "note": t.note, "missing_runs": list(t.missing_runs),
            "points": [{"run_id": p.run_id, "median_s": p.median_s, "ci_low_s": p.ci_low_s,
                        "ci_high_s": p.ci_high_s, "spread": p.spread, "n_samples": p.n_samples}
                       for p in t.points],
            "change_points": [{
                "run_id": cp.run_id, "started_at": cp.started_at, "git_commit": cp.git_commit,
                "git_dirty": cp.git_dirty, "previous_run_id": cp.previous_run_id,
                "previous_commit": cp.previous_commit, "before_median_s": cp.before_median_s,
                "after_median_s": cp.after_median_s, "relative_step": cp.relative_step,
                "direction": cp.direction, "z": cp.z, "runs_before": cp.runs_before, "runs_after": cp.runs_after,
            } for cp in t.change_points],
        })
    return {
        "runs": [{"run_id": r.run_id, "path": r.path, "started_at": r.started_at, "git_commit": r.git_commit,
                  "git_dirty": r.git_dirty, "scenario": r.scenario} for r in h.runs],
        "environments": list(h.environments),
        "environments_note": environments_line(h),
        "min_step": h.min_step,
        "change_points": sum(len(t.change_points) for t in h.trends),
        "summary": summary_line(h),
        "warnings": list(h.warnings),
        "trends": trends,
    }
