"""The measurement worker process: `python -m harness.run.worker`.

It imports torch and the catalogue, says {"ready": pid} once, then answers one JSON line per JSON
request line. Answers go to a private copy of stdout; fd 1 is pointed at stderr so that an
implementation's prints cannot corrupt the protocol. Requests (built by harness/run/executor.py):

    {"kind": "case",  "case": {...}, "budget": {...}, "seed": int,
     "ceilings": {...}}                                            -> a Measurement dict
    {"kind": "ratios", "case": {...}, "impls": [...], ...}          -> the gate's records of one shape,
                                                                       timed interleaved with a reference
                                                                       (harness.measure.reference_ratios)
    {"kind": "catalogue"}                                          -> {"implementations": the package's
                                                                       folder, "names": [...], "broken": {...}}
    {"kind": "calibrate", "points": [{device, dtype, threads}]}    -> measured ceilings
                                                                       (harness.measure.machine.ceilings)
Every request starts from the same process state: global torch settings a case may change (thread
count, grad mode, flush-denormal, matmul precision, deterministic algorithms) are restored after
it, so one case never runs with the previous case's settings. The thread count is special: calling
torch.set_num_threads at all -- even with the current value -- made small ops ~45% slower for the
rest of the process (sdpa at N=64: 29 -> 42 us, torch 2.13 CPU), so it is called only when a case
asks for a count, and the executor gives a job a fresh worker when the live one has set another count
(Job.thread_setting).
The parent side (start, timeouts, crashes) is harness/run/process.py.
"""

from __future__ import annotations

import json
import os
import sys

from harness.case import Budget, Case

from harness.run.process import MEMORY_LIMIT_ENV, PARENT_PID_ENV, PDEATHSIG_ENV


def handle(req: dict) -> dict:
    kind = req.get("kind", "case")
    with clean_state():
        if kind == "case":
            from harness.measure.case_measure import measure_case

            m = measure_case(Case.from_dict(req["case"]), Budget.from_dict(req["budget"]), int(req["seed"]),
                             ceilings=req.get("ceilings") or {})
            return m.to_dict()
        if kind == "ratios":
            from harness.measure import reference_ratios

            return reference_ratios.handle(req)
        if kind == "catalogue":  # what this worker measures with (the A/B gate checks its base side)
            import implementations

            from harness import registry

            return {"implementations": [str(p) for p in implementations.__path__], "names": registry.names(),
                    "broken": registry.broken_plugins()}
        if kind == "calibrate":
            from harness.measure.machine.ceilings import calibrate, quick_settings

            return {"calibration": calibrate(req["points"], **quick_settings())}  # (a testing hook)
    raise ValueError(f"unknown request kind {kind!r}")


class clean_state:
    """Snapshot the global torch settings a case may change; restore them on exit."""

    def __enter__(self):
        import torch

        self.saved = (torch.get_num_threads(), torch.is_grad_enabled(), torch.get_float32_matmul_precision(),
                      (torch.are_deterministic_algorithms_enabled(),
                       torch.is_deterministic_algorithms_warn_only_enabled()), torch.get_default_dtype())
        return self

    def __exit__(self, *exc):
        import torch

        threads, grad, precision, deterministic, dtype = self.saved
        if torch.get_num_threads() != threads:  # calling it at all changes torch's state (see below)
            torch.set_num_threads(threads)
        torch.set_grad_enabled(grad)
        torch.set_float32_matmul_precision(precision)
        # only when a case changed it: torch 2.13's setter imports torch._inductor (0.8 s, once)
        if (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()) \
                != deterministic:
            torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        torch.set_default_dtype(dtype)
        torch.set_flush_denormal(False)  # torch's default; a case that turned it on must not leak it
        return False


def banner(req: dict) -> str:
    kind = req.get("kind", "case")
    if kind in ("calibrate", "catalogue"):
        return f"[worker {os.getpid()}] {kind} {req.get('points', '')}"
    case = Case.from_dict(req["case"])
    what = case.case_id if kind == "case" else f"shape {case.case_id} {req.get('impls')}"
    return f"[worker {os.getpid()}] {what}"


def _apply_memory_limit(limit_bytes: int | None) -> None:
    """Cap this process's address space so a runaway allocation fails here (as an OOM record)
    instead of inviting the kernel's OOM killer onto the whole machine."""
    if not limit_bytes:
        return
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (int(limit_bytes), int(limit_bytes)))


def _jsonable(obj):
    return float(obj) if isinstance(obj, (int, float)) else str(obj)


def serve() -> int:
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import torch  # noqa: F401  (import cost paid before the first request, not inside it)

    from harness import registry

    registry.ensure_loaded()
    proto.write(json.dumps({"ready": os.getpid()}) + "\n")
    proto.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        print(banner(req), file=sys.stderr, flush=True)
        proto.write(json.dumps(handle(req), default=_jsonable) + "\n")
        proto.flush()
    return 0


def _die_with_parent() -> None:
    """End this worker when the process that started it dies, even by SIGKILL (no orphan left
    measuring, or hanging, with nobody to read its answers). Linux: PR_SET_PDEATHSIG, set only when
    the parent's spawning thread is its main thread (the signal follows the thread, not the process);
    everywhere: a daemon thread that notices the parent pid change."""
    import threading
    import time

    parent = int(os.environ.get(PARENT_PID_ENV, "0") or 0) or os.getppid()
    if sys.platform.startswith("linux") and os.environ.get(PDEATHSIG_ENV) == "1":
        try:
            import ctypes
            import signal

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass  # the watcher below still ends us

    def watch() -> None:
        while True:
            if os.getppid() != parent:  # reparented: the parent is gone
                os._exit(1)
            time.sleep(0.5)

    if os.getppid() != parent:  # died before we got here
        os._exit(1)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main() -> int:
    _die_with_parent()
    _apply_memory_limit(int(os.environ.get(MEMORY_LIMIT_ENV, "0")) or None)
    return serve()


if __name__ == "__main__":
    raise SystemExit(main())
