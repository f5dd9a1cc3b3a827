"""Helpers shared by the hostile-input tests (test_hostile_inputs.py, test_hostile_scenarios.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


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



# ------------------------------------------------------------------ helpers: hand-made runs


def _case(impl="naive", n=16):
    from harness.case import Case

    return Case(impl=impl, heads_q=2, heads_kv=2, seq_len_q=n, seq_len_kv=n, head_dim=8, grid="tiny")


def _ok(impl="naive", n=16, t=1e-3):
    from harness.stats import summarize
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


