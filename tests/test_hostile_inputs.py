"""Damaged, hostile and concurrent inputs: every command answers with exit 2 and one line, or with
a recorded failure status; never a traceback, never a write outside the results directory, never a
lost case. One test per failure class (see the commit history of harness/run/lock.py and friends).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hostile_helpers import (  # noqa: F401
    REPO, FIXTURES, FAULTY, TINY, _env, attnbench, scenario, one_line_error, records, _case, _ok, make_run, main_in_process, assert_one_line, HOLD, _hold_lock,
)


# ------------------------------------------------------------------ 3, 4: hostile plugins


@pytest.mark.slow
def test_plugin_hook_faults_and_exit_on_import_cost_only_their_own_cases(tmp_path):
    shutil.copytree(FIXTURES / "hostile", tmp_path / "hostile")
    env = _env(tmp_path / "hostile")
    hostile = ["hostile_supports_raises", "hostile_supports_none", "hostile_model_raises",
               "hostile_model_str", "hostile_available_raises"]
    scen = scenario(tmp_path, ["naive", *hostile, "hostile_chatty", "hostile_silent_crash", "flash"])
    r = attnbench("run", scen, "--out", tmp_path / "res", "--run-id", "h", "--no-report", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    # the plugin that calls sys.exit(0) on import is one warning line, and the run went on
    assert "plugin 'exits' failed to load: SystemExit" in r.stderr
    got = {d["case"]["impl"]: d for d in records(tmp_path / "res" / "h")}
    assert got["naive"]["status"] == got["flash"]["status"] == "ok"
    for name, hook in zip(hostile, ["supports", "supports", "memory_model", "memory_model", "available"]):
        assert got[name]["status"] == "error", got[name]
        assert f"its {hook}= hook" in got[name]["message"], got[name]["message"]

    # 13: a crash quotes only its own case's output, never the previous case's
    assert got["hostile_chatty"]["status"] == "ok"
    assert got["hostile_silent_crash"]["status"] == "crashed"
    assert "SIGKILL" in got["hostile_silent_crash"]["message"]
    assert "chatty" not in got["hostile_silent_crash"]["message"], got["hostile_silent_crash"]["message"]

    ls = attnbench("list", cwd=tmp_path, env=env)
    assert ls.returncode == 0 and "Traceback" not in ls.stderr, ls.stderr
    lines = ls.stdout.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith("hostile_available_raises"))
    why = " ".join(ln.strip() for ln in lines[i + 1:i + 4])  # the indented "not here:" line(s) below
    assert " no " in lines[i] + " " and why.startswith("not here: ")
    assert "available= hook raised OSError" in why
    assert "naive" in ls.stdout
    assert "'exits' failed to load: SystemExit" in ls.stderr


def test_hook_errors_in_process():
    """The registry wraps every hook: one exception type, the hook named, for callers to record."""
    from harness import registry
    from harness.case import Case

    def bad_supports(case):
        raise SystemExit(3)

    path = registry.WorkloadPath(lambda *a, **k: None, ("float32",), supports_fn=bad_supports,
                                 memory_model=lambda c: float("nan"))
    impl = registry.Implementation("x", devices=("cpu",), paths={"prefill": path})
    case = Case(impl="x", heads_q=2, heads_kv=2, seq_len_q=8, seq_len_kv=8, head_dim=8)
    with pytest.raises(registry.HookError, match="supports= hook raised SystemExit"):
        impl.supports(case)
    with pytest.raises(registry.HookError, match="memory_model= hook returned float"):
        impl.predicted_peak_bytes(case)


# ------------------------------------------------------------------ 1: one writer per run


def test_second_writer_is_refused_and_a_killed_holder_frees_the_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scen = scenario(tmp_path, ["naive"])
    run_dir = make_run(tmp_path / "res" / "r", [], scenario_path=str(scen))
    holder = _hold_lock(run_dir)
    try:
        rc, _, err = main_in_process(capsys, "run", "--resume", run_dir, "--no-report")
        assert_one_line(rc, err, f"pid {holder.pid}")
        fresh = tmp_path / "res" / "new"
        fresh.mkdir()
        holder2 = _hold_lock(fresh)
        rc, _, err = main_in_process(capsys, "run", scen, "--out", tmp_path / "res", "--run-id", "new", "--no-report")
        assert_one_line(rc, err, f"pid {holder2.pid}")
        assert not (fresh / "run.json").exists()
        holder2.kill()
        holder2.wait()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the kernel released the killed holder's lock: the resume goes ahead and runs the case
    rc, _, err = main_in_process(capsys, "run", "--resume", run_dir, "--no-report")
    assert rc == 0, err
    assert [d["status"] for d in records(run_dir)] == ["ok"]


def test_duplicate_records_are_named_by_compare_report_and_resume(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scen = scenario(tmp_path, ["naive"])
    base = make_run(tmp_path / "base", [_ok()], scenario_path=str(scen))
    dup = make_run(tmp_path / "dup", [_ok(t=5e-3), _ok(t=1e-3)], scenario_path=str(scen))
    rc, out, err = main_in_process(capsys, "compare", base, dup)
    assert rc == 0, err  # the last record (the same time) is used
    assert "recorded more than once" in err and "last record" in err
    rc, out, err = main_in_process(capsys, "run", "--resume", dup, "--no-report")
    assert rc == 0 and "recorded more than once" in err, err
    rc, out, err = main_in_process(capsys, "report", dup, "--out", tmp_path / "rep")
    assert rc == 0 and "recorded more than once" in err, err


# ------------------------------------------------------------------ 2: run ids


def test_run_ids_cannot_leave_the_out_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scen = scenario(tmp_path, ["naive"])
    (tmp_path / "out").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    for bad in ["../../escaped", str(tmp_path / "abs"), ".", "..", "a/b", ".hidden", "x" * 101, "a..b", ""]:
        rc, _, err = main_in_process(capsys, "run", scen, "--out", tmp_path / "out", "--run-id", bad, "--no-report")
        assert_one_line(rc, err, "letters, digits")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert list((tmp_path / "out").iterdir()) == []


# ------------------------------------------------------------------ 9: damaged run directories


def _damage(run_dir: Path, how: str) -> str:
    """Damage a run directory one way; return what the error line must name."""
    rj, rs = run_dir / "run.json", run_dir / "results.jsonl"
    if how == "run.json array":
        rj.write_text("[1, 2]\n")
        return "run.json: not a run description"
    if how == "run.json bytes":
        rj.write_bytes(b'{"schema_version": 1, "run_id": "\xff\xfe"}\n')
        return "run.json:1: not UTF-8"
    if how == "run.json dir":
        rj.unlink()
        rj.mkdir()
        return "run.json: is a directory"
    if how == "results bytes":
        rs.write_bytes(rs.read_bytes() + b'{"x": "\xff"}\n')
        return "results.jsonl:2: not UTF-8"
    if how == "results dir":
        rs.unlink()
        rs.mkdir()
        return "results.jsonl: is a directory"
    if how in ("seq_len_q text", "median text", "samples text"):
        d = json.loads(rs.read_text().splitlines()[0])
        if how == "seq_len_q text":
            d["case"]["seq_len_q"] = "lots"
        elif how == "median text":
            d["stats"]["median_s"] = "fast"
        else:
            d["samples_s"] = ["a", "b"]
        rs.write_text(rs.read_text() + json.dumps(d) + "\n")
        return "results.jsonl:2: unreadable record"
    if how == "run.json no scenario":
        info = json.loads(rj.read_text())
        del info["scenario"]
        rj.write_text(json.dumps(info))
        return "scenario.path is missing"
    raise AssertionError(how)


DAMAGE = ["run.json array", "run.json bytes", "run.json dir", "results bytes", "results dir",
          "seq_len_q text", "median text", "samples text"]


@pytest.mark.parametrize("how", DAMAGE + ["run.json no scenario"])
def test_damaged_run_directories_are_one_line_for_every_reader(tmp_path, capsys, monkeypatch, how):
    monkeypatch.chdir(tmp_path)
    scen = str(scenario(tmp_path, ["naive"]))
    good = make_run(tmp_path / "good", [_ok()], scenario_path=scen)
    bad = make_run(tmp_path / "bad", [_ok()], scenario_path=scen)
    needle = _damage(bad, how)
    commands = [("run", "--resume", bad, "--no-report")]
    if how != "run.json no scenario":  # that one only matters to --resume
        commands += [("compare", good, bad), ("compare", bad, good), ("report", bad, "--out", tmp_path / "rep"),
                     ("export", bad, "--format", "csv", "--out", tmp_path / "x.csv")]
    for args in commands:
        rc, _, err = main_in_process(capsys, *args)
        assert_one_line(rc, err, needle)
    assert not (tmp_path / "reports").exists() and not (tmp_path / "x.csv").exists()


# ------------------------------------------------------------------ 10: resume from anywhere


@pytest.mark.slow
def test_resume_works_from_another_directory_and_for_old_relative_paths(tmp_path, capsys, monkeypatch):
    start = tmp_path / "project"
    start.mkdir()
    monkeypatch.chdir(start)
    scenario(start, ["naive"], seq_len="[16, 24]")
    rc, _, err = main_in_process(capsys, "run", "s.toml", "--out", "results", "--run-id", "r", "--no-report",
                                 "--impl", "naive")
    assert rc == 0, err
    run_dir = start / "results" / "r"
    info = json.loads((run_dir / "run.json").read_text())
    assert Path(info["scenario"]["path"]).is_absolute()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    rc, _, err = main_in_process(capsys, "run", "--resume", run_dir, "--no-report")
    assert rc == 0 and "2 cases done, 0 to run" in err, err
    info["scenario"]["path"] = "s.toml"  # as written before paths were stored absolute
    (run_dir / "run.json").write_text(json.dumps(info))
    rc, _, err = main_in_process(capsys, "run", "--resume", run_dir, "--no-report")
    assert rc == 0 and "2 cases done, 0 to run" in err, err


# ------------------------------------------------------------------ 11, 12: compare must not pass vacuously


def test_compare_refuses_empty_sides_warns_on_other_scenarios_and_escapes_markdown(tmp_path, capsys):
    base = make_run(tmp_path / "base", [_ok(), _ok("flash")])
    empty = make_run(tmp_path / "empty", [])
    nofile = make_run(tmp_path / "nofile", [])
    (nofile / "results.jsonl").unlink()
    for a, b in ((base, empty), (empty, base), (base, nofile), (nofile, base)):
        rc, _, err = main_in_process(capsys, "compare", a, b)
        assert_one_line(rc, err, "no case records")
    other = make_run(tmp_path / "other", [_ok(n=999)], scenario_name="different")
    rc, out, err = main_in_process(capsys, "compare", base, other)
    assert rc == 0
    assert "different scenarios ('tiny' -> 'different')" in err
    assert "no case is in both runs" in err
    hostile = make_run(tmp_path / "hostile", [_ok("<script>alert(1)</script>")])
    rc, out, err = main_in_process(capsys, "compare", hostile, hostile, "--format", "md")
    assert rc == 0, err
    assert "<script>" not in out and "&lt;script&gt;" in out


# ------------------------------------------------------------------ 5: no orphaned worker


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "\nState:\tZ" not in state  # a zombie has ended; only its parent's reaping is left


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_killing_the_driver_mid_case_ends_its_worker(tmp_path):
    scen = scenario(tmp_path, ["faulty_hang"], timeout=120)
    p = subprocess.Popen([sys.executable, "-m", "harness.cli.main", "run", str(scen), "--out", str(tmp_path / "res"),
                          "--run-id", "r", "--no-report"], cwd=tmp_path, env=_env(FAULTY),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "res" / "r" / "worker.log"
    deadline = time.monotonic() + 120
    pid = None
    while time.monotonic() < deadline and pid is None:
        text = log.read_text(errors="replace") if log.exists() else ""
        for line in text.splitlines():
            if line.startswith("[worker ") and "faulty_hang" in line:
                pid = int(line.split()[1].rstrip("]"))
        time.sleep(0.2)
    assert pid is not None, "the worker never started the hanging case"
    time.sleep(0.5)  # well inside the case
    p.send_signal(signal.SIGKILL)
    p.wait()
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        pytest.fail(f"worker {pid} outlived its killed driver by 5 s")


