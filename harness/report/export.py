"""A run directory -> other tools' formats: pytest-benchmark JSON, CSV, Parquet.

pytest-benchmark: the file `pytest-benchmark compare FILE` loads (the layout its plugin writes in
pytest_benchmark_generate_json: machine_info, commit_info, benchmarks[], datetime, version). Each
ok measurement becomes one benchmark whose stats.data are our per-call samples (one per timed
block, i.e. already divided by calls_per_block, which is pytest-benchmark's `iterations`). The
derived statistics come from pytest_benchmark.stats.Stats itself, so quartiles use its method.
Cases that did not produce times (skipped, error, ...) are left out, as pytest-benchmark leaves
out benchmarks with errors; export_pytest_benchmark says how many.

CSV/Parquet: harness.results.load_results' DataFrame; list and dict cells (samples_s, extra)
are JSON-encoded strings so every cell is a scalar.
"""

from __future__ import annotations

import importlib.util
import json
import platform
from datetime import datetime, timezone
from pathlib import Path

from harness.case import Case
from harness.results.metrics import METRICS
from harness.results.records import Measurement
from harness.results.store import read_measurements, read_run_info, resolve_run_dir

FORMATS = ("pytest-benchmark", "csv", "parquet")
PARQUET_ENGINES = ("pyarrow", "fastparquet")


class ExportError(ValueError):
    """The export cannot be done as asked (e.g. a missing optional package); one line, exit 2."""


# ------------------------------------------------------------------------------------ pytest-benchmark


def _shape_param(case: Case) -> str:
    """The case_id without the implementation: the pytest-style parameter id of the benchmark."""
    return case.case_id.split("/", 1)[1].replace("/", "-")


def _machine_info(env: dict) -> dict:
    """pytest-benchmark's machine_info keys, filled from our environment record where we have them."""
    return {
        "node": env.get("hostname", ""),
        "processor": env.get("cpu_model", ""),
        "machine": env.get("machine", ""),
        "python_compiler": "",
        "python_implementation": env.get("python_implementation", platform.python_implementation()),
        "python_implementation_version": env.get("python_version", ""),
        "python_version": env.get("python_version", ""),
        "python_build": [],
        "release": "",
        "system": (env.get("platform") or "").split("-")[0],
        "cpu": {"brand_raw": env.get("cpu_model", ""), "count": env.get("logical_cores")},
        "attnbench_environment": env,
    }


def _commit_info(env: dict) -> dict:
    return {"id": env.get("git_commit"), "time": None, "author_time": None, "dirty": env.get("git_dirty"),
            "project": "attnbench", "branch": None}


def _stats(m: Measurement) -> dict:
    from pytest_benchmark.stats import Stats

    s = Stats()
    for x in m.samples_s:
        s.update(float(x))
    d = s.as_dict()
    d["data"] = [float(x) for x in m.samples_s]
    d["iterations"] = max(1, int(m.calls_per_block or 1))
    return d


def _benchmark(m: Measurement, budget: dict) -> dict:
    case = m.case
    param = _shape_param(case)
    group = case.grid or "attnbench"
    name = f"{case.impl}[{param}]"
    extra = {x.field: x.value(m) for x in METRICS if x.judge != "samples"}  # the time itself is in "stats"
    extra.update({"case_id": case.case_id, "noise": m.noise, "spread": getattr(m.stats, "spread", None),
                  "timing_stopped": m.timing_stopped})
    return {
        "group": group,
        "name": name,
        "fullname": f"attnbench::{group}::{name}",
        "params": {"impl": case.impl, **case.comparable()},
        "param": param,
        "extra_info": extra,
        "options": {"disable_gc": True, "timer": "perf_counter" if case.device == "cpu" else "cuda_event",
                    "min_rounds": 3, "max_time": budget.get("max_time_s"), "min_time": budget.get("min_time_s"),
                    "warmup": bool(budget.get("warmup_s"))},
        "stats": _stats(m),
    }


def to_pytest_benchmark(run_dir: str | Path) -> tuple[dict, int]:
    """(pytest-benchmark JSON document, number of records left out for having no samples)."""
    from pytest_benchmark import __version__

    info = read_run_info(run_dir)
    env = info.get("environment") or {}
    budget = (info.get("scenario") or {}).get("budget") or {}
    measurements = read_measurements(run_dir)
    timed = [m for m in measurements if m.status == "ok" and m.samples_s]
    started = info.get("started_at") or datetime.now(timezone.utc).isoformat()
    doc = {
        "machine_info": _machine_info(env),
        "commit_info": _commit_info(env),
        "benchmarks": [_benchmark(m, budget) for m in timed],
        "datetime": started,
        "version": __version__,
    }
    return doc, len(measurements) - len(timed)


# ------------------------------------------------------------------------------------ tables


def _cell(v):
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v, sort_keys=True, default=str)
    return v


def flat_frame(run_dir: str | Path):
    """load_results' DataFrame with list/dict cells JSON-encoded (CSV and Parquet want scalars)."""
    from harness.results.store import load_results

    df = load_results(run_dir)
    for col in df.columns:
        if df[col].map(lambda v: isinstance(v, (list, tuple, dict))).any():
            df[col] = df[col].map(_cell)
    return df


def parquet_engine() -> str:
    for engine in PARQUET_ENGINES:
        if importlib.util.find_spec(engine) is not None:
            return engine
    raise ExportError("parquet export needs pyarrow or fastparquet, and neither is installed; "
                      "install one: pip install pyarrow")


# ------------------------------------------------------------------------------------ entry point


def export(run_dir: str | Path, fmt: str, out: str | Path | None = None) -> tuple[str | bytes | None, str]:
    """Export a run. With `out`, writes the file and returns (None, note); without it, returns
    the text (pytest-benchmark, csv) for stdout. Parquet is binary and needs `out`."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r} is not allowed; allowed: {', '.join(FORMATS)}")
    run_dir = resolve_run_dir(run_dir)
    note = ""
    if fmt == "pytest-benchmark":
        doc, left_out = to_pytest_benchmark(run_dir)
        text = json.dumps(doc, indent=4, sort_keys=True, default=str) + "\n"
        note = f"{len(doc['benchmarks'])} benchmarks"
        note += f"; {left_out} cases without timings left out" if left_out else ""
    elif fmt == "csv":
        text = flat_frame(run_dir).to_csv(index=False)
        note = "csv"
    else:
        engine = parquet_engine()
        if out is None:
            raise ExportError("parquet is a binary format: give --out FILE")
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        flat_frame(run_dir).to_parquet(out, engine=engine, index=False)
        return None, f"parquet ({engine})"
    if out is None:
        return text, note
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
    return None, note
