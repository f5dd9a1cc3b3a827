"""`attnbench report`: a run directory -> its report folder (index.html, report.md, *.png).

Reads results once as typed rows (harness.results.rows); never times anything. The content is
built once as plain-text Sections and Tables (the document model in render.py), then rendered
twice there: a self-contained index.html (PNGs as data: URIs, no network) and report.md
(GitHub-flavoured tables, PNGs by name). This module writes the run-wide sections (environment,
summary, numerical error, failures); plots.py builds each group's section (groups.py: grouping
and x-axes): figures, per-size tables, speed-ups, fits, all driven by the metrics table.

Grouping: per scenario grid, then per combination of every parameter except the sequence lengths
(GROUP_PARAMS). Within such a group the x-axis is N for self-attention (Nq = Nk), Nk when Nq is
constant, Nq when Nk is constant; when both vary the group is split by Nq and x is Nk.
Scaling exponents come from harness.report.fit.fit_largest (the top half of the sizes, at least 3).
"""

from __future__ import annotations

import re
from pathlib import Path

from harness.report.groups import NOISE_NOTE, Group, make_groups, measured, num
from harness.report.render import Report, Section, Table, write_documents
from harness.results.metrics import error_metrics
from harness.results.environment import GPU_FIELDS, SUMMARY_FIELDS, gpu_names, malloc_settings
from harness.results.rows import Row, read_rows
from harness.results.store import read_run_info, resolve_run_dir

DEFAULT_BASELINE = "sdpa"
MAX_PLOTTED_GROUPS = 24  # bounds the PNG count (3 per group) on huge sweeps; tables still cover all
_PNG_NAME = re.compile(r"^\d{2,3}-[A-Za-z0-9_.-]*\.png$")  # the names this module writes


# ---------------------------------------------------------------- entry point


def write_report(run_dir, out_dir=None, baseline: str | None = None) -> Path:
    """Write index.html, report.md and the PNGs; return the report directory."""
    run_dir = resolve_run_dir(run_dir)
    info = read_run_info(run_dir)
    out = Path(out_dir) if out_dir is not None else default_report_dir(run_dir, info)
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(run_dir, info, baseline=baseline)
    for old in out.glob("*.png"):  # a previous report's figures, never anyone else's files
        if _PNG_NAME.match(old.name):
            old.unlink()
    write_documents(report, out)
    return out


def default_report_dir(run_dir: Path, info: dict | None = None) -> Path:
    """Where a run's report goes unless told otherwise: reports/<run-id> beside the results/
    folder that holds the run (results/X -> reports/X, wherever that tree is), else a report/
    folder inside the run directory (a run written with --out DIR keeps its report with it)."""
    run_dir = Path(run_dir).resolve()
    run_id = Path(str((info or {}).get("run_id") or run_dir.name)).name
    if run_id in ("", ".", ".."):  # never a path elsewhere, whatever run.json says
        run_id = run_dir.name
    if run_dir.parent.name == "results":
        return run_dir.parent.parent / "reports" / run_id
    return run_dir / "report"


def build_report(run_dir: Path, info: dict, baseline: str | None = None) -> Report:
    rows = read_rows(run_dir)
    scenario = info.get("scenario") if isinstance(info.get("scenario"), dict) else {}
    baseline = baseline or scenario.get("baseline") or DEFAULT_BASELINE
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    calibration = info.get("calibration") if isinstance(info.get("calibration"), dict) else {}
    sections = [environment_section(run_dir, info, rows)]
    sections.append(_overview(rows, baseline))
    bad = calibration_disagrees(calibration)
    if bad:
        sections[-1].paragraphs.append(
            f"Warning: the matmul ceiling measured at the start and at the end of the run disagree beyond their "
            f"spread ({', '.join(bad)}): the machine's speed changed during the run (load, clocks); compare "
            f"its absolute times with care.")
    contended = [r for r in rows if r.m.contended]
    if contended:
        sections[-1].paragraphs.append(
            f"{len(contended)} case(s) did not get the CPU they asked for (contended: another process was busy); "
            f"their times are marked ! and drawn hollow, and `compare` never judges them.")
    from harness.report.model_summary import model_section

    sections.append(model_section(rows, info, baseline))  # None unless the scenario has a [model] table
    groups = make_groups(rows)
    unmeasured = [g for g in groups if not measured(g)]  # listed with the skipped cases, no section
    groups = [g for g in groups if measured(g)]
    if groups:
        from harness.report.plots import group_section, impl_styles

        styles = impl_styles(impls)
        plotted = omitted = 0
        for idx, g in enumerate(groups, 1):
            plottable = len({r[g.x_col] for r in g.rows if r["ok"]}) >= 2
            plot = plottable and plotted < MAX_PLOTTED_GROUPS
            omitted += plottable and not plot
            plotted += plot
            sections.append(group_section(idx, g, impls, styles, baseline, calibration, plot=plot))
        if omitted:
            sections[1].paragraphs.append(f"Plots are drawn for the first {MAX_PLOTTED_GROUPS} groups only "
                                          f"({omitted} more left out); the tables cover every group.")
    from harness.report.plots import impl_styles
    from harness.report.roofline import roofline_section

    sections.append(roofline_section(rows, calibration, impl_styles(impls)))
    from harness.report.kernels_section import kernels_section

    sections.append(kernels_section(rows))  # which kernels ran, compile time (None: nothing recorded)
    sections.append(_errors_section(rows))
    sections.append(_problems_section(rows, unmeasured))
    title = f"attnbench report: {info.get('run_id') or run_dir.name}"
    return Report(title, [s for s in sections if s is not None])


# ---------------------------------------------------------------- sections

def environment_section(run_dir: Path, info: dict, rows: list[Row]) -> Section:
    env = info.get("environment") if isinstance(info.get("environment"), dict) else {}
    flat = _flatten(env)
    scenario = info.get("scenario") if isinstance(info.get("scenario"), dict) else {}
    ran = [r for r in rows if r.status != "skipped"]  # a device whose cases were all skipped did not run
    devices = ", ".join(dict.fromkeys(r["device"] for r in ran)) or "none (every case was skipped)"
    out = [["run", str(info.get("run_id") or run_dir.name)],
           ["scenario", f"{scenario.get('name', '-')} ({scenario.get('path', '-')})"],
           ["started at", str(info.get("started_at") or "-")],
           ["devices that ran cases", devices]]
    ran_cuda = any(str(r["device"]).startswith("cuda") for r in ran)
    for label, key in SUMMARY_FIELDS:  # the record's own keys (harness.results.environment)
        if label in GPU_FIELDS and not ran_cuda:  # only devices that ran cases are listed
            continue
        value = "" if env.get(key) in (None, "") else str(env[key])
        if value or label in ("CPU", "torch", "git commit"):
            out.append([label, value or "-"])
    if ran_cuda:
        out.append(["GPU", gpu_names(env) or "-"])
    out.append(["Memory allocators (measurement processes)", malloc_settings(env)])
    threads = sorted({r["threads"] for r in rows if r["threads"]})
    if threads:
        out.append(["threads set by cases", ", ".join(map(str, threads))])
    out.extend(_calibration_rows(info.get("calibration")))
    out.append(["results", str(run_dir)])
    sec = Section("Environment", tables=[Table("Where and what ran", ["", "value"], out, numeric=False)])
    if flat:
        sec.tables.append(Table("Full environment (run.json)", ["key", "value"],
                                [[k, v] for k, v in flat.items()], numeric=False, html_only=True))
    return sec


def _calibration_rows(cal) -> list[list[str]]:
    """One row per measured ceiling: the max, and start/end when the run measured both."""
    if not isinstance(cal, dict) or not cal:
        return [["calibration peak", "not measured (no % of peak)"]]
    rows = []
    for key, v in cal.items():
        if isinstance(v, dict):
            peak = num(v.get("matmul_flops_per_s"))
            parts = [f"{peak / 1e12:.3g} TFLOP/s" if peak else "not measured (no % of peak)"]
            rates = [num((v.get(w) or {}).get("matmul_flops_per_s")) for w in ("start", "end")]
            if all(rates):
                parts.append(f"start {rates[0] / 1e12:.3g}, end {rates[1] / 1e12:.3g}")
            if v.get("agree") is False:
                parts.append("DISAGREE: the machine changed during the run")
            errors = [str((v.get(w) or {}).get("error")) for w in ("start", "end") if (v.get(w) or {}).get("error")]
            parts += errors
            rows.append([f"matmul peak {key}", "; ".join(parts)])
            read = _read_row(v)
            if read:
                rows.append([f"read ceiling {key}", read])
        else:  # older runs: {"cpu_matmul_flops_per_s": x}
            f = num(v)
            rows.append([f"calibration {key.removesuffix('_flops_per_s')} peak",
                         f"{f / 1e12:.3g} TFLOP/s" if f else "not measured (no % of peak)"])
    return rows


def _read_row(v: dict) -> str:
    """The read ceiling of one key: its rate, the method (and side) that won, how far every read
    measured spread, each method's rate; runs from before the read methods: the one figure."""
    from harness.results.ceilings import read_summary

    bw = num(v.get("read_bytes_per_s"))
    if not bw:
        errors = [str((v.get(w) or {}).get("read_error")) for w in ("start", "end") if (v.get(w) or {}).get("read_error")]
        return f"not measured: {'; '.join(dict.fromkeys(errors))}" if errors else ""
    s = read_summary(v.get("start"), v.get("end"))
    rates = s.get("read_rates") or {}
    if not rates or all(k.startswith("one read") for k in rates):
        return f"{bw / 1e9:.3g} GB/s (one read; its method was not recorded)"
    text = (f"{bw / 1e9:.3g} GB/s, the best of {len(rates)} reads: {s['read_method']}; they spread "
            f"{s['read_spread']:.0%} (" + ", ".join(f"{k} {r / 1e9:.3g}" for k, r in rates.items()) + " GB/s)")
    notes = dict.fromkeys(str((v.get(w) or {}).get("read_note")) for w in ("start", "end")
                          if (v.get(w) or {}).get("read_note"))
    return "; ".join([text, *notes])


def calibration_disagrees(cal) -> list[str]:
    return [k for k, v in (cal or {}).items() if isinstance(v, dict) and v.get("agree") is False]


def _flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        elif isinstance(v, (list, tuple)) and v and all(isinstance(x, dict) for x in v):
            for i, x in enumerate(v):
                out.update(_flatten(x, f"{key}.{i}."))
        elif isinstance(v, (list, tuple)):
            out[key] = ", ".join(str(x) for x in v) if v else "-"
        else:
            out[key] = "-" if v is None else str(v)
    return out



def _overview(rows: list[Row], baseline: str) -> Section:
    sec = Section("Summary")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"] or "?"] = counts.get(r["status"] or "?", 0) + 1
    if not rows:
        sec.paragraphs.append("This run has no results yet: nothing to report.")
        return sec
    sec.paragraphs.append(f"{len(rows)} cases: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + ".")
    if not any(r["ok"] for r in rows):
        sec.paragraphs.append("No case ran OK: there is nothing to plot, fit or compare.")
    base = [r for r in rows if r["impl"] == baseline]
    if not base:
        sec.paragraphs.append(f"Baseline {baseline!r} is not in this run: speed-ups are skipped.")
    elif not any(r["ok"] for r in base):
        why = sorted({f"{r['status']}: {r['message']}" if r["message"] else r["status"] for r in base})
        sec.paragraphs.append(f"Baseline {baseline!r} did not run OK ({'; '.join(why)[:300]}): speed-ups are skipped.")
    else:
        sec.paragraphs.append(f"Speed-ups are relative to {baseline!r}: median time of {baseline} / median time "
                              "of the implementation (> 1 = faster than the baseline).")
    if any(r.ok and r.mark for r in rows):
        sec.paragraphs.append(NOISE_NOTE)
    return sec


def _errors_section(rows: list[Row]) -> Section:
    sec = Section("Numerical error vs the float64 reference")
    checked = [r for r in rows if r["error_passed"] is not None or any(r[x.field] is not None for x in error_metrics())]
    shown = [x for x in error_metrics() if any(r[x.field] is not None for r in checked)]  # e.g. gradients
    if not checked:
        sec.paragraphs.append("No case recorded an error measurement.")
        return sec
    by: dict[tuple[str, str], list[Row]] = {}
    for r in checked:
        by.setdefault((r.impl, r["dtype"]), []).append(r)
    out = []
    for (impl, dtype), rs in by.items():
        worst = [max((r[x.field] for r in rs if r[x.field] is not None), default=None) for x in shown]
        passed = sum(r["error_passed"] is True and r["grad_error_passed"] is not False for r in rs)
        failed = sum(r["error_passed"] is False or r["grad_error_passed"] is False for r in rs)
        out.append([impl, dtype, str(len(rs)), *(x.human(w) for x, w in zip(shown, worst)),
                    str(passed), str(failed), str(len(rs) - passed - failed)])
    rules = sorted({r.m.error_rule for r in checked if r.m.error_rule})
    rows_note = sorted({r.m.error_rows for r in checked if r.m.error_rows})
    note = ("Pass rules: " + "; ".join(rules)) if rules else ""
    sec.tables.append(Table("Error per implementation and dtype (worst case over its shapes)",
                            ["impl", "dtype", "cases", *(x.title for x in shown), "passed", "failed", "not judged"],
                            out, note))
    if rows_note:
        sec.paragraphs.append("Query rows compared per case: " + ", ".join(map(str, rows_note)) + ".")
    return sec


def _problems_section(rows: list[Row], unmeasured: list[Group] = ()) -> Section | None:
    from harness.case import case_shape

    bad = [r for r in rows if r["status"] != "ok"]
    sec = Section("Cases that did not run OK")
    if not bad:
        sec.paragraphs.append("Every case ran OK.")
        return sec
    failed = [r for r in bad if r["status"] != "skipped"]
    skipped = [r for r in bad if r["status"] == "skipped"]

    def shape(r):
        return case_shape(r.case)

    head = ["status", "impl", "grid", "case", "reason"]
    if failed:
        sec.tables.append(Table(f"Failed: {len(failed)} cases (wrong, oom, error, timeout, crashed)", head,
                                [[r["status"], r["impl"], r["grid"], shape(r), r["message"] or "-"] for r in failed],
                                numeric=False))
    if unmeasured:  # whole groups that never ran (e.g. CUDA grids on a CPU machine): no section of their own
        sec.tables.append(Table(f"Skipped groups: {len(unmeasured)} (no case measured)",
                                ["grid", "group", "cases", "reason"],
                                [[g.grid or "(no grid)", g.label, str(len(g.rows)),
                                  "; ".join(sorted({str(r["message"] or "no reason given") for r in g.rows}))]
                                 for g in unmeasured], numeric=False))
    if skipped:
        by: dict[str, list[dict]] = {}
        for r in skipped:
            by.setdefault(r["message"] or "(no reason given)", []).append(r)
        sec.tables.append(Table(f"Skipped: {len(skipped)} cases, by reason", ["cases", "impls", "grids", "reason"],
                                [[str(len(rs)), ", ".join(dict.fromkeys(r["impl"] for r in rs)),
                                  ", ".join(dict.fromkeys(r["grid"] for r in rs)), why] for why, rs in by.items()],
                                numeric=False))
        sec.tables.append(Table("Every skipped case", head,
                                [[r["status"], r["impl"], r["grid"], shape(r), r["message"] or "-"] for r in skipped],
                                numeric=False, html_only=True))
    return sec
