"""The results format: streaming, torn last lines, schema versions, the DataFrame loader."""

import json

import pytest

from harness.case import Case
from harness.results.store import (
    SCHEMA_VERSION,
    Measurement,
    ResultsError,
    ResultsWriter,
    load_results,
    read_measurements,
    read_run_info,
    write_run_info,
)


def _m(n: int, status="ok") -> Measurement:
    case = Case("naive", seq_len_q=n, seq_len_kv=n)
    stats = {"median_s": 0.001 * n, "spread": 0.02, "noise": "ok", "n": 3}
    return Measurement(case, status, samples_s=(0.001, 0.002, 0.003), stats=stats, peak_bytes=n * 10)


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "run"
    write_run_info(d, {"run_id": "run", "environment": {}})
    return d


def test_roundtrip_and_dataframe(run_dir):
    with ResultsWriter(run_dir) as w:
        for n in (64, 128):
            w.append(_m(n))
        w.append(Measurement(Case("flash"), "skipped", "why not"))
    ms = read_measurements(run_dir)
    assert [m.case.seq_len_q for m in ms] == [64, 128, 1024]
    assert ms[0] == _m(64)
    df = load_results(run_dir)
    assert len(df) == 3
    assert list(df["status"]) == ["ok", "ok", "skipped"]
    assert df.loc[1, "median_s"] == pytest.approx(0.128)
    assert df.loc[0, "peak_bytes"] == 640
    assert df.loc[2, "message"] == "why not"
    assert {"impl", "seq_len_q", "head_dim", "dtype", "case_id", "samples_s"} <= set(df.columns)


def test_truncated_last_line_is_tolerated_and_cut_before_append(run_dir):
    with ResultsWriter(run_dir) as w:
        w.append(_m(64))
    f = run_dir / "results.jsonl"
    with open(f, "a") as fh:
        fh.write(json.dumps(_m(128).to_dict())[:40])  # a kill mid-write
    assert [m.case.seq_len_q for m in read_measurements(run_dir)] == [64]
    with ResultsWriter(run_dir) as w:  # resume appends after cutting the torn tail
        w.append(_m(256))
    assert [m.case.seq_len_q for m in read_measurements(run_dir)] == [64, 256]


def test_corrupt_line_in_the_middle_is_an_error_naming_the_line(run_dir):
    f = run_dir / "results.jsonl"
    f.write_text(json.dumps(_m(64).to_dict()) + "\n{oops\n" + json.dumps(_m(128).to_dict()) + "\n")
    with pytest.raises(ResultsError, match=r"results.jsonl:2"):
        read_measurements(run_dir)


def test_unknown_schema_version_rejected(run_dir):
    info = json.loads((run_dir / "run.json").read_text())
    assert info["schema_version"] == SCHEMA_VERSION
    info["schema_version"] = SCHEMA_VERSION + 1
    (run_dir / "run.json").write_text(json.dumps(info))
    with pytest.raises(ResultsError, match="schema_version .* not supported"):
        read_run_info(run_dir)


def test_missing_run_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ResultsError, match="no such run directory"):
        read_measurements(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultsError, match="not a run directory"):
        read_measurements(tmp_path / "empty")


def test_non_finite_values_stay_valid_json(run_dir):
    m = Measurement(Case("x"), "wrong", "nan", max_abs_error=float("nan"))
    with ResultsWriter(run_dir) as w:
        w.append(m)
    line = (run_dir / "results.jsonl").read_text()
    json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    back = read_measurements(run_dir)[0]
    assert back.max_abs_error != back.max_abs_error  # NaN comes back as a float NaN


def test_unknown_status_rejected():
    with pytest.raises(ValueError, match="status"):
        Measurement(Case("x"), "fast")
