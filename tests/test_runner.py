"""End to end: `attnbench run` in a subprocess with deliberately faulty plugin implementations.

Each fault (raise, abort, hang, huge allocation, NaN, wrong values) must cost only its own case,
be recorded with the right status and a reason, and the sweep must go on. Then: resume after a
kill runs only what is missing, and scenario mistakes exit 2 with one line.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.results.store import read_measurements

PLUGIN_DIR = Path(__file__).parent / "faulty_plugin"
REPO = Path(__file__).resolve().parents[1]

SCENARIO = """
name = "faulty"
implementations = {impls}
seed = 1
[budget]
warmup_s = 0.01
min_time_s = 0.02
max_time_s = 0.1
target_spread = 0.5
case_timeout_s = {timeout}
[[grid]]
name = "tiny"
batch = 1
heads_q = 2
seq_len = {seq_len}
head_dim = 16
"""


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PLUGIN_DIR), str(REPO), env.get("PYTHONPATH", "")])
    return env


def _attnbench(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "attnbench", *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _write(tmp_path, impls, seq_len="32", timeout=5):
    f = tmp_path / "faulty.toml"
    f.write_text(SCENARIO.format(impls=json.dumps(impls), seq_len=seq_len, timeout=timeout))
    return f


@pytest.mark.slow
def test_every_fault_costs_only_its_own_case(tmp_path):
    impls = ["naive", "faulty_raise", "faulty_abort", "faulty_hang", "faulty_huge",
             "faulty_nan", "faulty_wrong", "flash"]
    scen = _write(tmp_path, impls)
    r = _attnbench("run", str(scen), "--out", str(tmp_path / "res"), "--run-id", "r1", "--no-report")
    assert r.returncode == 0, r.stderr
    ms = {m.case.impl: m for m in read_measurements(tmp_path / "res" / "r1")}
    assert set(ms) == set(impls)
    assert ms["naive"].status == "ok" and ms["naive"].stats.median_s > 0
    assert ms["flash"].status == "ok", "a case after the faults must still run"
    assert ms["faulty_raise"].status == "error"
    assert "deliberate failure" in ms["faulty_raise"].message
    assert ms["faulty_abort"].status == "crashed"
    assert "SIGABRT" in ms["faulty_abort"].message
    assert "about to abort" in ms["faulty_abort"].message  # the worker's last words are kept
    assert ms["faulty_hang"].status == "timeout"
    assert ms["faulty_huge"].status == "oom", ms["faulty_huge"].message
    for name in ("faulty_nan", "faulty_wrong"):
        assert ms[name].status == "wrong", ms[name]
        assert not ms[name].stats, "a wrong result must never carry a time"
    assert "NaN" in ms["faulty_nan"].message
    # the summary table shows every case with its status
    for status in ("ok", "error", "crashed", "timeout", "oom", "wrong"):
        assert status in r.stdout


@pytest.mark.slow
def test_kill_then_resume_runs_only_missing_cases(tmp_path):
    scen = _write(tmp_path, ["naive", "flash", "chunked"], seq_len="[16, 24, 32, 40, 48, 56, 64, 72]", timeout=30)
    out = tmp_path / "res"
    p = subprocess.Popen(
        [sys.executable, "-m", "attnbench", "run", str(scen), "--out", str(out), "--run-id", "r",
         "--no-report"],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # A shell that starts this suite in the background (CI runners do) ignores SIGINT in its
        # children, and Python keeps an inherited SIG_IGN: give the run a real Ctrl-C.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    results = out / "r" / "results.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if results.exists() and results.read_text().count("\n") >= 1:  # tiny cases: the rest go fast
            break
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)  # Ctrl-C
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert f"--resume {(out / 'r').absolute()}" in err  # absolute: the hint works from anywhere
    first = read_measurements(out / "r")
    assert 1 <= len(first) < 24
    r = _attnbench("run", "--resume", str(out / "r"), "--no-report")
    assert r.returncode == 0, r.stderr
    assert f"{len(first)} cases done, {24 - len(first)} to run" in r.stderr
    final = read_measurements(out / "r")
    ids = [m.case.case_id for m in final]
    assert len(ids) == 24 and len(set(ids)) == 24
    assert final[: len(first)] == first, "finished cases are kept as they were"


def test_user_mistakes_exit_2_with_one_line(tmp_path, capsys):
    """In this process (the CLI's main, as `python -m attnbench` calls it): a mistake is refused
    before any worker starts, so five interpreters importing torch would test nothing more;
    test_every_fault_costs_only_its_own_case and tests/test_e2e_cli.py run the real command."""
    from harness.cli.main import main

    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nimplementations = ["naive"]\n[[grid]]\nheads_q = 2\nseq_len = 8\nhead_dim = 8\ndtype = "float8"\n')
    for args, needle in [
        (["run", str(bad)], "dtype"),
        (["run", str(tmp_path / "missing.toml")], "missing.toml"),
        (["run", "--resume", str(tmp_path / "nope")], "no such run directory"),
        (["run", "smoke", "--impl", "nosuch"], "known:"),
        (["run", "nosuch"], "'nosuch': no shipped scenario"),
    ]:
        rc = main([*args, "--out", str(tmp_path / "res")])
        err = capsys.readouterr().err
        assert rc == 2, (args, err)
        assert "Traceback" not in err
        lines = [ln for ln in err.strip().splitlines() if ln]
        assert len(lines) == 1 and needle in lines[0], (args, err)
