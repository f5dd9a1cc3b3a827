"""A damaged cached binary of flash_decoding's C kernel (implementations/flash_decoding/kernel_build.py)
is rebuilt, once per process, through a private file renamed into place; only a failed rebuild makes
the CPU float32 cases skip, with the compiler's first error line. The cache lives in tmp_path
($ATTNBENCH_KERNEL_CACHE). The damaged binary is never loaded by this process before it is damaged
(dlopen of a file the process has mapped would return the mapped copy)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness import registry
from harness.case import Case
from harness.workloads.decode.kv_cache import make_decode_inputs, reference_decode
from implementations.flash_decoding import kernel_build

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _compiler() -> str | None:
    try:
        return kernel_build._compiler()
    except kernel_build.KernelUnavailable:
        return None


NEEDS_CC = pytest.mark.skipif(_compiler() is None, reason="no C compiler here: the kernel cannot be built")
CASE = Case("x", batch=2, heads_q=8, heads_kv=2, seq_len_q=1, seq_len_kv=300, head_dim=72, workload="decode",
            kv_layout="paged", page_size=16, kv_lens=(300, 77))


@pytest.fixture
def cache(monkeypatch, tmp_path):
    """A clean build state in this process, the kernel cache in tmp_path/kernels."""
    monkeypatch.setenv("ATTNBENCH_KERNEL_CACHE", str(tmp_path / "kernels"))
    monkeypatch.setattr(kernel_build, "_REBUILT", set())
    kernel_build._load.cache_clear()
    yield tmp_path / "kernels"
    kernel_build._load.cache_clear()


@pytest.fixture(scope="module")
def good_binary(tmp_path_factory) -> Path:
    """One build of the kernel by $CC for the module, never loaded: set-up each test copies into its
    own cache (a compile costs seconds; the rebuilds under test still compile)."""
    out = tmp_path_factory.mktemp("kernel_build") / "cpu_decode.so"
    kernel_build._build(_compiler(), out)
    return out


def _built(cc: str, good: Path) -> Path:
    """The cached binary for `cc` in this test's cache, as a build leaves it (not loaded)."""
    path = kernel_build.cached_path(cc)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(good, path)
    return path


def _damage(path: Path, how: str, tmp_path: Path, cc: str) -> None:
    good = path.read_bytes()
    if how == "truncated":  # a crashed copy: only the first pages made it
        path.write_bytes(good[: len(good) // 2])
    elif how == "empty":  # a full disk
        path.write_bytes(b"")
    elif how == "garbage":  # overwritten: dlopen says "invalid ELF header"
        path.write_bytes(os.urandom(len(good)))
    elif how == "foreign":  # another library at that name: loads, but has no entry point
        src = tmp_path / "other.c"
        src.write_text("int other(void) { return 1; }\n")
        subprocess.run([cc, "-shared", "-fPIC", str(src), "-o", str(path)], check=True)
    assert path.read_bytes() != good


def _rel(out, ref) -> float:
    return ((out.double() - ref).norm() / ref.norm()).item()


@NEEDS_CC
@pytest.mark.parametrize("how", ["truncated", "empty", "garbage", "foreign"])
def test_damaged_cached_kernel_is_rebuilt_and_runs_correctly(cache, good_binary, tmp_path, how):
    cc = _compiler()
    path = _built(cc, good_binary)
    size = path.stat().st_size
    _damage(path, how, tmp_path, cc)
    assert kernel_build.unavailable_reason() is None
    assert str(path) in kernel_build._REBUILT  # it was rebuilt, not loaded as it was
    assert path.stat().st_size == size and kernel_build._elf_damage(path) is None
    assert sorted(p.name for p in cache.iterdir()) == [path.name]  # no private build file left behind
    assert registry.get("flash_decoding").supports(CASE.replace(impl="flash_decoding"))
    inp = make_decode_inputs(CASE, seed=7)
    out = registry.get("flash_decoding").decode.fn(*inp.args(), **inp.kwargs(), partition=64)
    assert torch.isfinite(out).all() and _rel(out, reference_decode(inp)) <= 2e-6


@NEEDS_CC
def test_intact_cached_kernel_is_not_rebuilt(cache, good_binary):
    path = _built(_compiler(), good_binary)
    stamp = path.stat().st_mtime_ns
    assert kernel_build.unavailable_reason() is None
    assert not kernel_build._REBUILT and path.stat().st_mtime_ns == stamp


FAILING_CC = """#!/bin/sh
if [ "$1" = "--version" ]; then echo "fakecc (disk full) 1.0"; exit 0; fi
echo "$@" >> "{log}"
echo "cpu_decode.c: In function 'attnbench_fd_partition_f32':" >&2
echo "cpu_decode.c:12:1: fatal error: cannot write output file: No space left on device" >&2
echo "compilation terminated." >&2
exit 1
"""


def test_failed_rebuild_skips_with_the_compilers_first_error_line(cache, tmp_path, monkeypatch):
    """$CC now fails (a full disk): its damaged cached binary cannot be rebuilt -> the kernel's cases
    skip with the damage and the compiler's first error line; the rebuild is tried once per process."""
    log = tmp_path / "cc.log"
    cc = tmp_path / "fakecc"
    cc.write_text(FAILING_CC.format(log=log))
    cc.chmod(0o755)
    monkeypatch.setenv("CC", str(cc))
    path = kernel_build.cached_path(str(cc))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 20)  # the first bytes of a binary, cut short
    case = CASE.replace(impl="flash_decoding")
    support = registry.get("flash_decoding").supports(case)
    assert not support
    reason = support.reason
    assert "\n" not in reason and f"cannot load the cached {path}" in reason and "truncated ELF file" in reason
    assert "rebuilding it failed" in reason
    assert "fatal error: cannot write output file: No space left on device" in reason
    assert sorted(p.name for p in cache.iterdir()) == [path.name]  # the failed build left nothing
    tries = log.read_text().count("\n")
    assert tries >= 1
    kernel_build._load.cache_clear()  # asked again in the same process: no second rebuild
    again = registry.get("flash_decoding").supports(case)
    assert not again and f"cannot load {path}" in again.reason
    assert log.read_text().count("\n") == tries
    assert registry.get("flash_decoding_torch").supports(case.replace(impl="flash_decoding_torch"))


WORKER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("kb", sys.argv[1])
kb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kb)
print(kb.unavailable_reason(), str(kb.cached_path(kb._compiler())) in kb._REBUILT)
"""


@NEEDS_CC
def test_parallel_workers_rebuild_a_damaged_kernel_safely(cache, good_binary):
    """Workers starting together on one damaged binary each rebuild it into a private file renamed
    into place: every one loads a whole binary, and the cache ends with that one file."""
    path = _built(_compiler(), good_binary)
    path.write_bytes(path.read_bytes()[:4096])
    env = {**os.environ, "ATTNBENCH_KERNEL_CACHE": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(Path(kernel_build.__file__))], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    for out, err, rc in results:
        assert rc == 0 and out.split()[0] == "None", (out, err, rc)  # no crash (SIGBUS), loaded
    assert any(out.split()[1] == "True" for out, _, _ in results)  # at least the first one rebuilt
    assert sorted(p.name for p in cache.iterdir()) == [path.name] and kernel_build._elf_damage(path) is None
