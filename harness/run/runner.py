"""A sweep: scenario cases -> an executor (harness/run/executor.py) -> results/<run-id>/,
streamed, resumable.

Cases the executor can rule out before sending (unsupported, device missing, predicted to exceed
the memory where they would run) become `skipped` records first. Everything else is measured by a
worker wherever the executor runs it, which re-checks the fit there.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import re
import sys
import threading
from pathlib import Path
from typing import Callable

from harness import registry, vocab
from harness.case import Budget, Case
from harness.results.records import Measurement
from harness.results import lock as run_lock
from harness.results.store import (
    ResultsError,
    ResultsWriter,
    check_run_id,
    duplicate_case_ids,
    duplicates_note,
    keep_last,
    read_measurements,
    read_run_info,
    resolve_run_dir,
    write_run_info,
)
from harness.results.ceilings import ceiling_key, combine, suspect_ceilings
from harness.run.executor import DONE, Executor, Job, Reply

CALIBRATION_TIMEOUT_S = 120.0


def new_run_id(scenario_name: str, now: _dt.datetime | None = None) -> str:
    now = now or _dt.datetime.now()
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", scenario_name).strip("-")[:80].replace("..", "-") or "run"
    return f"{now:%Y%m%d-%H%M%S}-{slug}"


def default_executor(run_dir: Path, budget: Budget, *, fresh_per_case: bool = False,
                     cuda: bool = False) -> Executor:
    """The local worker process, capped at the budget's memory limit (default: the share of this
    machine's memory that a case may use). With CUDA cases there is no default cap: a CUDA
    context reserves far more virtual address space than the host has memory, so an address-space
    limit would make CUDA fail to initialise."""
    from harness.measure.capacity import MEMORY_HEADROOM
    from harness.measure.peak_memory import device_memory_bytes
    from harness.run.executor import LocalExecutor

    limit = budget.memory_limit_bytes or (None if cuda else int(device_memory_bytes("cpu") * MEMORY_HEADROOM))
    return LocalExecutor(Path(run_dir) / "worker.log", memory_limit_bytes=limit, fresh_per_case=fresh_per_case)


def run_cases(
    cases: list[Case],
    run_dir: Path,
    *,
    budget: Budget,
    seed: int,
    executor: Executor | None = None,
    fresh_per_case: bool = False,
    on_skipped: Callable[[list[Measurement]], None] | None = None,
    on_progress: Callable[[int, int, Case, Measurement, float], None] | None = None,
    on_start: Callable[[int, int, Case], None] | None = None,
    while_starting: Callable[[], None] | None = None,
) -> tuple[list[Measurement], bool]:
    """Measure `cases` through `executor` (default: a local worker process), appending each record
    as it finishes. Returns the records and whether the run was interrupted (Ctrl-C): everything
    finished before that is on disk.

    Cases the executor can already tell will not run (unsupported, no such device, predicted not
    to fit where it would run) are recorded first, all at once, as `skipped` with the reason;
    on_start/on_progress then count only the cases that run, so progress and ETA are about real
    work. while_starting: this process's own preparation (the report's matplotlib), run in a
    thread while the executor starts its worker, and finished before the first measurement."""
    done: list[Measurement] = []
    interrupted = False
    locked_here = run_lock.acquire(run_dir)  # one writer per run directory (RunLockedError)
    own = executor is None
    try:
        executor = executor or default_executor(run_dir, budget, fresh_per_case=fresh_per_case,
                                                cuda=any(c.device.startswith("cuda") for c in cases))
    except BaseException:
        if locked_here:
            run_lock.release(run_dir)
        raise
    try:
        with ResultsWriter(run_dir) as writer:
            to_run: list[Case] = []
            skipped = []
            for case in cases:
                try:
                    why = executor.precheck(case)
                except registry.HookError as exc:  # a plugin hook's fault is this case's record
                    m = Measurement(case, vocab.ERROR, str(exc))
                    writer.append(m)
                    done.append(m)  # shown in the summary, not in the "skipped" note
                    continue
                if not why:
                    to_run.append(case)
                    continue
                m = Measurement(case, vocab.SKIPPED, why, predicted_peak_bytes=_predicted(case))
                writer.append(m)
                skipped.append(m)
            done.extend(skipped)
            if on_skipped and skipped:
                on_skipped(skipped)
            if not to_run:
                return done, interrupted
            try:
                timeout_s = float(budget.case_timeout_s)
                _start_alongside(executor, while_starting)
                points = calibration_points(to_run)
                start_cal = calibrate(executor, points)
                _store_calibration(run_dir, start_cal, None)
                ceilings = suspect_ceilings(combine(start_cal, None))
                jobs = [Job.for_case(c, budget.to_dict(), seed, timeout_s, ceilings) for c in to_run]
                started: dict[str, int] = {}

                def start(job: Job) -> None:
                    started[job.key] = len(started) + 1
                    if on_start:
                        on_start(started[job.key], len(jobs), job.case)

                for n, reply in enumerate(executor.run(jobs, on_start=start), 1):
                    m = measurement_of(reply)
                    writer.append(m)
                    done.append(m)
                    if on_progress:
                        on_progress(n, len(jobs), reply.job.case, m, reply.wall_s)
                _store_calibration(run_dir, start_cal, calibrate(executor, points))
            except KeyboardInterrupt:  # also during a calibration: what finished is on disk
                interrupted = True
    finally:
        if own:
            executor.close()
        run_lock.release(run_dir)  # the run (start_run / pending_cases took the lock) is over
    return done, interrupted


def _start_alongside(executor: Executor, work: Callable[[], None] | None) -> None:
    """executor.start() with `work` in a thread beside it (the worker imports torch meanwhile);
    both are over before anything is measured. A failure of `work` is dropped: it is a
    preparation, and whatever it prepared meets the failure again where it is used."""
    if work is None:
        return

    def quietly():
        try:
            work()
        except Exception:  # noqa: BLE001 - see above
            pass

    t = threading.Thread(target=quietly, name="attnbench-prepare", daemon=True)
    t.start()
    executor.start()
    t.join()


def calibration_points(cases: list[Case]) -> list[dict]:
    """The distinct (device, dtype, threads) the cases run with: one ceiling each."""
    seen = {}
    for c in cases:
        seen.setdefault(ceiling_key(c.device, c.dtype, c.threads), {"device": c.device, "dtype": c.dtype,
                                                                    "threads": c.threads})
    return list(seen.values())


def calibrate(executor: Executor, points: list[dict]) -> dict:
    """Ceilings measured where the cases run (through the executor); a failed calibration is
    recorded per point with the reason."""
    if not points:
        return {}
    job = Job.for_calibration(points, CALIBRATION_TIMEOUT_S + 5.0 * len(points))
    for reply in executor.run([job]):
        if reply.status == DONE:
            return reply.answer.get("calibration") or {}
        return {ceiling_key(p["device"], p["dtype"], p.get("threads")): {"error": reply.message or reply.status}
                for p in points}
    return {}


def _store_calibration(run_dir: Path, start: dict, end: dict | None) -> None:
    """run.json's calibration: start and end per key, the max as the ceiling (a resumed run keeps
    the earlier start measurements and adds its own)."""
    info = read_run_info(run_dir)
    old = info.get("calibration") if isinstance(info.get("calibration"), dict) else {}
    starts = {k: v["start"] for k, v in old.items() if isinstance(v, dict) and v.get("start")}
    starts.update({k: v for k, v in start.items() if k not in starts})
    info["calibration"] = combine(starts, end if end is not None else
                                  {k: v.get("end") for k, v in old.items() if isinstance(v, dict) and v.get("end")})
    write_run_info(run_dir, info)


def _predicted(case: Case) -> int | None:
    try:
        return registry.get(case.impl).predicted_peak_bytes(case)
    except Exception:  # noqa: BLE001 - a broken model must not cost the record
        return None


def measurement_of(reply: Reply) -> Measurement:
    """A case's record from the executor's reply: the worker's own, or a timeout / crash."""
    if reply.status == DONE:
        m = Measurement.from_dict(reply.answer)
    else:
        m = Measurement(reply.job.case, reply.status, reply.message,  # "timeout" or "crashed"
                        predicted_peak_bytes=_predicted(reply.job.case), wall_s=reply.wall_s)
    if reply.where:
        m = dataclasses.replace(m, extra={**m.extra, "where": reply.where})
    return m


def start_run(scenario, *, out_dir: Path, run_id: str | None = None) -> Path:
    """Create results/<run-id>/ with run.json: schema version, scenario, environment (the
    calibration is added by run_cases, measured where the cases run)."""
    from harness.measure.machine.environment import collect_environment

    if run_id is not None:
        run_dir = _claim_run_dir(Path(out_dir), check_run_id(run_id))
    else:  # two runs started in the same second get the same default id: the later one moves on
        base = check_run_id(new_run_id(scenario.name))
        for n in range(1, 101):
            run_id = base if n == 1 else f"{base}-{n}"
            try:
                run_dir = _claim_run_dir(Path(out_dir), run_id)
                break
            except (FileExistsError, run_lock.RunLockedError):
                if n == 100:
                    raise
    info = {
        "run_id": run_id,
        "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "scenario": {
            "name": scenario.name,
            "path": _absolute_scenario_path(scenario.path),
            "seed": scenario.seed,
            "baseline": getattr(scenario, "baseline", "sdpa"),
            "budget": dataclasses.asdict(scenario.budget),
            **({"model": scenario.model.to_dict()} if getattr(scenario, "model", None) else {}),  # [model] table
        },
        "environment": collect_environment(),
        "calibration": {},
        "implementations": {
            name: {"source": registry.get(name).source, "params": registry.get(name).params}
            for name in registry.names()
        },
    }
    write_run_info(run_dir, info)
    return run_dir


def _claim_run_dir(out_dir: Path, run_id: str) -> Path:
    """Create and lock out_dir/run_id for a new run: FileExistsError when it holds an earlier run,
    RunLockedError when another process is starting one there right now."""
    run_dir = out_dir.absolute() / run_id  # absolute: the resume hint works from anywhere
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"{run_dir} exists and is not a directory; pick another --run-id or --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    run_lock.acquire(run_dir)  # a second run with this id now is refused, naming our pid
    if any(p.name != run_lock.LOCK_FILE for p in run_dir.iterdir()):
        run_lock.release(run_dir)
        raise FileExistsError(f"{run_dir} already exists; use --resume {run_dir} to continue it")
    return run_dir


def pending_cases(cases: list[Case], run_dir: Path) -> tuple[list[Case], list[Measurement]]:
    """Split `cases` into those still to run and the records already on disk (for --resume)."""
    run_dir = resolve_run_dir(run_dir)
    run_lock.acquire(run_dir)  # before reading: two resumes at once would both run the rest
    read_run_info(run_dir)
    earlier = read_measurements(run_dir)
    dups = duplicate_case_ids(earlier)
    if dups:
        print(f"attnbench: warning: {duplicates_note(run_dir, dups)}", file=sys.stderr)
        earlier = keep_last(earlier)
    finished = {m.case.case_id for m in earlier}
    return [c for c in cases if c.case_id not in finished], earlier


def _absolute_scenario_path(path) -> str:
    """A scenario file's absolute path for run.json (so --resume works from any directory)."""
    p = Path(str(path))
    return str(p.absolute()) if p.exists() else str(path)


def scenario_path_for_resume(info: dict, run_dir: Path) -> str:
    """The scenario path stored in run.json, made usable from here: absolute paths as they are;
    an older run's relative path is tried against the working directory, then against the
    directories above the run directory (where the run was started from, with --out below it)."""
    try:
        stored = info["scenario"]["path"]
    except (KeyError, TypeError):
        stored = None
    if not isinstance(stored, str) or not stored:
        raise ResultsError(f"{Path(run_dir) / 'run.json'}: scenario.path is missing; give the scenario: "
                           f"attnbench run SCENARIO --resume {run_dir}")
    p = Path(stored)
    if p.is_absolute() or p.exists():
        return stored
    for parent in Path(run_dir).absolute().parents:
        if (parent / p).is_file():
            return str(parent / p)
    return stored
