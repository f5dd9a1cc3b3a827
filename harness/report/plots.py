"""One group of the report (a grid combination): its figures and the tables beside them.

Figures: one PNG per plotted metric of the metrics table (latency, achieved TFLOP/s, peak memory)
against sequence length, a fixed color per implementation. Tables: the same numbers per
implementation × size, the speed-up vs the baseline, and the scaling exponents of the metrics
marked `fit` (harness.report.fit). Nothing here times anything or reads files.

Figures: harness/report/figures.py (Agg canvas, no pyplot backend switch).
Noisy timings (IQR/median ≥ 10%) are drawn as hollow markers; a marker shape per implementation
keeps overlapping lines apart.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from harness.report.figures import FIGSIZE_IN, new_figure, png_bytes
from harness.report.fit import MIN_FIT_SIZES, fit_largest
from harness.report.groups import Group, num
from harness.report.render import Figure, Section, Table
from harness.results.metrics import Metric, plotted_metrics
from harness.results.rows import Row

NOISY_NOTE = "hollow marker: noisy (IQR/median ≥ 10%) or contended timing"
MAX_INSIDE_LEGEND = 5  # more implementations than this: the legend goes beside the axes


@dataclass(frozen=True)
class Series:
    """One implementation's points in one group, in display units; NaN where the case did not run OK."""

    impl: str
    color: str
    marker: str
    xs: tuple[int, ...]
    noisy: tuple[bool, ...]
    values: dict  # metric field (and band fields) -> tuple of floats, one per x


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "p")


def impl_styles(impls: list[str]) -> dict[str, tuple[str, str]]:
    """A fixed (color, marker) per implementation, by its position in the run, shared by every
    figure; the marker tells apart lines that lie on top of each other."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    cmap = colormaps["tab10" if len(impls) <= 10 else "tab20"]
    return {name: (to_hex(cmap(i % cmap.N)), MARKERS[i % len(MARKERS)]) for i, name in enumerate(impls)}


def plot_group(series: list[Series], metrics: tuple[Metric, ...], *, title: str, x_label: str,
               ceilings: dict[str, float] | None = None) -> dict[str, bytes]:
    """PNG bytes keyed by each metric's plot name; a metric with no data is left out. `ceilings`
    maps a metric field to the measured ceiling in display units (a secondary % axis)."""
    out = {}
    for m in metrics:
        fig, ax = new_figure()
        if not _draw_metric(ax, series, m, (ceilings or {}).get(m.field)):
            continue
        ax.set_title(f"{title}\n{m.plot_title or m.title}", fontsize=10)
        ax.set_xlabel(x_label)
        _x_ticks(ax, series)
        ax.grid(True, which="major", alpha=0.3)
        _legend(ax, series, noisy_note=m.kind in ("timing", "rate"))
        out[m.plot] = png_bytes(fig)
    return out


def _ok(v: float) -> bool:
    return v is not None and math.isfinite(v) and v > 0


def _points(s: Series, values: tuple[float, ...]):
    return [(x, v, noisy) for x, v, noisy in zip(s.xs, values, s.noisy) if _ok(v)]


def _draw_line(ax, s: Series, pts, *, hollow_noisy: bool) -> None:
    if not pts:
        return
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    ax.plot(xs, ys, "-", color=s.color, lw=1.6, alpha=0.9, zorder=2)
    filled = [(x, y) for x, y, noisy in pts if not (noisy and hollow_noisy)]
    hollow = [(x, y) for x, y, noisy in pts if noisy and hollow_noisy]
    if filled:
        ax.scatter(*zip(*filled), s=30, color=s.color, marker=s.marker, zorder=3)
    if hollow:
        ax.scatter(*zip(*hollow), s=46, facecolors="white", edgecolors=s.color, marker=s.marker, linewidths=1.6,
                   zorder=4)


def _draw_band(ax, s: Series, m: Metric, pts) -> None:
    """Error bars from the metric's band fields (e.g. the interquartile range of the latency)."""
    lo_f, hi_f = m.band
    by_x = dict(zip(s.xs, zip(s.values[lo_f], s.values[hi_f])))
    lo, hi, xs, ys = [], [], [], []
    for x, v, _ in pts:
        q1, q3 = by_x[x]
        if _ok(q1) and _ok(q3):
            xs.append(x)
            ys.append(v)
            lo.append(max(v - q1, 0.0))
            hi.append(max(q3 - v, 0.0))
    if xs:
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="none", ecolor=s.color, elinewidth=1, capsize=2, alpha=0.7)


def _draw_metric(ax, series: list[Series], m: Metric, ceiling: float | None) -> bool:
    any_data = False
    hollow = m.kind in ("timing", "rate")  # noisy timings show as hollow markers
    for s in series:
        pts = _points(s, s.values[m.field])
        if not pts:
            continue
        any_data = True
        if m.band:
            _draw_band(ax, s, m, pts)
        _draw_line(ax, s, pts, hollow_noisy=hollow)
    ax.set_xscale("log", base=2)
    unit = f" ({m.display_unit}, log scale)" if m.log_y else (f" ({m.display_unit})" if m.display_unit else "")
    ax.set_ylabel(f"{m.title}{unit}" if m.display_unit != m.title else m.title)
    if m.log_y:
        _log_y(ax)
    else:
        ax.set_ylim(bottom=0)
    if ceiling and ceiling > 0:
        sec = ax.secondary_yaxis("right", functions=(lambda t: t / ceiling * 100.0, lambda p: p * ceiling / 100.0))
        sec.set_ylabel(f"% of measured {m.ceiling_label} ({ceiling:.3g} {m.display_unit})")
    return any_data


def _log_y(ax) -> None:
    """Log y-axis labelled 0.5, 10, 200 rather than 10^1: easier to read off in ms or MiB."""
    from matplotlib.ticker import LogFormatter

    class Plain(LogFormatter):
        def _num_to_string(self, x, vmin, vmax):
            return f"{x:g}"

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(Plain())
    # Label 2x/5x minor ticks up to 2 decades of range (matplotlib's default stops at 1).
    ax.yaxis.set_minor_formatter(Plain(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def _x_ticks(ax, series: list[Series]) -> None:
    from matplotlib.ticker import NullLocator

    xs = sorted({x for s in series for x in s.xs})
    ax.set_xticks(xs, [n_label(x) for x in xs])
    ax.xaxis.set_minor_locator(NullLocator())


def n_label(n: int) -> str:
    """1024 -> "1k", 16384 -> "16k", 1536 -> "1536": short tick labels for powers of two."""
    n = int(n)
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def _legend(ax, series: list[Series], *, noisy_note: bool) -> None:
    """Inside the axes for a few lines; beside them (a wider figure) when there are many, so the
    legend never hides data."""
    from matplotlib.lines import Line2D

    shown = {line.get_color() for line in ax.get_lines()}
    handles = [
        Line2D([], [], color=s.color, marker=s.marker, ms=5, lw=1.6, label=s.impl) for s in series if s.color in shown
    ]
    outside = len(handles) > MAX_INSIDE_LEGEND
    if noisy_note and any(n for s in series for n, v in zip(s.noisy, s.values["median_s"]) if _ok(v)):
        label = NOISY_NOTE.replace(": ", ":\n", 1) if outside else NOISY_NOTE
        handles.append(Line2D([], [], ls="", marker="o", ms=6, mfc="white", mec="0.3", mew=1.4, label=label))
    if outside:
        ax.figure.set_size_inches(FIGSIZE_IN[0] + 2.2, FIGSIZE_IN[1])
        ax.figure.legend(handles=handles, fontsize=8, loc="outside right upper", frameon=False)
    else:
        ax.legend(handles=handles, fontsize=8, loc="best", framealpha=0.85)


# ---------------------------------------------------------------- a group's section


def group_section(idx, g: Group, impl_order, styles, baseline, calibration, *, plot: bool) -> Section:
    """The section for one grid combination: figures (when `plot` and ≥ 2 sizes ran OK), a table per
    plotted metric (rows = implementation, columns = size), speed-ups, fitted exponents."""
    sec = Section(f"{g.grid or '(no grid)'} · {g.label}", level=3)
    cells: dict[tuple[str, int], Row] = {}
    for r in g.rows:  # an OK record wins over a failed one for the same point
        key = (r.impl, int(r[g.x_col]))
        if key not in cells or (r.ok and not cells[key].ok):
            cells[key] = r
    impls = [i for i in impl_order if any(k[0] == i for k in cells)]
    xs = g.xs
    ok_xs = sorted({x for (_, x), r in cells.items() if r.ok})
    sec.paragraphs.append(f"x-axis: {g.x_label}.")
    workload = g.rows[0]["workload"]
    metrics = tuple(m for m in plotted_metrics() if not m.workload or m.workload == workload)
    ceilings = _ceilings(metrics, g.rows[0].case, calibration)
    statuses = {r.status for r in cells.values()}
    if statuses == {"skipped"}:  # e.g. a CUDA grid on a CPU machine: one line, not a table of "skipped"
        reasons = sorted({str(r.message or "no reason given") for r in cells.values()})
        sec.paragraphs.append(f"All {len(cells)} cases skipped: {'; '.join(reasons)}.")
        return sec
    if not ok_xs:
        sec.paragraphs.append("No case in this group ran OK: nothing to plot or fit.")
    elif len(ok_xs) < 2:
        sec.paragraphs.append("Only one sequence length ran OK in this group: tables only, no plots or fits.")
    elif plot:
        fields = {f for m in metrics for f in (m.field, *(m.band or ()))}
        series = []
        for impl in impls:
            ok = [r if r is not None and r.ok else None for r in (cells.get((impl, x)) for x in xs)]
            values = {f: tuple(_display(r, f) for r in ok) for f in fields}
            series.append(Series(impl, *styles[impl], tuple(xs), tuple(bool(r and r.mark) for r in ok),
                                 values))
        pngs = plot_group(series, metrics, title=f"{g.grid} · {g.label}", x_label=g.x_label, ceilings=ceilings)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{g.grid}-{g.label}").strip("-")[:48]
        for key, png in pngs.items():
            sec.figures.append(Figure(f"{idx:02d}-{slug}-{key}.png", png, f"{key}: {g.grid} {g.label}"))
    head = ["impl"] + [n_label(x) for x in xs]

    def table(title, fmt, note=""):
        rows = [[impl] + [_cell(cells.get((impl, x)), fmt) for x in xs] for impl in impls]
        return Table(f"{title}, by {g.x_symbol}", head, rows, note)

    if not ok_xs:  # nothing measured: one table of statuses says it all
        sec.tables.append(table("Status", lambda r: "ok"))
        return sec
    for m in metrics:
        sec.tables.append(table(f"{m.title} ({m.display_unit})", _metric_cell(m, ceilings.get(m.field)),
                                _ceiling_note(m, g.rows[0]["device"], ceilings.get(m.field))))
    sec.tables.extend(_speedup_table(cells, impls, xs, baseline, head, g.x_symbol, sec))
    if len(ok_xs) >= MIN_FIT_SIZES:
        sec.bullets_title = (f"Scaling exponents (least squares in log–log over the largest sizes: the top half, "
                             f"at least {MIN_FIT_SIZES}):")
        sec.bullets.extend(_fit_lines(g, impls, cells, xs))
    return sec


def _display(r: Row | None, field: str) -> float:
    from harness.results.metrics import BY_FIELD

    v = None if r is None else num(r[field])
    if v is None:
        return math.nan
    m = BY_FIELD.get(field) or BY_FIELD["median_s"]  # band fields share their metric's unit
    return v * m.display_scale


def _ceilings(metrics, case, calibration: dict) -> dict[str, float]:
    """Measured ceilings (run.json calibration, for the group's device, dtype and threads) in
    each metric's unit."""
    from harness.results.ceilings import ceilings_of, lookup

    out = {}
    for m in metrics:
        if m.ceiling:
            c = num(lookup(ceilings_of(calibration, m.ceiling), case))
            if c and c > 0:
                out[m.field] = c * m.ceiling_scale * m.display_scale
    return out


def _metric_cell(m: Metric, ceiling: float | None):
    def cell(r: Row) -> str:
        v = m.shown(num(r[m.field]))
        if v is None:
            return "-"
        pct = f" ({v / ceiling * 100:.0f}%)" if ceiling else ""
        mark = r.mark if m.kind in ("timing", "rate") else ""
        return _fmt(v) + pct + mark

    return cell


def _ceiling_note(m: Metric, device: str, ceiling: float | None) -> str:
    if not m.ceiling:
        return ""
    if ceiling:
        return f"In parentheses: % of the measured {device} {m.ceiling_label} ({ceiling:.3g} {m.display_unit})."
    return f"No calibration {m.ceiling_label} for this device: no % of it."


def _cell(r: Row | None, fmt) -> str:
    if r is None:
        return ""
    return fmt(r) if r.ok else (r.status or "?")


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def _speedup_table(cells, impls, xs, baseline, head, sym, sec: Section) -> list[Table]:
    base = {x: cells.get((baseline, x)) for x in xs}
    if not any(b is not None and b.ok for b in base.values()):
        got = sorted({b.status for b in base.values() if b is not None})
        sec.paragraphs.append(f"Baseline {baseline!r} did not run OK in this group"
                              f"{' (' + ', '.join(got) + ')' if got else ' (not run)'}: no speed-up table.")
        return []
    rows = []
    for impl in impls:
        row = [impl]
        for x in xs:
            r, b = cells.get((impl, x)), base[x]
            if r is None or b is None or not (r.ok and b.ok):
                row.append("-" if r is None or r.ok else r.status)
                continue
            mark = "~" if (r.mark or b.mark) else ""
            row.append(f"{b['median_s'] / r['median_s']:.2f}×{mark}")
        rows.append(row)
    noisy = any(c.endswith("~") for row in rows for c in row[1:])
    return [Table(f"Speed-up vs {baseline} (× faster; > 1 = faster than {baseline}), by {sym}", head, rows,
                  "~: the implementation's or the baseline's timing is noisy or contended." if noisy else "")]


def _fit_lines(g: Group, impls, cells, xs) -> list[str]:
    sym = g.x_symbol
    lines = []
    for impl in impls:
        ok = [cells[(impl, x)] for x in xs if (impl, x) in cells and cells[(impl, x)].ok]
        ns = [r[g.x_col] for r in ok]
        parts = []
        for m in (m for m in plotted_metrics() if m.fit):
            what = m.plot
            f = fit_largest(ns, [r[m.field] for r in ok])
            if f is not None:
                a = round(f.exponent, 2) + 0.0  # never "-0.00"
                parts.append(f"{what} ∝ {sym}^{a:.2f} (R² {f.r2:.3f}, {sym} {f.n_min:.0f}–{f.n_max:.0f}, "
                             f"{f.n_points} sizes)")
        none = f"fewer than {MIN_FIT_SIZES} sizes ran OK, no fit"
        lines.append(f"{impl}: " + ("; ".join(parts) if parts else none))
    return lines
