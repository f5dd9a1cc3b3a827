"""Build and load the C partition kernel of flash_decoding's CPU path (`cpu_decode.c`).

Built on first use with the machine's C compiler ($CC, else cc, gcc or clang), `-O3 -march=native`
(retried without -march=native where the compiler refuses it), into a cache keyed by the source,
the compiler and the CPU (so a home directory shared across machines never loads a binary built for
another CPU): $ATTNBENCH_KERNEL_CACHE, else $XDG_CACHE_HOME/attnbench/kernels, else
~/.cache/attnbench/kernels. A build takes well under a second; a cached one loads in milliseconds.
Concurrent builds (parallel workers) each write a private file and rename it into place.

`partition_kernel()` returns the ctypes function, or raises KernelUnavailable with one line saying
why (no compiler, compile error, unwritable cache); callers turn that into a skip with the reason.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("cpu_decode.c")
SYMBOL = "attnbench_fd_partition_f32"
FLAGS = ["-O3", "-std=gnu11", "-fno-math-errno", "-Wno-psabi", "-fPIC", "-shared"]
NATIVE = ["-march=native"]
COMPILE_TIMEOUT_S = 120


class KernelUnavailable(RuntimeError):
    """The C kernel cannot be built or loaded here; the message says why, in one line."""


def _compiler() -> str:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise KernelUnavailable("no C compiler found (set CC, or install gcc or clang)")


def _cpu_identity() -> str:
    """What -march=native depends on: the CPU model and feature flags (Linux), else the platform."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    keep = [ln for ln in text.splitlines() if ln.split(":")[0].strip() in ("model name", "flags", "Features", "CPU part")]
    return platform.machine() + "\n" + "\n".join(sorted(set(keep)))


def cache_dir() -> Path:
    if os.environ.get("ATTNBENCH_KERNEL_CACHE"):
        return Path(os.environ["ATTNBENCH_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "attnbench" / "kernels"


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, check=False)


def _build(cc: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.stem + ".", suffix=".tmp.so", dir=out.parent)
    os.close(fd)
    try:
        last = "(no message)"
        for extra in (NATIVE, []):
            try:
                res = _run([cc, *FLAGS, *extra, str(SOURCE), "-o", tmp, "-lm"])
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise KernelUnavailable(f"{cc} failed to run: {exc}") from None
            if res.returncode == 0:
                os.replace(tmp, out)
                return
            lines = (res.stderr or res.stdout).strip().splitlines()
            last = next((ln.strip() for ln in lines if "error" in ln), lines[-1].strip() if lines else last)
        raise KernelUnavailable(f"{cc} could not compile {SOURCE.name}: {last}")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.lru_cache(maxsize=1)
def _load():
    try:
        cc = _compiler()
        try:
            version = _run([cc, "--version"]).stdout.splitlines()[:1]
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise KernelUnavailable(f"{cc} --version failed: {exc}") from None
        key = hashlib.sha256()
        for part in (SOURCE.read_bytes(), cc.encode(), "".join(version).encode(), " ".join(FLAGS + NATIVE).encode(),
                     _cpu_identity().encode()):
            key.update(part)
            key.update(b"\0")
        path = cache_dir() / f"cpu_decode-{key.hexdigest()[:16]}.so"
        if not path.exists():
            try:
                _build(cc, path)
            except OSError as exc:
                raise KernelUnavailable(f"cannot write the kernel cache {path.parent}: {exc}") from None
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as exc:
            raise KernelUnavailable(f"cannot load {path}: {exc}") from None
        fn = getattr(lib, SYMBOL)
        P, I = ctypes.c_void_p, ctypes.c_int64
        fn.argtypes = [P, ctypes.c_float, P, P, P] + [I] * 9 + [P, P, P, P, P]
        fn.restype = ctypes.c_int
        return fn, None
    except KernelUnavailable as exc:
        return None, str(exc)


def partition_kernel():
    """The C function (see cpu_decode.c), built and loaded once per process."""
    fn, why = _load()
    if fn is None:
        raise KernelUnavailable(why)
    return fn


def unavailable_reason() -> str | None:
    """None when the kernel loads here, else why not (one line)."""
    return _load()[1]
