"""The read ceiling: the best of several streaming reads (methods, sizes), where the cases run;
run.json keeps each, the report says which won and how far they spread; older runs with one read
figure still report."""

from __future__ import annotations

import pytest
import torch

from harness.measure.machine import ceilings as measure
from harness.report.build import _calibration_rows
from harness.results import ceilings as records

GiB, MiB = 2**30, 2**20


def test_the_last_level_cache_is_read_from_sysfs(tmp_path):
    for i, (level_type, size) in enumerate([("Data", "48K"), ("Instruction", "64K"), ("Unified", "2048K"),
                                            ("Unified", "491520K")]):
        d = tmp_path / f"index{i}"
        d.mkdir()
        (d / "type").write_text(level_type + "\n")
        (d / "size").write_text(size + "\n")
    assert measure.llc_bytes(tmp_path) == 480 * MiB
    assert measure.llc_bytes(tmp_path / "missing") is None
    assert measure.parse_size("32M") == 32 * MiB and measure.parse_size("1G") == GiB and measure.parse_size("512") == 512


def test_read_sizes_are_at_least_four_times_the_cache_up_to_one_gib():
    assert measure.read_sizes(GiB, 32 * MiB) == ([GiB, 256 * MiB], "")
    assert measure.read_sizes(GiB, None) == ([GiB, 256 * MiB], "")  # unknown cache: both
    sizes, note = measure.read_sizes(GiB, 480 * MiB)  # 4x is 1.9 GiB, over the cap: 1 GiB alone, said
    assert sizes == [GiB] and "480 MiB" in note and "1 GiB" in note


def test_every_read_method_is_measured_and_the_best_median_is_the_ceiling():
    rb = measure.ReadBuffer("cpu", max_bytes=64 * MiB, llc=1 * MiB)
    r = measure.read_rates(rb, lambda: None, 0.0)
    methods = r["read_methods"]
    assert set(methods) == {"sum 64 MiB", "dot 2 x 32 MiB", "copy 32 MiB"}  # a quarter (16 MiB) is too small
    assert all(m["samples"] >= measure.READ_ROUNDS[0] and m["best_bytes_per_s"] >= m["bytes_per_s"] > 1e8
               for m in methods.values())
    assert methods["copy 32 MiB"]["bytes"] == 64 * MiB  # read + write counted
    assert r["read_bytes_per_s"] == max(m["bytes_per_s"] for m in methods.values())
    assert methods[r["read_method"]]["bytes_per_s"] == r["read_bytes_per_s"]
    assert r["best_read_bytes_per_s"] >= r["read_bytes_per_s"] and 0 <= r["read_spread"] < 1


def test_a_buffer_that_does_not_fit_is_halved_and_said(monkeypatch):
    real = torch.empty

    def capped(n, *a, **k):
        if n * 4 > 64 * MiB:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory")
        return real(n, *a, **k)

    monkeypatch.setattr(torch, "empty", capped)
    rb = measure.ReadBuffer("cpu", max_bytes=256 * MiB, llc=1 * MiB)
    assert rb.bytes == 64 * MiB and "256 MiB could not be allocated" in rb.note


def test_calibrate_keeps_each_read_and_a_failed_buffer_still_gives_the_matmul_peak(monkeypatch):
    point = [{"device": "cpu", "dtype": "float32", "threads": 1}]
    cal = measure.calibrate(point, read_max_bytes=64 * MiB)["cpu/float32/t1"]
    assert cal["matmul_flops_per_s"] > 0 and len(cal["read_methods"]) >= 3 and cal["read_method"] in cal["read_methods"]

    def broken(*a, **k):
        raise MemoryError("no room")

    monkeypatch.setattr(measure, "ReadBuffer", broken)
    cal = measure.calibrate(point)["cpu/float32/t1"]
    assert cal["matmul_flops_per_s"] > 0 and "read_bytes_per_s" not in cal and "no room" in cal["read_error"]
    row = dict(_calibration_rows(records.combine({"cpu/float32/t1": cal}, None)))["read ceiling cpu/float32/t1"]
    assert row == "not measured: MemoryError: no room"


def test_the_quick_calibration_is_a_testing_hook_the_worker_applies_and_records(monkeypatch):
    from harness.run import worker

    assert measure.quick_settings({}) == {} and measure.quick_settings({measure.QUICK_ENV: "0"}) == {}
    point = {"device": "cpu", "dtype": "float32", "threads": 1}
    monkeypatch.setenv(measure.QUICK_ENV, "1")  # as tests/conftest.py sets it for the test session
    cal = worker.handle({"kind": "calibrate", "points": [point]})["calibration"]["cpu/float32/t1"]
    assert cal["matmul_flops_per_s"] > 0 and cal["read_bytes_per_s"] > 1e8
    assert {"sum 256 MiB", "dot 2 x 128 MiB", "copy 128 MiB"} <= set(cal["read_methods"])  # a quarter of 1 GiB
    assert all(m["bytes"] <= 256 * MiB for m in cal["read_methods"].values())
    assert cal["testing_quick_calibration"].startswith(f"{measure.QUICK_ENV}=1: a 256 MiB read buffer")
    monkeypatch.delenv(measure.QUICK_ENV)  # a user's worker: the full calibration (the default arguments)
    assert measure.quick_settings() == {}


def _side(**rates):
    meds = {k.replace("_", " "): v for k, v in rates.items()}
    top = max(meds, key=meds.get)
    return {"matmul_flops_per_s": 1e11, "spread": 0.01, "best_flops_per_s": 1.1e11,
            "read_bytes_per_s": meds[top], "best_read_bytes_per_s": meds[top] * 1.05, "read_method": top,
            "read_methods": {k: {"bytes": GiB, "bytes_per_s": v, "best_bytes_per_s": v * 1.05, "samples": 3}
                             for k, v in meds.items()}}


def test_start_and_end_reads_combine_into_the_best_with_its_method_and_the_spread():
    key = "cpu/float32/t2"
    start = {key: _side(sum_1_GiB=24e9, dot=30e9, copy=20e9)}
    end = {key: _side(sum_1_GiB=26e9, dot=40e9, copy=22e9)}
    c = records.combine(start, end)[key]
    assert c["read_bytes_per_s"] == 40e9 and c["read_method"] == "dot (end)"
    assert c["read_spread"] == pytest.approx((40 - 20) / 40) and len(c["read_rates"]) == 6
    assert records.ceilings_of({key: c}, "read_bytes_per_s") == {key: 40e9}
    assert records.suspect_ceilings({key: c})[key]["bytes_per_s"] == pytest.approx(42e9)
    row = dict(_calibration_rows({key: c}))[f"read ceiling {key}"]
    assert row.startswith("40 GB/s, the best of 6 reads: dot (end); they spread 50%")
    assert "sum 1 GiB (start) 24" in row and "copy (end) 22" in row


def test_an_older_run_with_one_read_figure_still_reports():
    old_side = {"matmul_flops_per_s": 1e11, "spread": 0.01, "read_bytes_per_s": 25e9, "best_read_bytes_per_s": 27e9}
    c = records.combine({"cpu/float32/t2": old_side}, {"cpu/float32/t2": dict(old_side, read_bytes_per_s=24e9)})
    entry = c["cpu/float32/t2"]
    assert entry["read_bytes_per_s"] == 25e9 and entry["read_method"] == "one read (start)"
    rows = dict(_calibration_rows(c))
    assert rows["read ceiling cpu/float32/t2"] == "25 GB/s (one read; its method was not recorded)"
    # what run.json held before the read was combined at all: a read figure per key, or none
    rows = dict(_calibration_rows({"cpu/float32/t2": {"start": old_side, "end": None, "read_bytes_per_s": 25e9}}))
    assert rows["read ceiling cpu/float32/t2"].startswith("25 GB/s")
    assert "read ceiling" not in " ".join(dict(_calibration_rows({"cpu_matmul_flops_per_s": 1e11})))
