"""The executor seam: the runner and the gate hand jobs to an Executor, which decides where and in
which process each runs and yields the answers as they finish.

A Job is one request for a measurement worker (harness/run/worker.py): a sweep case ("case"), a
gate shape ("ratios": every implementation of one shape timed interleaved with a reference), a
calibration, or the worker's catalogue. Whatever goes wrong outside the measured code -- the worker crashed, hung or
could not start, the node was lost -- comes back as a Reply with status "timeout" or "crashed" and
a message, never as an exception, so every job gets exactly one Reply.

Executors here: LocalExecutor (a worker process on this machine, reused across jobs and replaced
after a crash or timeout; fresh_per_case=True for one process per job). A cluster executor
(harness/run/ray_executor.py) implements the same three methods. Whether a case fits in memory is
decided where it runs: `precheck` (an executor that runs on this machine may answer before any job
is sent) and, always, the worker itself (harness/measure/case_measure.py).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from harness.case import Case

DONE, TIMEOUT, CRASHED = "done", "timeout", "crashed"


@dataclass(frozen=True)
class Job:
    kind: str  # "case" | "ratios" | "calibrate" | "catalogue"
    case: Case | None  # the case; for a shape, the reference's case; None for a calibration
    request: dict  # the JSON request the worker answers (kind and case included)
    timeout_s: float
    key: str = ""  # the caller's handle for matching replies (default: the case id)

    @property
    def device(self) -> str:
        """The device kind the job needs: its case's, or for a calibration "cuda" if any point is."""
        if self.case is not None:
            return self.case.device
        points = self.request.get("points") or []
        return "cuda" if any(str(p.get("device", "")).startswith("cuda") for p in points) else "cpu"

    @property
    def thread_setting(self):
        """The thread count the worker sets for this job: thread_setting(self.request)."""
        return thread_setting(self.request)

    @classmethod
    def for_case(cls, case: Case, budget: dict, seed: int, timeout_s: float, ceilings: dict | None = None) -> "Job":
        req = {"kind": "case", "case": case.to_dict(), "budget": budget, "seed": seed, "ceilings": ceilings or {}}
        return cls("case", case, req, timeout_s, case.case_id)

    @classmethod
    def for_calibration(cls, points: list[dict], timeout_s: float) -> "Job":
        """Measure the ceilings (harness.measure.machine.ceilings) of these {device, dtype, threads}."""
        return cls("calibrate", None, {"kind": "calibrate", "points": points}, timeout_s, "calibrate")

    @classmethod
    def for_ratios(cls, ref_case: Case, request: dict, timeout_s: float) -> "Job":
        """Every implementation in request["impls"] on ref_case's shape, timed interleaved with the
        reference (harness.measure.reference_ratios); answers {"measurements": [...]}."""
        req = {"kind": "ratios", "case": ref_case.to_dict(), **request}
        return cls("ratios", ref_case, req, timeout_s, ref_case.case_id)

    @classmethod
    def for_catalogue(cls, timeout_s: float = 60.0) -> "Job":
        """Which implementations package and names the worker has (harness/run/worker.py)."""
        return cls("catalogue", None, {"kind": "catalogue"}, timeout_s, "catalogue")


def thread_setting(request: dict):
    """The thread count a worker sets for this request (torch.set_num_threads changes the process
    for later requests: harness/run/worker.py): its CPU case's `threads`, None when it sets none,
    "mixed" for a calibration of several counts."""
    case = request.get("case")
    if case is not None:
        threads = case.get("threads")
        return threads if (threads and str(case.get("device", "cpu")).startswith("cpu")) else None
    counts = {p.get("threads") for p in request.get("points") or []} - {None}
    return None if not counts else (counts.pop() if len(counts) == 1 else "mixed")


class ReuseRule:
    """When a live measurement worker may serve the next job -- the same rule for the local
    executor and a Ray node (harness/run/ray_node.py). A worker that crashed, hung or served a
    calibration of several thread counts is not kept; one that set a thread count serves only
    jobs wanting that same setting (torch.set_num_threads, even with the current value, changes the
    process: harness/run/worker.py), so any other job gets a pristine process."""

    def __init__(self):
        self.threads_set = None  # the thread setting of the jobs the live worker has served

    def before(self, worker, want) -> None:
        """Stop `worker` if it may not serve a job wanting thread setting `want`."""
        if self.threads_set is not None and want != self.threads_set:
            worker.stop()
        if not worker.alive:
            self.threads_set = None

    def after(self, worker, want, status: str, fresh: bool = False) -> None:
        """After a job: remember what the worker set, and stop it unless it may be kept."""
        self.threads_set = want if (status == DONE and want != "mixed") else None
        if fresh or want == "mixed" or status != DONE:
            worker.stop()


@dataclass(frozen=True)
class Reply:
    job: Job
    status: str  # "done" | "timeout" | "crashed"
    answer: dict | None = None  # the worker's answer when done
    message: str = ""
    wall_s: float = 0.0
    where: dict = field(default_factory=dict)  # where it ran (host, node, pid), for the record


class Executor:
    """Base class; subclasses implement run() and may override precheck() and close()."""

    name = "executor"

    def precheck(self, case: Case) -> str:
        """Why `case` cannot run where this executor would run it ("" = send it). Only an executor
        that knows the machine a case will land on may answer here; the default sends everything
        and lets the worker decide."""
        return ""

    def start(self) -> None:
        """Get ready for the first job ahead of it (a local executor: start its worker process).
        A failure here is not raised: the first job meets it and records it."""

    def run(self, jobs: Iterable[Job], on_start: Callable[[Job], None] | None = None) -> Iterator[Reply]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LocalExecutor(Executor):
    """One measurement worker process on this machine, jobs one after another (timing needs the
    whole CPU). A worker that crashed or hung is replaced before the next job."""

    name = "local"

    def __init__(self, log_path: Path | None = None, *, memory_limit_bytes: int | None = None,
                 fresh_per_case: bool = False, env_defaults: dict[str, str] | None = None,
                 env_overrides: dict[str, str] | None = None, cwd: str | Path | None = None):
        from harness.run.process import Worker

        self._tmp = None
        if log_path is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="attnbench-worker-")
            log_path = Path(self._tmp.name) / "worker.log"
        self.fresh_per_case = fresh_per_case
        self.reuse = ReuseRule()
        self.worker = Worker(Path(log_path), memory_limit_bytes=memory_limit_bytes, env_defaults=env_defaults,
                             env_overrides=env_overrides, cwd=cwd)

    def precheck(self, case: Case) -> str:
        from harness import registry
        from harness.measure.capacity import too_big
        from harness.measure.peak_memory import device_memory_bytes

        impl = registry.get(case.impl)
        support = impl.supports(case)
        if not support:
            return support.reason
        predicted = impl.predicted_peak_bytes(case)
        if predicted is None:
            return ""
        return too_big(case, predicted, device_memory_bytes(case.device))

    def start(self) -> None:
        if not self.worker.alive:
            try:
                self.worker.start()
            except RuntimeError:  # the first job restarts it and records why it failed
                pass

    def run(self, jobs: Iterable[Job], on_start: Callable[[Job], None] | None = None) -> Iterator[Reply]:
        import os
        import socket
        import time

        for job in jobs:
            want = job.thread_setting
            self.reuse.before(self.worker, want)
            if on_start:
                on_start(job)
            t0 = time.perf_counter()
            try:
                r = self.worker.request(job.request, job.timeout_s)  # (re)starts a dead worker
            except RuntimeError as exc:  # the worker could not start: this job's failure
                yield Reply(job, CRASHED, None, str(exc), time.perf_counter() - t0, {"executor": self.name})
                continue
            pid = self.worker.proc.pid if self.worker.proc is not None else None
            self.reuse.after(self.worker, want, r.status, self.fresh_per_case)
            where = {"executor": self.name, "host": socket.gethostname(), "worker_pid": pid, "driver_pid": os.getpid()}
            yield Reply(job, r.status, r.record, r.message, time.perf_counter() - t0, where)

    def close(self) -> None:
        self.worker.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
