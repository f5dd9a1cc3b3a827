"""Parent side of the worker protocol: the measurement process `python -m harness.run.worker`
(sweep cases and gate shapes alike), which may raise, abort, hang or run out of memory without
taking the sweep with it. It says {"ready": pid} once, then answers one JSON line per request line.

Importing torch costs 3-4 s on the 2-core machines here, so by default one worker serves cases
one after another and is replaced after any case that kills or hangs it (pyperf's one-process-per-
measurement is available as `fresh_per_case=True`, `attnbench run --isolate`).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from harness.measure.machine.allocator import MEASUREMENT_ENV  # glibc's and torch's allocator settings

STARTUP_TIMEOUT_S = 180.0
WORKER_MODULE = "harness.run.worker"
MEMORY_LIMIT_ENV = "ATTNBENCH_MEMORY_LIMIT_BYTES"  # read by harness.run.worker
PARENT_PID_ENV = "ATTNBENCH_PARENT_PID"  # the worker ends itself when this process is gone
PDEATHSIG_ENV = "ATTNBENCH_PDEATHSIG"  # "1": spawned from a main thread, PR_SET_PDEATHSIG is safe


@dataclass(frozen=True)
class WorkerReply:
    status: str  # "done", "timeout" or "crashed"
    record: dict | None = None
    message: str = ""


def _signal_name(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


class Worker:
    def __init__(
        self,
        log_path: Path,
        memory_limit_bytes: int | None = None,
        *,
        env_defaults: dict[str, str] | None = None,
        env_overrides: dict[str, str] | None = None,
        cwd: str | Path | None = None,
    ):
        self.log_path = Path(log_path)
        self.memory_limit_bytes = memory_limit_bytes
        self.env_defaults = dict(env_defaults or {})  # over MEASUREMENT_ENV; the caller's environment wins over both
        self.env_overrides = dict(env_overrides or {})  # ... and these win over the caller's
        self.cwd = cwd  # `python -m` imports the harness found here first (the A/B gate's base tree)
        self.name = "measurement worker"
        self.proc: subprocess.Popen | None = None

    # -------------------------------------------------------------- lifecycle
    def start(self) -> None:
        env = {**MEASUREMENT_ENV, **self.env_defaults, **os.environ, **self.env_overrides}
        if self.memory_limit_bytes:
            env[MEMORY_LIMIT_ENV] = str(int(self.memory_limit_bytes))
        env[PARENT_PID_ENV] = str(os.getpid())
        env[PDEATHSIG_ENV] = "1" if threading.current_thread() is threading.main_thread() else "0"
        self._log = open(self.log_path, "ab")
        self._log_start = self._log.tell()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", WORKER_MODULE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            cwd=self.cwd,
            start_new_session=True,  # Ctrl-C reaches the parent only; the parent ends the worker
        )
        # The worker imports torch and the catalogue, then says it is ready: start-up time is
        # never charged to a case's timeout.
        if not self._wait_readable(STARTUP_TIMEOUT_S):
            self.stop()
            raise RuntimeError(f"{self.name} did not start within {STARTUP_TIMEOUT_S:g} s")
        hello = self.proc.stdout.readline()
        if not hello:
            self.proc.wait()
            why, tail = _signal_name(self.proc.returncode), self._log_tail()
            self.stop()
            if self.memory_limit_bytes and any(w in tail for w in ("MemoryError", "alloc", "Cannot allocate",
                                                                "failed to map segment")):
                why += (f"; its memory limit of {self.memory_limit_bytes} bytes (budget.memory_limit_bytes) "
                        f"is too small to import torch")
            raise RuntimeError(f"{self.name} failed to start ({why}): {tail}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        for fh in (self.proc.stdin, self.proc.stdout):
            try:
                fh.close()
            except (BrokenPipeError, OSError):
                pass
        self._log.close()
        self.proc = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -------------------------------------------------------------- one case
    def request(self, payload: dict, timeout_s: float) -> WorkerReply:
        if not self.alive:
            self.stop()
            self.start()
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        self._mark_log()  # a crash message quotes this request's output, not an earlier case's
        try:
            self.proc.stdin.write((json.dumps(payload) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return self._crashed()
        ready = self._wait_readable(timeout_s)
        if not ready:
            self.stop()
            return WorkerReply("timeout", message=f"no result after {timeout_s:g} s; worker killed")
        line = self.proc.stdout.readline()
        if not line:
            return self._crashed()
        return WorkerReply("done", record=json.loads(line))

    def _wait_readable(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        fd = self.proc.stdout.fileno()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            r, _, _ = select.select([fd], [], [], min(left, 1.0))
            if r:
                return True
            if self.proc.poll() is not None:
                return True  # EOF will follow; readline() returns b""

    def _crashed(self) -> WorkerReply:
        self.proc.wait()
        why = _signal_name(self.proc.returncode)
        tail = self._log_tail()
        self.stop()
        msg = f"worker {why}" + (f"; last output: {tail}" if tail else "")
        return WorkerReply("crashed", message=msg)

    def _mark_log(self) -> None:
        try:
            self._log.flush()
            self._log_start = os.fstat(self._log.fileno()).st_size
        except (OSError, ValueError):
            pass

    def _log_tail(self, max_chars: int = 500) -> str:
        self._log.flush()
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self._log_start)
                text = fh.read().decode(errors="replace")
        except OSError:
            return ""
        # Drop our own case banners and the torch profiler's USDT chatter; keep the worker's words.
        noise = ("[worker ", "USDT:")
        lines = [ln for ln in text.strip().splitlines() if ln.strip() and not ln.startswith(noise)]
        return " | ".join(lines[-4:])[-max_chars:]
