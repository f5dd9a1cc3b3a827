"""The results format: one run directory = run.json (what, where, when) + results.jsonl (one
record per finished case, appended and flushed as each case ends).

Schema history (bump SCHEMA_VERSION on any incompatible change; readers reject unknown versions):
  1 — 2026-11-23: first version. Record = case fields + status/message + raw timing samples +
      summary stats + FLOPs + measured/predicted peak bytes + error vs float64 reference.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from harness.results.records import Measurement

SCHEMA_VERSION = 1
RUN_FILE = "run.json"
RESULTS_FILE = "results.jsonl"


class ResultsError(ValueError):
    """A results file or directory that cannot be read; the message names the file and why."""


# ---------------------------------------------------------------- writing


def write_run_info(run_dir: Path, info: dict) -> None:
    """Write run.json atomically (temp file + rename) so a kill never leaves half a file."""
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {"schema_version": SCHEMA_VERSION, **info}
    tmp = run_dir / (RUN_FILE + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, run_dir / RUN_FILE)


class ResultsWriter:
    """Appends one JSON line per measurement and fsyncs it, so Ctrl-C or a kill loses nothing
    that finished. A torn last line left by an earlier kill is cut off before appending."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / RESULTS_FILE
        _drop_torn_tail(self.path)
        self._fh = open(self.path, "a", encoding="utf-8")

    def append(self, m: Measurement) -> None:
        self._fh.write(json.dumps(m.to_dict(), sort_keys=True) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _drop_torn_tail(path: Path) -> None:
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as fh:
            fh.truncate(cut)


# ---------------------------------------------------------------- reading


def resolve_run_dir(path: str | Path) -> Path:
    """Accept a run directory, its run.json or results.jsonl; return the directory."""
    p = Path(path)
    if p.is_file() and p.name in (RUN_FILE, RESULTS_FILE):
        p = p.parent
    if not p.exists():
        raise ResultsError(f"{path}: no such run directory")
    if not p.is_dir() or not (p / RUN_FILE).exists():
        raise ResultsError(f"{path}: not a run directory (expected {RUN_FILE} and {RESULTS_FILE} in it)")
    return p


def read_run_info(run_dir: str | Path) -> dict:
    run_dir = resolve_run_dir(run_dir)
    f = run_dir / RUN_FILE
    try:
        info = json.loads(f.read_text())
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{f}: not valid JSON ({exc})") from None
    version = info.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ResultsError(
            f"{f}: schema_version {version!r} is not supported; this attnbench reads version "
            f"{SCHEMA_VERSION} (upgrade attnbench, or re-run the sweep)"
        )
    return info


def read_measurements(run_dir: str | Path) -> list[Measurement]:
    """All records of a run. A truncated last line (a kill mid-write) is tolerated; a corrupt
    line elsewhere is an error naming file and line."""
    run_dir = resolve_run_dir(run_dir)
    read_run_info(run_dir)  # version check
    f = run_dir / RESULTS_FILE
    if not f.exists():
        return []
    lines = f.read_text(encoding="utf-8").split("\n")
    out: list[Measurement] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(Measurement.from_dict(json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            is_last = all(not rest.strip() for rest in lines[i + 1 :])
            if is_last and not f.read_bytes().endswith(b"\n"):
                break  # torn final write: everything before it is intact
            raise ResultsError(f"{f}:{i + 1}: unreadable record ({exc})") from None
    return out


def load_results(path: str | Path):
    """One row per case; case fields, stats and every measured field (the metrics table's
    included) as columns."""
    import pandas as pd

    rows = []
    for m in read_measurements(path):
        d = m.to_dict()
        row = {**d.pop("case"), "case_id": d.pop("case_id")}
        stats = d.pop("stats") or {}
        row.update(stats)  # median_s, q1_s, spread, noise, ...
        row.update(d.pop("metrics") or {})  # the metrics table's further metrics, one column each
        extra = d.pop("extra") or {}
        row.update({f"extra_{k}": v for k, v in extra.items()})
        row.update(d)
        rows.append(row)
    df = pd.DataFrame(rows)
    return df
