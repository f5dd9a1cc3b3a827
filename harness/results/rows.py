"""Typed rows for reports: the records of a run read once (harness.results.store), one Row per
case with its metrics looked up through the metrics table. Plots and text both consume these;
nothing downstream goes back to the files or to a DataFrame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness import vocab
from harness.case import Case, case_field_names
from harness.results.metrics import BY_FIELD, STAT_FIELDS
from harness.results.records import Measurement, last_by_case



@dataclass(frozen=True)
class Row:
    m: Measurement
    device_model: str = ""  # the GPU or CPU model that measured it (harness.results.devices)

    @property
    def case(self) -> Case:
        return self.m.case

    @property
    def impl(self) -> str:
        return self.m.case.impl

    @property
    def grid(self) -> str:
        return self.m.case.grid

    @property
    def status(self) -> str:
        return self.m.status

    @property
    def message(self) -> str:
        return self.m.message

    @property
    def noise(self) -> str:
        return self.m.noise or ""

    @property
    def contended(self) -> bool:
        return bool(self.m.contended)

    @property
    def mark(self) -> str:
        """What a report writes after the number: "!" contended, "~" noisy, "~~" unreliable."""
        if self.m.contended:
            return "!"
        return {"noisy": "~", "unreliable": "~~"}.get(self.noise, "")

    @property
    def ok(self) -> bool:
        """Ran OK with a usable median time."""
        return self.m.status == vocab.OK and (self.m.median_s or 0) > 0

    def __getitem__(self, name: str):
        """A case parameter, a metric (metrics table) or a summary statistic, by name: the report
        picks axes and columns by name (e.g. the x-axis is seq_len_q or seq_len_kv)."""
        if name in case_field_names():
            return getattr(self.m.case, name)
        if name in BY_FIELD:
            return BY_FIELD[name].value(self.m)
        if name in STAT_FIELDS:
            return getattr(self.m.stats, name, None)
        if name in ("status", "message", "noise", "impl", "grid", "ok", "device_model"):
            return getattr(self, name)
        raise KeyError(f"row has no field {name!r}")


def rows_of(measurements, environment: dict | None = None) -> list[Row]:
    """Last record wins for a case measured twice (a resumed run), in first-seen order."""
    from harness.results.devices import device_model_of

    return [Row(m, device_model_of(m, environment)) for m in last_by_case(measurements).values()]


def read_rows(run_dir: str | Path) -> list[Row]:
    from harness.results.store import read_measurements, read_run_info

    env = read_run_info(run_dir).get("environment")
    return rows_of(read_measurements(run_dir), env if isinstance(env, dict) else None)
