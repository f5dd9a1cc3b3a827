"""`attnbench compare BASE CURRENT`: verdicts per case, exit 1 on a regression.

Rendering only; the verdicts come from harness.compare. Exit codes: 0 no regression, 1 at least
one regression, 2 usage or file errors (one line on stderr, via harness.cli.main).
"""

from __future__ import annotations

import json
import sys

from harness.case import case_shape
from harness.cli.console import md_cell, md_table, table
from harness.cli.errors import UsageError
from harness.compare.runs import Comparison, Threshold, compare_runs
from harness.results.units import fmt_bytes, fmt_time_s

FORMATS = ("text", "md", "json")


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="compare two runs; exit 1 when a case regressed",
                       description="Match cases by id and judge each: regressed, improved, unchanged, "
                                   "inconclusive, new, missing, status changed. Exit 0: no regression, "
                                   "1: regression, 2: usage or file error.")
    p.add_argument("base", metavar="BASE", help="run directory of the baseline")
    p.add_argument("current", metavar="CURRENT", help="run directory to judge")
    p.add_argument("--threshold", default="10%", metavar="T",
                   help="allowed slowdown, e.g. 10%%, 0.1 or median:10%% (default: %(default)s)")
    p.add_argument("--metric", choices=("median", "min"), default=None,
                   help="statistic to compare (default: median, or the metric in --threshold)")
    p.add_argument("--format", choices=FORMATS, default="text", help="output format (default: text)")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args) -> int:

    try:
        threshold = Threshold.parse(args.threshold, default_metric=args.metric or "median")
    except ValueError as exc:
        raise UsageError(f"--threshold: {exc}") from None
    if args.metric and ":" in args.threshold and threshold.metric != args.metric:
        raise UsageError(f"--metric {args.metric} contradicts --threshold {args.threshold}")
    comparison = compare_runs(args.base, args.current, threshold)
    print(render(comparison, args.format))
    for w in comparison.warnings:  # loud whatever the format: also on stderr
        print(f"attnbench: warning: {w}", file=sys.stderr)
    return comparison.exit_code


def render(c: Comparison, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(to_dict(c), indent=2, sort_keys=True)
    if fmt == "md":
        return format_markdown(c)
    return format_text(c)


# ------------------------------------------------------------------------------------ renderers


def _ratio(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _ci(cc) -> str:
    return "-" if cc.ci_low is None else f"[{cc.ci_low:.3f}, {cc.ci_high:.3f}]"


def _mem(cc) -> str:
    if cc.base_peak_bytes is None and cc.current_peak_bytes is None:
        return "-"
    r = cc.memory_ratio
    tail = f" ({r:.2f}x)" if r is not None else ""
    return f"{fmt_bytes(cc.base_peak_bytes)} -> {fmt_bytes(cc.current_peak_bytes)}{tail}"


def _status(cc) -> str:
    if cc.base_status == cc.current_status:
        return cc.current_status or "-"
    return f"{cc.base_status or '-'} -> {cc.current_status or '-'}"


def _rows(c: Comparison) -> list[list[str]]:
    rows = []
    for cc in c.cases:
        verdict = cc.verdict.upper() if cc.is_regression else cc.verdict
        rows.append([cc.case.impl, case_shape(cc.case), _status(cc), fmt_time_s(cc.base_value_s),
                     fmt_time_s(cc.current_value_s), _ratio(cc.ratio), _ci(cc), _mem(cc), verdict,
                     "; ".join(cc.notes)])
    return rows


HEADERS = ["impl", "case", "status", "base", "current", "ratio", "95% CI", "peak memory", "verdict", "notes"]


def summary_line(c: Comparison) -> str:
    counts = ", ".join(f"{n} {v}" for v, n in sorted(c.counts().items()))
    head = f"{len(c.regressions)} regression(s)" if c.regressions else "no regressions"
    return f"{head} ({counts}); threshold {c.threshold}"


def format_text(c: Comparison) -> str:
    lines = [f"base: {c.base_label}   current: {c.current_label}   threshold: {c.threshold}", ""]
    lines.append(table(HEADERS, _rows(c)))
    lines += ["", *(f"warning: {w}" for w in c.warnings), summary_line(c)]
    return "\n".join(lines)


def format_markdown(c: Comparison) -> str:
    lines = [f"### attnbench compare: `{c.base_label.replace('`', '')}` → `{c.current_label.replace('`', '')}`", "",
             f"Threshold {c.threshold}; ratio = current / base, > 1 is slower.", ""]
    lines += md_table(HEADERS, _rows(c))
    lines.append("")
    lines += [f"> warning: {md_cell(w)}" for w in c.warnings]
    lines.append(f"**{summary_line(c)}**")
    return "\n".join(lines)


def to_dict(c: Comparison) -> dict:
    """A JSON-ready dict: plain fields of every case plus the summary."""
    cases = []
    for cc in c.cases:
        cases.append({
            "case_id": cc.case_id, "impl": cc.case.impl, "params": cc.case.comparable(), "verdict": cc.verdict,
            "regression": cc.is_regression, "base_status": cc.base_status, "current_status": cc.current_status,
            "base_value_s": cc.base_value_s, "current_value_s": cc.current_value_s, "ratio": cc.ratio,
            "ci_low": cc.ci_low, "ci_high": cc.ci_high, "base_peak_bytes": cc.base_peak_bytes,
            "current_peak_bytes": cc.current_peak_bytes, "memory_ratio": cc.memory_ratio,
            "base_error_passed": cc.base_error_passed, "current_error_passed": cc.current_error_passed,
            "notes": list(cc.notes), "noisy": cc.noisy,
        })
    return {
        "base": c.base_label, "current": c.current_label,
        "threshold": {"metric": c.threshold.metric, "fraction": c.threshold.fraction},
        "counts": c.counts(), "regressions": len(c.regressions), "exit_code": c.exit_code,
        "warnings": list(c.warnings), "cases": cases,
    }
