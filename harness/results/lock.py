"""One writer per run directory: an exclusive flock on <run dir>/run.lock, held for the whole run.

Two `attnbench run --run-id X` (or two `--resume X`) started together would otherwise both append
to results.jsonl and leave duplicate records. The second writer is refused with one line naming
the holder's pid. The kernel drops a flock when its process dies (even by SIGKILL), so a lock left
by a killed run never blocks the next one; the file itself stays and is harmless.

Locks are per process and re-entrant here (start_run, pending_cases and the writer all ask for
it); the descriptor is not inherited by worker processes.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.results.store import ResultsError

LOCK_FILE = "run.lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locking (documented)
    fcntl = None

_HELD: dict[str, int] = {}  # resolved run dir -> locked descriptor


class RunLockedError(ResultsError):
    """Another live process is writing this run directory."""


def _key(run_dir: Path) -> str:
    return str(Path(run_dir).resolve())


def acquire(run_dir: str | Path) -> bool:
    """Lock `run_dir` for this process; True when this call took the lock, False when this process
    already held it. RunLockedError when another live process holds it."""
    run_dir = Path(run_dir)
    key = _key(run_dir)
    if key in _HELD or fcntl is None:
        return False
    path = run_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ResultsError(f"{path}: cannot create the run's lock file: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_pid(fd)
        os.close(fd)
        who = f"pid {holder}" if holder else "another process"
        raise RunLockedError(
            f"{run_dir}: another attnbench ({who}) is writing this run; wait for it to finish or "
            f"stop it, then try again (a lock left by a killed run is released automatically)"
        ) from None
    except OSError:  # a filesystem without flock (some network mounts): run unlocked, as before
        os.close(fd)
        return False
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD[key] = fd
    return True


def release(run_dir: str | Path) -> None:
    fd = _HELD.pop(_key(run_dir), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the flock


def holds(run_dir: str | Path) -> bool:
    return _key(run_dir) in _HELD


def _read_pid(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 64).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""
