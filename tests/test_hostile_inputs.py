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

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "plugin_fixtures"
FAULTY = Path(__file__).resolve().parent / "faulty_plugin"

TINY = """
name = "{name}"
implementations = {impls}
seed = 1
[budget]
warmup_s = 0.01
min_time_s = 0.02
max_time_s = 0.05
target_spread = 0.5
case_timeout_s = {timeout}
[[grid]]
name = "tiny"
heads_q = 2
seq_len = {seq_len}
head_dim = 8
"""


def _env(*paths: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def attnbench(*args, cwd: Path, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli.main", *map(str, args)], cwd=cwd,
                          env=env or _env(), capture_output=True, text=True, timeout=timeout)


def scenario(tmp_path: Path, impls, *, name="tiny", seq_len="16", timeout=20, file="s.toml") -> Path:
    f = tmp_path / file
    f.write_text(TINY.format(name=name, impls=json.dumps(impls), seq_len=seq_len, timeout=timeout))
    return f


def one_line_error(r: subprocess.CompletedProcess, needle: str = "") -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert needle in lines[0], (needle, lines[0])
    return lines[0]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "results.jsonl").read_text().splitlines() if ln.strip()]


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
    row = next(ln for ln in ls.stdout.splitlines() if ln.startswith("hostile_available_raises"))
    assert "no: " in row and "available= hook raised OSError" in row
    assert "naive" in ls.stdout
    assert "'exits' failed to load: SystemExit" in ls.stderr


def test_hook_errors_in_process():
    """The registry wraps every hook: one exception type, the hook named, for callers to record."""
    from harness import registry
    from harness.case import Case

    def bad_supports(case):
        raise SystemExit(3)

    impl = registry.Implementation("x", fn=lambda *a, **k: None, devices=("cpu",), dtypes=("float32",),
                                   supports_fn=bad_supports, memory_model=lambda c: float("nan"))
    case = Case(impl="x", heads_q=2, heads_kv=2, seq_len_q=8, seq_len_kv=8, head_dim=8)
    with pytest.raises(registry.HookError, match="supports= hook raised SystemExit"):
        impl.supports(case)
    with pytest.raises(registry.HookError, match="memory_model= hook returned float"):
        impl.predicted_peak_bytes(case)


# ------------------------------------------------------------------ helpers: hand-made runs


def _case(impl="naive", n=16):
    from harness.case import Case

    return Case(impl=impl, heads_q=2, heads_kv=2, seq_len_q=n, seq_len_kv=n, head_dim=8, grid="tiny")


def _ok(impl="naive", n=16, t=1e-3):
    from harness.measure.stats import summarize
    from harness.results.records import Measurement

    samples = tuple(t * (1 + 0.01 * i) for i in range(8))
    return Measurement(_case(impl, n), "ok", samples_s=samples, stats=summarize(samples), peak_bytes=4096)


def make_run(run_dir: Path, measurements, *, scenario_name="tiny", scenario_path="s.toml") -> Path:
    from harness.results.store import ResultsWriter, write_run_info

    write_run_info(run_dir, {"run_id": run_dir.name, "scenario": {"name": scenario_name, "path": scenario_path},
                             "environment": {}})
    with ResultsWriter(run_dir) as w:
        for m in measurements:
            w.append(m)
    return run_dir


def main_in_process(capsys, *args) -> tuple[int, str, str]:
    from harness.cli.main import main

    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line(rc, err, needle=""):
    assert rc == 2, (rc, err)
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert needle in lines[0], (needle, lines[0])


HOLD = """
import sys, time
from harness.results import lock
lock.acquire(sys.argv[1])
print("held", flush=True)
time.sleep(120)
"""


def _hold_lock(run_dir: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], env=_env(), stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


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
    from harness.compare import gate
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
        gate.read_baseline(bad)


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
