"""The node side of the Ray executor (harness/run/ray_executor.py): what one Ray task does on the
node it was placed on.

Each task hands its job to a measurement process (`python -m harness.run.worker`, through
harness.run.process.Worker, with the same start-up allowance and case timeout as the local
executor). The Ray worker process keeps that measurement process after the task and gives it the
next task it runs when the job may use it, as the local executor does (harness.run.executor's
ReuseRule: not after a crash, timeout or a calibration of several thread counts, and only for a job
with the same thread setting), and when the job's environment (Ray's per-task thread variables
removed for CPU cases; CUDA_VISIBLE_DEVICES for CUDA ones) and memory cap are the same; otherwise it
is replaced. This saves the worker's start-up (importing torch, ~2-4 s) on every case but a node's
first. `RayExecutor(fresh_per_case=True)` (`attnbench run --isolate`) starts one per task instead.
A kept measurement process is stopped after IDLE_S seconds with no task (ATTNBENCH_RAY_IDLE_S), so
a cluster that stays connected after a sweep does not hold idle torch processes; and it dies with
the Ray worker process that started it (PR_SET_PDEATHSIG): a task that is force-cancelled, a
worker that exits or a node that is torn down leaves no orphaned measurement behind. A polite
cancel (KeyboardInterrupt in the task) stops it too. The Ray task itself only waits on a pipe, so
it does not import torch.

Nothing here raises for a failure of the measured code: the answer is a plain dict
{"status", "answer", "message", "wall_s", "where"}; only infrastructure failures (the Ray worker
or node died) surface in the driver, as Ray exceptions.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from harness.measure.machine.allocator import MEASUREMENT_ENV
from harness.run.executor import ReuseRule, thread_setting
from harness.run.process import MEMORY_LIMIT_ENV, STARTUP_TIMEOUT_S, WORKER_MODULE, Worker, WorkerReply

# How long a kept measurement process may wait for the next task before it is stopped. The driver
# sends a node its next case as soon as the last one's answer is in (harness/run/ray_executor.py
# polls every second), so within a sweep the gap is about a second; 10 s covers that with room for
# a loaded driver, and after a sweep (or a Ctrl-C) a cluster that stays connected gets its memory
# (and a CUDA context) back within seconds. When the driver exits, Ray ends its job's workers, and
# the measurement processes die with them.
IDLE_S = 10.0
IDLE_ENV = "ATTNBENCH_RAY_IDLE_S"  # seconds; overrides IDLE_S (read on the node, per task)

# Thread-count variables Ray sets from a task's num_cpus; a CPU case must see what torch would pick
# on that machine by itself (or the case's own `threads`), as with the local executor.
_RAY_THREAD_VARS = ("OMP_NUM_THREADS",)
# The measurement process asks the kernel to kill it when the Ray worker that started it dies
# (PR_SET_PDEATHSIG survives the exec), then runs the worker module. Done in the child, not in a
# preexec_fn: a Ray worker is multi-threaded, where code between fork and exec may deadlock.
_LAUNCH = (
    "import ctypes, os, runpy, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)\n"  # PR_SET_PDEATHSIG
    "except Exception:\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(3)\n"  # the parent is already gone
    "sys.argv = sys.argv[:1]\n"
    f"runpy.run_module({WORKER_MODULE!r}, run_name='__main__', alter_sys=True)\n"
)


class NodeWorker(Worker):
    """harness.run.process.Worker whose process is killed when this Ray worker process dies, with
    an explicit environment (Ray's per-task thread settings removed for CPU cases)."""

    def __init__(self, log_path: Path, memory_limit_bytes: int | None, env: dict[str, str]):
        super().__init__(log_path, memory_limit_bytes)
        self.env = env

    def start(self) -> None:  # Worker.start, launched through _LAUNCH
        env = {**MEASUREMENT_ENV, **self.env}  # as every measurement process (harness.measure.machine.allocator)
        if self.memory_limit_bytes:
            env[MEMORY_LIMIT_ENV] = str(int(self.memory_limit_bytes))
        self._log = open(self.log_path, "ab")
        self._log_start = self._log.tell()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCH, str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=env,
            start_new_session=True,  # as Worker: killpg ends it and its children
        )
        if not self._wait_readable(STARTUP_TIMEOUT_S):
            self.stop()
            raise RuntimeError(f"{self.name} did not start within {STARTUP_TIMEOUT_S:g} s")
        if not self.proc.stdout.readline():
            self.proc.wait()
            from harness.run.process import _signal_name

            why, tail = _signal_name(self.proc.returncode), self._log_tail()
            self.stop()
            raise RuntimeError(f"{self.name} failed to start ({why}): {tail}")


def visible_gpus() -> list[dict] | str:
    """Name and UUID (NVML) of each GPU this process may use (CUDA_VISIBLE_DEVICES, as Ray set it
    for the task), in CUDA order; a string saying why when NVML cannot answer."""
    from harness.measure.machine.environment import _text

    entries = [e.strip() for e in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if e.strip()]
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - no driver, no library: just unknown
        return f"{type(exc).__name__}: {exc}"
    try:
        if not entries:
            entries = [str(i) for i in range(pynvml.nvmlDeviceGetCount())]
        gpus = []
        for cuda_index, entry in enumerate(entries):
            if entry.isdigit():
                h = pynvml.nvmlDeviceGetHandleByIndex(int(entry))
            else:
                h = pynvml.nvmlDeviceGetHandleByUUID(entry)
            gpus.append({"index": cuda_index, "name": _text(pynvml.nvmlDeviceGetName(h)),
                         "uuid": _text(pynvml.nvmlDeviceGetUUID(h))})
        return gpus
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def node_facts(gpu: bool) -> dict:
    """Where this task runs, for the record's extra["where"]."""
    import ray

    from harness.measure.machine.environment import cpu_family_model, cpu_model

    where = {
        "executor": "ray",
        "host": socket.gethostname(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),
        "cpu_model": cpu_model(),
        "cpu_family_model": cpu_family_model(),
        "logical_cores": os.cpu_count(),
        "ray_worker_pid": os.getpid(),
    }
    if gpu:
        gpus = visible_gpus()
        where["gpus" if isinstance(gpus, list) else "nvml_error"] = gpus
    return where


def memory_limit_for(gpu: bool, budget_limit: int | None) -> int | None:
    """The measurement process's address-space cap: the budget's, else for a CPU case the share of
    this node's memory a case may use (as the local executor does). CUDA cases get no default cap:
    a CUDA context reserves far more virtual address space than the host has memory."""
    if budget_limit:
        return int(budget_limit)
    if gpu:
        return None
    from harness.measure.capacity import MEMORY_HEADROOM
    from harness.measure.peak_memory import device_memory_bytes

    return int(device_memory_bytes("cpu") * MEMORY_HEADROOM)


class _Kept:
    """A measurement process this Ray worker process keeps between tasks, with what it was started
    for (environment, memory cap), its log folder and the reuse rule's state."""

    def __init__(self, env: dict[str, str], limit: int | None):
        self.env, self.limit = env, limit
        self._tmp = tempfile.TemporaryDirectory(prefix="attnbench-ray-")
        self.worker = NodeWorker(Path(self._tmp.name) / "worker.log", limit, env)
        self.rule = ReuseRule()

    def fits(self, env: dict[str, str], limit: int | None) -> bool:
        return self.worker.alive and env == self.env and limit == self.limit

    def close(self) -> None:
        self.worker.stop()
        self._tmp.cleanup()


_LOCK = threading.Lock()
_KEPT: _Kept | None = None  # the idle measurement process of this Ray worker process
_TIMER: threading.Timer | None = None


def _take() -> _Kept | None:
    """This process's kept measurement process, now the caller's alone (its idle timer cancelled)."""
    global _KEPT, _TIMER
    with _LOCK:
        kept, _KEPT = _KEPT, None
        if _TIMER is not None:
            _TIMER.cancel()
            _TIMER = None
    return kept


def _claim(env: dict[str, str], limit: int | None) -> _Kept | None:
    """The kept measurement process if it may serve a job with this environment and memory cap
    (the task's alone until _keep); one that may not is stopped."""
    kept = _take()
    if kept is not None and not kept.fits(env, limit):
        kept.close()
        kept = None
    return kept


def _keep(kept: _Kept) -> None:
    """Hold `kept` for the next task, stopped after the idle period unless a task claims it first."""
    global _KEPT, _TIMER
    idle_s = idle_seconds()
    with _LOCK:
        if _KEPT is not None:  # (tasks run one at a time in a Ray worker; never two kept)
            _KEPT.close()
        _KEPT = kept
        _TIMER = threading.Timer(idle_s, _expire, args=(kept,))
        _TIMER.daemon = True
        _TIMER.start()


def _expire(kept: _Kept) -> None:
    global _KEPT, _TIMER
    with _LOCK:
        if _KEPT is not kept:  # claimed by a task meanwhile
            return
        _KEPT, _TIMER = None, None
    kept.close()


def idle_seconds() -> float:
    """IDLE_S, or ATTNBENCH_RAY_IDLE_S when it is set to a number of seconds (>= 0)."""
    try:
        value = float(os.environ.get(IDLE_ENV, ""))
    except ValueError:
        return IDLE_S
    return value if value >= 0 else IDLE_S


def stop_kept() -> None:
    """Stop this Ray worker process's idle measurement process now, if it has one (also when the
    Ray worker exits normally; when it is killed, PR_SET_PDEATHSIG ends the process)."""
    kept = _take()
    if kept is not None:
        kept.close()


atexit.register(stop_kept)


def run_case_here(request: dict, timeout_s: float, gpu: bool, fresh: bool = False) -> dict:
    """The body of one Ray task: one job in this Ray worker's measurement process (started if it
    has none that fits; with `fresh`, one started for this job alone)."""
    where = node_facts(gpu)
    env = dict(os.environ)
    if not gpu:
        for var in _RAY_THREAD_VARS:
            env.pop(var, None)
    limit = memory_limit_for(gpu, (request.get("budget") or {}).get("memory_limit_bytes"))
    want = thread_setting(request)
    t0 = time.perf_counter()
    kept = _claim(env, limit)
    if fresh and kept is not None:
        kept.close()
        kept = None
    if kept is not None:
        kept.rule.before(kept.worker, want)  # another thread setting: a pristine process
    if kept is None or not kept.worker.alive:
        if kept is not None:
            kept.close()
        kept = _Kept(env, limit)
    reused = kept.worker.alive
    try:
        if not reused:
            kept.worker.start()
        where["worker_pid"] = kept.worker.proc.pid
        where["worker_reused"] = reused
        r = kept.worker.request(request, timeout_s)
    except RuntimeError as exc:  # the measurement process could not start: this case's failure
        r = WorkerReply("crashed", message=str(exc))
    except BaseException:  # a (non-forced) ray.cancel raises KeyboardInterrupt here: stop it
        kept.close()
        raise
    kept.rule.after(kept.worker, want, r.status, fresh)
    if kept.worker.alive:
        _keep(kept)
    else:
        kept.close()
    return {"status": r.status, "answer": r.record, "message": r.message,
            "wall_s": time.perf_counter() - t0, "where": where}
