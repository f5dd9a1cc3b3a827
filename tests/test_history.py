"""attnbench history: trends over synthetic run directories written by the real results writer,
change points (found, attributed, not found in noise), environments never mixed, CLI errors, --out."""

from __future__ import annotations

import importlib.util
import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

# Whether ruptures is installed, not an import of it: importing it (scipy.signal) costs ~0.8 s of
# every xdist worker's collection; the tests import it when they run.
if importlib.util.find_spec("ruptures") is None:
    pytest.skip("could not import 'ruptures': No module named 'ruptures'", allow_module_level=True)

from harness.case import Case  # noqa: E402
from harness.cli import main as cli  # noqa: E402
from harness.compare.history import HistoryError, load_history  # noqa: E402
from harness.stats import summarize  # noqa: E402
from harness.results import store  # noqa: E402

Measurement = getattr(store, "Measurement", None)
if Measurement is None:  # the record class may move to its own module
    from harness.results.records import Measurement  # type: ignore[no-redef]

T0 = datetime(2026, 3, 1, 2, 0, tzinfo=timezone.utc)
MACHINE_A = {"cpu_model": "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", "cpu_family_model": "6.106",
             "cpu_capability": "AVX512", "torch_threads": 2, "torch_version": "2.13.0+cpu"}
MACHINE_B = {**MACHINE_A, "cpu_model": "AMD EPYC 7R13 Processor", "cpu_family_model": "25.1",
             "cpu_capability": "AVX2"}
IMPLS = ("flash", "naive")


def _commit(i: int) -> str:
    return f"{i:02d}" + "ab" * 19


def write_runs(root, n=30, *, step_at=None, step=0.15, noise=0.03, drift=0.0, seed=0, env=MACHINE_A,
               prefix="nightly", start=0, samples=40, step_impl="flash", scale=1.0, offset_h=0):
    """n run directories under root, one per day; `step_impl` gets `step` from run `step_at` on.
    noise: relative sd of the raw samples in a run; drift: relative sd of each run's level."""
    rng = np.random.default_rng(seed)
    dirs = []
    for i in range(start, start + n):
        run_id = f"{prefix}-{i:02d}"
        d = root / run_id
        store.write_run_info(d, {
            "run_id": run_id, "started_at": (T0 + timedelta(days=i, hours=offset_h)).isoformat(timespec="seconds"),
            "scenario": {"name": "default"},
            "environment": {**env, "git_commit": _commit(i), "git_dirty": False},
        })
        level = scale + drift * rng.standard_normal()
        with store.ResultsWriter(d) as w:
            for impl in IMPLS:
                center = 2e-3 * level * (1.0 + (step if step_at is not None and i >= step_at and impl == step_impl
                                                else 0.0))
                s = tuple(float(x) for x in center * (1.0 + noise * rng.standard_normal(samples)))
                stats = vars(summarize(s, resamples=200))
                w.append(Measurement(Case(impl, seq_len_q=1024, seq_len_kv=1024), "ok", samples_s=s, stats=stats))
        dirs.append(d)
    return dirs


@pytest.fixture(scope="module")
def step_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("step")
    write_runs(root, step_at=18)
    return root


# ------------------------------------------------------------------ detection


def test_one_step_found_and_attributed(step_runs):
    h = load_history([step_runs])
    assert len(h.runs) == 30 and [r.run_id for r in h.runs] == [f"nightly-{i:02d}" for i in range(30)]
    assert len(h.environments) == 1
    cps = h.change_points
    assert len(cps) == 1, [(t.case_id, cp.run_id) for t, cp in cps]
    trend, cp = cps[0]
    assert trend.case.impl == "flash"
    assert cp.run_id == "nightly-18" and cp.git_commit == _commit(18)
    assert cp.previous_run_id == "nightly-17" and cp.previous_commit == _commit(17)
    assert cp.started_at == (T0 + timedelta(days=18)).isoformat(timespec="seconds")
    assert cp.relative_step == pytest.approx(0.15, abs=0.02) and cp.direction == "slower"
    assert cp.before_median_s == pytest.approx(2e-3, rel=0.02)
    assert cp.after_median_s == pytest.approx(2.3e-3, rel=0.02)
    assert (cp.runs_before, cp.runs_after) == (18, 12)


def test_run_order_is_start_time_not_argument_order(step_runs):
    dirs = sorted(step_runs.iterdir(), reverse=True)
    h = load_history(dirs)
    assert [r.run_id for r in h.runs][:3] == ["nightly-00", "nightly-01", "nightly-02"]
    assert [cp.run_id for _, cp in h.change_points] == ["nightly-18"]


def test_no_step_no_change_point(tmp_path):
    write_runs(tmp_path, seed=1, drift=0.02)
    h = load_history([tmp_path])
    assert h.change_points == [] and len(h.trends) == 2


def test_step_smaller_than_the_runs_spread_is_not_a_change_point(tmp_path):
    # +8% passes the 5% floor and is statistically clear over 15 + 15 runs, but each run's own
    # IQR/median is ~13%: smaller than the runs' own noise, so not a change point.
    write_runs(tmp_path, step_at=15, step=0.08, noise=0.10, seed=2)
    h = load_history([tmp_path])
    assert h.change_points == []
    assert all(t.spread > 0.10 for t in h.trends)
    # The same step on quiet runs is found: the spread rule, not the detector, decided above.
    quiet = tmp_path / "quiet"
    write_runs(quiet, step_at=15, step=0.08, noise=0.02, seed=2)
    assert [cp.run_id for _, cp in load_history([quiet]).change_points] == ["nightly-15"]


def test_step_below_min_step_or_in_run_to_run_noise_is_not_reported(tmp_path):
    write_runs(tmp_path / "small", step_at=15, step=0.03, noise=0.01, seed=3)
    assert load_history([tmp_path / "small"]).change_points == []  # 3% < 5% floor
    assert len(load_history([tmp_path / "small"], min_step=0.02).change_points) == 1
    write_runs(tmp_path / "drifty", drift=0.08, seed=4)
    assert load_history([tmp_path / "drifty"]).change_points == []


# ------------------------------------------------------------------ environments


def test_two_machines_two_trends_never_mixed(tmp_path):
    # Machine B is 40% slower throughout; interleaved in time with A. Mixed, that would be a
    # zig-zag full of "steps"; per environment there is none.
    write_runs(tmp_path, n=10, seed=5, env=MACHINE_A, prefix="a")
    b_root = tmp_path / "b"
    b_root.mkdir()
    write_runs(b_root, n=10, seed=6, env=MACHINE_B, prefix="b", scale=1.4, offset_h=1)
    h = load_history([tmp_path, b_root])
    assert [r.run_id[0] for r in h.runs][:4] == ["a", "b", "a", "b"]  # interleaved in time
    assert h.change_points == []
    assert len(h.runs) == 20 and len(h.environments) == 2
    assert len(h.trends) == 4  # 2 cases x 2 environments
    for t in h.trends:
        runs = {p.run_id[0] for p in t.points}
        assert len(runs) == 1 and len(t.points) == 10  # only one machine's runs in a trend
        assert ("AMD" in t.environment) == (runs == {"b"})
    from harness.cli.history import format_text, to_dict

    text = format_text(h)
    assert "2 environments; trends are per environment" in text
    assert to_dict(h)["environments_note"].startswith("2 environments")


def test_torch_version_splits_trends(tmp_path):
    write_runs(tmp_path, n=4, seed=7)
    write_runs(tmp_path, n=4, seed=8, start=4, env={**MACHINE_A, "torch_version": "2.14.0+cpu"})
    h = load_history([tmp_path])
    assert len(h.environments) == 2 and {len(t.points) for t in h.trends} == {4}


# ------------------------------------------------------------------ CLI


def _run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_text_json_md(step_runs, capsys):
    code, out, err = _run(["history", str(step_runs)], capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith("flash/") and "+15" in lines[0] and "nightly-18" in lines[0]
    assert _commit(18)[:12] in lines[0]
    assert "1 environment" in out and "1 change point(s) (1 slower, 0 faster)" in out
    code, out, _ = _run(["history", str(step_runs), "--format", "json"], capsys)
    data = json.loads(out)
    assert code == 0 and data["change_points"] == 1 and len(data["runs"]) == 30
    cp = next(c for t in data["trends"] for c in t["change_points"])
    assert cp["run_id"] == "nightly-18" and cp["git_commit"] == _commit(18)
    code, out, _ = _run(["history", str(step_runs), "--format", "md"], capsys)
    assert code == 0 and "| `flash/" in out and "nightly-18" in out


def test_cli_out_writes_report_with_pngs(step_runs, tmp_path, capsys):
    out_dir = tmp_path / "hist"
    code, _, err = _run(["history", str(step_runs), "--out", str(out_dir)], capsys)
    assert code == 0, err
    pngs = sorted(out_dir.glob("*.png"))
    assert len(pngs) == 2  # the flash trend (change point) + the stable naive one
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert any("flash" in p.name for p in pngs)
    md = (out_dir / "report.md").read_text()
    assert "Change points" in md and "nightly-18" in md and pngs[0].name in md
    html = (out_dir / "index.html").read_text()
    assert html.count("data:image/png;base64,") == 2


def _one_line_error(argv, capsys, *words):
    code, out, err = _run(argv, capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


def test_cli_bad_inputs_exit_2_one_line(tmp_path, capsys):
    _one_line_error(["history", str(tmp_path / "nope")], capsys, "no such path")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(["history", str(empty)], capsys, "no runs")
    one = tmp_path / "one"
    write_runs(one, n=1)
    _one_line_error(["history", str(one)], capsys, "need at least 3 runs")
    _one_line_error(["history", str(one / "nightly-00")], capsys, "need at least 3 runs")
    three = tmp_path / "three"
    write_runs(three, n=3)
    (three / "nightly-01" / "run.json").write_text("{ not json")
    _one_line_error(["history", str(three)], capsys, "run.json", "not valid JSON")
    write_runs(tmp_path / "ok", n=3)
    _one_line_error(["history", str(tmp_path / "ok"), "--min-step", "lots"], capsys, "--min-step")


def test_three_runs_is_a_history_without_change_points(tmp_path, capsys):
    write_runs(tmp_path, n=3, step_at=2, step=0.5)
    code, out, _ = _run(["history", str(tmp_path)], capsys)
    assert code == 0 and "no change points" in out and "too few ok runs" in out


def test_history_error_is_a_results_error():
    assert issubclass(HistoryError, store.ResultsError)
