"""The gate's baseline file: per case, the median of impl/reference per-round time ratios measured
by `attnbench check --update-baseline`, with its CI and spread, and whether its accuracy check
passed. Versioned JSON with a history comment; unknown versions are rejected (pyperf's rule).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from harness.results.records import Measurement
from harness.results.store import ResultsError
from harness.stats import RatioStats

BASELINE_SCHEMA = "attnbench-gate-baseline"
BASELINE_VERSION = 1
BASELINE_HISTORY = ("Schema history (readers reject unknown versions): "
                    "1 - 2026-11-23: per-case median of impl/reference per-round time ratios, their 95% CI "
                    "and IQR/median, accuracy; environment, device_key, reference and gate settings.")
BASELINE_DIR = Path("results") / "baselines"


@dataclass(frozen=True)
class BaselineEntry:
    ratio_median: float
    ratio_ci_low: float
    ratio_ci_high: float
    ratio_spread: float
    n: int
    error_passed: bool | None = None
    max_abs_error: float | None = None


@dataclass(frozen=True)
class Baseline:
    path: str
    device_key: str
    reference: str
    entries: dict[str, BaselineEntry]  # by case_id
    environment: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    created_at: str = ""


def baseline_path_for(key: str, root: Path = BASELINE_DIR) -> Path:
    return Path(root) / (re.sub(r"[^A-Za-z0-9_.-]+", "-", key).strip("-") + ".json")


def read_baseline(path: str | Path) -> Baseline:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ResultsError(f"{p}: no such baseline file") from None
    except (OSError, ValueError) as exc:  # ValueError: bad JSON, or not UTF-8
        raise ResultsError(f"{p}: not a readable JSON baseline ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != BASELINE_SCHEMA:
        raise ResultsError(f"{p}: not an attnbench gate baseline (schema {BASELINE_SCHEMA!r} expected)")
    if data.get("schema_version") != BASELINE_VERSION:
        raise ResultsError(f"{p}: baseline schema_version {data.get('schema_version')!r} is not supported; "
                           f"this attnbench reads version {BASELINE_VERSION} "
                           f"(re-run attnbench check --update-baseline)")
    try:
        entries = {cid: BaselineEntry(**e) for cid, e in data["cases"].items()}
        return Baseline(path=str(p), device_key=data["device_key"], reference=data["reference"], entries=entries,
                        environment=data.get("environment") or {}, settings=data.get("settings") or {},
                        created_at=data.get("created_at", ""))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ResultsError(f"{p}: malformed baseline ({type(exc).__name__}: {exc})") from None


def make_baseline(results: Sequence[Measurement], *, path: str | Path, device_key: str, reference: str,
                  environment: dict, settings) -> Baseline:
    entries = {}
    for r in results:
        stats = RatioStats.of(r.reference_ratios)
        if r.status == "ok" and stats is not None:
            entries[r.case.case_id] = BaselineEntry(stats.median, stats.ci_low, stats.ci_high, stats.spread, stats.n,
                                                    r.error_passed, r.max_abs_error)
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return Baseline(path=str(path), device_key=device_key, reference=reference, entries=entries,
                    environment=dict(environment), settings=asdict(settings), created_at=created)


def write_baseline(b: Baseline) -> Path:
    """Versioned JSON, written atomically; sorted keys so a re-baseline diffs cleanly in review."""
    payload = {
        "_comment": "attnbench CI gate baseline, written by `attnbench check --update-baseline`. " + BASELINE_HISTORY,
        "schema": BASELINE_SCHEMA, "schema_version": BASELINE_VERSION, "created_at": b.created_at,
        "device_key": b.device_key, "reference": b.reference, "environment": b.environment,
        "settings": b.settings, "cases": {cid: asdict(e) for cid, e in sorted(b.entries.items())},
    }
    p = Path(b.path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, p)
    return p
