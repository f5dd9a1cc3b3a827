"""Hostile scenario files and outputs: huge axes, tiny memory limits, long names, BOMs, /dev/zero,
unwritable outputs, hostile run ids (issue classes 6, 7, 8, 13). Helpers: hostile_helpers.py."""

from __future__ import annotations

import json
import os
import time

import pytest

from hostile_helpers import (  # noqa: F401
    REPO, FIXTURES, FAULTY, TINY, _env, attnbench, scenario, one_line_error, records, _case, _ok, make_run, main_in_process, assert_one_line, HOLD, _hold_lock,
)


# ------------------------------------------------------------------ 6, 7, 8, 13: scenario files


def _scenario_error(tmp_path, text: str | bytes, name="v.toml") -> str:
    from harness.scenario.load import ScenarioError, load_scenario

    f = tmp_path / name
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    t0 = time.perf_counter()
    with pytest.raises(ScenarioError) as exc:
        load_scenario(f, known_impls=["naive"])
    assert time.perf_counter() - t0 < 2.0, "validation must stay quick"
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def _grid(**axes) -> str:
    body = {"heads_q": 2, "seq_len": 16, "head_dim": 8, **axes}
    return 'name = "v"\nimplementations = ["naive"]\n[[grid]]\n' + "".join(f"{k} = {v}\n" for k, v in body.items())


@pytest.mark.parametrize("axes, needle", [
    ({"heads_q": 1000000000001, "heads_kv": 2}, "grid[0].heads_q: 1000000000001 is not allowed; allowed: a positive integer <= 4096"),
    ({"heads_q": 100000001}, "<= 4096"),
    ({"heads_q": 4, "heads_kv": 8192}, "grid[0].heads_kv"),
    ({"seq_len": 2**40}, "<= 16777216"),
    ({"batch": 10**9}, "<= 65536"),
    ({"head_dim": 4096}, "<= 1024"),
    ({"threads": 10**6}, "<= 4096"),
    ({"seq_len": "[" + ",".join(map(str, range(1, 401))) + "]", "batch": "[" + ",".join(map(str, range(1, 301))) + "]"},
     "expands to 120000 cases"),
])
def test_huge_axis_values_are_refused_quickly(tmp_path, axes, needle):
    assert needle in _scenario_error(tmp_path, _grid(**axes))


def test_scenario_name_length_memory_floor_bom_and_file_kind(tmp_path):
    from harness.scenario.load import load_scenario
    from harness.scenario.schema import MIN_MEMORY_LIMIT_BYTES

    assert "at most 100 characters" in _scenario_error(tmp_path, _grid().replace('name = "v"', f'name = "{"n" * 240}"'))
    for small in (1, 200_000_000, 500_000_000):
        text = _grid().replace("[[grid]]", f"[budget]\nmemory_limit_bytes = {small}\n[[grid]]")
        assert f">= {MIN_MEMORY_LIMIT_BYTES}" in _scenario_error(tmp_path, text)
    (tmp_path / "bom.toml").write_bytes(b"\xef\xbb\xbf" + _grid().encode())
    assert load_scenario(tmp_path / "bom.toml", known_impls=["naive"]).name == "v"
    assert "larger than 1024 KiB" in _scenario_error(tmp_path, b"#" * (2 << 20))
    from harness.scenario.load import ScenarioError

    for path in ("/dev/zero", str(tmp_path)):
        if not os.path.exists(path):
            continue
        with pytest.raises(ScenarioError, match="not a regular file|a directory"):
            load_scenario(path, known_impls=["naive"])


def test_unwritable_output_and_undecodable_baseline_are_one_line(tmp_path, capsys):
    from harness.compare import baseline as bl
    from harness.results.store import ResultsError

    run = make_run(tmp_path / "r", [_ok()])
    if os.path.exists("/dev/full"):
        rc, _, err = main_in_process(capsys, "export", run, "--format", "csv", "--out", "/dev/full")
        assert_one_line(rc, err, "No space left")
    rc, _, err = main_in_process(capsys, "report", run, "--out", tmp_path / "r" / "run.json" / "x")
    assert_one_line(rc, err, "run.json")
    bad = tmp_path / "base.json"
    bad.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ResultsError, match="not a readable JSON baseline"):
        bl.read_baseline(bad)


def test_a_worker_that_cannot_start_is_a_crashed_record_per_case(tmp_path):
    """Below the memory floor the scenario is refused; if the worker still cannot start (a smaller
    machine, a hostile environment), every case is recorded `crashed` with why, and the run ends."""
    from harness.case import Budget
    from harness.run.executor import LocalExecutor
    from harness.run.runner import run_cases

    cases = [_case(), _case(n=24)]
    run_dir = make_run(tmp_path / "r", [])
    with LocalExecutor(run_dir / "worker.log", memory_limit_bytes=1) as ex:
        done, interrupted = run_cases(cases, run_dir, budget=Budget(), seed=0, executor=ex)
    assert not interrupted
    assert [m.status for m in done] == ["crashed", "crashed"]
    assert all("failed to start" in m.message and "too small to import torch" in m.message for m in done), done[0].message
    assert [d["status"] for d in records(run_dir)] == ["crashed", "crashed"]


def test_infinite_budgets_huge_seeds_and_many_grids_are_refused(tmp_path):
    inf = _grid().replace("[[grid]]", "[budget]\nmax_time_s = inf\ncase_timeout_s = inf\n[[grid]]")
    assert "budget.max_time_s: inf is not allowed" in _scenario_error(tmp_path, inf)
    big = _grid().replace('name = "v"\n', "seed = 9223372036854775808\n")  # 2**63: no torch seed
    assert "seed: 9223372036854775808 is not allowed" in _scenario_error(tmp_path, big)
    block = "[[grid]]\nname = 'g{i}'\nheads_q = 2\nseq_len = [" + ",".join(map(str, range(1, 401))) + "]\nhead_dim = [8, 16, 32, 64, 128]\nbatch = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n"
    text = 'name = "v"\nimplementations = ["naive"]\n' + "".join(block.format(i=i) for i in range(20))
    assert "at most 100000 in one scenario" in _scenario_error(tmp_path, text)


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    """Without --run-id the id is a timestamp: a second run in the same second must not be refused
    (nor share the folder); it takes the next free name."""
    import datetime as dt

    from harness.run import runner
    from harness.scenario.load import load_scenario

    scen = load_scenario(scenario(tmp_path, ["naive"]), known_impls=["naive"])
    fixed = dt.datetime(2026, 1, 2, 3, 4, 5)
    monkeypatch.setattr(runner, "new_run_id", lambda name, now=None: f"{fixed:%Y%m%d-%H%M%S}-{name}")
    first = runner.start_run(scen, out_dir=tmp_path / "res")
    (tmp_path / "res" / "20260102-030405-tiny-2").mkdir()
    holder = _hold_lock(tmp_path / "res" / "20260102-030405-tiny-2")  # another process is starting there
    try:
        second = runner.start_run(scen, out_dir=tmp_path / "res")
    finally:
        holder.kill()
        holder.wait()
    assert first.name == "20260102-030405-tiny" and second.name == "20260102-030405-tiny-3"
    assert json.loads((second / "run.json").read_text())["run_id"] == second.name
    from harness.results import lock

    lock.release(first)
    lock.release(second)


def test_report_never_aims_outside_reports_for_a_hostile_run_id(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = make_run(tmp_path / "r", [_ok()])
    info = json.loads((run / "run.json").read_text())
    info["run_id"] = ".."
    (run / "run.json").write_text(json.dumps(info))
    rc, _, err = main_in_process(capsys, "report", run)
    assert_one_line(rc, err, "give the report folder with --out")
    assert not (tmp_path / "index.html").exists() and not (tmp_path / "report.md").exists()
    rc, out, err = main_in_process(capsys, "report", run, "--out", tmp_path / "rep")
    assert rc == 0 and (tmp_path / "rep" / "index.html").exists(), err


@pytest.mark.parametrize("axes, needle", [
    ({"query_tokens": 10**12, "kv_lens": 64}, "grid[0].query_tokens"),
    ({"kv_lens": 10**12}, "grid[0].kv_lens"),
    ({"kv_lens": "{uniform = [1, 1000000000000]}"}, "grid[0].kv_lens"),
    ({"kv_lens": 64, "kv_layout": '"paged"', "page_size": 10**12}, "grid[0].page_size"),
])
def test_huge_decode_axes_are_refused_quickly(tmp_path, axes, needle):
    text = ('name = "v"\nimplementations = ["naive"]\n[[grid]]\nworkload = "decode"\nheads_q = 2\nhead_dim = 8\n'
            + "".join(f"{k} = {v}\n" for k, v in axes.items()))
    assert needle in _scenario_error(tmp_path, text)

