"""Figures that cannot lie: contention, worker-side ceilings, clean state between cases, and
implementations that try to fool the harness (the measurement-truth issue)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.case import Budget, Case
from harness.measure.machine import ceilings
from harness.results import ceilings as ceiling_records
from harness.measure.timing import contention
from harness.measure.case_measure import measure_case
from harness.results.store import read_measurements
from harness.run.executor import Job, LocalExecutor
from harness.run.runner import measurement_of

REPO = Path(__file__).resolve().parents[1]
CHEATS = Path(__file__).parent / "cheat_plugin"
TINY = Budget(warmup_s=0.01, min_time_s=0.05, max_time_s=0.3, target_spread=0.5)


# ------------------------------------------------------------------ contention


def _snap(wall, own, busy, steal=0, total=None, runnable=1):
    return contention.CpuSnapshot(wall, own, busy, steal, total if total is not None else busy + 1000, runnable)


def test_a_busy_neighbour_is_contention_and_a_quiet_machine_is_not():
    # 1 s of wall time on 2 CPUs at 100 ticks/s; we used 2.0 s of CPU (both threads busy).
    quiet = contention.assess(_snap(0, 0, 0), _snap(1, 2.0, 205), threads=2, cpus=2, ticks_per_s=100)
    assert not quiet.contended and quiet.others_cores == pytest.approx(0.05) and quiet.own_cpu_share == 1.0
    # a neighbour took a whole core: we got 1.0 s of CPU, the machine was busy 2.0 s
    busy = contention.assess(_snap(0, 0, 0), _snap(1, 1.0, 200), threads=2, cpus=2, ticks_per_s=100)
    assert busy.contended and busy.others_cores == pytest.approx(1.0) and "other processes" in busy.reason
    # a single-threaded case on 2 CPUs is not disturbed by a neighbour using the other core
    one = contention.assess(_snap(0, 0, 0), _snap(1, 1.0, 200), threads=1, cpus=2, ticks_per_s=100)
    assert not one.contended
    # a niced job kept both cores busy, but yielded them: we got the 2.0 s of CPU we asked for
    niced = contention.assess(_snap(0, 0, 0), _snap(1, 1.95, 400), threads=2, cpus=2, ticks_per_s=100)
    assert not niced.contended and niced.others_cores == pytest.approx(2.05)
    # the same busy machine while we got 1.7 s: contended
    assert contention.assess(_snap(0, 0, 0), _snap(1, 1.7, 400), threads=2, cpus=2, ticks_per_s=100).contended
    stolen = contention.assess(_snap(0, 0, 0, 0, 0), _snap(1, 2.0, 200, 20, 220), threads=2, cpus=2,
                               ticks_per_s=100)
    assert stolen.contended and "stole" in stolen.reason


def _spinners(n: int) -> list[subprocess.Popen]:
    code = "import time\nend = time.time() + 60\nwhile time.time() < end: pass\n"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]


@pytest.mark.slow
def test_naive_with_a_competing_busy_process_is_flagged_contended():
    """The audit's case: naive N=256 measured 32x slow with a tight spread and status ok."""
    case = Case("naive", seq_len_q=256, seq_len_kv=256, heads_q=8, heads_kv=8, head_dim=64)
    procs = _spinners(os.cpu_count() or 2)
    try:
        time.sleep(0.3)
        m = measure_case(case, TINY, seed=0)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert m.status == "ok" and m.contended, (m.metrics, m.contention)
    assert m.metrics["others_cores"] > 0.5 and "other processes" in m.contention


# ------------------------------------------------------------------ ceilings


def test_matmul_rate_is_plausible_and_restores_the_thread_count():
    import torch

    before = torch.get_num_threads()
    r = ceilings.matmul_rate("cpu", "float32", threads=1, min_time_s=0.05)
    assert torch.get_num_threads() == before and r["threads"] == 1
    assert 1e8 < r["matmul_flops_per_s"] < 1e13 and r["spread"] >= 0


def test_start_and_end_ceilings_are_combined_and_disagreement_is_said():
    s = {"cpu/float32/tdefault": {"matmul_flops_per_s": 100e9, "spread": 0.02}}
    close = ceiling_records.combine(s, {"cpu/float32/tdefault": {"matmul_flops_per_s": 95e9, "spread": 0.02}})
    far = ceiling_records.combine(s, {"cpu/float32/tdefault": {"matmul_flops_per_s": 40e9, "spread": 0.02}})
    assert close["cpu/float32/tdefault"]["agree"] and close["cpu/float32/tdefault"]["matmul_flops_per_s"] == 100e9
    assert far["cpu/float32/tdefault"]["agree"] is False
    case = Case("naive", threads=1)
    assert ceiling_records.lookup(ceiling_records.ceilings_of({"cpu/float32/t1": {"matmul_flops_per_s": 5.0}}), case) == 5.0
    assert ceiling_records.lookup(ceiling_records.ceilings_of({"cpu_matmul_flops_per_s": 7.0}), case) == 7.0  # older runs


def test_faster_than_the_ceiling_is_suspect():
    case = Case("sdpa", seq_len_q=128, seq_len_kv=128, heads_q=2, heads_kv=2, head_dim=32, threads=1)
    m = measure_case(case, TINY, seed=0, ceilings={"cpu/float32/t1": {"flops_per_s": 1e6}})  # nothing is that slow
    assert m.status == "suspect" and "cannot have done the work" in m.message
    assert measure_case(case, TINY, seed=0, ceilings={"cpu/float32/t1": {"flops_per_s": 1e15, "bytes_per_s": 1e15}}).status == "ok"


def test_the_roofline_bound_uses_whichever_ceiling_binds():
    from harness.measure.guards import too_fast

    case = Case("x", threads=1)
    ceil = {"cpu/float32/t1": {"flops_per_s": 1e12, "bytes_per_s": 1e10}}
    # 1 GFLOP and 1 GB: the bytes bind (0.1 s); 0.05 s is within the 1.5x headroom? no: 0.05 * 1.5 < 0.1
    assert "faster than the roofline" in too_fast(case, 0.05, 1e9, 1e9, ceil)
    assert too_fast(case, 0.08, 1e9, 1e9, ceil) == ""  # 0.08 * 1.5 >= 0.1
    assert too_fast(case, 1e-9, 1e9, 1e9, {}) == ""  # no ceiling measured: nothing to judge against


# ------------------------------------------------------------------ clean state


def test_thread_count_does_not_leak_from_one_case_to_the_next(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # torch's own default in the worker (conftest sets 1)
    one = Case("naive", seq_len_q=64, seq_len_kv=64, heads_q=2, heads_kv=2, head_dim=16, threads=1)
    default = one.replace(threads=None)
    with LocalExecutor() as ex:
        jobs = [Job.for_case(c, TINY.to_dict(), 0, 120.0) for c in (default, one, default)]
        got = [measurement_of(r) for r in ex.run(jobs)]
    assert [m.status for m in got] == ["ok"] * 3
    assert got[1].extra["threads"] == 1
    pids = [m.extra["where"]["worker_pid"] for m in got]
    # set_num_threads changes torch's state for good (small ops ~45% slower after it), so the
    # worker that ran the threads=1 case is replaced; the one before it had never called it
    assert pids[0] == pids[1] != pids[2]
    assert got[2].extra["threads"] == got[0].extra["threads"] == (os.cpu_count() or 1) or got[0].extra["threads"] > 1


# ------------------------------------------------------------------ cheats


def test_cheating_implementations_are_caught(tmp_path):
    scen = tmp_path / "cheats.toml"
    scen.write_text("""
name = "cheats"
implementations = ["cheat_zero_inputs", "cheat_nan_later", "cheat_cached", "cheat_cached_unless_profiled", "naive"]
[budget]
warmup_s = 0.01
min_time_s = 0.02
max_time_s = 0.2
target_spread = 0.5
[[grid]]
name = "tiny"
heads_q = 2
seq_len = 64
head_dim = 16
""")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(CHEATS), str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop(ceilings.QUICK_ENV, None)  # the calibration checked below is the full one a user gets
    r = subprocess.run([sys.executable, "-m", "attnbench", "run", str(scen), "--isolate", "--out", str(tmp_path),
                        "--run-id", "r", "--no-report"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    ms = {m.case.impl: m for m in read_measurements(tmp_path / "r")}
    assert ms["naive"].status == "ok"
    assert ms["cheat_zero_inputs"].status == "wrong" and "modified its inputs" in ms["cheat_zero_inputs"].message
    assert ms["cheat_nan_later"].status == "wrong" and "last timed call" in ms["cheat_nan_later"].message
    assert ms["cheat_cached"].status == "wrong" and "fresh inputs" in ms["cheat_cached"].message
    # honest only under the profiler: the call on fresh inputs must not be the profiled one
    assert ms["cheat_cached_unless_profiled"].status == "wrong", ms["cheat_cached_unless_profiled"].message
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    cal = info["calibration"]["cpu/float32/tdefault"]
    assert cal["start"]["matmul_flops_per_s"] > 0 and cal["end"]["matmul_flops_per_s"] > 0 and "agree" in cal
    assert cal["start"]["read_bytes_per_s"] > 1e8 and cal["read_bytes_per_s"] >= cal["start"]["read_bytes_per_s"]
    assert len(cal["start"]["read_methods"]) >= 3 and cal["read_method"].endswith(("(start)", "(end)"))  # each read kept
    assert "testing_quick_calibration" not in cal["start"] and "testing_quick_calibration" not in cal["end"]


def test_a_slow_case_makes_two_untimed_calls_and_profiles_the_checked_one(monkeypatch):
    """A forward case whose checked call lasts the warm-up: that call is the warm-up and the
    memory pass (the only profiled call), the timed blocks are one call each, and the only other
    untimed call is the guard's on fresh inputs, after timing, unprofiled like the timed ones."""
    import uuid

    import torch

    from harness import registry
    from harness.measure import peak_memory

    calls = []  # (first value of q, profiled?) per call of the implementation
    profiled = {"on": False}

    def slow_naive(q, k, v, **kw):
        calls.append((float(q.flatten()[0]), profiled["on"]))
        time.sleep(0.03)
        return registry.get("naive").fn(q, k, v, **kw)

    real = peak_memory.measure_peak

    def measure_peak(fn, device="cpu", op_names=None):
        profiled["on"] = True
        try:
            return real(fn, device, op_names)
        finally:
            profiled["on"] = False

    monkeypatch.setattr(peak_memory, "measure_peak", measure_peak)
    registry.ensure_loaded()
    name = f"_test_truth_slow_{uuid.uuid4().hex[:8]}"
    registry.register(name, devices=("cpu",), dtypes=("float32",))(slow_naive)
    try:
        case = Case(name, batch=1, heads_q=2, heads_kv=2, seq_len_q=64, seq_len_kv=64, head_dim=16, threads=1)
        m = measure_case(case, Budget(warmup_s=0.02, min_time_s=0.05, max_time_s=0.3, target_ci=0.5), 0)
    finally:
        registry._REGISTRY.pop(name, None)
    assert m.status == "ok", m.message
    assert m.calls_per_block == 1 and len(calls) == 1 + len(m.samples_s) + 1, (len(calls), m.samples_s)
    assert [p for _, p in calls] == [True] + [False] * (len(calls) - 1)  # only the checked call is profiled
    assert len({v for v, _ in calls[:-1]}) == 1 and calls[-1][0] != calls[0][0]  # the last is on fresh inputs
    out_bytes = 2 * 64 * 16 * torch.float32.itemsize
    assert m.peak_bytes >= out_bytes  # the profiled call's peak: at least its output


def test_a_training_pass_measures_the_memory_of_what_is_timed():
    """A training pass's checked calls are not its timed callable: its memory pass is a profiled
    call of the timed callable (forward + backward) after timing, so the saved probabilities and
    the gradient of the scores count."""
    case = Case("naive", batch=1, heads_q=2, heads_kv=2, seq_len_q=256, seq_len_kv=256, head_dim=16, threads=1,
                pass_kind="forward_backward")
    m = measure_case(case, Budget(warmup_s=0.01, min_time_s=0.02, max_time_s=0.1, target_ci=0.5), 0)
    assert m.status == "ok", m.message
    score_bytes = 2 * 256 * 256 * 4
    assert m.peak_bytes >= 3.5 * score_bytes  # the forward alone holds 2 score matrices at its peak


def test_a_cpu_case_names_its_kernels_from_its_peak_memory_call(monkeypatch):
    """The sdpa family's kernel names on the CPU come from the profiled peak-memory call (the
    checked call): no profiled call more (dispatched_kernels is never reached)."""
    from harness.measure import kernel_names
    from harness.measure.case_measure import measure_case

    def no_more_calls(*_a, **_k):
        raise AssertionError("a second profiled call")

    monkeypatch.setattr(kernel_names, "dispatched_kernels", no_more_calls)
    case = Case("sdpa_math", batch=1, heads_q=2, heads_kv=2, seq_len_q=96, seq_len_kv=96, head_dim=32, threads=1)
    m = measure_case(case, Budget(warmup_s=0.01, min_time_s=0.02, max_time_s=0.05), 0)
    assert m.status == "ok" and "kernels_error" not in m.extra, m.message
    assert "aten::_scaled_dot_product_attention_math" in m.extra["kernels"]
