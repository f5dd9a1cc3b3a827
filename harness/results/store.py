"""The results format: one run directory = run.json (what, where, when) + results.jsonl (one
record per finished case, appended and flushed as each case ends).

Schema history (bump SCHEMA_VERSION on any incompatible change; readers reject unknown versions):
  1 — 2026-11-23: first version. Record = case fields + status/message + raw timing samples +
      summary stats + FLOPs + measured/predicted peak bytes + error vs float64 reference.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from harness.results.records import Measurement, last_by_case

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
        info = json.loads(_read_text(f))
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{f}: not valid JSON ({exc})") from None
    if not isinstance(info, dict):
        raise ResultsError(f"{f}: not a run description (a JSON {type(info).__name__}, expected an object)")
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
    text = _read_text(f)
    lines = text.split("\n")
    out: list[Measurement] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            check_record(d)
            out.append(Measurement.from_dict(d))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            is_last = all(not rest.strip() for rest in lines[i + 1 :])
            if is_last and not text.endswith("\n"):
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


# ---------------------------------------------------------------- guards (damaged or hostile input)

# Run ids become directory names under --out: no separators, no "..", nothing absolute.
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
RUN_ID_RULE = ("1-100 letters, digits, '.', '_', '-', starting with a letter or digit, without '..' "
               "(a folder name under --out)")


def check_run_id(run_id: str) -> str:
    """The run id, or ResultsError naming the rule (it must stay one folder under --out)."""
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id) or ".." in run_id:
        raise ResultsError(f"run id {str(run_id)[:120]!r} is not allowed; allowed: {RUN_ID_RULE}")
    return run_id


def _read_text(f: Path) -> str:
    """A results file's text, or ResultsError naming the file and what is wrong with it."""
    try:
        data = f.read_bytes()
    except IsADirectoryError:
        raise ResultsError(f"{f}: is a directory, expected a file") from None
    except OSError as exc:
        raise ResultsError(f"{f}: cannot be read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ResultsError(f"{f}:{line}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _type_ok(value, annotation: str) -> bool:
    """Does a stored JSON value fit a dataclass field's annotation (as written in the source)?"""
    options = [a.strip() for a in annotation.split("|")]
    if value is None:
        return "None" in options
    for a in options:
        if a == "bool" and isinstance(value, bool):
            return True
        if a == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if a == "float" and (isinstance(value, (int, float)) and not isinstance(value, bool)
                             or value in ("nan", "inf", "-inf")):
            return True
        if a == "str" and isinstance(value, str):
            return True
        if a == "dict" and isinstance(value, dict):
            return True
        if a.startswith("tuple[") and isinstance(value, list):
            inner = a[len("tuple["):].split(",")[0].strip()
            return all(_type_ok(v, inner) for v in value)
        if a not in ("bool", "int", "float", "str", "dict", "None") and not a.startswith("tuple["):
            return True  # a type this check does not know: left to the dataclass
    return False


def _check_fields(cls, d: dict, where: str, *, nullable: bool = False) -> None:
    import dataclasses

    for f in dataclasses.fields(cls):
        if nullable and d.get(f.name) is None:
            continue
        if f.name in d and isinstance(f.type, str) and not _type_ok(d[f.name], f.type):
            raise ValueError(f"{where}{f.name} = {json.dumps(d[f.name])[:60]} is not {f.type}")


def check_record(d) -> None:
    """ValueError unless `d` looks like a stored Measurement: every case field, statistic and
    measured number of the right JSON type (a hand-edited or damaged line must not reach the
    arithmetic of report and compare)."""
    from harness.case import Case
    from harness.stats import Stats

    if not isinstance(d, dict):
        raise ValueError(f"a JSON {type(d).__name__}, expected an object")
    if not isinstance(d.get("case"), dict):
        raise ValueError("no 'case' object")
    _check_fields(Case, d["case"], "case.")
    if not isinstance(d.get("stats") or {}, dict):
        raise ValueError("'stats' is not an object")
    _check_fields(Stats, d.get("stats") or {}, "stats.", nullable=True)  # older records lack some
    _check_fields(Measurement, {k: v for k, v in d.items() if k not in ("case", "stats")}, "")


def duplicate_case_ids(measurements) -> dict[str, int]:
    """case_id -> number of records, for the cases recorded more than once (two writers, or an
    old run resumed twice at once). Readers keep the last record and say so."""
    counts: dict[str, int] = {}
    for m in measurements:
        counts[m.case.case_id] = counts.get(m.case.case_id, 0) + 1
    return {k: n for k, n in counts.items() if n > 1}


def duplicates_note(run_dir, dups: dict[str, int]) -> str:
    extra = sum(dups.values()) - len(dups)
    first = next(iter(dups))
    return (f"{Path(run_dir) / RESULTS_FILE}: {len(dups)} case(s) recorded more than once "
            f"({extra} extra record(s), e.g. {first}); the last record of each is used")


def keep_last(measurements) -> list:
    """One record per case_id, the last one, in the order of first appearance
    (harness.results.records.last_by_case)."""
    return list(last_by_case(measurements).values())
