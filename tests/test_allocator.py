"""Every measurement process runs with glibc malloc keeping what is freed (harness.measure.machine.
allocator): set where the process starts, the caller's own values winning, recorded in run.json,
and it does spare the page faults a call with large temporaries pays under glibc's defaults."""

import os
import sys
from pathlib import Path

import pytest

from harness.case import Budget, Case
from harness.compare.runs import _environment_warnings
from harness.measure.machine import allocator
from harness.measure.machine.allocator import MALLOC_ENV, MEASUREMENT_ENV
from harness.measure.machine.environment import collect_environment
from harness.run.executor import Job, LocalExecutor
from harness.run.ray_node import NodeWorker
from harness.run.runner import measurement_of

GLIBC_DEFAULTS = {"MALLOC_MMAP_MAX_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072", "MALLOC_TOP_PAD_": "131072"}
PLAIN_TORCH = {"THP_MEM_ALLOC_ENABLE": "0"}  # 4 KiB pages, so faults count pages
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def _minor_faults(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[7])  # field 10, minflt


def test_the_callers_values_win_variable_by_variable():
    assert allocator.measurement_env({}) == MEASUREMENT_ENV
    mine = allocator.measurement_env({"MALLOC_TRIM_THRESHOLD_": "131072", "PATH": "/bin"})
    assert mine == {**MEASUREMENT_ENV, "MALLOC_TRIM_THRESHOLD_": "131072"}
    assert allocator.record({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2", "GLIBC_TUNABLES": ""}) == {
        **MEASUREMENT_ENV, "LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}  # an empty variable is not recorded


@linux_only
def test_every_kind_of_measurement_process_starts_with_them(tmp_path, monkeypatch):
    """Every variable at attnbench's value but the one the caller set (torch's THP_MEM_ALLOC_ENABLE included)."""
    for k in MEASUREMENT_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    want = {**MEASUREMENT_ENV, "MALLOC_TRIM_THRESHOLD_": "131072"}
    local = LocalExecutor(tmp_path / "local.log")  # the sweep's, the gate's and the A/B sides' worker
    node = NodeWorker(tmp_path / "node.log", None, dict(os.environ))  # a Ray node's, explicit environment
    for worker in (local.worker, node):
        worker.start()
        try:
            got = _environ_of(worker.proc.pid)
            assert {k: got.get(k) for k in want} == want, type(worker).__name__
        finally:
            worker.stop()


def test_run_json_records_them_and_compare_says_when_two_runs_differ(monkeypatch):
    monkeypatch.setenv("MALLOC_TOP_PAD_", "4096")
    env = collect_environment()
    assert env["malloc_env"] == {**MEASUREMENT_ENV, "MALLOC_TOP_PAD_": "4096"}
    same = {"cpu_model": "x", "malloc_env": dict(env["malloc_env"])}
    assert _environment_warnings(same, dict(same)) == []
    before = {"cpu_model": "x"}  # a run from before the settings were recorded: glibc's defaults
    (w,) = _environment_warnings(before, same)
    assert "malloc_env not recorded (glibc's defaults" in w and "MALLOC_MMAP_MAX_=0" in w
    (w,) = _environment_warnings(same, {"cpu_model": "x", "malloc_env": GLIBC_DEFAULTS})
    assert "MALLOC_MMAP_MAX_=65536" in w


@linux_only
def test_a_call_with_large_temporaries_stops_page_faulting_them_in(tmp_path):
    """naive at H=4, N=1024 allocates two 16 MiB (H, N, N) matrices a call: under glibc's defaults
    each call maps them anew and faults in ~8k pages; kept, they are reused. Counted, not timed."""
    case = Case("naive", batch=1, heads_q=4, heads_kv=4, seq_len_q=1024, seq_len_kv=1024, head_dim=32, threads=1)
    budget = Budget(warmup_s=0.02, min_time_s=0.2, max_time_s=0.4, target_spread=0.5)
    faults, calls = {}, {}
    for name, overrides in (("kept", PLAIN_TORCH), ("glibc", {**GLIBC_DEFAULTS, **PLAIN_TORCH})):
        with LocalExecutor(tmp_path / f"{name}.log", env_overrides=overrides) as ex:
            ex.worker.start()
            before = _minor_faults(ex.worker.proc.pid)
            (reply,) = list(ex.run([Job.for_case(case, budget.to_dict(), 0, 120.0)]))
            faults[name] = _minor_faults(ex.worker.proc.pid) - before
        m = measurement_of(reply)
        assert m.status == "ok", m.message
        calls[name] = len(m.samples_s) * m.calls_per_block
    # per timed call, the job's one-time faults (inputs, float64 reference, first calls) included:
    # measured ~2000 kept against ~17800 under glibc's defaults
    per_call = {k: faults[k] / calls[k] for k in faults}
    assert per_call["glibc"] > 4000, per_call  # two 16 MiB matrices: 8192 pages a call, mapped anew
    assert per_call["kept"] < per_call["glibc"] / 4, per_call


FAULTS_PER_ALLOCATION = """
import sys, torch
from pathlib import Path
from harness.measure.machine import allocator
if sys.argv[1] == "apply":
    assert allocator.apply_here()
def faults():
    return int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[7])
torch.empty(8 * 2**20).fill_(1.0)  # 32 MiB, once before counting
before = faults()
for _ in range(40):
    torch.empty(8 * 2**20).fill_(1.0)
print((faults() - before) / 40)
"""


@linux_only
def test_apply_here_keeps_freed_memory_in_a_running_process():
    """attnbench e2e measures in its own process: mallopt() there does what the variables do for a
    worker. A 32 MiB tensor allocated and freed 40 times: 8192 page faults each time under glibc's
    defaults; kept, a bounded number in all (0 with one thread, up to two fault-ins with two)."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV}
    got = {}
    for mode in ("glibc", "apply"):
        r = subprocess.run([sys.executable, "-c", FAULTS_PER_ALLOCATION, mode], env=env, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        got[mode] = float(r.stdout.strip().splitlines()[-1])
    assert got["glibc"] > 4000 and got["apply"] < got["glibc"] / 8, got


RESERVED_THEN_ALLOCATED = """
import sys, torch
from pathlib import Path
from harness.measure.machine import allocator
def faults():
    return int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[7])
peak = 128 * 2**20
got = allocator.reserve_heap(peak) if sys.argv[1] == "reserve" else 0
before = faults()
a, b = torch.empty(peak // 8).fill_(1.0), torch.empty(peak // 8).fill_(1.0)  # two 64 MiB temporaries
print(got, faults() - before)
"""


@linux_only
def test_a_reserved_heap_serves_a_cases_temporaries_without_page_faults():
    """reserve_heap(peak) faults in 2x the peak before the case; its 128 MiB of temporaries then
    fault nothing in (32768 pages without it). Under glibc's defaults it does nothing: the chunk
    would be mapped and unmapped again."""
    import subprocess

    out = {}
    for mode, env in (("reserve", MALLOC_ENV), ("none", MALLOC_ENV), ("reserve", GLIBC_DEFAULTS)):
        environ = {**{k: v for k, v in os.environ.items() if k not in MALLOC_ENV}, **env}
        r = subprocess.run([sys.executable, "-c", RESERVED_THEN_ALLOCATED, mode], env=environ, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        out[(mode, env is MALLOC_ENV)] = tuple(int(x) for x in r.stdout.split())
    reserved, faults = out[("reserve", True)]
    assert reserved == 2 * 128 * 2**20 and faults < 1000, out
    assert out[("none", True)][1] > 30000, out  # every page of both tensors
    assert out[("reserve", False)][0] == 0 and out[("reserve", False)][1] > 30000, out


def test_reserve_heap_grows_only_past_what_it_has_and_leaves_half_the_memory_free(monkeypatch):
    monkeypatch.setitem(allocator._RESERVED, "bytes", 0)
    monkeypatch.setattr(allocator, "_touch_pages", lambda ptr, n: None)  # no need to fault them in here
    monkeypatch.setattr(allocator, "_available_bytes", lambda: 64 * 2**20)
    monkeypatch.setattr(allocator, "_address_space_headroom", lambda: None)
    kept = dict(MALLOC_ENV)
    assert allocator.reserve_heap(2**30, kept) == 32 * 2**20  # capped: half of what is available
    assert allocator.reserve_heap(2**30, kept) == 32 * 2**20  # available (mocked) did not drop: half of it again, on top of ours
    monkeypatch.setattr(allocator, "_available_bytes", lambda: 2**40)
    assert allocator.reserve_heap(8 * 2**20, kept) == 0  # less than already reserved
    assert allocator.reserve_heap(40 * 2**20, kept) == 80 * 2**20 - 64 * 2**20
    assert allocator.reserve_heap(2**30, GLIBC_DEFAULTS) == 0
    assert allocator.reserve_heap(None, kept) == 0
    assert not allocator.keeps_freed_memory({**MALLOC_ENV, "MALLOC_TRIM_THRESHOLD_": "lots"})


def test_a_cpu_case_reserves_its_predicted_peak_before_its_checked_call(monkeypatch):
    from harness.measure import case_measure

    asked = []
    monkeypatch.setattr(allocator, "reserve_heap", lambda peak, environ=None: asked.append(peak) or 0)
    case = Case("naive", batch=1, heads_q=2, heads_kv=2, seq_len_q=64, seq_len_kv=64, head_dim=16)
    m = case_measure.measure_case(case, Budget(warmup_s=0.0, min_time_s=0.0, max_time_s=0.05), 0)
    assert m.status == "ok", m.message
    assert asked == [m.predicted_peak_bytes] and asked[0] > 0


LANDING_OFFSETS = """
import torch
kept = []
for junk in (0, 100, 5000, 70000):  # what ran before: a heap of another history each time
    kept.append(torch.empty(junk, dtype=torch.uint8))
    kept.append(torch.empty(2**20))  # 4 MiB: a score matrix's size
    print(kept[-1].data_ptr() % 4096)
"""


@linux_only
def test_where_a_large_tensor_lands_does_not_depend_on_what_the_process_allocated_before():
    """The A/B gate's two sides import different files, so their heaps differ before the first
    case: with torch's THP_MEM_ALLOC_ENABLE=1 a large tensor starts at a page boundary whatever
    came before; with the malloc settings alone its offset within a page follows the history."""
    import subprocess

    offsets = {}
    for name, env in (("measurement", MEASUREMENT_ENV), ("malloc only", MALLOC_ENV)):
        environ = {**{k: v for k, v in os.environ.items() if k not in MEASUREMENT_ENV}, **env}
        r = subprocess.run([sys.executable, "-c", LANDING_OFFSETS], env=environ, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr
        offsets[name] = {int(x) for x in r.stdout.split()}
    assert offsets["measurement"] == {0}, offsets
    assert len(offsets["malloc only"]) > 1, offsets


def test_the_calibrations_read_buffer_lands_in_heap_reserved_for_it(monkeypatch):
    """Its 1 GiB would otherwise be faulted in as huge pages (THP_ENV), ~1.3 s per GiB of fresh
    memory on the 2-core VM against ~0.2 s in 4 KiB pages; the cases reuse that heap later."""
    from harness.measure.machine.ceilings import RESERVE_MARGIN_BYTES, ReadBuffer

    asked = []
    monkeypatch.setattr(allocator, "reserve_heap", lambda peak, environ=None, factor=2: asked.append((peak, factor)))
    rb = ReadBuffer("cpu", max_bytes=2**26, llc=2**20)
    assert rb.bytes == 2**26 and asked == [(2**26 + RESERVE_MARGIN_BYTES, 1.0)]


def test_an_address_space_cap_leaves_room_for_the_cases_own_allocations(monkeypatch):
    """Kept heap counts against the worker's RLIMIT_AS (budget.memory_limit_bytes): at most half of
    what the cap leaves is reserved."""
    monkeypatch.setitem(allocator._RESERVED, "bytes", 0)
    monkeypatch.setattr(allocator, "_touch_pages", lambda ptr, n: None)
    monkeypatch.setattr(allocator, "_available_bytes", lambda: 2**40)
    monkeypatch.setattr(allocator, "_address_space_headroom", lambda: 100 * 2**20)
    assert allocator.reserve_heap(2**30, dict(MALLOC_ENV)) == 50 * 2**20


@linux_only
def test_the_address_space_headroom_is_read_under_a_real_cap():
    import subprocess

    code = ("import resource\nfrom harness.measure.machine import allocator\n"
            "print(allocator._address_space_headroom())\n"
            "resource.setrlimit(resource.RLIMIT_AS, (2**40, resource.RLIM_INFINITY))\n"
            "print(allocator._address_space_headroom())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    before, after = r.stdout.split()
    assert before == "None" and 0 < int(after) < 2**40
