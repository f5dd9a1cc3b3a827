"""The table of recorded metrics. Console, report (tables, plots, error section), export and
compare iterate over METRICS; none of them names a metric of its own.

Adding a metric = the code that measures it (setting `Measurement.metrics["<field>"]`, or a
Measurement attribute for the core ones) + one row here. Each row says:
- field: where the value lives (a Measurement attribute, else a key of Measurement.metrics)
- label / title: a short column header and the long name used in reports
- unit: the stored (SI) unit; display_unit and display_scale: how reports show it
- better: "lower" | "higher" | None — which way is good
- kind: "timing" (from the time samples), "memory", "rate", "error" (accuracy), "info"
- plot: drawn per report group against sequence length (log_y; band = fields of an error band;
  ceiling = calibration key (with {device}) whose % the report shows beside it)
- judge: how `compare` judges a change: "samples" (bootstrap CI of the ratio of raw time samples),
  "growth" (worse by more than the threshold and an absolute floor), "pass" (True before, False now);
  verdict: the regression verdict that rule gives
- console: a column of the end-of-run table
"""

from __future__ import annotations

from dataclasses import dataclass

from harness import vocab
from harness.results.units import fmt_bytes, fmt_number, fmt_time_s

LOWER, HIGHER = "lower", "higher"


@dataclass(frozen=True)
class Metric:
    field: str
    label: str
    title: str
    unit: str
    better: str | None
    kind: str
    display_unit: str = ""
    display_scale: float = 1.0
    plot: str = ""  # the plot's short name (PNG file suffix, fit line), "" = not plotted
    plot_title: str = ""
    fit: bool = False  # report a scaling exponent of this metric against sequence length
    log_y: bool = False
    band: tuple[str, str] | None = None
    ceiling: str = ""
    ceiling_label: str = ""  # what the ceiling is, e.g. "matmul peak"
    ceiling_scale: float = 1.0  # calibration unit -> this metric's unit (FLOP/s -> TFLOP/s: 1e-12)
    workload: str = ""  # plotted only for groups of this workload ("" = every group)
    judge: str | None = None
    verdict: str = ""
    floor: float = 0.0  # "growth": changes below this (in `unit`) never count
    console: bool = False
    spec: str = ".3g"

    def value(self, m) -> float | bool | None:
        """This metric of a Measurement (None when not recorded)."""
        if self.field in getattr(type(m), "__dataclass_fields__", {}):
            return getattr(m, self.field)
        if self.field in STAT_FIELDS:
            return getattr(m.stats, self.field, None)
        return (m.metrics or {}).get(self.field)

    def human(self, v) -> str:
        """A value for a person: auto-scaled times and bytes, else the display unit."""
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "yes" if v else "no"
        if self.unit == "s":
            return fmt_time_s(v)
        if self.unit == "B":
            return fmt_bytes(v)
        return fmt_number(v * self.display_scale, self.spec)

    def shown(self, v) -> float | None:
        """The value in the display unit (for report tables and plots)."""
        return None if v is None or isinstance(v, bool) else v * self.display_scale


STAT_FIELDS = ("median_s", "min_s", "q1_s", "q3_s", "spread", "ci_low_s", "ci_high_s")

METRICS: tuple[Metric, ...] = (
    Metric("median_s", "median", "Median latency", "s", LOWER, "timing", "ms", 1e3, plot="latency",
           plot_title="Latency vs sequence length (median; bars = interquartile range)", fit=True, log_y=True,
           band=("q1_s", "q3_s"), judge="samples", verdict=vocab.REGRESSED, console=True),
    Metric("tflops_per_s", "TFLOP/s", "Achieved TFLOP/s", "TFLOP/s", HIGHER, "rate", "TFLOP/s", 1.0,
           plot="throughput", plot_title="Achieved throughput vs sequence length (from the median time)",
           ceiling="matmul_flops_per_s", ceiling_label="matmul peak", ceiling_scale=1e-12, console=True),
    Metric("gbytes_per_s", "GB/s", "Achieved bandwidth (minimum bytes / median time)", "GB/s", HIGHER, "rate",
           "GB/s", 1.0, plot="bandwidth", plot_title="Achieved bandwidth vs length (minimum bytes / median time)",
           ceiling="read_bytes_per_s", ceiling_label="read bandwidth", ceiling_scale=1e-9, workload="decode"),
    Metric("peak_bytes", "peak mem", "Peak memory above the inputs", "B", LOWER, "memory", "MiB", 2.0**-20,
           plot="memory", plot_title="Peak memory above the inputs vs sequence length", fit=True, log_y=True,
           judge="growth", verdict=vocab.REGRESSED_MEMORY, floor=64 * 2**10, console=True),
    Metric("predicted_peak_bytes", "predicted mem", "Predicted peak memory (model)", "B", LOWER, "memory", "MiB",
           2.0**-20),
    Metric("max_abs_error", "max err", "max abs error", "", LOWER, "error", spec=".2e", console=True),
    Metric("rel_l2_error", "rel L2 err", "max rel L2 error", "", LOWER, "error", spec=".2e"),
    # a low-precision KV cache's own rounding, apart from the kernel's error (workloads/decode/kv_quant.py)
    Metric("quant_error", "quant err", "quantisation error of the cache (max abs)", "", LOWER, "error",
           spec=".2e"),
    Metric("error_passed", "error check", "error check passed", "", None, "error", judge="pass",
           verdict=vocab.REGRESSED_ERROR),
    Metric("flops", "FLOPs", "FLOPs counted per call", "FLOP", None, "info", spec=".4g"),
    Metric("min_bytes", "bytes", "Minimum bytes moved per call", "B", None, "info"),
    Metric("arithmetic_intensity", "FLOP/B", "Arithmetic intensity (FLOPs / minimum bytes)", "FLOP/B", None, "info"),
    # training passes (harness/workloads/prefill/gradients.py, judged by measure/accuracy.check_grads): every gradient checked whole
    *(Metric(f"{g}_{e}_error", f"{g} {lab}", f"{g} {title}", "", LOWER, "error", spec=".2e")
      for g in ("dq", "dk", "dv") for e, lab, title in (("max_abs", "max err", "max abs error"),
                                                         ("rel_l2", "rel L2", "max rel L2 error"))),
    Metric("grad_error_passed", "grad check", "gradient check passed", "", None, "error", judge="pass",
           verdict=vocab.REGRESSED_ERROR),
    # NVML telemetry of CUDA cases (harness/measure/timing/cuda.py)
    Metric("energy_per_call_j", "energy", "Energy per call", "J", LOWER, "energy", "mJ", 1e3, plot="energy",
           plot_title="Energy per call vs sequence length (NVML)", log_y=True),
    Metric("tflops_per_w", "TFLOP/s/W", "Compute efficiency", "TFLOP/s/W", HIGHER, "rate", "TFLOP/s/W"),
    Metric("gbytes_per_s_per_w", "GB/s/W", "Bandwidth efficiency", "GB/s/W", HIGHER, "rate", "GB/s/W"),
    Metric("mean_power_w", "power", "Mean power", "W", None, "info", "W"),
    Metric("sm_clock_median_mhz", "SM clock", "SM clock (median)", "MHz", None, "info", "MHz", spec=".0f"),
    Metric("sm_clock_min_mhz", "SM clock min", "SM clock (min)", "MHz", None, "info", "MHz", spec=".0f"),
    Metric("sm_clock_max_mhz", "SM clock max", "SM clock (device max)", "MHz", None, "info", "MHz", spec=".0f"),
    Metric("mem_clock_median_mhz", "mem clock", "Memory clock (median)", "MHz", None, "info", "MHz", spec=".0f"),
    Metric("max_temperature_c", "temp", "Max temperature", "°C", None, "info", "°C", spec=".0f"),
    Metric("throttled", "throttled", "SM clock < 75% of max or a thermal/power throttle", "", None, "info"),
    # contention around the timed region (harness/measure/timing/contention.py)
    Metric("cpu_share", "CPU share", "own CPU time / (wall × threads)", "", HIGHER, "info", spec=".2f"),
    Metric("others_cores", "others' CPUs", "CPUs used by other processes while timed", "CPU", LOWER, "info",
           spec=".2f"),
    Metric("steal_share", "steal", "CPU time stolen by the hypervisor", "", LOWER, "info", spec=".1%"),
    Metric("compile_s", "compile", "Compile time (torch.compile; not in the latency)", "s", LOWER, "info"),
    # the precision the timing reached (harness/measure/timing/cpu.py; [budget] target_ci)
    Metric("ci_half_width", "median CI ±", "95% CI of the median: half-width / median", "", LOWER, "info",
           spec=".1%"),
    # the gate (harness/measure/reference_ratios.py): Measurement.reference_ratios summarized
    Metric("ratio_median", "ratio", "Median per-round time ratio to the reference", "", LOWER, "info", spec=".3f"),
    Metric("ratio_ci_low", "ratio CI low", "Time ratio to the reference: 95% CI low", "", LOWER, "info", spec=".3f"),
    Metric("ratio_ci_high", "ratio CI high", "Time ratio to the reference: 95% CI high", "", LOWER, "info",
           spec=".3f"),
)

BY_FIELD = {m.field: m for m in METRICS}


def metric(field: str) -> Metric:
    return BY_FIELD[field]


def console_metrics() -> tuple[Metric, ...]:
    return tuple(m for m in METRICS if m.console)


def plotted_metrics() -> tuple[Metric, ...]:
    return tuple(m for m in METRICS if m.plot)


def error_metrics() -> tuple[Metric, ...]:
    """Accuracy figures with a value (the pass flag is reported as counts beside them)."""
    return tuple(m for m in METRICS if m.kind == "error" and m.judge != "pass")


def judged(rule: str) -> tuple[Metric, ...]:
    return tuple(m for m in METRICS if m.judge == rule)
