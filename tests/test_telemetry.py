"""NVML telemetry and energy (harness/measure/telemetry*.py) against an in-process fake of exactly
the NVML calls the sampler makes, driven by a simulated clock (integer milliseconds, no sleeping)."""

import sys
import time
import types

import pytest
import torch

from harness.measure.timing.nvml_sampler import TelemetrySample, TelemetrySampler, classify
from harness.measure.timing.throttled_blocks import (
    cuda_block_times,
    drop_throttled_blocks,
    measure_discarding_throttled,
    throttled_spans,
)
from harness.measure.timing.nvml_energy import COUNTER_MODULUS, estimate_energy, gbytes_per_s_per_watt, tflops_per_watt


class NVMLError_NotSupported(Exception):
    pass


class NVMLError_NoPermission(Exception):
    pass


class FakeNVML(types.ModuleType):
    """The NVML calls telemetry.py makes, as functions of a simulated clock `now_ms`.

    The energy counter behaves like the real one: it advances only every `energy_period_ms`, in a
    step of power × period, so between updates it stands still."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0

    def __init__(self):
        super().__init__("pynvml")
        self.now_ms = 0
        self.power_mw = 300_000  # 300 W
        self.energy_base_mj = 1_000_000
        self.energy_period_ms = 100
        self.sm_max = 1980
        self.sm_clock = lambda ms: 1980
        self.reasons = lambda ms: 0
        self.temperature = lambda ms: 60 + ms // 250  # 60, 61, ... °C
        self.reset_at_ms = None  # energy counter restarts from 0 here
        self.broken: dict[str, Exception] = {}
        self.calls = []

    def clock(self):  # the sampler's injected clock
        return self.now_ms / 1000

    def _maybe_fail(self, name):
        self.calls.append(name)
        if name in self.broken:
            raise self.broken[name]

    def nvmlInit(self):
        self._maybe_fail("nvmlInit")

    def nvmlShutdown(self):
        self.calls.append("nvmlShutdown")

    def nvmlDeviceGetHandleByIndex(self, i):
        self._maybe_fail("handle")
        return ("handle", i)

    def nvmlDeviceGetMaxClockInfo(self, h, kind):
        self._maybe_fail("max_clock")
        assert kind == self.NVML_CLOCK_SM
        return self.sm_max

    def nvmlDeviceGetClockInfo(self, h, kind):
        self._maybe_fail(f"clock{kind}")
        return self.sm_clock(self.now_ms) if kind == self.NVML_CLOCK_SM else 2619

    def nvmlDeviceGetPowerUsage(self, h):
        self._maybe_fail("power")
        return self.power_mw

    def nvmlDeviceGetTemperature(self, h, sensor):
        self._maybe_fail("temperature")
        assert sensor == self.NVML_TEMPERATURE_GPU
        return self.temperature(self.now_ms)

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        self._maybe_fail("reasons")
        return self.reasons(self.now_ms)

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        self._maybe_fail("energy")
        ms, base = self.now_ms, self.energy_base_mj
        if self.reset_at_ms is not None and ms >= self.reset_at_ms:
            ms, base = ms - self.reset_at_ms, 0
        step_mj = self.power_mw * self.energy_period_ms // 1000
        return (base + (ms // self.energy_period_ms) * step_mj) % COUNTER_MODULUS


@pytest.fixture
def nvml(monkeypatch):
    fake = FakeNVML()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return fake


def run_case(fake, duration_ms=1000, step_ms=20, **kw):
    """A simulated timed region: sample every step_ms of fake time for duration_ms."""
    tel = TelemetrySampler(0, background=False, clock=fake.clock, **kw)
    with tel:
        while fake.now_ms < duration_ms:
            fake.now_ms += step_ms
            if fake.now_ms < duration_ms:
                tel.sample()
    return tel


def test_steady_case_aggregates_exactly(nvml):
    tel = run_case(nvml)
    s = tel.summary(calls=1000, flops=3e11, nbytes=6e8)
    assert tel.reason is None and s.missing is None
    assert s.n_samples == 51 and s.window_s == 1.0  # 0, 20, ..., 1000 ms
    assert (s.sm_clock_min_mhz, s.sm_clock_median_mhz, s.sm_clock_max_mhz) == (1980, 1980, 1980)
    assert s.mem_clock_median_mhz == 2619 and s.mean_power_w == 300.0 and s.max_temperature_c == 64
    # the counter changed at 100, 200, ..., 1000 ms: 270 J between the first and last change
    # (0.9 s), in which 900 of the 1000 calls ran -> 0.3 J per call (= 300 W x 1 ms)
    assert s.energy_source == "counter" and s.energy_counter_updates == 10 and s.energy_note is None
    assert s.energy_per_call_j == pytest.approx(0.3, rel=1e-12)
    assert s.tflops_per_w == pytest.approx(1.0)  # 3e11 FLOP / 0.3 J
    assert s.gbytes_per_s_per_w == pytest.approx(2.0)  # 6e8 B / 0.3 J
    assert not s.throttled and s.throttle_reason is None and s.throttle_reasons == ()
    assert nvml.calls[0] == "nvmlInit" and nvml.calls[-1] == "nvmlShutdown"
    assert s.to_dict()["throttle_reasons"] == []


def test_counter_edges_beat_a_plain_before_after_difference(nvml):
    # Region 0..250 ms sampled every 10 ms: the counter changes at 100 and 200 only. A plain
    # before/after difference (60 J / 250 calls = 0.24 J) would be 20% low; with only 2 updates
    # (< 3) the sampler falls back to power x time and says so.
    tel = run_case(nvml, duration_ms=250, step_ms=10)
    s = tel.summary(calls=250)
    assert s.energy_source == "power×time" and s.energy_counter_updates == 2
    assert s.energy_per_call_j == pytest.approx(300.0 * 0.25 / 250)
    assert "changed 2 times in 250 ms" in s.energy_note
    assert not tel.energy_ready()


def test_energy_ready_after_enough_counter_updates(nvml):
    tel = TelemetrySampler(0, background=False, clock=nvml.clock)
    tel.start()
    ready_at = None
    while ready_at is None and nvml.now_ms < 2000:
        nvml.now_ms += 25
        tel.sample()
        if tel.energy_ready():
            ready_at = nvml.now_ms
    tel.stop()
    assert ready_at == 300  # third counter update


def test_energy_counter_wraparound(nvml):
    nvml.energy_base_mj = COUNTER_MODULUS - 75_000  # wraps at the third update (300 ms)
    s = run_case(nvml).summary(calls=1000)
    assert s.energy_source == "counter" and s.energy_per_call_j == pytest.approx(0.3, rel=1e-12)


def test_energy_counter_reset_falls_back_to_power_times_time(nvml):
    nvml.reset_at_ms = 500
    s = run_case(nvml).summary(calls=1000)
    assert s.energy_source == "power×time" and "reset" in s.energy_note
    assert s.energy_per_call_j == pytest.approx(300.0 * 1.0 / 1000)


def test_throttle_reason_mid_case(nvml):
    nvml.reasons = lambda ms: 0x1 if ms < 400 else (0x4 if ms < 600 else 0)  # idle, then power cap
    tel = run_case(nvml)
    s = tel.summary(calls=1000)
    assert s.throttled and s.throttle_reason == "sw_power_cap"
    assert s.throttle_reasons == ("gpu_idle", "sw_power_cap")
    assert s.throttled_samples == 10  # 400, 420, ..., 580 ms
    assert [x.t for x in tel.samples if x.throttled][0] == 0.4


def test_sm_clock_drop_below_75_percent(nvml):
    nvml.sm_clock = lambda ms: 1400 if 300 <= ms < 360 else 1800  # 1400 < 0.75 * 1980 = 1485
    s = run_case(nvml).summary(calls=1000)
    assert s.throttled and s.throttle_reason == "sm clock 1400 < 75% of 1980 MHz"
    assert s.throttled_samples == 3 and s.sm_clock_min_mhz == 1400 and s.sm_clock_median_mhz == 1800
    assert s.throttle_reasons == ()  # no reason bit: the clock alone flags it
    assert classify(1485, 1980, 0) is None and classify(1484, 1980, 0x1) is not None
    assert classify(1900, 1980, 0x40) == "hw_thermal_slowdown"


@pytest.mark.parametrize("broken, field", [("power", "mean_power_w"), ("temperature", "max_temperature_c")])
def test_single_query_not_supported_leaves_only_that_field_absent(nvml, broken, field):
    nvml.broken[broken] = NVMLError_NotSupported("Not Supported")
    s = run_case(nvml).summary(calls=1000)
    assert getattr(s, field) is None
    assert s.missing == f"{broken}: NVMLError_NotSupported: Not Supported"
    assert s.sm_clock_median_mhz == 1980 and s.energy_source == "counter"
    assert nvml.calls.count(broken) == 1  # not retried after the first failure


def test_energy_no_permission_falls_back_to_power(nvml):
    nvml.broken["energy"] = NVMLError_NoPermission("Insufficient Permissions")
    tel = run_case(nvml)
    s = tel.summary(calls=500)
    assert s.energy_source == "power×time" and s.energy_per_call_j == pytest.approx(300.0 / 500)
    assert s.energy_note == "energy counter: NVMLError_NoPermission: Insufficient Permissions"
    assert tel.energy_ready()  # nothing to wait for


def test_no_power_and_no_energy_means_no_energy(nvml):
    nvml.broken["energy"] = NVMLError_NotSupported("Not Supported")
    nvml.broken["power"] = NVMLError_NotSupported("Not Supported")
    s = run_case(nvml).summary(calls=10, flops=1e9)
    assert s.energy_per_call_j is None and s.energy_source is None and s.tflops_per_w is None


def test_max_clock_unreadable_disables_only_the_clock_rule(nvml):
    nvml.broken["max_clock"] = NVMLError_NoPermission("Insufficient Permissions")
    nvml.sm_clock = lambda ms: 500
    s = run_case(nvml).summary(calls=10)
    assert s.sm_clock_max_mhz is None and not s.throttled and "max_sm_clock" in s.missing


def test_pynvml_missing_gives_none_with_one_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with TelemetrySampler(0) as tel:
        pass
    assert tel.summary(calls=10) is None
    assert tel.reason.startswith("pynvml not importable: ")
    assert tel.energy_ready() and tel.samples == ()


@pytest.mark.parametrize("broken, expected", [
    ("nvmlInit", "nvmlInit failed: NVMLError_NoPermission: denied"),
    ("handle", "no NVML handle for CUDA device 0: NVMLError_NoPermission: denied"),
])
def test_nvml_init_or_handle_failure(nvml, broken, expected):
    nvml.broken[broken] = NVMLError_NoPermission("denied")
    with TelemetrySampler(0, clock=nvml.clock) as tel:
        nvml.now_ms += 100
    assert tel.summary(calls=10) is None and tel.reason == expected


def test_no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with TelemetrySampler(0) as tel:
        pass
    assert tel.summary(calls=1) is None and tel.reason == "no CUDA device"


def test_background_thread_samples_in_real_time(nvml):
    nvml.clock = time.perf_counter  # the fake's values stay at now_ms = 0; timestamps are real
    with TelemetrySampler(0, interval_s=0.005) as tel:
        time.sleep(0.06)
    ts = [s.t for s in tel.samples]
    assert len(ts) >= 5 and ts == sorted(ts)
    assert tel.summary(calls=1).n_samples == len(ts)


# ------------------------------------------------------------------ blocks vs. telemetry


def _tel(times_ms, throttled_ms):
    return [TelemetrySample(t=ms / 1000, throttled=ms in throttled_ms) for ms in times_ms]


def test_drop_throttled_blocks_uses_neighbouring_samples():
    tel = _tel(range(0, 1001, 100), throttled_ms={500})  # throttled at 500: stands for 400..600
    assert throttled_spans(tel) == [(0.4, 0.6)]
    blocks = [(i / 10 + 0.01, i / 10 + 0.09) for i in range(10)]  # ten blocks inside 0.01..0.99
    f = drop_throttled_blocks([float(i) for i in range(10)], blocks, tel)
    assert f.dropped == (4, 5)  # 0.41-0.49 and 0.51-0.59
    assert f.kept == (0, 1, 2, 3, 6, 7, 8, 9) and f.kept_s == (0.0, 1.0, 2.0, 3.0, 6.0, 7.0, 8.0, 9.0)
    # a block that only touches the span's edge is dropped too (closed intervals)
    assert drop_throttled_blocks([1.0], [(0.3, 0.4)], tel).dropped == (0,)
    assert drop_throttled_blocks([1.0], [(0.3, 0.399)], tel).dropped == ()
    with pytest.raises(ValueError):
        drop_throttled_blocks([1.0, 2.0], [(0.0, 0.1)], tel)


def test_cuda_block_times_from_events():
    class Ev:
        def __init__(self, gpu_ms):
            self.gpu_ms = gpu_ms

        def elapsed_time(self, other):
            return other.gpu_ms - self.gpu_ms

    events = [(Ev(0.0), Ev(10.0)), (Ev(10.0), Ev(20.0)), (Ev(25.0), Ev(40.0))]
    times = cuda_block_times(events, t_sync=5.0)
    assert times == [pytest.approx(x) for x in [(4.96, 4.97), (4.97, 4.98), (4.985, 5.0)]]
    assert cuda_block_times([], 1.0) == []


def test_discard_throttled_remeasures_until_enough_clean_blocks():
    calls = []

    def measure():
        calls.append(1)
        bad = {500} if len(calls) < 3 else set()  # throttled in the first two measurements
        blocks = [(i / 10 + 0.01, i / 10 + 0.09) for i in range(10)]
        return f"timing{len(calls)}", [1.0] * 10, blocks, _tel(range(0, 1001, 100), bad)

    got = measure_discarding_throttled(measure, min_blocks=9, max_attempts=3)
    assert len(calls) == 3 and got.attempts == 3 and got.enough and got.result == "timing3"
    assert got.dropped == 0 and len(got.samples_s) == 10 and got.note is None

    calls.clear()
    got = measure_discarding_throttled(measure, min_blocks=9, max_attempts=2)
    assert len(calls) == 2 and not got.enough and got.result == "timing1" and got.dropped == 2
    assert got.note.startswith("only 8 unthrottled blocks (< 9) after 2 measurements")

    calls.clear()
    got = measure_discarding_throttled(measure, min_blocks=5)
    assert len(calls) == 1 and got.enough and got.dropped == 2 and "dropped 2 of 10" in got.note


# ------------------------------------------------------------------ pure helpers, declarations


def test_estimate_energy_direct():
    readings = [(0.0, 10), (0.1, 10), (0.2, 40), (0.3, 40), (0.4, 70), (0.5, 100), (0.6, 100)]
    e = estimate_energy(readings, calls=6, window_s=0.6, mean_power_w=None)
    # changes observed at 0.2, 0.4, 0.5: 60 mJ over 0.3 s, in which 3 of 6 calls ran
    assert e.source == "counter" and e.counter_updates == 3 and e.energy_per_call_j == pytest.approx(0.02)
    assert estimate_energy([], calls=1, window_s=1.0, mean_power_w=None).source is None


def test_efficiency_helpers():
    assert tflops_per_watt(2e12, 0.5, 100.0) == pytest.approx(0.04)
    assert gbytes_per_s_per_watt(1e9, 0.01, 50.0) == pytest.approx(2.0)
    assert tflops_per_watt(1e12, 0.0, 100.0) is None and gbytes_per_s_per_watt(1e9, 1.0, None) is None


def test_the_metrics_table_rows_name_summary_fields_the_gpu_timing_records():
    """Every telemetry field the CUDA timing stores (harness/measure/timing/cuda.py) is a row of the
    metrics table, so console, report, export and compare show it."""
    from harness.measure.timing.cuda import NUMERIC_FIELDS
    from harness.measure.timing.nvml_sampler import TelemetrySummary
    from harness.results.metrics import BY_FIELD, HIGHER, LOWER

    for f in NUMERIC_FIELDS:
        assert f in TelemetrySummary.__dataclass_fields__ and f in BY_FIELD, f
    assert BY_FIELD["energy_per_call_j"].better == LOWER and BY_FIELD["tflops_per_w"].better == HIGHER
    assert "throttled" in BY_FIELD


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (exercises the real NVML path)")
def test_real_nvml_on_a_matmul_loop():
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    torch.cuda.synchronize()
    n = 0
    with TelemetrySampler(torch.cuda.current_device()) as tel:
        deadline = time.perf_counter() + 0.6
        while time.perf_counter() < deadline or not tel.energy_ready():
            for _ in range(10):
                a @ a
            n += 10
            torch.cuda.synchronize()
            if time.perf_counter() > deadline + 2.0:
                break
    s = tel.summary(calls=n, flops=2 * 4096**3)
    assert s is not None, tel.reason
    assert s.n_samples >= 10 and s.sm_clock_max_mhz and s.sm_clock_median_mhz > 0
    assert s.energy_per_call_j and s.energy_per_call_j > 0 and s.energy_source in ("counter", "power×time")
    assert s.mean_power_w is None or s.mean_power_w > 0
