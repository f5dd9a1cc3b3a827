"""`attnbench report`: a run directory -> reports/<run-id>/ (index.html, report.md, *.png).

Reads results only; never times anything. The content is built once as plain-text Sections and
Tables (the document model in report_html.py), then rendered twice there: a self-contained
index.html (PNGs as data: URIs, no network) and report.md (GitHub-flavoured tables, PNGs by name). This module reads and groups
the records and writes the run-wide sections (environment, summary, numerical error, failures);
report_plots.py builds each group's section: figures, per-size tables, speed-ups, fits.

Grouping: per scenario grid, then per combination of every parameter except the sequence lengths
(GROUP_PARAMS). Within such a group the x-axis is N for self-attention (Nq = Nk), Nk when Nq is
constant, Nq when Nk is constant; when both vary the group is split by Nq and x is Nk.
Scaling exponents come from harness.fit.fit_largest (the top half of the sizes, at least 3).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path

from harness.case import Case
from harness.report.render import Report, Section, Table, render_html, render_markdown
from harness.results.store import load_results, read_run_info, resolve_run_dir

GROUP_PARAMS = ("dtype", "device", "causal", "batch", "heads_q", "heads_kv", "head_dim", "mask",
                "mask_fraction", "pass_kind", "threads")
NUMERIC = ("batch", "heads_q", "heads_kv", "seq_len_q", "seq_len_kv", "head_dim", "mask_fraction",
           "median_s", "q1_s", "q3_s", "spread", "flops", "tflops_per_s", "peak_bytes",
           "predicted_peak_bytes", "max_abs_error", "rel_l2_error", "naive_max_abs_error")
TEXT = ("impl", "status", "message", "noise", "error_rule", "grid", "dtype", "device", "mask", "pass_kind")
NOISE_MARK = {"noisy": "~", "unreliable": "~~"}
NOISE_NOTE = ("~ after a number: noisy timing (IQR/median ≥ 10%); ~~: unreliable (≥ 25%). "
              "The plots draw those points as hollow markers.")
DEFAULT_BASELINE = "sdpa"
MAX_PLOTTED_GROUPS = 24  # bounds the PNG count (3 per group) on huge sweeps; tables still cover all
_PNG_NAME = re.compile(r"^\d{2,3}-[A-Za-z0-9_.-]*-(latency|memory|throughput)\.png$")


@dataclass
class Group:
    grid: str
    label: str
    x_col: str  # "seq_len_q" or "seq_len_kv"
    x_symbol: str  # "N", "Nq" or "Nk"
    x_label: str
    rows: list[dict]

    @property
    def xs(self) -> list[int]:
        return sorted({int(r[self.x_col]) for r in self.rows})


# ---------------------------------------------------------------- entry point


def write_report(run_dir, out_dir=None, baseline: str | None = None) -> Path:
    """Write index.html, report.md and the PNGs; return the report directory."""
    run_dir = resolve_run_dir(run_dir)
    info = read_run_info(run_dir)
    run_id = Path(str(info.get("run_id") or run_dir.name)).name or run_dir.name  # never a path outside reports/
    out = Path(out_dir) if out_dir is not None else Path("reports") / run_id
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(run_dir, info, baseline=baseline)
    for old in out.glob("*.png"):  # a previous report's figures, never anyone else's files
        if _PNG_NAME.match(old.name):
            old.unlink()
    for sec in report.sections:
        for fig in sec.figures:
            (out / fig.file).write_bytes(fig.png)
    (out / "report.md").write_text(render_markdown(report), encoding="utf-8")
    (out / "index.html").write_text(render_html(report), encoding="utf-8")
    return out


def build_report(run_dir: Path, info: dict, baseline: str | None = None) -> Report:
    rows = _records(load_results(run_dir))
    scenario = info.get("scenario") if isinstance(info.get("scenario"), dict) else {}
    baseline = baseline or scenario.get("baseline") or DEFAULT_BASELINE
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    calibration = info.get("calibration") if isinstance(info.get("calibration"), dict) else {}
    sections = [environment_section(run_dir, info, rows)]
    sections.append(_overview(rows, baseline))
    groups = make_groups(rows)
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
    sections.append(_errors_section(rows))
    sections.append(_problems_section(rows))
    title = f"attnbench report: {info.get('run_id') or run_dir.name}"
    return Report(title, [s for s in sections if s is not None])


# ---------------------------------------------------------------- data


def _records(df) -> list[dict]:
    """One clean dict per case: every expected key present, NaN -> None, sizes as int, measured
    numbers as float, and "ok" = ran OK with a usable median time."""
    from harness.measure.stats import noise_level

    defaults = {f.name: f.default for f in dataclasses.fields(Case)}
    out = []
    for raw in df.to_dict("records") if len(df) else []:
        r = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in raw.items()}
        for k, d in defaults.items():
            if r.get(k) is None:
                r[k] = d
        for k in NUMERIC:
            r[k] = _num(r.get(k))
        for k in TEXT:
            r[k] = "" if r.get(k) is None else str(r[k])
        r["impl"] = r["impl"] or "?"
        for k in ("batch", "heads_q", "heads_kv", "seq_len_q", "seq_len_kv", "head_dim"):
            r[k] = int(r[k]) if r[k] is not None else None
        r["causal"] = bool(r["causal"])
        r["threads"] = int(r["threads"]) if _num(r["threads"]) else None
        if r["noise"] not in ("ok", "noisy", "unreliable"):
            r["noise"] = noise_level(r["spread"]) if r["spread"] is not None else ""
        ep = r.get("error_passed")
        r["error_passed"] = None if ep is None else bool(ep)
        r["ok"] = r["status"] == "ok" and (r["median_s"] or 0) > 0
        out.append(r)
    return out


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def make_groups(rows: list[dict]) -> list[Group]:
    """Grid -> combination of GROUP_PARAMS -> x-axis choice (see the module docstring)."""
    groups: list[Group] = []
    for grid in dict.fromkeys(r["grid"] for r in rows):
        combos: dict[tuple, list[dict]] = {}
        for r in rows:
            if r["grid"] == grid and r["seq_len_q"] and r["seq_len_kv"]:
                combos.setdefault(tuple(r[p] for p in GROUP_PARAMS), []).append(r)
        for rs in combos.values():
            groups.extend(_split_x(grid, rs))
    # Groups where something was measured first (in scenario order), wholly skipped ones after:
    # on a CPU machine the CUDA grids are a footnote, not the opening of the report.
    return sorted(groups, key=lambda g: all(r["status"] == "skipped" for r in g.rows))


def _split_x(grid: str, rs: list[dict]) -> list[Group]:
    nq = sorted({int(r["seq_len_q"]) for r in rs})
    nk = sorted({int(r["seq_len_kv"]) for r in rs})
    if all(r["seq_len_q"] == r["seq_len_kv"] for r in rs):
        return [Group(grid, _label(rs[0]), "seq_len_q", "N", "sequence length N (Nq = Nk)", rs)]
    if len(nq) == 1:
        return [Group(grid, _label(rs[0], f"Nq {nq[0]}"), "seq_len_kv", "Nk",
                      f"key/value length Nk (cross-attention, Nq = {nq[0]})", rs)]
    if len(nk) == 1:
        return [Group(grid, _label(rs[0], f"Nk {nk[0]}"), "seq_len_q", "Nq",
                      f"query length Nq (cross-attention, Nk = {nk[0]})", rs)]
    out = []
    for q in nq:  # both vary: one group per Nq, Nk on the x-axis
        out.extend(_split_x(grid, [r for r in rs if int(r["seq_len_q"]) == q]))
    return out


def _label(r: dict, fixed: str = "") -> str:
    hq, hkv = int(r["heads_q"]), int(r["heads_kv"])
    bits = [f"b{int(r['batch'])}", f"h{hq}" if hq == hkv else f"h{hq}/{hkv}", f"d{int(r['head_dim'])}",
            r["dtype"], r["device"]]
    if fixed:
        bits.append(fixed)
    if r["causal"]:
        bits.append("causal")
    if r["mask"] and r["mask"] != "none":
        bits.append(f"{r['mask']} {r['mask_fraction'] or 0:g}")
    if r["pass_kind"] and r["pass_kind"] != "forward":
        bits.append(r["pass_kind"])
    if r["threads"]:
        bits.append(f"{r['threads']} threads")
    return " ".join(bits)


# ---------------------------------------------------------------- sections

# run.json["environment"] is written by harness.measure.env; look fields up by a few likely names so the
# report survives that module's schema growing. Everything is also listed in "Full environment".
_ENV_FIELDS = (
    ("CPU", ("cpu_model", "cpu.model", "cpu_name", "cpu.name", "processor", "cpu")),
    ("GPU", ("gpu_name", "gpu.name", "gpus", "gpu", "cuda_device_name", "cuda.device_name", "cuda.name",
             "cuda.devices", "cuda.device")),
    ("torch", ("torch_version", "torch.version", "versions.torch", "torch")),
    ("CPU threads", ("torch_threads", "torch.num_threads", "torch.threads", "num_threads", "threads")),
    ("CPU cores (usable)", ("usable_cores", "cpu.usable_cores")),
    ("python", ("python_version", "python.version", "versions.python", "python")),
    ("torch CUDA", ("torch_cuda_version", "cuda_version", "cuda.version")),
    ("git commit", ("git_commit", "git.commit", "git.sha", "git_sha", "commit", "git")),
    ("git dirty", ("git_dirty", "git.dirty", "dirty")),
)


def environment_section(run_dir: Path, info: dict, rows: list[dict]) -> Section:
    env = info.get("environment") if isinstance(info.get("environment"), dict) else {}
    flat = _flatten(env)
    scenario = info.get("scenario") if isinstance(info.get("scenario"), dict) else {}
    devices = ", ".join(dict.fromkeys(r["device"] for r in rows)) or _lookup(flat, ("device",)) or "-"
    out = [["run", str(info.get("run_id") or run_dir.name)],
           ["scenario", f"{scenario.get('name', '-')} ({scenario.get('path', '-')})"],
           ["started at", str(info.get("started_at") or "-")],
           ["devices in this run", devices]]
    gpus = env.get("gpus")
    if isinstance(gpus, list) and gpus:  # harness.measure.env: one dict per GPU
        flat.setdefault("gpu_name", ", ".join(str(g.get("name", g)) if isinstance(g, dict) else str(g) for g in gpus))
    elif env.get("cuda_available") is False:
        flat.setdefault("gpu_name", "none (CUDA not available)")
    for label, names in _ENV_FIELDS:
        value = _lookup(flat, names)
        if value or label in ("CPU", "GPU", "torch", "git commit"):
            out.append([label, value or "-"])
    threads = sorted({r["threads"] for r in rows if r["threads"]})
    if threads:
        out.append(["threads set by cases", ", ".join(map(str, threads))])
    cal = info.get("calibration")
    if isinstance(cal, dict) and cal:
        for k, v in cal.items():
            f = _num(v)
            out.append([f"calibration {k.removesuffix('_flops_per_s')} peak",
                        f"{f / 1e12:.3g} TFLOP/s" if f else "not measured (no % of peak)"])
    else:
        out.append(["calibration peak", "not measured (no % of peak)"])
    out.append(["results", str(run_dir)])
    sec = Section("Environment", tables=[Table("Where and what ran", ["", "value"], out, numeric=False)])
    if flat:
        sec.tables.append(Table("Full environment (run.json)", ["key", "value"],
                                [[k, v] for k, v in flat.items()], numeric=False, html_only=True))
    return sec


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


def _lookup(flat: dict[str, str], names) -> str:
    lower = {k.lower(): v for k, v in flat.items()}
    for name in names:  # an exact dotted key first, then the same last component anywhere
        if name in lower:
            return lower[name]
    for name in names:
        for k, v in lower.items():
            if k.rsplit(".", 1)[-1] == name:
                return v
    return ""



def _overview(rows: list[dict], baseline: str) -> Section:
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
    if any(r["ok"] and r["noise"] in NOISE_MARK for r in rows):
        sec.paragraphs.append(NOISE_NOTE)
    return sec


def _errors_section(rows: list[dict]) -> Section:
    sec = Section("Numerical error vs the float64 reference")
    checked = [r for r in rows if r["max_abs_error"] is not None or r["error_passed"] is not None]
    if not checked:
        sec.paragraphs.append("No case recorded an error measurement.")
        return sec
    by: dict[tuple[str, str], list[dict]] = {}
    for r in checked:
        by.setdefault((r["impl"], r["dtype"]), []).append(r)
    out = []
    for (impl, dtype), rs in by.items():
        mx = lambda k: max((r[k] for r in rs if r[k] is not None), default=None)  # noqa: E731
        a, l2 = mx("max_abs_error"), mx("rel_l2_error")
        passed = sum(r["error_passed"] is True for r in rs)
        failed = sum(r["error_passed"] is False for r in rs)
        out.append([impl, dtype, str(len(rs)), "-" if a is None else f"{a:.2e}", "-" if l2 is None else f"{l2:.2e}",
                    str(passed), str(failed), str(len(rs) - passed - failed)])
    rules = sorted({r["error_rule"] for r in checked if r["error_rule"]})
    note = ("Pass rules: " + "; ".join(rules)) if rules else ""
    sec.tables.append(Table("Error per implementation and dtype (worst case over its shapes)",
                            ["impl", "dtype", "cases", "max abs error", "max rel L2 error", "passed", "failed",
                             "not judged"], out, note))
    return sec


def _problems_section(rows: list[dict]) -> Section | None:
    from harness.cli.console import case_shape

    bad = [r for r in rows if r["status"] != "ok"]
    sec = Section("Cases that did not run OK")
    if not bad:
        sec.paragraphs.append("Every case ran OK.")
        return sec
    failed = [r for r in bad if r["status"] != "skipped"]
    skipped = [r for r in bad if r["status"] == "skipped"]

    def shape(r):
        try:
            return case_shape(Case.from_dict(r))
        except (TypeError, ValueError):
            return r.get("case_id") or ""

    head = ["status", "impl", "grid", "case", "reason"]
    if failed:
        sec.tables.append(Table(f"Failed: {len(failed)} cases (wrong, oom, error, timeout, crashed)", head,
                                [[r["status"], r["impl"], r["grid"], shape(r), r["message"] or "-"] for r in failed],
                                numeric=False))
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
