"""A sweep: scenario cases -> worker process -> results/<run-id>/, streamed, resumable.

Cases that cannot run here (unsupported, device missing, predicted to exceed memory) become
`skipped` records in the parent, before any allocation. Everything else goes to a worker.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from harness import registry
from harness.case import Case
from harness.run.process import Worker
from harness.results.store import (
    Measurement,
    ResultsWriter,
    read_measurements,
    read_run_info,
    resolve_run_dir,
    write_run_info,
)

MEMORY_HEADROOM = 0.8  # a case may use at most this fraction of the device's memory


@dataclass(frozen=True)
class RunOutcome:
    run_dir: Path
    measurements: tuple[Measurement, ...]  # this invocation's plus, on resume, the earlier ones
    interrupted: bool = False


def new_run_id(scenario_name: str, now: _dt.datetime | None = None) -> str:
    now = now or _dt.datetime.now()
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", scenario_name).strip("-") or "run"
    return f"{now:%Y%m%d-%H%M%S}-{slug}"


def input_bytes(case: Case) -> int:
    q = case.batch * case.heads_q * case.seq_len_q * case.head_dim
    kv = 2 * case.batch * case.heads_kv * case.seq_len_kv * case.head_dim
    return (q + kv) * case.element_bytes


def _device_memory_bytes(device: str) -> int:
    from harness.measure.memory import device_memory_bytes

    return device_memory_bytes(device)


def pre_skip(case: Case, memory_bytes: Callable[[str], int] = _device_memory_bytes) -> Measurement | None:
    """A skipped record when the case cannot or must not run here; None when it should run."""
    impl = registry.get(case.impl)
    support = impl.supports(case)
    if not support:
        return Measurement(case, "skipped", support.reason)
    predicted = impl.predicted_peak_bytes(case)
    if predicted is not None:
        need = predicted + input_bytes(case)
        have = int(memory_bytes(case.device) * MEMORY_HEADROOM)
        if need > have:
            return Measurement(
                case,
                "skipped",
                f"predicted to need {need / 2**30:.1f} GiB, more than the "
                f"{have / 2**30:.1f} GiB allowed on {case.device}",
                predicted_peak_bytes=predicted,
            )
    return None


def run_cases(
    cases: list[Case],
    run_dir: Path,
    *,
    budget: dict,
    seed: int,
    fresh_per_case: bool = False,
    on_skipped: Callable[[list[Measurement]], None] | None = None,
    on_progress: Callable[[int, int, Case, Measurement, float], None] | None = None,
    on_start: Callable[[int, int, Case], None] | None = None,
) -> tuple[list[Measurement], bool]:
    """Measure `cases`, appending each record as it finishes. Returns the records and whether the
    run was interrupted (Ctrl-C): everything finished before that is on disk.

    Cases that cannot run here (unsupported, no such device, predicted not to fit) are recorded
    first, all at once, as `skipped` with the reason; on_start/on_progress then count only the
    cases that run, so progress and ETA are about real work."""
    timeout_s = float(budget.get("case_timeout_s", 300))
    done: list[Measurement] = []
    to_run: list[Case] = []
    interrupted = False
    with ResultsWriter(run_dir) as writer:
        skipped = []
        for case in cases:
            m = pre_skip(case)
            if m is None:
                to_run.append(case)
            else:
                writer.append(m)
                skipped.append(m)
        done.extend(skipped)
        if on_skipped and skipped:
            on_skipped(skipped)
        if not to_run:
            return done, interrupted
        mem_limit = budget.get("memory_limit_bytes") or int(_device_memory_bytes("cpu") * MEMORY_HEADROOM)
        worker = Worker(run_dir / "worker.log", memory_limit_bytes=mem_limit)
        try:
            for i, case in enumerate(to_run, 1):
                if on_start:
                    on_start(i, len(to_run), case)
                t0 = time.perf_counter()
                m = _measure_in_worker(worker, case, budget, seed, timeout_s)
                if fresh_per_case:
                    worker.stop()
                writer.append(m)
                done.append(m)
                if on_progress:
                    on_progress(i, len(to_run), case, m, time.perf_counter() - t0)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            worker.stop()
    return done, interrupted


def _measure_in_worker(worker: Worker, case: Case, budget: dict, seed: int, timeout_s: float) -> Measurement:
    payload = {"case": case.to_dict(), "budget": budget, "seed": seed}
    t0 = time.perf_counter()
    reply = worker.request(payload, timeout_s)
    if reply.status == "done":
        return Measurement.from_dict(reply.record)
    impl = registry.get(case.impl)
    return Measurement(
        case,
        reply.status,  # "timeout" or "crashed"
        reply.message,
        predicted_peak_bytes=impl.predicted_peak_bytes(case),
        wall_s=time.perf_counter() - t0,
    )


def start_run(scenario, *, out_dir: Path, run_id: str | None = None, calibrate: bool = True) -> Path:
    """Create results/<run-id>/ with run.json: schema version, scenario, environment, calibration."""
    from harness.measure.env import collect_environment

    run_id = run_id or new_run_id(scenario.name)
    run_dir = Path(out_dir) / run_id
    if run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(f"{run_dir} already exists; use --resume {run_dir} to continue it")
    run_dir.mkdir(parents=True, exist_ok=True)
    calibration = None
    if calibrate:
        from harness.measure.flops import matmul_calibration

        calibration = {"cpu_matmul_flops_per_s": matmul_calibration("cpu")}
    info = {
        "run_id": run_id,
        "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "scenario": {
            "name": scenario.name,
            "path": str(scenario.path),
            "seed": scenario.seed,
            "baseline": getattr(scenario, "baseline", "sdpa"),
            "budget": dataclasses.asdict(scenario.budget),
        },
        "environment": collect_environment(),
        "calibration": calibration,
        "implementations": {
            name: {"source": registry.get(name).source, "params": registry.get(name).params}
            for name in registry.names()
        },
    }
    write_run_info(run_dir, info)
    return run_dir


def pending_cases(cases: list[Case], run_dir: Path) -> tuple[list[Case], list[Measurement]]:
    """Split `cases` into those still to run and the records already on disk (for --resume)."""
    run_dir = resolve_run_dir(run_dir)
    read_run_info(run_dir)
    earlier = read_measurements(run_dir)
    finished = {m.case.case_id for m in earlier}
    return [c for c in cases if c.case_id not in finished], earlier
