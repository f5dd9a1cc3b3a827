"""run_cases' while_starting: the parent's own preparation (the report's matplotlib) runs in a
thread while the local worker starts (it imports torch meanwhile), and is over before the first
measurement, so it never competes with a timed call or the calibration."""

from __future__ import annotations

import time
from pathlib import Path

from harness.case import Budget, Case
from harness.results.store import write_run_info
from harness.run.executor import LocalExecutor
from harness.run.runner import run_cases

BUDGET = Budget(warmup_s=0.0, min_time_s=0.0, max_time_s=0.05)


def _dir(path: Path) -> Path:
    write_run_info(path, {"run_id": path.name})
    return path


def _cases():
    return [Case("naive", batch=1, heads_q=2, heads_kv=2, seq_len_q=16, seq_len_kv=16, head_dim=16, threads=1)]


class _Recording(LocalExecutor):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.first_job_at = None

    def run(self, jobs, on_start=None):
        if self.first_job_at is None:
            self.first_job_at = time.monotonic()
        yield from super().run(jobs, on_start)


def test_the_preparation_overlaps_the_workers_start_and_ends_before_anything_is_measured(tmp_path):
    run_dir = _dir(tmp_path / "r")
    seen = {}
    with _Recording(run_dir / "worker.log") as ex:
        def prepare():
            time.sleep(0.3)
            seen["worker spawned meanwhile"] = ex.worker.proc is not None
            seen["ended at"] = time.monotonic()

        done, interrupted = run_cases(_cases(), run_dir, budget=BUDGET, seed=0, executor=ex, while_starting=prepare)
    assert not interrupted and [m.status for m in done] == ["ok"]
    assert seen["worker spawned meanwhile"]
    assert seen["ended at"] < ex.first_job_at  # the calibration is the first job


def test_a_failing_preparation_costs_the_run_nothing(tmp_path):
    run_dir = _dir(tmp_path / "r")

    def broken():
        raise ImportError("no matplotlib here")

    with LocalExecutor(run_dir / "worker.log") as ex:
        done, _ = run_cases(_cases(), run_dir, budget=BUDGET, seed=0, executor=ex, while_starting=broken)
    assert [m.status for m in done] == ["ok"]


def test_a_worker_that_cannot_start_early_is_still_each_cases_crashed_record(tmp_path):
    run_dir = _dir(tmp_path / "r")
    with LocalExecutor(run_dir / "worker.log", memory_limit_bytes=1) as ex:
        done, _ = run_cases(_cases(), run_dir, budget=BUDGET, seed=0, executor=ex, while_starting=lambda: None)
    assert [m.status for m in done] == ["crashed"] and "failed to start" in done[0].message


def test_the_reports_preload_draws_a_figure():
    from harness.report.figures import preload

    preload()  # matplotlib imported, fonts loaded; raises if the figure cannot be drawn
