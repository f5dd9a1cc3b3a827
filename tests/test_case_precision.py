"""A sweep case stops on the precision of its median (harness/measure/case_measure.py +
timing/cpu.py): the record keeps the interval reached, and says so when the target was not met."""

from harness.case import Budget, Case
from harness.measure.case_measure import measure_case

CASE = Case("naive", batch=1, heads_q=3, heads_kv=3, seq_len_q=37, seq_len_kv=37, head_dim=24, threads=1)


def test_the_record_keeps_the_median_ci_reached():
    m = measure_case(CASE, Budget(warmup_s=0.0, min_time_s=0.01, max_time_s=0.5, target_ci=0.5), seed=0)
    assert m.status == "ok" and m.timing_stopped == "precision" and m.message == ""
    lo, hi, hw = (m.metrics[k] for k in ("median_ci_low_s", "median_ci_high_s", "ci_half_width"))
    assert lo <= m.stats.median_s <= hi and 0 <= hw <= 0.5 and m.metrics["ci_target"] == 0.5
    assert hw == (hi - lo) / 2 / m.stats.median_s


def test_a_case_that_cannot_reach_the_target_says_so_with_the_width_it_got():
    m = measure_case(CASE, Budget(warmup_s=0.0, min_time_s=0.01, max_time_s=0.15, target_ci=1e-9), seed=0)
    assert m.status == "ok" and m.timing_stopped == "max_time"
    assert m.message.startswith("precision target not reached: ") and "target +-0.0%" in m.message
    assert f"{m.stats.n} samples" in m.message
    width = m.metrics["ci_half_width"]
    if m.stats.n >= 6:  # a loaded machine may time fewer blocks in 0.15 s: then there is no interval
        assert f"median CI +-{width:.1%}" in m.message and width > 0
    else:
        assert width is None and "no CI (too few samples)" in m.message
