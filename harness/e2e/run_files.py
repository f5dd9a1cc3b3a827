"""An e2e run's folder, like a sweep's (harness/results/store.py): run.json (what and where:
`"kind": "e2e"`, the model, the settings, the environment) written first, then e2e.jsonl, one
record per finished step (each implementation's logits check, then each phase's results), appended
and fsynced as it ends -- a crash or Ctrl-C loses nothing that finished. The summary (the same
object `--json` writes) goes to e2e.json at the end.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

from harness.results import lock as run_lock
from harness.results.store import check_run_id, write_run_info

RECORDS_FILE = "e2e.jsonl"
SUMMARY_FILE = "e2e.json"


def default_run_id(model: str, now: _dt.datetime | None = None) -> str:
    now = now or _dt.datetime.now()
    slug = "".join(c if c.isalnum() or c in "._-" else "-" for c in Path(model).stem)[:60].strip("-.") or "model"
    return f"{now:%Y%m%d-%H%M%S}-e2e-{slug}"


def new_run_dir(out_dir: Path, run_id: str | None, model: str) -> Path:
    """out_dir/run_id (default: timestamp-e2e-model), checked before the model is built: a valid id
    and no earlier run there (ResultsError / FileExistsError, one line)."""
    run_dir = Path(out_dir).absolute() / check_run_id(run_id or default_run_id(model))
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"{run_dir} exists and is not a directory; pick another --run-id or --out")
    if run_dir.is_dir() and any(p.name != run_lock.LOCK_FILE for p in run_dir.iterdir()):
        raise FileExistsError(f"{run_dir} already holds a run; pick another --run-id")
    return run_dir


def start_e2e_run(run_dir: Path, info: dict) -> Path:
    """Create run_dir (from new_run_dir), lock it, write run.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    run_lock.acquire(run_dir)
    if any(p.name != run_lock.LOCK_FILE for p in run_dir.iterdir()):  # another run got there meanwhile
        run_lock.release(run_dir)
        raise FileExistsError(f"{run_dir} already holds a run; pick another --run-id")
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    write_run_info(run_dir, {"kind": "e2e", "run_id": run_dir.name, "started_at": started, **info})
    return run_dir


def append_record(run_dir: Path, record: dict) -> None:
    with open(Path(run_dir) / RECORDS_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def write_summary(run_dir: Path, summary: dict) -> Path:
    path = Path(run_dir) / SUMMARY_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
    return path


def finish(run_dir: Path) -> None:
    run_lock.release(run_dir)
