"""attnbench export: pytest-benchmark JSON that pytest-benchmark itself loads, CSV, Parquet."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main as cli
from harness.report import export
from harness.case import Case
from harness.results.records import Measurement
from harness.results.store import ResultsWriter, write_run_info


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "run1"
    env = {"hostname": "box", "cpu_model": "Test CPU", "python_version": "3.11.0", "git_commit": "abc",
           "git_dirty": False, "platform": "Linux-6.0-x86_64"}
    write_run_info(d, {"run_id": "run1", "started_at": "2026-11-23T10:00:00+00:00", "environment": env,
                       "scenario": {"name": "t", "budget": {"max_time_s": 1.0, "min_time_s": 0.2, "warmup_s": 0.1}}})
    with ResultsWriter(d) as w:
        for impl, t in (("naive", 2e-3), ("flash", 1e-3)):
            w.append(Measurement(Case(impl, seq_len_q=256, seq_len_kv=256, grid="self"), "ok",
                                 samples_s=(t, t * 1.1, t * 0.9, t * 1.05, t), calls_per_block=7,
                                 stats={"median_s": t, "noise": "ok", "spread": 0.05}, flops=123, peak_bytes=4096,
                                 max_abs_error=1e-7, error_passed=True, extra={"threads": 2}))
        w.append(Measurement(Case("sdpa_flash", grid="self"), "skipped", "no CUDA"))
    return d


@pytest.fixture
def main():
    return cli.main


def _pytest_benchmark_cli() -> list[str]:
    exe = Path(sys.executable).parent / "pytest-benchmark"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("pytest-benchmark") or shutil.which("py.test-benchmark")
    if found:
        return [found]
    return [sys.executable, "-m", "pytest_benchmark.cli"]


def test_pytest_benchmark_document(run_dir):
    doc, left_out = export.to_pytest_benchmark(run_dir)
    assert left_out == 1
    assert set(doc) == {"machine_info", "commit_info", "benchmarks", "datetime", "version"}
    name = "flash[b1-hq8-hkv8-nq256-nk256-d64-float32-cpu-full-none-forward-tdefault]"
    b = {x["name"]: x for x in doc["benchmarks"]}[name]
    assert b["group"] == "self" and b["fullname"].endswith(b["name"]) and b["params"]["impl"] == "flash"
    st = b["stats"]
    for key in ("min", "max", "mean", "stddev", "rounds", "median", "iqr", "q1", "q3", "iqr_outliers",
                "stddev_outliers", "outliers", "ld15iqr", "hd15iqr", "ops", "total", "data", "iterations"):
        assert key in st, key
    assert st["rounds"] == 5 and st["median"] == pytest.approx(1e-3) and st["iterations"] == 7
    assert doc["commit_info"]["id"] == "abc" and doc["machine_info"]["node"] == "box"


def test_pytest_benchmark_compare_accepts_the_file(run_dir, tmp_path, main, capsys):
    out = tmp_path / "0001_export.json"
    assert main(["export", str(run_dir), "--format", "pytest-benchmark", "--out", str(out)]) == 0
    json.loads(out.read_text())
    proc = subprocess.run([*_pytest_benchmark_cli(), "compare", str(out)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout + proc.stderr
    assert "Failed to load" not in text
    assert "naive[b1-hq8" in text and "flash[b1-hq8" in text


def test_csv(run_dir, main, capsys):
    import pandas as pd  # here, not at the top: ~0.3 s of every xdist worker's collection

    assert main(["export", str(run_dir), "--format", "csv"]) == 0
    df = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(df["impl"]) == ["naive", "flash", "sdpa_flash"]
    assert json.loads(df.loc[0, "samples_s"])[0] == pytest.approx(2e-3)
    assert {"case_id", "median_s", "peak_bytes", "status"} <= set(df.columns)


def test_parquet_without_engine_is_a_clear_usage_error(run_dir, tmp_path, main, capsys, monkeypatch):
    monkeypatch.setattr(export.importlib.util, "find_spec", lambda name: None)
    assert main(["export", str(run_dir), "--format", "parquet", "--out", str(tmp_path / "x.parquet")]) == 2
    err = capsys.readouterr().err
    assert "pip install pyarrow" in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(not any(export.importlib.util.find_spec(e) for e in export.PARQUET_ENGINES),
                    reason="no parquet engine installed")
def test_parquet_roundtrip(run_dir, tmp_path, main):
    import pandas as pd

    out = tmp_path / "x.parquet"
    assert main(["export", str(run_dir), "--format", "parquet", "--out", str(out)]) == 0
    assert list(pd.read_parquet(out)["impl"]) == ["naive", "flash", "sdpa_flash"]


def test_missing_run_is_exit_2(tmp_path, main, capsys):
    assert main(["export", str(tmp_path / "nope"), "--format", "csv"]) == 2
    assert "no such run directory" in capsys.readouterr().err
