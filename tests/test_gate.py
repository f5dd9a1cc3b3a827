"""The CI gate: verdict logic with an injected fake measurement, baselines, and one real
end-to-end run (update the baseline, check against it, then catch an injected 2x slowdown)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.compare import baseline as bl, gate
from harness.case import Case
from harness.compare.runs import Threshold
from harness.measure.slowdown import parse_slowdown, slowed
from harness.results.records import Measurement
from harness.results.store import ResultsError
from harness.stats import RatioStats

T15 = Threshold.parse("15%")
REF = "sdpa"
ROOT = Path(__file__).resolve().parents[1]


def _ratios(center: float, rel_sd: float = 0.01, n: int = 25, seed: int = 0) -> tuple[float, ...]:
    rng = np.random.default_rng(seed)
    return tuple(float(x) for x in center * (1 + rel_sd * rng.standard_normal(n)))


def _case(impl: str, n: int = 256) -> Case:
    return Case(impl, heads_q=4, heads_kv=4, seq_len_q=n, seq_len_kv=n, threads=1, grid="ci")


class FakeMeasure:
    """Calls return, per impl, the next entry of script[impl]: a ratio center or a status string."""

    def __init__(self, **script):
        self.script = {k: list(v) for k, v in script.items()}
        self.calls: list[list[str]] = []

    def __call__(self, cases, reference, settings):
        self.calls.append([c.impl for c in cases])
        self.rounds = getattr(self, "rounds", []) + [settings.rounds]
        out = [Measurement(cases[0].replace(impl=reference), "ok", error_passed=True)]
        for i, c in enumerate(cases):
            step = self.script[c.impl].pop(0)
            if isinstance(step, str):
                out.append(Measurement(c, step, f"{step} on purpose", error_passed=step != "wrong"))
            elif isinstance(step, tuple):  # (ratio center, contended)
                out.append(_ok(c, _ratios(step[0], seed=len(self.calls) * 10 + i), contended=step[1]))
            else:
                ratios = tuple(step) if isinstance(step, list) else _ratios(step, seed=len(self.calls) * 10 + i)
                out.append(_ok(c, ratios))
        return out


def _ok(case, ratios, contended=False) -> Measurement:
    return Measurement(case, "ok", reference_ratios=tuple(ratios), error_passed=True, contended=contended,
                       contention="other processes used 1.9 of 2 CPUs" if contended else "")


def _baseline(**ratios) -> bl.Baseline:
    entries = {_case(impl).case_id: bl.BaselineEntry(r, r * 0.99, r * 1.01, 0.01, 50, True, 1e-7)
               for impl, r in ratios.items()}
    return bl.Baseline(path="b.json", device_key="cpu-test-1t", reference=REF, entries=entries)


def _run(fake, baseline, impls=None):
    cases = [_case(i) for i in (impls or fake.script)]
    return gate.run_gate(cases, reference=REF, threshold=T15, baseline=baseline, device_key="cpu-test-1t",
                         baseline_path="b.json", measure=fake)


def _verdicts(outcome):
    return {r.case.impl: r.verdict for r in outcome.rows}


def test_unchanged_and_improved_pass():
    fake = FakeMeasure(flash=[1.01], naive=[1.5])
    o = _run(fake, _baseline(flash=1.0, naive=2.0))
    assert _verdicts(o) == {REF: gate.REFERENCE, "flash": gate.UNCHANGED, "naive": gate.IMPROVED}
    assert o.passed and o.exit_code == 0 and len(fake.calls) == 1  # nothing re-measured


def test_suspected_regression_confirmed_by_remeasurement_fails():
    fake = FakeMeasure(flash=[1.4, 1.4], naive=[2.0])
    o = _run(fake, _baseline(flash=1.0, naive=2.0))
    assert fake.calls == [["flash", "naive"], ["flash"]]  # only the suspect is re-measured, and longer
    assert fake.rounds == [gate.GateSettings().rounds, gate.GateSettings().rounds * 2]
    row = {r.case.impl: r for r in o.rows}["flash"]
    assert row.verdict == gate.REGRESSED and row.remeasured.median == pytest.approx(1.4, rel=0.02)
    assert not o.passed and o.exit_code == 1


def test_contended_regression_is_inconclusive_after_a_contended_remeasurement():
    fake = FakeMeasure(flash=[(1.4, True), (1.4, True)])
    o = _run(fake, _baseline(flash=1.0))
    row = {r.case.impl: r for r in o.rows}["flash"]
    assert len(fake.calls) == 2  # re-measured: the first was disturbed, not cleared
    assert row.verdict == gate.INCONCLUSIVE and row.contended and o.passed
    assert any("contended" in n for n in row.notes)
    # a quiet re-measurement that shows the regression on its own fails the job
    o = _run(FakeMeasure(flash=[(1.4, True), 1.4]), _baseline(flash=1.0))
    assert _verdicts(o)["flash"] == gate.REGRESSED and not o.passed


def test_suspected_regression_not_confirmed_passes():
    fake = FakeMeasure(flash=[1.4, 1.02])
    o = _run(fake, _baseline(flash=1.0))
    assert _verdicts(o)["flash"] == gate.NOT_CONFIRMED and o.passed


NOISY_ABOVE = [0.9] * 10 + [1.25] * 5 + [1.6] * 10  # median 1.25 > 1.15, CI reaching far below


@pytest.mark.parametrize("again, verdict", [(1.4, gate.REGRESSED), (NOISY_ABOVE, gate.INCONCLUSIVE),
                                            (1.0, gate.NOT_CONFIRMED)])
def test_noisy_first_measurement_above_threshold_is_remeasured(again, verdict):
    first = RatioStats.of(NOISY_ABOVE)
    assert first.ci_low < T15.upper < first.median
    fake = FakeMeasure(flash=[NOISY_ABOVE, again])
    o = _run(fake, _baseline(flash=1.0))
    assert len(fake.calls) == 2 and _verdicts(o)["flash"] == verdict
    assert o.passed == (verdict != gate.REGRESSED)


def test_remeasurement_above_but_too_noisy_is_inconclusive():
    fake = FakeMeasure(flash=[1.4, 1.0])
    real = fake.__call__

    def measure(cases, reference, settings):
        out = real(cases, reference, settings)
        if len(fake.calls) == 2:  # the re-measurement: median above 1.15, CI reaching the baseline 1.0
            flash = next(r for r in out if r.case.impl == "flash")
            wide = tuple([0.9] * 10 + [1.2] * 15)
            out = [r if r is not flash else _ok(flash.case, wide) for r in out]
        return out

    o = gate.run_gate([_case("flash")], reference=REF, threshold=T15, baseline=_baseline(flash=1.0),
                      device_key="k", baseline_path="b.json", measure=measure)
    assert _verdicts(o)["flash"] == gate.INCONCLUSIVE and o.passed


def test_ci_straddling_threshold_is_inconclusive_and_passes_with_warning():
    fake = FakeMeasure(flash=[1.0])

    def measure(cases, reference, settings):
        out = fake(cases, reference, settings)
        return [r if r.case.impl != "flash" else _ok(r.case, _ratios(1.05, 0.3)) for r in out]

    o = gate.run_gate([_case("flash")], reference=REF, threshold=T15, baseline=_baseline(flash=1.0),
                      device_key="k", baseline_path="b.json", measure=measure)
    assert _verdicts(o)["flash"] == gate.INCONCLUSIVE and o.passed
    assert any("inconclusive" in w for w in o.warnings)


@pytest.mark.parametrize("status", ["error", "wrong", "crashed", "timeout", "oom"])
def test_failures_always_fail(status):
    o = _run(FakeMeasure(flash=[status]), _baseline(flash=1.0))
    assert not o.passed and o.counts().get(status, 0) + o.counts().get(gate.REGRESSED_ERROR, 0) == 1


def test_error_that_passed_in_baseline_is_regressed_error():
    o = _run(FakeMeasure(flash=["wrong"]), _baseline(flash=1.0))
    assert _verdicts(o)["flash"] == gate.REGRESSED_ERROR and not o.passed


def test_no_baseline_passes_with_message_but_still_fails_on_errors():
    o = _run(FakeMeasure(flash=[3.0], naive=[1.0]), None)
    assert o.passed and _verdicts(o)["flash"] == gate.NO_BASELINE
    assert "no baseline for cpu-test-1t; run attnbench check --update-baseline" in o.warnings
    assert not _run(FakeMeasure(flash=["crashed"]), None).passed


def test_new_case_and_reference_mismatch():
    assert _verdicts(_run(FakeMeasure(naive=[1.0]), _baseline(flash=1.0)))["naive"] == gate.NEW
    other = bl.Baseline(path="b.json", device_key="k", reference="naive", entries={})
    with pytest.raises(ResultsError, match="against 'naive'"):
        _run(FakeMeasure(flash=[1.0]), other)


def test_baseline_roundtrip_and_rejections(tmp_path):
    results = FakeMeasure(flash=[1.2])([_case("flash")], REF, gate.GateSettings())
    b = bl.make_baseline(results, path=tmp_path / "b" / "k.json", device_key="k", reference=REF,
                           environment={"cpu_model": "x"}, settings=gate.GateSettings())
    bl.write_baseline(b)
    data = json.loads((tmp_path / "b" / "k.json").read_text())
    assert data["schema_version"] == bl.BASELINE_VERSION and "Schema history" in data["_comment"]
    back = bl.read_baseline(tmp_path / "b" / "k.json")
    assert back.entries == b.entries and list(back.entries) == [_case("flash").case_id]
    data["schema_version"] = 99
    (tmp_path / "v99.json").write_text(json.dumps(data))
    with pytest.raises(ResultsError, match="schema_version 99"):
        bl.read_baseline(tmp_path / "v99.json")
    with pytest.raises(ResultsError, match="no such baseline"):
        bl.read_baseline(tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text("{")
    with pytest.raises(ResultsError, match="not a readable JSON"):
        bl.read_baseline(tmp_path / "junk.json")


def test_baseline_pools_repeats_and_refuses_failures():
    fake = FakeMeasure(flash=[1.0, 1.1], naive=[2.0, "crashed"])
    settings = gate.GateSettings(baseline_repeats=2)
    pooled = {r.case.impl: r for r in gate.measure_for_baseline([_case("flash"), _case("naive")], REF,
                                                                 settings, measure=fake)}
    assert len(fake.calls) == 2
    assert len(pooled["flash"].reference_ratios) == 50 and pooled["naive"].status == "crashed"


def test_slowdown_hook_parsing_and_effect():
    assert parse_slowdown("flash=1.25, naive=2") == {"flash": 1.25, "naive": 2.0}
    assert parse_slowdown("") == {}
    for junk in ("flash", "flash=x", "=2", "flash=0.5"):
        with pytest.raises(ValueError, match="ATTNBENCH_SLOWDOWN"):
            parse_slowdown(junk)
    import time

    def work():  # 4 ms of this thread's CPU time, whatever the machine's load
        end = time.thread_time() + 0.004
        while time.thread_time() < end:
            pass

    f = slowed(work, 2.0, lambda: None)
    t0 = time.thread_time()  # the hook spins on CPU time too, so wall time under load proves nothing
    f()
    assert time.thread_time() - t0 >= 0.0075


# ------------------------------------------------------------------ end to end (real processes)

TINY = """
name = "tiny_gate"
implementations = ["naive", "flash", "sdpa"]
reference = "sdpa"
[budget]
case_timeout_s = 60
[[grid]]
name = "tiny"
heads_q = 2
seq_len = 128
head_dim = 32
threads = 1
"""


def _check(args, tmp_path, **env):
    e = {k: v for k, v in os.environ.items() if k != "ATTNBENCH_SLOWDOWN"}
    e.update(env)
    return subprocess.run([sys.executable, "-m", "attnbench", "check", *args], capture_output=True, text=True,
                          cwd=ROOT, env=e, timeout=240)


@pytest.mark.slow
def test_end_to_end_update_then_pass_then_catch_slowdown(tmp_path):
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    baseline = tmp_path / "baseline.json"
    common = ["--scenario", str(scenario), "--baseline", str(baseline), "--rounds", "15", "--threshold", "50%"]
    p = _check([*common, "--update-baseline"], tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    shape = dict(heads_q=2, heads_kv=2, seq_len_q=128, seq_len_kv=128, head_dim=32, threads=1)
    assert set(json.loads(baseline.read_text())["cases"]) == {Case(i, **shape).case_id for i in ("naive", "flash")}
    p = _check(common, tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "gate: PASS" in p.stdout
    p = _check(common, tmp_path, ATTNBENCH_SLOWDOWN="flash=2.0")
    assert "TESTING HOOK" in p.stderr
    # caught -- or, on a machine whose other processes took the CPU, honestly not judged
    assert (p.returncode == 1 and "gate: FAIL (1 regressed" in p.stdout) or (
        p.returncode == 0 and "inconclusive" in p.stdout and "contended" in p.stdout), p.stdout + p.stderr


def test_usage_errors_exit_2(tmp_path, capsys, monkeypatch):
    """In this process (the CLI's main, as `python -m attnbench` calls it): a mistake is refused
    before any worker starts, so four interpreters importing torch would test nothing more; the
    end-to-end test above runs the real command."""
    from harness.cli.main import main

    def check(args, **env):
        monkeypatch.delenv("ATTNBENCH_SLOWDOWN", raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        rc = main(["check", *args])
        return rc, capsys.readouterr().err

    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    common = ["--scenario", str(scenario)]
    rc, err = check([*common, "--threshold", "junk"])
    assert rc == 2 and "threshold 'junk'" in err
    rc, err = check(common, ATTNBENCH_SLOWDOWN="flash")
    assert rc == 2 and "ATTNBENCH_SLOWDOWN" in err
    rc, err = check([*common, "--update-baseline"], ATTNBENCH_SLOWDOWN="flash=2")
    assert rc == 2 and "testing hook" in err
    rc, err = check([*common, "--baseline", str(tmp_path / "nope.json")])
    assert rc == 2 and "no such baseline file" in err, err


def test_gate_worker_crash_and_hang_cost_only_their_shape(monkeypatch):
    """The real worker process (harness/run/process.Worker answering "ratios" requests): an
    implementation that aborts or hangs fails its own shape; the next shape gets a fresh worker."""
    plugin = ROOT / "tests" / "faulty_plugin"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(plugin), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    shape = dict(batch=1, heads_q=2, heads_kv=2, head_dim=16, dtype="float32", device="cpu", threads=1)
    cases = [Case("faulty_abort", seq_len_q=32, seq_len_kv=32, **shape),
             Case("faulty_hang", seq_len_q=40, seq_len_kv=40, **shape),
             Case("naive", seq_len_q=48, seq_len_kv=48, **shape)]
    settings = gate.GateSettings(rounds=3, min_block_s=0.001, warmup_s=0.0, timeout_s=5.0)
    got = {(r.case.impl, r.case.seq_len_q): r for r in gate.measure_in_subprocess(cases, REF, settings)}
    assert got[("faulty_abort", 32)].status == "crashed" and "SIGABRT" in got[("faulty_abort", 32)].message
    assert got[(REF, 32)].status == "crashed"  # the whole shape went down with the worker
    assert got[("faulty_hang", 40)].status == "timeout"
    naive = got[("naive", 48)]
    assert naive.status == "ok" and len(naive.reference_ratios) == 3 and all(r > 0 for r in naive.reference_ratios)
    assert naive.metrics["ratio_median"] > 0 and naive.metrics["cpu_share"] > 0  # the sweep's record


CHEATS = ROOT / "tests" / "cheat_plugin"


def test_gate_measures_through_the_sweeps_guards(monkeypatch):
    """Each implementation of a gate shape passes the sweep's guards: one that returns a cached
    output, writes its inputs, or goes wrong after its first call is `wrong`, like in a sweep."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(CHEATS), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    shape = dict(batch=1, heads_q=2, heads_kv=2, head_dim=16, seq_len_q=64, seq_len_kv=64, threads=1)
    cases = [Case(i, **shape) for i in ("naive", "cheat_cached", "cheat_zero_inputs", "cheat_nan_later")]
    settings = gate.GateSettings(rounds=3, min_block_s=0.001, warmup_s=0.0, timeout_s=60.0)
    got = {m.case.impl: m for m in gate.measure_in_subprocess(cases, REF, settings)}
    assert got["naive"].status == "ok" and got[REF].status == "ok"
    assert got["cheat_cached"].status == "wrong" and "fresh inputs" in got["cheat_cached"].message
    assert got["cheat_zero_inputs"].status == "wrong" and "modified its inputs" in got["cheat_zero_inputs"].message
    assert got["cheat_nan_later"].status == "wrong" and "last timed call" in got["cheat_nan_later"].message
    assert isinstance(got["naive"].contended, bool) and got["naive"].extra["reference"] == REF
