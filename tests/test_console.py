"""The terminal summary: a row per case that ran, skipped cases folded into one line per reason."""

from __future__ import annotations

from harness.case import Case
from harness.cli.console import skip_reasons, summary
from harness.results.records import Measurement


def _case(impl: str, n: int, device: str = "cpu") -> Case:
    return Case(impl=impl, batch=1, heads_q=2, heads_kv=2, seq_len_q=n, seq_len_kv=n, head_dim=16,
                dtype="float32", device=device)


def test_skipped_cases_are_folded_by_reason_and_ran_cases_get_rows():
    ms = [
        Measurement(_case("naive", 64), "ok", stats={"median_s": 1.5e-3}, peak_bytes=2048),
        Measurement(_case("flash", 64), "wrong", "max abs error 3.1 > bound"),
        *[Measurement(_case(i, 64, "cuda"), "skipped", "no CUDA device on this machine")
          for i in ("naive", "flash", "sdpa")],
        Measurement(_case("naive", 65536), "skipped", "predicted peak 16.0 GiB > 12.0 GiB available"),
    ]
    assert skip_reasons(ms) == [("no CUDA device on this machine", 3),
                                ("predicted peak 16.0 GiB > 12.0 GiB available", 1)]
    text = summary(ms)
    lines = text.splitlines()
    assert sum("cuda" in ln for ln in lines) == 0, "skipped cases get no row of their own"
    assert any(ln.startswith("naive") and "1.50 ms" in ln and "2.0 KiB" in ln for ln in lines)
    assert any(ln.startswith("flash") and "wrong" in ln for ln in lines)
    assert "4 skipped (recorded with their reasons): 3 x no CUDA device on this machine; " \
           "1 x predicted peak 16.0 GiB > 12.0 GiB available" in text
    assert lines[-1] == "6 cases: 1 ok, 4 skipped, 1 wrong"


def test_all_skipped_prints_no_empty_table():
    ms = [Measurement(_case("naive", 64, "cuda"), "skipped", "no CUDA device on this machine")]
    assert summary(ms).splitlines() == [
        "1 skipped (recorded with their reasons): 1 x no CUDA device on this machine",
        "1 cases: 1 skipped",
    ]
