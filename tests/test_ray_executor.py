"""The Ray executor against real Ray on this machine (loopback only): a private local instance runs
the smoke scenario like the local executor; a simulated two-node cluster (ray.cluster_utils.Cluster)
spreads cases over both nodes, survives losing a node mid-case, and cancels on Ctrl-C; a node's Ray
worker reuses its measurement process across tasks, replaces it after a crash and stops it when idle.

Slow-ish by nature: every Ray worker's first case starts a measurement process (~2-3 s of torch
import here), and Ray itself takes seconds to start.
"""

import dataclasses
import os
import sys
import threading
import time
from pathlib import Path

import pytest

# Before Ray is imported: a cluster on this machine listens on loopback, sends no usage stats.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray = pytest.importorskip("ray")

from harness.case import Budget, Case  # noqa: E402
from harness.results.store import read_measurements, write_run_info  # noqa: E402
from harness.run import runner  # noqa: E402
from harness.run.executor import Job  # noqa: E402
from harness.run.ray_executor import RayExecutor  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PLUGIN_DIR = Path(__file__).parent / "faulty_plugin"
PYTHONPATH = os.pathsep.join([str(PLUGIN_DIR), str(REPO)])
BUDGET = Budget(warmup_s=0.01, min_time_s=0.02, max_time_s=0.05, target_spread=0.5, case_timeout_s=60)
LAUNCHER_MARK = "runpy.run_module('harness.run.worker'"  # harness/run/ray_node.py's _LAUNCH
IDLE_S = 2.0  # the two-node cluster's idle period for a kept measurement process (ATTNBENCH_RAY_IDLE_S)


def _dir(path: Path) -> Path:
    """An empty run folder (run.json as start_run writes it, minus the environment)."""
    write_run_info(path, {"run_id": path.name})
    return path


def _case(impl: str, n: int) -> Case:
    return Case(impl, batch=1, heads_q=2, heads_kv=2, seq_len_q=n, seq_len_kv=n, head_dim=16, threads=1)


def _measurement_processes() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if LAUNCHER_MARK in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def _wait_no_measurement_processes(timeout_s: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := _measurement_processes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


@pytest.mark.slow
def test_local_ray_instance_runs_smoke_like_the_local_executor(tmp_path):
    from harness.scenario.load import load_scenario

    assert not ray.is_initialized()
    scenario = load_scenario("smoke")
    cases = scenario.cases()
    # The smoke cases under the tiny BUDGET, not smoke's own: what is compared is which cases ran and
    # how they ended, not their times.
    local, _ = runner.run_cases(cases, _dir(tmp_path / "local"), budget=BUDGET, seed=scenario.seed)
    t0 = time.perf_counter()
    with RayExecutor("local", progress=None) as ex:
        got, interrupted = runner.run_cases(cases, _dir(tmp_path / "ray"), budget=BUDGET,
                                            seed=scenario.seed, executor=ex)
        assert ray.nodes()[0]["NodeManagerAddress"] == "127.0.0.1"  # loopback only
    print(f"\nsmoke on a local Ray instance: {len(got)} cases in {time.perf_counter() - t0:.1f} s")
    assert not interrupted
    assert not ray.is_initialized(), "close() shuts down the instance it started"
    assert sorted((m.case.case_id, m.status) for m in got) == sorted((m.case.case_id, m.status) for m in local)
    on_disk = read_measurements(tmp_path / "ray")
    assert len(on_disk) == len(cases)
    for m in on_disk:
        where = m.extra["where"]
        assert where["executor"] == "ray" and where["node_ip"] == "127.0.0.1" and where["cpu_model"]
    # Every smoke case has the same thread setting and ends "ok": a Ray worker that ran a task before
    # (the start calibration included) hands each next case to the same measurement process.
    assert all(c.threads is None for c in cases)
    assert all(m.extra["where"]["worker_reused"] for m in on_disk), \
        [(m.case.case_id, m.extra["where"]["ray_worker_pid"], m.extra["where"]["worker_pid"]) for m in on_disk]
    by_ray_worker = {}
    for m in on_disk:
        by_ray_worker.setdefault(m.extra["where"]["ray_worker_pid"], set()).add(m.extra["where"]["worker_pid"])
    assert all(len(pids) == 1 for pids in by_ray_worker.values()), by_ray_worker
    assert _wait_no_measurement_processes() == [], "shutting the instance down ends its measurement processes"


# ------------------------------------------------------------------ a two-node cluster


@pytest.fixture(scope="module")
def two_nodes():
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes = {"node_a": cluster.add_node(num_cpus=1, resources={"node_a": 1}),
             "node_b": cluster.add_node(num_cpus=1, resources={"node_b": 1})}
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, runtime_env={"env_vars": {"PYTHONPATH": PYTHONPATH,
                                                                "ATTNBENCH_RAY_IDLE_S": str(IDLE_S)}},
             log_to_driver=False)
    yield cluster, nodes
    ray.shutdown()
    cluster.shutdown()


def _node_names(nodes) -> dict[str, str]:
    return {node.node_id: name for name, node in nodes.items()}


def test_cases_spread_over_both_nodes_and_name_them(two_nodes, tmp_path):
    cluster, nodes = two_nodes
    names = _node_names(nodes)
    cases = [_case(impl, n) for n in (32, 48) for impl in ("naive", "flash")]
    with RayExecutor(None) as ex:  # the connection this process already has; close() leaves it
        done, interrupted = runner.run_cases(cases, _dir(tmp_path / "r"), budget=BUDGET, seed=0, executor=ex)
    assert ray.is_initialized()
    assert not interrupted and [m.status for m in done] == ["ok"] * 4
    print()
    for m in read_measurements(tmp_path / "r"):
        w = m.extra["where"]
        print(f"{m.case.case_id:<72} {m.status:<3} {names.get(w['node_id'], '?')} "
              f"node_id={w['node_id'][:8]} ip={w['node_ip']} host={w['host']} cpu={w['cpu_model']!r} "
              f"threads={m.extra.get('threads')}")
    landed = {m.extra["where"]["node_id"] for m in done}
    assert landed == set(names), "both nodes ran cases"
    assert all(m.extra["where"]["node_ip"] == "127.0.0.1" for m in done)


def _on_node(node, case: Case, fresh: bool = False) -> dict:
    """One job through the executor's own Ray task, pinned to `node`, as RayExecutor submits it."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from harness.run.ray_executor import _remote

    job = Job.for_case(case, BUDGET.to_dict(), 0, BUDGET.case_timeout_s)
    strategy = NodeAffinitySchedulingStrategy(node.node_id, soft=False)
    return ray.get(_remote().options(num_cpus=1, max_retries=0, scheduling_strategy=strategy)
                   .remote(job.request, job.timeout_s, False, fresh))


def _alive(pid: int) -> bool:
    return pid in _measurement_processes()


def test_a_node_reuses_its_measurement_process_until_a_crash_or_an_idle_period(two_nodes):
    cluster, nodes = two_nodes
    node = nodes["node_a"]
    first = _on_node(node, _case("naive", 32))  # (may reuse what an earlier test left there)
    second = _on_node(node, _case("flash", 32))
    w1, w2 = first["where"], second["where"]
    assert first["answer"]["status"] == second["answer"]["status"] == "ok"
    assert w2["ray_worker_pid"] == w1["ray_worker_pid"], "Ray ran both tasks in one worker process"
    assert w2["worker_reused"] and w2["worker_pid"] == w1["worker_pid"]
    crash = _on_node(node, _case("faulty_abort", 32))
    assert crash["status"] == "crashed" and "SIGABRT" in crash["message"], crash
    assert crash["where"]["worker_reused"] and crash["where"]["worker_pid"] == w1["worker_pid"]
    after = _on_node(node, _case("naive", 48))
    assert after["answer"]["status"] == "ok" and not after["where"]["worker_reused"]
    assert after["where"]["worker_pid"] != w1["worker_pid"] and not _alive(w1["worker_pid"])
    other = _on_node(node, dataclasses.replace(_case("naive", 48), threads=2))
    assert not other["where"]["worker_reused"], "a job with another thread setting gets a pristine process"
    assert not _alive(after["where"]["worker_pid"])
    fresh = _on_node(node, _case("naive", 48), fresh=True)  # RayExecutor(fresh_per_case=True): --isolate
    assert not fresh["where"]["worker_reused"]
    assert not _alive(other["where"]["worker_pid"]) and not _alive(fresh["where"]["worker_pid"])
    kept = _on_node(node, _case("naive", 32))
    pid = kept["where"]["worker_pid"]
    assert not kept["where"]["worker_reused"] and _alive(pid), "kept for the next task"
    t0 = time.monotonic()
    while _alive(pid) and time.monotonic() - t0 < IDLE_S + 10:
        time.sleep(0.2)
    assert not _alive(pid) and time.monotonic() - t0 >= IDLE_S - 0.5, "stopped after the idle period, not before"
    assert not _on_node(node, _case("naive", 32))["where"]["worker_reused"]


def test_ctrl_c_cancels_running_cases_and_keeps_finished_ones(two_nodes, tmp_path):
    cases = [_case("naive", 32), _case("faulty_hang", 40), _case("faulty_hang", 48)]
    seen = []

    def interrupt_after_first(i, total, case, m, wall_s):
        seen.append(m)
        raise KeyboardInterrupt  # as if Ctrl-C arrived while the first reply was being handled

    ex = RayExecutor(None, progress=None)
    t0 = time.perf_counter()
    done, interrupted = runner.run_cases(cases, _dir(tmp_path / "r"), budget=BUDGET, seed=0, executor=ex,
                                         on_progress=interrupt_after_first)
    assert interrupted and time.perf_counter() - t0 < 45, "the hanging cases were not waited for"
    assert [m.case.impl for m in seen] == ["naive"] and seen[0].status == "ok"
    assert [m.case.case_id for m in read_measurements(tmp_path / "r")] == [cases[0].case_id]
    assert not ex._inflight, "nothing left in flight"
    assert _wait_no_measurement_processes() == [], "the cancelled case's measurement process is gone"
    ex.close()


def test_losing_a_node_mid_case_costs_only_that_case(two_nodes, tmp_path):
    cluster, nodes = two_nodes
    names = _node_names(nodes)
    budget = Budget(**{**BUDGET.to_dict(), "case_timeout_s": 8})
    hang = _case("faulty_hang", 32)
    others = [_case(impl, 40) for impl in ("naive", "flash", "chunked")]
    ex = RayExecutor(None)
    removed: list[str] = []

    def kill_the_hanging_node():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            running = {a.job.key: a.node.node_id for a in list(ex._inflight.values())}
            if hang.case_id in running and _measurement_processes():
                time.sleep(2.0)  # let its measurement process get into the hang
                node_id = running[hang.case_id]
                removed.append(node_id)
                cluster.remove_node(next(n for n in nodes.values() if n.node_id == node_id))
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_the_hanging_node, daemon=True)
    killer.start()
    jobs = [Job.for_case(c, budget.to_dict(), 0, budget.case_timeout_s) for c in [hang, *others]]
    replies = {r.job.key: r for r in ex.run(jobs)}
    killer.join(timeout=5)
    ex.close()
    assert removed, "the hanging case was seen running"
    lost = replies[hang.case_id]
    print(f"\nremoved {names[removed[0]]}; the hanging case: {lost.status}: {lost.message} "
          f"where={ {k: v for k, v in lost.where.items() if k in ('node_id', 'retried_after')} }")
    # retried on the surviving node (where it hangs again: a timeout), or crashed with the reason
    assert lost.status in ("timeout", "crashed")
    if lost.status == "timeout":
        assert lost.where["node_id"] != removed[0] and "lost the case" in lost.where["retried_after"]
    else:
        assert "lost the case" in lost.message
    for c in others:
        assert replies[c.case_id].status == "done" and replies[c.case_id].answer["status"] == "ok"
        assert replies[c.case_id].where["node_id"] != removed[0] or replies[c.case_id].where.get("retried_after")
    assert _wait_no_measurement_processes() == [], "no measurement process outlives its node"


def test_missing_ray_is_one_line_and_exit_2(monkeypatch, capsys):
    from harness.cli.main import main

    monkeypatch.setitem(sys.modules, "ray", None)
    assert main(["run", "smoke", "--executor", "ray", "--out", "/nonexistent/never-made"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["attnbench: error: the ray executor needs Ray: pip install 'attnbench[ray]'"]
