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
           ceiling="matmul_flops_per_s", ceiling_label="matmul peak", console=True),
    Metric("peak_bytes", "peak mem", "Peak memory above the inputs", "B", LOWER, "memory", "MiB", 2.0**-20,
           plot="memory", plot_title="Peak memory above the inputs vs sequence length", fit=True, log_y=True,
           judge="growth", verdict=vocab.REGRESSED_MEMORY, floor=64 * 2**10, console=True),
    Metric("predicted_peak_bytes", "predicted mem", "Predicted peak memory (model)", "B", LOWER, "memory", "MiB",
           2.0**-20),
    Metric("max_abs_error", "max err", "max abs error", "", LOWER, "error", spec=".2e", console=True),
    Metric("rel_l2_error", "rel L2 err", "max rel L2 error", "", LOWER, "error", spec=".2e"),
    Metric("error_passed", "error check", "error check passed", "", None, "error", judge="pass",
           verdict=vocab.REGRESSED_ERROR),
    Metric("flops", "FLOPs", "FLOPs counted per call", "FLOP", None, "info", spec=".4g"),
    Metric("compile_s", "compile", "Compile time (torch.compile; not in the latency)", "s", LOWER, "info"),
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
