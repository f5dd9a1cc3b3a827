"""Build and load the C partition kernel of flash_decoding's CPU path (`cpu_decode.c`).

Built on first use with the machine's C compiler ($CC, else cc, gcc or clang), `-O3 -march=native`
(retried without -march=native where the compiler refuses it), into a cache keyed by the source,
the compiler and the CPU (so a home directory shared across machines never loads a binary built for
another CPU): $ATTNBENCH_KERNEL_CACHE, else $XDG_CACHE_HOME/attnbench/kernels, else
~/.cache/attnbench/kernels. A build takes well under a second; a cached one loads in milliseconds.
Concurrent builds (parallel workers) each write a private file, flush it to disk and rename it into
place, so no worker ever sees a half-written binary.

A cached binary that is damaged (truncated by a full disk or a crashed copy, overwritten by an
antivirus or another file) is rebuilt, once per process and key: before dlopen, an ELF file is
checked to be as long as its own headers say (dlopen of a truncated ELF can kill the process with
SIGBUS rather than fail), and a failing dlopen (OSError: "invalid ELF header", "file too short") or a
missing entry point marks it damaged too. The rebuild goes through the same private-file-and-rename
path; only when the rebuild fails (its reason: the compiler's first error line) or the rebuilt binary
still does not load is the kernel unavailable.

`kernel()` returns its ctypes functions (one partition, a worker's share of a call's partitions
with the merges, the AMX switch), the blocked variant's vector width and the factor float8 codes read
with, or raises KernelUnavailable with one line saying why (no compiler, compile error, unwritable
cache); callers turn that into a skip with the reason.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

SOURCE = Path(__file__).with_name("cpu_decode.c")
HEADERS = [Path(__file__).with_name("cpu_decode_amx.h")]  # included by SOURCE: part of the cache key
SYMBOL = "attnbench_fd_partition"
WORKER_SYMBOL = "attnbench_fd_partitions"  # a worker's share of a call's partitions, in one call
WIDTH_SYMBOL = "attnbench_fd_vector_width"  # lanes of the blocked variant (its scratch rounds rows up)
FP8_SYMBOL = "attnbench_fd_fp8_read_factor"  # what a float8 code reads as, times its value
AMX_SYMBOL = "attnbench_fd_amx"  # is the float8 pass on the AMX tiles in use (and switch it off or on)
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
                includes = [f"-I{d}" for d in dict.fromkeys(str(h.parent) for h in HEADERS)]
                res = _run([cc, *FLAGS, *extra, *includes, str(SOURCE), "-o", tmp, "-lm"])
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise KernelUnavailable(f"{cc} failed to run: {exc}") from None
            if res.returncode == 0:
                with open(tmp, "rb") as f:  # on disk before the rename: a crash never leaves a short file
                    os.fsync(f.fileno())
                os.replace(tmp, out)
                return
            lines = (res.stderr or res.stdout).strip().splitlines()
            last = next((ln.strip() for ln in lines if "error" in ln), lines[-1].strip() if lines else last)
        raise KernelUnavailable(f"{cc} could not compile {SOURCE.name}: {last}")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class _Damaged(Exception):
    """The cached binary cannot be used; the message says how (one line)."""


_REBUILT: set[str] = set()  # cached binaries this process has rebuilt after finding them damaged


# ELF header fields (offset, format) -- e_phoff, e_shoff; e_phentsize, e_phnum, e_shentsize, e_shnum -- and,
# in a program header, p_offset and p_filesz; for ELF64 (class 2) and ELF32 (class 1).
_ELF = {b"\x02": ((32, "QQ"), (54, "HHHH"), (8, "Q"), (32, "Q")),
        b"\x01": ((28, "II"), (42, "HHHH"), (4, "I"), (16, "I"))}


def _elf_damage(path: Path) -> str | None:
    """Why an ELF file is visibly incomplete (shorter than its program and section header tables and
    its segments say), else None; files that are not ELF are left to dlopen to judge."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF":
        return None
    size, end = len(data), "<" if data[5:6] == b"\x01" else ">"
    (o_off, f_off), (o_ent, f_ent), (o_poff, f_poff), (o_psz, f_psz) = _ELF.get(data[4:5], _ELF[b"\x02"])
    try:
        phoff, shoff = struct.unpack_from(end + f_off, data, o_off)
        phent, phnum, shent, shnum = struct.unpack_from(end + f_ent, data, o_ent)
        need = max(phoff + phent * phnum, shoff + shent * shnum)
        if need <= size:
            for at in range(phoff, phoff + phent * phnum, phent or 1):
                (p_offset,), (p_filesz,) = (struct.unpack_from(end + f_poff, data, at + o_poff),
                                            struct.unpack_from(end + f_psz, data, at + o_psz))
                need = max(need, p_offset + p_filesz)
    except struct.error:
        return f"truncated ELF file ({size} bytes, shorter than its own header)"
    if need > size:
        return f"truncated ELF file ({size} bytes, its headers describe {need})"
    return None


def _open(path: Path):
    """The kernel's ctypes function from the binary at `path`, or _Damaged."""
    try:
        why = _elf_damage(path)
    except OSError as exc:  # unreadable: a rebuild renames a fresh file over it
        why = f"cannot read it: {exc.strerror or exc}"
    if why:
        raise _Damaged(why)
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        raise _Damaged(lines[0].removeprefix(f"{path}: ")) from None  # dlopen's message names the path
    try:
        fn = getattr(lib, SYMBOL)
    except AttributeError:
        _unload(lib)  # else dlopen of the rebuilt file at the same path would return this library again
        raise _Damaged(f"it has no {SYMBOL}") from None
    P, I = ctypes.c_void_p, ctypes.c_int64
    fn.argtypes = [P, ctypes.c_float, P, P, P] + [I] * 13 + [P] * 7
    fn.restype = ctypes.c_int
    try:
        width, fp8, amx = getattr(lib, WIDTH_SYMBOL), getattr(lib, FP8_SYMBOL), getattr(lib, AMX_SYMBOL)
        many = getattr(lib, WORKER_SYMBOL)
    except AttributeError:
        _unload(lib)
        raise _Damaged(f"it has no {WIDTH_SYMBOL}, {FP8_SYMBOL}, {AMX_SYMBOL} or {WORKER_SYMBOL}") from None
    width.restype, fp8.restype, amx.restype = ctypes.c_int64, ctypes.c_float, ctypes.c_int64
    amx.argtypes = [ctypes.c_int64]
    many.argtypes = [P, I, ctypes.c_float, P, P, P] + [I] * 10 + [P, I, I, P, I, I, I] + [P] * 12
    many.restype = ctypes.c_int
    return Kernel(fn, int(width()), float(fp8()), amx, many)


class Kernel(NamedTuple):
    """The loaded kernel: `partition` (see cpu_decode.c) and the vector width of its blocked
    variant."""

    partition: object
    vector_width: int
    fp8_read_factor: float  # a float8 code reads as its value times this (scales carry 1 / it)
    amx: object  # amx(-1): 1 when float8 caches run on the AMX tiles (cpu_decode_amx.h); amx(0) / amx(1): off / on
    partitions: object  # attnbench_fd_partitions: a worker's share of a call's partitions, merges included


def _unload(lib) -> None:
    try:
        import _ctypes

        _ctypes.dlclose(lib._handle)
    except (ImportError, AttributeError, OSError):
        pass


def _build_cached(cc: str, path: Path) -> None:
    try:
        _build(cc, path)
    except OSError as exc:
        raise KernelUnavailable(f"cannot write the kernel cache {path.parent}: {exc}") from None


def cached_path(cc: str) -> Path:
    """Where the binary built by `cc` from SOURCE for this CPU is cached (the key: the source and the
    headers it includes, the compiler and its version, the flags, the CPU)."""
    try:
        version = _run([cc, "--version"]).stdout.splitlines()[:1]
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelUnavailable(f"{cc} --version failed: {exc}") from None
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), *(h.read_bytes() for h in HEADERS), cc.encode(), "".join(version).encode(), " ".join(FLAGS + NATIVE).encode(),
                 _cpu_identity().encode()):
        key.update(part)
        key.update(b"\0")
    return cache_dir() / f"cpu_decode-{key.hexdigest()[:16]}.so"


@functools.lru_cache(maxsize=1)
def _load():
    try:
        cc = _compiler()
        path = cached_path(cc)
        if not path.exists():
            _build_cached(cc, path)
        try:
            return _open(path), None
        except _Damaged as damaged:
            if str(path) in _REBUILT:  # rebuilt once already in this process: do not loop
                raise KernelUnavailable(f"cannot load {path}: {damaged}") from None
            _REBUILT.add(str(path))
            try:
                _build_cached(cc, path)  # a private file renamed over the damaged one
            except KernelUnavailable as exc:
                raise KernelUnavailable(f"cannot load the cached {path} ({damaged}), and rebuilding it failed: "
                                        f"{exc}") from None
        try:
            return _open(path), None
        except _Damaged as damaged:
            raise KernelUnavailable(f"cannot load {path} even after rebuilding it: {damaged}") from None
    except KernelUnavailable as exc:
        return None, str(exc)


def kernel() -> Kernel:
    """The loaded kernel, built and loaded once per process (KernelUnavailable saying why not)."""
    k, why = _load()
    if k is None:
        raise KernelUnavailable(why)
    return k


def unavailable_reason() -> str | None:
    """None when the kernel loads here, else why not (one line)."""
    return _load()[1]
