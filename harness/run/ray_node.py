"""The node side of the Ray executor (harness/run/ray_executor.py): what one Ray task does on the
node it was placed on.

Each task runs its case in a fresh measurement process (`python -m harness.run.worker`, through
harness.run.process.Worker, with the same start-up allowance and case timeout as the local
executor), then stops it. The Ray task itself only waits on a pipe, so it does not import torch.
The measurement process dies with the Ray worker that started it (PR_SET_PDEATHSIG): a task that
is force-cancelled, or a node that is torn down, leaves no orphaned measurement behind.

Nothing here raises for a failure of the measured code: the answer is a plain dict
{"status", "answer", "message", "wall_s", "where"}; only infrastructure failures (the Ray worker
or node died) surface in the driver, as Ray exceptions.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.run.process import MEMORY_LIMIT_ENV, STARTUP_TIMEOUT_S, WORKER_MODULE, Worker, WorkerReply

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
        env = dict(self.env)
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


def run_case_here(request: dict, timeout_s: float, gpu: bool) -> dict:
    """The body of one Ray task: one job in a fresh measurement process on this node."""
    where = node_facts(gpu)
    env = dict(os.environ)
    if not gpu:
        for var in _RAY_THREAD_VARS:
            env.pop(var, None)
    limit = memory_limit_for(gpu, (request.get("budget") or {}).get("memory_limit_bytes"))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="attnbench-ray-") as tmp:
        worker = NodeWorker(Path(tmp) / "worker.log", limit, env)
        try:
            worker.start()
            where["worker_pid"] = worker.proc.pid
            r = worker.request(request, timeout_s)
        except RuntimeError as exc:  # the measurement process could not start: this case's failure
            r = WorkerReply("crashed", message=str(exc))
        finally:  # also on a (non-forced) ray.cancel, which raises KeyboardInterrupt here
            worker.stop()
    return {"status": r.status, "answer": r.record, "message": r.message,
            "wall_s": time.perf_counter() - t0, "where": where}
