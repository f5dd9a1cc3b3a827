"""NVML telemetry of a CUDA device while a case is timed: clocks, power, temperature, clock-event
("throttle") reasons and energy, sampled on a background thread, summarised per case.

    with TelemetrySampler(device_index) as tel:
        ...timed region...                  # optionally: keep going until tel.energy_ready()
    summary = tel.summary(calls=n_calls, flops=flops_per_call, nbytes=bytes_per_call)
    # summary is None when NVML is unusable; tel.reason says why (one string)

Each sample (every `interval_s`, default 25 ms, plus one at start and one at stop) reads SM and
memory clocks, power draw, GPU temperature, the clock-event reason bits and the total-energy
counter, stamped with time.perf_counter() — the clock of the harness's host-side block timing —
so samples can be matched to timing blocks (telemetry_blocks.py). A sample is *throttled* when
its SM clock is below THROTTLE_CLOCK_FRACTION (75%) of the device's maximum SM clock, or a power,
thermal or hardware-slowdown reason bit is set (env.THROTTLING_REASONS; "gpu_idle" is not one).

Failures never fail a run: pynvml missing, no CUDA device, nvmlInit or handle failure → the
sampler records nothing, summary() returns None and `reason` holds one string. A single query that
raises (NVMLError_NotSupported, NVMLError_NoPermission, ...) is not retried for the rest of the
case; its field is None and summary.missing names it and the error.

Costs: one sample is ~6 NVML calls (ctypes releases the GIL during each); nvmlDeviceGetPowerUsage
is a ~1 s moving average on Ampere and newer boards except GA100, so mean power over a short case
lags the case. Energy: see telemetry_energy.py.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

from harness.measure.machine.environment import THROTTLING_REASONS, _clock_reasons, _nvml_handle, throttle_reason_names
from harness.measure.timing.nvml_energy import MIN_COUNTER_UPDATES, estimate_energy

THROTTLE_CLOCK_FRACTION = 0.75  # SM clock below this fraction of its maximum = throttled sample
DEFAULT_INTERVAL_S = 0.025


@dataclass(frozen=True)
class TelemetrySample:
    t: float  # time.perf_counter() seconds (or the injected clock)
    sm_clock_mhz: int | None = None
    mem_clock_mhz: int | None = None
    power_w: float | None = None
    temperature_c: int | None = None
    reasons_bitmask: int | None = None
    energy_mj: int | None = None
    throttled: bool = False
    throttle_why: str | None = None  # e.g. "sm clock 1100 < 75% of 1980 MHz" or "sw_power_cap"


@dataclass(frozen=True)
class TelemetrySummary:
    n_samples: int
    window_s: float
    sm_clock_min_mhz: int | None
    sm_clock_median_mhz: float | None
    sm_clock_max_mhz: int | None  # the device's maximum SM clock (not the highest sample)
    mem_clock_median_mhz: float | None
    mean_power_w: float | None
    max_temperature_c: int | None
    energy_per_call_j: float | None
    energy_source: str | None  # "counter" | "power×time" | None
    energy_counter_updates: int
    energy_note: str | None  # why the counter was not used
    tflops_per_w: float | None  # FLOPs per call / energy per call, in TFLOP/s per W
    gbytes_per_s_per_w: float | None  # bytes per call / energy per call, in GB/s per W
    throttle_reasons: tuple[str, ...]  # every reason name seen, in first-seen order
    throttled: bool
    throttle_reason: str | None  # the first throttled sample's reason
    throttled_samples: int
    missing: str | None  # queries that failed, "name: error; ..."

    def to_dict(self) -> dict:
        d = asdict(self)
        d["throttle_reasons"] = list(self.throttle_reasons)
        return d


def classify(sm_clock_mhz: int | None, sm_max_mhz: int | None, bits: int | None) -> str | None:
    """Why a sample is throttled, or None. Clock first: it says how much was lost."""
    if sm_clock_mhz is not None and sm_max_mhz and sm_clock_mhz < THROTTLE_CLOCK_FRACTION * sm_max_mhz:
        return f"sm clock {sm_clock_mhz} < {THROTTLE_CLOCK_FRACTION:.0%} of {sm_max_mhz} MHz"
    names = [n for n in throttle_reason_names(bits or 0) if n in THROTTLING_REASONS]
    return ",".join(names) if names else None


def _median(values):
    return statistics.median(values) if values else None


class TelemetrySampler:
    """Samples NVML while the `with` block runs. interval_s: sampling period of the background
    thread; background=False takes samples only at start, stop and explicit sample() calls (tests,
    or a caller that samples between blocks). clock: timestamp source, time.perf_counter."""

    def __init__(
        self,
        device_index: int = 0,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        background: bool = True,
        clock: Callable[[], float] = time.perf_counter,
        min_energy_updates: int = MIN_COUNTER_UPDATES,
    ):
        self.device_index = int(device_index)
        self.interval_s = float(interval_s)
        self.background = background
        self.clock = clock
        self.min_energy_updates = min_energy_updates
        self.reason: str | None = None  # why there is no telemetry at all
        self.sm_max_mhz: int | None = None
        self._nvml = self._handle = None
        self._failed: dict[str, str] = {}  # query name -> "ErrorType: message"
        self._samples: list[TelemetrySample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = self._t1 = None

    # -------------------------------------------------------------- lifecycle

    def __enter__(self) -> "TelemetrySampler":
        self.start()
        return self

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False

    def start(self) -> None:
        self._open()
        self._t0 = self.clock()
        if self._handle is None:
            return
        self.sample()
        if self.background:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="attnbench-telemetry", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        if self._handle is not None:
            self.sample()
            self._close()
        self._t1 = self.clock()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def _open(self) -> None:
        try:
            import torch

            if not torch.cuda.is_available():
                self.reason = "no CUDA device"
                return
        except Exception as exc:  # a broken torch install: no telemetry, not a failed case
            self.reason = f"torch.cuda unusable: {type(exc).__name__}: {exc}"
            return
        try:
            import pynvml
        except Exception as exc:
            self.reason = f"pynvml not importable: {type(exc).__name__}: {exc}"
            return
        try:
            pynvml.nvmlInit()
        except Exception as exc:
            self.reason = f"nvmlInit failed: {type(exc).__name__}: {exc}"
            return
        try:
            self._handle = _nvml_handle(pynvml, self.device_index)
        except Exception as exc:
            self.reason = f"no NVML handle for CUDA device {self.device_index}: {type(exc).__name__}: {exc}"
            self._shutdown(pynvml)
            return
        self._nvml = pynvml
        self.sm_max_mhz = self._query(
            "max_sm_clock", lambda: int(pynvml.nvmlDeviceGetMaxClockInfo(self._handle, pynvml.NVML_CLOCK_SM))
        ) or None

    def _close(self) -> None:
        self._shutdown(self._nvml)
        self._handle = None

    @staticmethod
    def _shutdown(pynvml) -> None:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass

    # -------------------------------------------------------------- sampling

    def _query(self, name: str, read: Callable[[], object]):
        """One NVML read; a failure disables that query for the rest of the case."""
        if name in self._failed:
            return None
        try:
            return read()
        except Exception as exc:
            self._failed[name] = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
            return None

    def sample(self) -> TelemetrySample | None:
        """Read every quantity once, now; append and return the sample (None without NVML)."""
        nv, h = self._nvml, self._handle
        if h is None:
            return None
        q = self._query
        sm = q("sm_clock", lambda: int(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)))
        mem = q("mem_clock", lambda: int(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM)))
        power_mw = q("power", lambda: int(nv.nvmlDeviceGetPowerUsage(h)))
        temp = q("temperature", lambda: int(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)))
        bits = q("clock_event_reasons", lambda: _clock_reasons(nv, h))
        energy = q("energy", lambda: int(nv.nvmlDeviceGetTotalEnergyConsumption(h)))
        why = classify(sm, self.sm_max_mhz, bits)
        s = TelemetrySample(
            t=self.clock(),
            sm_clock_mhz=sm,
            mem_clock_mhz=mem,
            power_w=None if power_mw is None else power_mw / 1e3,
            temperature_c=temp,
            reasons_bitmask=bits,
            energy_mj=energy,
            throttled=why is not None,
            throttle_why=why,
        )
        with self._lock:
            self._samples.append(s)
        return s

    @property
    def samples(self) -> tuple[TelemetrySample, ...]:
        with self._lock:
            return tuple(self._samples)

    def energy_ready(self) -> bool:
        """True once the energy counter has changed min_energy_updates times since start (or
        can never be used: no NVML, no counter) — a stop condition for extending a timed region."""
        if self.reason is not None or "energy" in self._failed:
            return True
        values = [s.energy_mj for s in self.samples if s.energy_mj is not None]
        changes = sum(1 for a, b in zip(values, values[1:]) if b != a)
        return changes >= max(2, self.min_energy_updates)

    # -------------------------------------------------------------- summary

    def summary(self, calls: int, *, flops: float | None = None, nbytes: float | None = None) -> TelemetrySummary | None:
        """Aggregate the samples of the finished region in which `calls` calls ran. flops and
        nbytes are per call (for the efficiency fields). None when there was no NVML."""
        samples = self.samples
        if not samples:
            if self.reason is None:
                self.reason = "no telemetry samples (sampler not started?)"
            return None
        t0 = self._t0 if self._t0 is not None else samples[0].t
        t1 = self._t1 if self._t1 is not None else samples[-1].t
        window_s = max(0.0, t1 - t0)
        sms = [s.sm_clock_mhz for s in samples if s.sm_clock_mhz is not None]
        mems = [s.mem_clock_mhz for s in samples if s.mem_clock_mhz is not None]
        powers = [s.power_w for s in samples if s.power_w is not None]
        temps = [s.temperature_c for s in samples if s.temperature_c is not None]
        mean_power = sum(powers) / len(powers) if powers else None
        readings = [(s.t, s.energy_mj) for s in samples if s.energy_mj is not None]
        energy = estimate_energy(
            readings, calls=calls, window_s=window_s, mean_power_w=mean_power,
            min_updates=self.min_energy_updates,
        )
        if "energy" in self._failed:
            energy = replace(energy, note=f"energy counter: {self._failed['energy']}")
        seen: list[str] = []
        for s in samples:
            for name in throttle_reason_names(s.reasons_bitmask or 0):
                if name not in seen:
                    seen.append(name)
        throttled = [s for s in samples if s.throttled]
        e = energy.energy_per_call_j
        return TelemetrySummary(
            n_samples=len(samples),
            window_s=window_s,
            sm_clock_min_mhz=min(sms) if sms else None,
            sm_clock_median_mhz=_median(sms),
            sm_clock_max_mhz=self.sm_max_mhz,
            mem_clock_median_mhz=_median(mems),
            mean_power_w=mean_power,
            max_temperature_c=max(temps) if temps else None,
            energy_per_call_j=e,
            energy_source=energy.source,
            energy_counter_updates=energy.counter_updates,
            energy_note=energy.note,
            tflops_per_w=flops / e / 1e12 if flops and e else None,
            gbytes_per_s_per_w=nbytes / e / 1e9 if nbytes and e else None,
            throttle_reasons=tuple(seen),
            throttled=bool(throttled),
            throttle_reason=throttled[0].throttle_why if throttled else None,
            throttled_samples=len(throttled),
            missing="; ".join(f"{k}: {v}" for k, v in self._failed.items()) or None,
        )
