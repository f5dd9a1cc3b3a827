"""attnbench compare: verdicts on synthetic runs, threshold parsing, rendering, CLI exit codes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness.cli import main as cli
from harness.case import Case
from harness.compare.runs import Threshold, compare_case, compare_measurements, compare_runs
from harness.vocab import (
    IMPROVED,
    INCONCLUSIVE,
    MISSING,
    NEW,
    REGRESSED,
    REGRESSED_ERROR,
    REGRESSED_MEMORY,
    STATUS_CHANGED,
    UNCHANGED,
)
from harness.results.records import Measurement
from harness.results.store import ResultsWriter, write_run_info

T10 = Threshold.parse("10%")


def _samples(center: float, rel_sd: float, n: int = 30, seed: int = 0) -> tuple[float, ...]:
    rng = np.random.default_rng(seed)
    return tuple(float(x) for x in center * (1.0 + rel_sd * rng.standard_normal(n)))


def _m(impl="flash", center=1.0, rel_sd=0.01, status="ok", seed=0, noise="ok", peak=10 * 2**20,
       error_passed=True, n=1024, samples=None) -> Measurement:
    s = _samples(center, rel_sd, seed=seed) if samples is None else samples
    stats = {"median_s": float(np.median(s)), "min_s": float(min(s)), "noise": noise} if s else {}
    if status != "ok":
        return Measurement(Case(impl, seq_len_q=n, seq_len_kv=n), status, "boom")
    return Measurement(Case(impl, seq_len_q=n, seq_len_kv=n), status, samples_s=s, stats=stats,
                       peak_bytes=peak, error_passed=error_passed, error_rule="max_abs <= 1e-4")


def _run(path, measurements, env=None):
    write_run_info(path, {"run_id": path.name, "environment": env or {"cpu_model": "x"}})
    with ResultsWriter(path) as w:
        for m in measurements:
            w.append(m)
    return path


# ------------------------------------------------------------------ threshold parsing


@pytest.mark.parametrize("text, metric, fraction", [
    ("10%", "median", 0.10), ("0.1", "median", 0.10), ("median:10%", "median", 0.10),
    ("min:5%", "min", 0.05), (" 12.5 % ", "median", 0.125), ("MIN:0.2", "min", 0.2), ("150%", "median", 1.5),
])
def test_threshold_parse(text, metric, fraction):
    t = Threshold.parse(text)
    assert (t.metric, t.fraction) == (metric, pytest.approx(fraction))
    assert t.upper == pytest.approx(1 + fraction) and t.lower == pytest.approx(1 / (1 + fraction))


@pytest.mark.parametrize("text, words", [
    ("", "not understood"), ("ten", "not understood"), ("10%%", "not understood"), ("-5%", "not understood"),
    ("mean:10%", "metric 'mean'"), ("10", "ambiguous"), ("0%", "not allowed"), ("5000%", "not allowed"),
])
def test_threshold_junk_raises_clear_error(text, words):
    with pytest.raises(ValueError, match=words):
        Threshold.parse(text)


def test_threshold_default_metric_and_str():
    assert Threshold.parse("5%", default_metric="min").metric == "min"
    assert str(Threshold.parse("median:10%")) == "median:10%"


# ------------------------------------------------------------------ verdicts


def test_clear_slowdown_is_regressed():
    c = compare_case(_m(center=1.0), _m(center=1.3, seed=1), T10)
    assert c.verdict == REGRESSED and c.is_regression
    assert c.ratio == pytest.approx(1.3, rel=0.02) and c.ci_low > 1.1


def test_tiny_change_is_unchanged():
    c = compare_case(_m(center=1.0), _m(center=1.01, seed=1), T10)
    assert c.verdict == UNCHANGED and not c.is_regression
    assert T10.lower <= c.ci_low <= c.ci_high <= T10.upper


def test_speedup_is_improved():
    assert compare_case(_m(center=1.0), _m(center=0.7, seed=1), T10).verdict == IMPROVED


def test_wide_spread_is_inconclusive():
    c = compare_case(_m(center=1.0, rel_sd=0.3), _m(center=1.1, rel_sd=0.3, seed=1), T10)
    assert c.verdict == INCONCLUSIVE and not c.is_regression
    assert c.ci_low < T10.upper < c.ci_high


def test_unreliable_flag_is_no_veto_a_clear_slowdown_is_regressed_marked_noisy():
    c = compare_case(_m(center=1.0), _m(center=1.5, seed=1, noise="unreliable"), T10)
    assert c.verdict == REGRESSED and c.is_regression and c.noisy
    assert any("noisy" in n and "unreliable" in n for n in c.notes)


def test_too_few_samples_is_inconclusive():
    c = compare_case(_m(samples=(1.0, 1.0)), _m(samples=(2.0, 2.0)), T10)
    assert c.verdict == INCONCLUSIVE and c.ratio == pytest.approx(2.0) and c.ci_low is None


def test_min_metric_uses_minimum():
    base, cur = _m(samples=(1.0,) * 4 + (1.5,) * 16), _m(samples=(1.3,) * 20)
    c = compare_case(base, cur, Threshold.parse("min:10%"))
    assert c.ratio == pytest.approx(1.3) and c.verdict == REGRESSED
    assert compare_case(base, cur, T10).verdict == IMPROVED  # median 1.5 -> 1.3


def test_status_change_ok_to_failure_is_a_regression():
    for bad in ("crashed", "wrong", "error", "timeout", "oom"):
        c = compare_case(_m(), _m(status=bad), T10)
        assert c.verdict == STATUS_CHANGED and c.is_regression, bad
        assert c.notes[0].startswith(f"ok -> {bad}")


def test_status_change_to_ok_or_skipped_is_not_a_regression():
    assert not compare_case(_m(status="crashed"), _m(), T10).is_regression
    assert not compare_case(_m(), _m(status="skipped"), T10).is_regression
    c = compare_case(_m(status="error"), _m(status="error"), T10)
    assert c.verdict == UNCHANGED and not c.is_regression


def test_memory_regression():
    c = compare_case(_m(peak=100 * 2**20), _m(seed=1, peak=130 * 2**20), T10)
    assert c.verdict == REGRESSED_MEMORY and c.is_regression
    assert c.memory_ratio == pytest.approx(1.3)
    # below the absolute floor, a relative jump does not count
    assert compare_case(_m(peak=1000), _m(seed=1, peak=5000), T10).verdict == UNCHANGED


def test_error_regression():
    c = compare_case(_m(error_passed=True), _m(seed=1, error_passed=False), T10)
    assert c.verdict == REGRESSED_ERROR and c.is_regression


# ------------------------------------------------------------------ runs + CLI


@pytest.fixture
def runs(tmp_path):
    base = _run(tmp_path / "base", [_m("naive"), _m("flash"), _m("chunked"), _m("gone")])
    cur = _run(tmp_path / "cur", [_m("naive", seed=1, center=1.01), _m("flash", seed=1, center=1.3),
                                  _m("chunked", status="crashed"), _m("fresh")])
    same = _run(tmp_path / "same", [_m("naive", seed=2), _m("flash", seed=2, center=1.01),
                                    _m("chunked", seed=2, center=0.995), _m("gone", seed=2)])
    return base, cur, same


def test_compare_runs_matches_by_case_id(runs):
    base, cur, _ = runs
    c = compare_runs(base, cur, T10)
    verdicts = {cc.case.impl: cc.verdict for cc in c.cases}
    assert verdicts == {"naive": UNCHANGED, "flash": REGRESSED, "chunked": STATUS_CHANGED,
                        "gone": MISSING, "fresh": NEW}
    assert {cc.case.impl for cc in c.regressions} == {"flash", "chunked"}
    assert c.exit_code == 1


def test_environment_differences_are_warned_about():
    base = {"cpu_model": "Intel(R) Xeon(R) Processor", "cpu_capability": "AVX512", "torch_version": "2.13.0",
            "gpus": [], "hostname": "a"}
    same = compare_measurements([], [], T10, base_environment=base, current_environment={**base, "hostname": "b"})
    assert same.warnings == ()  # the host name alone says nothing about speed
    cur = {**base, "cpu_capability": "AVX2", "gpus": [{"index": 0, "name": "NVIDIA H100"}]}
    c = compare_measurements([], [], T10, base_environment=base, current_environment=cur)
    assert c.warnings == ("environment differs: cpu_capability 'AVX512' -> 'AVX2'",
                          "environment differs: GPUs [] -> ['NVIDIA H100']")


@pytest.fixture
def cli_with_compare():
    return cli.main


def test_cli_exit_codes_and_formats(runs, cli_with_compare, capsys):
    base, cur, same = runs
    assert cli_with_compare(["compare", str(base), str(same)]) == 0
    out = capsys.readouterr().out
    assert "no regressions" in out and "unchanged" in out
    assert cli_with_compare(["compare", str(base), str(cur), "--threshold", "median:10%"]) == 1
    out = capsys.readouterr().out
    assert "REGRESSED" in out and "ok -> crashed" in out and "2 regression(s)" in out
    assert cli_with_compare(["compare", str(base), str(cur), "--format", "md"]) == 1
    md = capsys.readouterr().out
    assert "| impl |" in md and "|---|" in md
    assert cli_with_compare(["compare", str(base), str(cur), "--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["exit_code"] == 1 and data["regressions"] == 2
    assert {c["impl"]: c["verdict"] for c in data["cases"]}["fresh"] == NEW


def test_cli_usage_errors_exit_2(runs, cli_with_compare, capsys, tmp_path):
    base, _, _ = runs
    assert cli_with_compare(["compare", str(base), str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "no such run directory" in err and len(err.strip().splitlines()) == 1
    assert cli_with_compare(["compare", str(base), str(base), "--threshold", "lots"]) == 2
    assert "--threshold" in capsys.readouterr().err
    assert cli_with_compare(["compare", str(base), str(base), "--metric", "min", "--threshold", "median:5%"]) == 2


def test_a_case_measured_on_two_device_models_is_never_judged_on_time():
    """Records of a cluster run name the node that measured them: a 2x slowdown between two CPU
    models is the machines, not the code."""
    import dataclasses

    def on(m, model):
        return dataclasses.replace(m, extra={"where": {"node_id": "n", "cpu_model": model}})

    base = [on(_m(center=1.0), "AMD EPYC 9654")]
    slow = [on(_m(center=2.0, seed=1), "Intel Xeon 8480")]
    c = compare_measurements(base, slow, T10)
    assert c.cases[0].verdict == INCONCLUSIVE and not c.regressions
    assert "different devices: AMD EPYC 9654 -> Intel Xeon 8480" in c.cases[0].notes[-1]
    same = compare_measurements(base, [on(_m(center=2.0, seed=1), "AMD EPYC 9654")], T10)
    assert same.cases[0].verdict == REGRESSED
