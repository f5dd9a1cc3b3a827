import gc
import statistics
import time
import types

import pytest
import torch

from harness.measure.timing import cpu as cpu_timing
from harness.stats import median_order_ci
from harness.measure.timing.cpu import Timing, time_cpu, time_interleaved, block_sizes
from harness.measure.timing.cuda_events import time_cuda

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def spin(seconds):
    """Busy-wait: unlike sleep, its duration does not depend on the scheduler's timer slack."""

    def fn():
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    return fn


class FakeClock:
    """A deterministic perf_counter: only the benchmarked functions move it, so the stopping
    logic is tested exactly, whatever else runs on this (shared, 2-core) machine."""

    def __init__(self):
        self.now_s = 0.0

    def perf_counter(self):
        return self.now_s

    def work(self, durations_s):
        """A function whose n-th call takes durations_s(n) seconds of fake time."""
        calls = []

        def fn():
            self.now_s += durations_s(len(calls))
            calls.append(1)

        fn.calls = calls
        return fn


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(cpu_timing, "time", types.SimpleNamespace(perf_counter=c.perf_counter))
    return c


def test_real_clock_smoke():
    t = time_cpu(spin(0.002), warmup_s=0.01, min_time_s=0.05, max_time_s=0.5, target_ci=0.25, min_block_s=0.01)
    assert isinstance(t, Timing) and t.timer == "perf_counter" and not t.cuda_graph
    assert t.calls_per_block == 5
    assert min(t.samples_s) >= 0.002  # per call, and a spin cannot finish early
    assert statistics.median(t.samples_s) < 0.02


def test_steady_function_stops_on_precision_after_min_time(clock):
    fn = clock.work(lambda n: 0.001)
    t = time_cpu(fn, warmup_s=0.05, min_time_s=0.1, max_time_s=1.0, target_ci=0.02, min_block_s=0.01)
    assert t.calls_per_block == 10
    assert t.samples_s == pytest.approx((0.001,) * t.n_blocks)
    assert t.stopped == "precision" and t.ci_half_width == pytest.approx(0.0, abs=1e-9)
    assert t.median_ci_low_s == pytest.approx(0.001) and t.median_ci_high_s == pytest.approx(0.001)
    assert t.n_blocks == 10  # the first block that ends at or after min_time_s (10 ms each)
    assert t.total_time_s == pytest.approx(0.1)
    assert t.warmup_s == pytest.approx(0.05)
    assert len(fn.calls) == 50 + 10 * 10  # warm-up calls are separate and discarded


def test_precision_needs_six_samples(clock):
    """The 95% order-statistic CI of a median exists from 6 samples on ([x_(1), x_(6)])."""
    fn = clock.work(lambda n: 0.001)
    t = time_cpu(fn, warmup_s=0.0, min_time_s=0.0, max_time_s=1.0, target_ci=0.02, min_block_s=0.01)
    assert t.stopped == "precision" and t.n_blocks == 6


def test_stops_once_the_median_ci_is_narrow_enough(clock):
    """Block times 1.00, 1.01, ..., 1.09 ms repeating: the CI narrows as samples accrue and the
    timing stops at the first block where its half-width is <= the target -- not earlier."""
    fn = clock.work(lambda n: 0.001 * (1 + 0.01 * ((n // 10) % 10)))
    t = time_cpu(fn, warmup_s=0.0, min_time_s=0.0, max_time_s=10.0, target_ci=0.02, min_block_s=0.01)
    assert t.stopped == "precision" and t.ci_half_width <= 0.02
    ci = median_order_ci(t.samples_s[:-1])
    assert ci is None or ci.half_width > 0.02  # one block fewer was not enough
    assert (t.median_ci_low_s, t.median_ci_high_s) == median_order_ci(t.samples_s)[1:3]


def test_noisy_function_runs_to_max_time(clock):
    fn = clock.work(lambda n: 0.001 if (n // 10) % 2 else 0.002)  # blocks alternate 1 ms / 2 ms
    t = time_cpu(fn, warmup_s=0.0, min_time_s=0.05, max_time_s=0.3, target_ci=0.05, min_block_s=0.01)
    assert t.stopped == "max_time"
    assert 0.3 <= t.total_time_s <= 0.3 + 0.02  # at most one block past the cap
    assert t.ci_half_width > 0.05  # the interval it got is kept


def test_at_least_three_samples_when_one_call_exceeds_max_time(clock):
    fn = clock.work(lambda n: 2.0)
    t = time_cpu(fn, warmup_s=0.0, min_time_s=0.0, max_time_s=1.0, target_ci=0.25)
    assert t.stopped == "max_time"
    assert (t.n_blocks, t.calls_per_block) == (3, 1)
    assert len(fn.calls) == 1 + 3  # one warm-up call (it outlasted max_time_s), three measured
    assert t.samples_s == (2.0, 2.0, 2.0)


def test_a_slow_case_goes_past_max_time_to_six_samples_for_an_interval(clock):
    """0.3 s calls with max_time_s = 1: three samples would have no CI; six (1.8 s, within
    OVERRUN x max_time_s) give one. 0.9 s calls would need 5.4 s: they stop at max_time_s."""
    t = time_cpu(clock.work(lambda n: 0.3), warmup_s=0.0, min_time_s=0.0, max_time_s=1.0, target_ci=0.02)
    assert (t.n_blocks, t.stopped) == (cpu_timing.CI_SAMPLES, "precision")  # identical samples: CI width 0
    assert t.ci_half_width < 1e-9
    noisy = clock.work(lambda n: 0.3 * (1.2 if n % 2 else 1.0))
    t = time_cpu(noisy, warmup_s=0.0, min_time_s=0.0, max_time_s=1.0, target_ci=0.02)
    assert (t.n_blocks, t.stopped) == (6, "max_time") and t.ci_half_width is not None and t.ci_half_width > 0.02
    t = time_cpu(clock.work(lambda n: 0.9), warmup_s=0.0, min_time_s=0.0, max_time_s=1.0, target_ci=0.02)
    assert (t.n_blocks, t.stopped, t.ci_half_width) == (3, "max_time", None)


def test_one_warm_up_call_where_the_function_has_just_run(clock):
    fn = clock.work(lambda n: 0.1)
    time_cpu(fn, warmup_s=0.0, min_time_s=0.0, max_time_s=0.5, target_ci=0.25, warmup_calls=1)
    one = len(fn.calls)
    fn2 = clock.work(lambda n: 0.1)
    time_cpu(fn2, warmup_s=0.0, min_time_s=0.0, max_time_s=0.5, target_ci=0.25)
    assert len(fn2.calls) - one == 1  # the default warms up with two calls


def test_a_previous_call_as_long_as_the_warm_up_is_the_warm_up(clock):
    """The sweep's checked call lasted warmup_s: no warm-up call
    more, one call per block; a shorter previous call still gets its warm-up."""
    slow = clock.work(lambda n: 0.3)
    t = time_cpu(slow, warmup_s=0.1, min_time_s=0.1, max_time_s=1.5, target_ci=0.02, warmup_calls=1,
                 previous_call_s=0.35)
    assert len(slow.calls) == len(t.samples_s) == t.n_blocks and t.calls_per_block == 1
    assert t.warmup_s == pytest.approx(0.35)
    again = clock.work(lambda n: 0.3)
    t2 = time_cpu(again, warmup_s=0.1, min_time_s=0.1, max_time_s=1.5, target_ci=0.02, warmup_calls=1)
    assert len(again.calls) == len(t2.samples_s) + 1  # without it: one warm-up call
    fast = clock.work(lambda n: 0.001)
    t3 = time_cpu(fast, warmup_s=0.1, min_time_s=0.1, max_time_s=1.5, target_ci=0.02, warmup_calls=1,
                  previous_call_s=0.002)  # shorter than warmup_s: it does not count
    assert t3.warmup_s >= 0.1 and t3.calls_per_block >= 10  # sized from its own warm-up
    overstated = clock.work(lambda n: 0.002)  # a profiled previous call took 0.2 s, a real one 2 ms
    t4 = time_cpu(overstated, warmup_s=0.1, min_time_s=0.1, max_time_s=1.5, target_ci=0.02, warmup_calls=1,
                  previous_call_s=0.2)
    assert t4.calls_per_block in (5, 6) and t4.warmup_s == pytest.approx(0.202)  # blocks of >= 10 ms again
    assert len(overstated.calls) == 1 + t4.calls_per_block * len(t4.samples_s)  # the first call was discarded


def test_a_steady_warm_up_ends_once_its_calls_agree(clock):
    """steady=True (the sweep): the warm-up ends before warmup_s once three calls in a row are
    within 3% of each other, over at least 10 ms; calls still settling get the whole warmup_s."""
    settled = clock.work(lambda n: 0.004 if n < 2 else 0.002)  # two cold calls, then steady
    t = time_cpu(settled, warmup_s=0.1, min_time_s=0.05, max_time_s=0.5, target_ci=0.25, warmup_calls=1,
                 steady=True)
    assert t.warmup_s == pytest.approx(0.008 + 3 * 0.002)  # 2 cold + 3 steady calls, not 0.1 s
    assert t.calls_per_block == 5
    settling = clock.work(lambda n: 0.004 * 0.98 ** n)  # each call 2% faster than the last: not steady
    t2 = time_cpu(settling, warmup_s=0.1, min_time_s=0.05, max_time_s=0.5, target_ci=0.25, warmup_calls=1,
                  steady=True)
    assert t2.warmup_s >= 0.1
    plain = clock.work(lambda n: 0.004 if n < 2 else 0.002)
    t3 = time_cpu(plain, warmup_s=0.1, min_time_s=0.05, max_time_s=0.5, target_ci=0.25, warmup_calls=1)
    assert t3.warmup_s >= 0.1  # the default: warmup_s whatever the calls do
    tiny = clock.work(lambda n: 0.0001)  # steady from the first call: still 10 ms of calls
    t4 = time_cpu(tiny, warmup_s=0.1, min_time_s=0.05, max_time_s=0.5, target_ci=0.25, warmup_calls=1,
                  steady=True)
    assert t4.warmup_s == pytest.approx(0.01, abs=2e-4)


def test_cold_first_call_is_discarded(clock):
    fn = clock.work(lambda n: 0.2 if n == 0 else 0.001)  # lazy initialisation on the first call
    t = time_cpu(fn, warmup_s=0.01, min_time_s=0.02, max_time_s=0.5, target_ci=0.25)
    assert t.warmup_s == pytest.approx(0.201)  # the cold call, then one warm call
    assert t.calls_per_block == 10  # sized from the warm calls, not the cold one
    assert max(t.samples_s) == pytest.approx(0.001)


def test_fast_functions_get_many_calls_per_block(clock):
    t = time_cpu(clock.work(lambda n: 1e-6), warmup_s=0.001, min_time_s=0.0, max_time_s=1.0, target_ci=0.25)
    assert 10_000 <= t.calls_per_block <= 10_001  # ceil of a float quotient
    assert t.samples_s[0] == pytest.approx(1e-6)  # per call, not per block


def test_gc_state_is_restored_even_when_fn_raises():
    assert gc.isenabled()

    def boom():
        if boom.n >= 2:
            raise RuntimeError("boom")
        boom.n += 1

    boom.n = 0
    with pytest.raises(RuntimeError):
        time_cpu(boom, warmup_s=0.0, min_time_s=0.0, max_time_s=0.1, target_ci=0.25, min_block_s=0.0)
    assert gc.isenabled()


@pytest.mark.parametrize(
    "kwargs", [dict(warmup_s=-1.0), dict(min_time_s=2.0, max_time_s=1.0), dict(target_ci=-0.1)]
)
def test_bad_budgets_raise(kwargs):
    with pytest.raises(ValueError):
        time_cpu(lambda: None, **{"warmup_s": 0.0, "min_time_s": 0.0, "max_time_s": 0.1, "target_ci": 0.1, **kwargs})


def test_interleaved_rotates_the_start_each_round():
    log = []
    fns = {name: (lambda name=name: log.append(name)) for name in "abc"}
    out = time_interleaved(fns, rounds=4, min_block_s=0.0, warmup_s=0.0)
    assert log[:6] == list("aabbcc")  # two warm-up calls each
    assert log[6:] == list("abc" "bca" "cab" "abc")
    assert {k: len(v) for k, v in out.items()} == {"a": 4, "b": 4, "c": 4}


def test_interleaved_known_block_sizes_skip_the_warm_up():
    """A later block of the A/B gate reuses its process's block sizes: no warm-up call for those
    callables, exactly the given calls per block; the others are still sized by a warm-up."""
    log = []
    fns = {name: (lambda name=name: log.append(name)) for name in "ab"}
    out = time_interleaved(fns, rounds=2, min_block_s=0.0, warmup_s=0.0, warmup_calls=1,
                           calls_per_block={"a": 3, "zz": 5})
    assert log[:1] == ["b"]  # b's one warm-up call; a has none
    assert log[1:] == list("aaab" "baaa")
    assert {k: len(v) for k, v in out.items()} == {"a": 2, "b": 2}
    assert block_sizes(fns, min_block_s=0.0, warmup_s=0.0, known={"a": 2, "b": 4}) == {"a": 2, "b": 4}
    assert log[9:] == []  # known sizes call nothing


def test_interleaving_cancels_drift(clock):
    # The machine slows down steadily (5% per 10 ms round); "two" always costs twice "one".
    def drifting(base_s):
        return clock.work(lambda n: base_s * (1.0 + 5.0 * clock.now_s))

    fns = {"one": drifting(0.0005), "two": drifting(0.001)}
    out = time_interleaved(fns, rounds=10, min_block_s=0.005, warmup_s=0.0)
    ratio = statistics.median(out["two"]) / statistics.median(out["one"])
    assert ratio == pytest.approx(2.0, rel=0.01)
    assert out["one"][-1] > 1.3 * out["one"][0]  # the drift is real, only the ratio is immune
    # Measured one after the other instead, the same drift would distort the ratio by ~40%.
    one = time_interleaved({"one": fns["one"]}, rounds=10, min_block_s=0.005, warmup_s=0.0)["one"]
    two = time_interleaved({"two": fns["two"]}, rounds=10, min_block_s=0.005, warmup_s=0.0)["two"]
    assert statistics.median(two) / statistics.median(one) > 2.2


def test_interleaved_calls_sync_around_blocks():
    synced = []
    time_interleaved({"x": lambda: None}, rounds=2, min_block_s=0.0, warmup_s=0.0, sync=lambda: synced.append(1))
    assert len(synced) == 2 + 2 * 2  # after each warm-up call, before and after each block


def test_interleaved_rejects_empty_input():
    with pytest.raises(ValueError):
        time_interleaved({}, rounds=3)
    with pytest.raises(ValueError):
        time_interleaved({"a": lambda: None}, rounds=0)


# --- CUDA (skipped without a GPU; these exercise the real event, flush and graph paths) ---


def _matmul_fn(n=1024):
    a = torch.randn(n, n, device="cuda")
    b = torch.randn(n, n, device="cuda")
    return lambda: a @ b


@cuda
def test_cuda_times_a_matmul():
    t = time_cuda(_matmul_fn(), warmup_s=0.1, min_time_s=0.1, max_time_s=1.0, target_ci=0.1)
    assert t.timer == "cuda_event" and t.n_blocks >= 3
    flops = 2 * 1024**3 / statistics.median(t.samples_s)
    assert 1e11 < flops < 2e15
    assert t.warmup_s >= 0.1


@cuda
def test_cuda_l2_flush_forces_one_call_per_sample():
    t = time_cuda(_matmul_fn(256), warmup_s=0.02, min_time_s=0.05, max_time_s=0.5, target_ci=0.25,
                  l2_flush=True, min_block_s=0.01)
    assert t.l2_flush and t.calls_per_block == 1


@cuda
def test_cuda_graph_replay_and_fallback():
    t = time_cuda(_matmul_fn(256), warmup_s=0.02, min_time_s=0.05, max_time_s=0.5, target_ci=0.25,
                  cuda_graph=True, min_block_s=0.001)
    assert t.cuda_graph and t.graph_fallback_reason is None and t.calls_per_block >= 1
    x = torch.ones(4, device="cuda")
    t = time_cuda(lambda: (x * 2).sum().item(), warmup_s=0.02, min_time_s=0.05, max_time_s=0.5,
                  target_ci=0.25, cuda_graph=True)  # .item() syncs: cannot be captured
    assert not t.cuda_graph and t.graph_fallback_reason
    assert torch.cuda.current_stream() == torch.cuda.default_stream()  # not left on the capture stream
    assert t.n_blocks >= 3
