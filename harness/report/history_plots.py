"""Trend plots and the report section for `attnbench history --out DIR`.

One PNG per trend that has a change point (plus MAX_STABLE_PLOTS stable ones, for comparison):
the run medians in run order with their bootstrap CI as error bars, each level between change
points as a dashed horizontal line, each change point as a vertical line between the last run
before it and the first run after it, labelled with the step. Built like harness/report/plots.py:
matplotlib's object API on an explicit Agg canvas, created inside the functions, never switching
the process-wide pyplot backend. Nothing here reads results or finds change points.
"""

from __future__ import annotations

import re
from pathlib import Path

from harness.compare.history import History, Trend, segments
from harness.report.figures import new_figure, png_bytes
from harness.report.render import Figure, Report, Section, Table, write_documents

FIGSIZE_IN = (8.0, 4.2)
MAX_STABLE_PLOTS = 3
MAX_CHANGE_PLOTS = 40  # bounds the PNG count on huge sweeps; the table still lists every change point
LINE_COLOR, CHANGE_COLOR, LEVEL_COLOR = "#1f77b4", "#d62728", "#555555"


def _unit(trend: Trend) -> tuple[float, str]:
    top = max(p.median_s for p in trend.points)
    return (1e3, "ms") if top >= 1e-3 else (1e6, "µs")


def plot_trend(history: History, trend: Trend) -> bytes:
    """PNG of one trend: medians with CI bars, levels, change points."""
    scale, unit = _unit(trend)
    fig, ax = new_figure(FIGSIZE_IN)
    xs = list(range(len(trend.points)))
    ys = [p.median_s * scale for p in trend.points]
    lo = [max(p.median_s - (p.ci_low_s or p.median_s), 0.0) * scale for p in trend.points]
    hi = [max((p.ci_high_s or p.median_s) - p.median_s, 0.0) * scale for p in trend.points]
    ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o-", color=LINE_COLOR, ms=4, lw=1.2, elinewidth=1, capsize=2,
                label="median (bars: 95% CI)", zorder=3)
    for a, b, level in segments(trend):
        ax.hlines(level * scale, a - 0.3, b - 0.7, colors=LEVEL_COLOR, linestyles="dashed", lw=1, zorder=2)
    for cp in trend.change_points:
        ax.axvline(cp.index - 0.5, color=CHANGE_COLOR, lw=1.4, zorder=1)
        ax.annotate(f"{cp.relative_step * 100:+.1f}% at {cp.run_id}", xy=(cp.index - 0.5, 1.0),
                    xycoords=("data", "axes fraction"), xytext=(3, -12), textcoords="offset points",
                    color=CHANGE_COLOR, fontsize=8, va="top",
                    bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.85})
    labels = [p.run_id for p in trend.points]
    every = max(1, len(labels) // 15)  # at most ~15 tick labels
    ax.set_xticks(xs[::every], labels[::every], rotation=45, ha="right", fontsize=7)
    ax.set_xlim(-0.6, len(xs) - 0.4)
    ax.set_ylabel(f"median latency ({unit})")
    ax.set_xlabel("run (ordered by start time)")
    ax.grid(True, alpha=0.3)
    ax.set_title(f"{trend.case_id}\n{trend.environment}", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    return png_bytes(fig)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:90]


def plotted_trends(history: History) -> list[Trend]:
    """Every trend with a change point (up to MAX_CHANGE_PLOTS), then a few stable ones."""
    changed = [t for t in history.trends if t.change_points][:MAX_CHANGE_PLOTS]
    stable = [t for t in history.trends if not t.change_points and len(t.points) >= 2][:MAX_STABLE_PLOTS]
    return changed + stable


def history_sections(history: History, fmt_time=None) -> list[Section]:
    """The history part of a report: summary, change-point table, one figure per plotted trend."""
    fmt = fmt_time or (lambda s: f"{s * 1e3:.3f} ms")
    n_env = len(history.environments)
    summary = Section(title="Performance history", paragraphs=[
        f"{len(history.runs)} runs from {history.runs[0].started_at} to {history.runs[-1].started_at}; "
        f"{len(history.trends)} trends; {len(history.change_points)} change point(s) "
        f"(steps of at least {history.min_step * 100:g}% and larger than the runs' own spread).",
        f"{n_env} environment{'s' if n_env != 1 else ''}; trends are per environment "
        "(device key and torch version): runs from different machines are never mixed.",
        *history.warnings,
    ], bullets=list(history.environments))
    rows = [[t.case_id, t.environment, cp.run_id, cp.started_at, (cp.git_commit or "-")[:12],
             fmt(cp.before_median_s), fmt(cp.after_median_s), f"{cp.relative_step * 100:+.1f}%", f"{cp.z:.1f}"]
            for t, cp in history.change_points]
    if rows:
        summary.tables.append(Table(
            title="Change points", numeric=False, rows=rows,
            headers=["case", "environment", "first run after", "started at", "commit", "before", "after",
                     "step", "z"],
            note="before/after: median of the run medians on each side; z: the step in standard errors."))
    figs = Section(title="Trends", level=3,
                   paragraphs=["Dots: median per run, bars: its 95% bootstrap CI; dashed: the level between "
                               "change points; red line: a change point, labelled with the step and the "
                               "first run at the new level."])
    for i, t in enumerate(plotted_trends(history), start=1):
        name = f"history-{i:02d}-{_slug(t.case_id)}.png"
        kind = "change point" if t.change_points else "stable"
        figs.figures.append(Figure(file=name, png=plot_trend(history, t), alt=f"{t.case_id} ({kind})"))
    return [summary, figs] if figs.figures else [summary]


def write_history_report(history: History, out_dir: str | Path, fmt_time=None) -> Path:
    """DIR/index.html (self-contained), DIR/report.md and the PNGs; returns DIR."""
    out = Path(out_dir)
    write_documents(Report(title="attnbench history", sections=history_sections(history, fmt_time)), out)
    return out
