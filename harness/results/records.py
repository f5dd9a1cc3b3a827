"""One case's record: the Measurement dataclass and its JSON form (harness/results/store.py
writes and reads the files). Times in seconds, memory in bytes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from harness.case import Case
from harness.stats import Stats
from harness.vocab import STATUSES


@dataclass(frozen=True)
class Measurement:
    """Everything recorded for one case. Times in seconds, memory in bytes."""

    case: Case
    status: str
    message: str = ""
    # timing
    samples_s: tuple[float, ...] = ()
    calls_per_block: int = 0
    timing_stopped: str = ""  # "precision" or "max_time" (older records: "spread")
    contended: bool = False  # the case did not get the CPU it asked for (harness.measure.timing.contention)
    contention: str = ""  # why, when contended
    stats: Stats | None = None  # summary of samples_s
    # the gate (harness.measure.reference_ratios): per round, this case's time / the reference
    # implementation's time in the same round (dimensionless; empty in a sweep); their median and
    # CI are the metrics ratio_median, ratio_ci_low, ratio_ci_high, the reference is extra["reference"]
    reference_ratios: tuple[float, ...] = ()
    flops: int | None = None
    tflops_per_s: float | None = None
    # memory (above the inputs)
    peak_bytes: int | None = None
    predicted_peak_bytes: int | None = None
    # accuracy vs the float64 reference
    max_abs_error: float | None = None
    rel_l2_error: float | None = None
    naive_max_abs_error: float | None = None
    error_passed: bool | None = None
    error_rule: str = ""
    error_rows: int | None = None  # query rows compared (a subset for large Nq)
    # further metrics by field name (harness/results/metrics.py declares each)
    metrics: dict = field(default_factory=dict)
    # bookkeeping
    wall_s: float = 0.0
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.stats, dict):  # a stored or hand-made record: typed from here on
            object.__setattr__(self, "stats", Stats.from_dict(self.stats) if self.stats else None)
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} not in {STATUSES}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["case"] = self.case.to_dict()
        d["stats"] = asdict(self.stats) if self.stats is not None else {}
        d["case_id"] = self.case.case_id
        d["samples_s"] = list(self.samples_s)
        if self.reference_ratios:
            d["reference_ratios"] = list(self.reference_ratios)
        else:  # a sweep's record stays as it was
            d.pop("reference_ratios")
        return _finite(d)

    @classmethod
    def from_dict(cls, d: dict) -> "Measurement":
        d = dict(d)
        d.pop("case_id", None)
        d["case"] = Case.from_dict(d["case"])
        d["samples_s"] = tuple(d.get("samples_s") or ())
        d["reference_ratios"] = tuple(d.get("reference_ratios") or ())
        d["stats"] = {k: _unfinite(v) for k, v in (d.get("stats") or {}).items()}
        known = set(cls.__dataclass_fields__)
        return cls(**{k: (v if k == "stats" else _unfinite(v)) for k, v in d.items() if k in known})

    @property
    def median_s(self) -> float | None:
        return None if self.stats is None else self.stats.median_s

    @property
    def noise(self) -> str | None:
        return None if self.stats is None else self.stats.noise


def last_by_case(measurements) -> dict[str, Measurement]:
    """case_id -> the LAST record of that case, in the order cases first appear: a resumed run may
    have re-measured a case, two writers may have recorded it twice. The one place this rule lives
    (rows, run files and compare all read records through it)."""
    out: dict[str, Measurement] = {}
    for m in measurements:
        out[m.case.case_id] = m
    return out


def _finite(obj):
    """JSON has no NaN/inf: store them as strings so the file stays standard JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return repr(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _unfinite(v):
    return float(v) if v in ("nan", "inf", "-inf") else v


