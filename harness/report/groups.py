"""Report groups: the rows of one scenario grid that differ only in what is drawn on the x-axis,
and that axis. The common parameters split groups here; each workload adds its own
(Workload.group_params), chooses the x-axis (Workload.x_axes) and the words of the title
(Workload.label_bits). See harness/report/build.py for the grouping rule."""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness import workloads
from harness.results.rows import Row

GROUP_PARAMS = ("dtype", "device", "device_model", "causal", "batch", "heads_q", "heads_kv", "head_dim", "pass_kind",
                "threads", "workload")
NOISE_MARK = {"noisy": "~", "unreliable": "~~"}
NOISE_NOTE = ("~ after a number: noisy timing (IQR/median ≥ 10%); ~~: unreliable (≥ 25%); ! contended (another "
              "process took CPU the case asked for). The plots draw those points as hollow markers.")


@dataclass
class Group:
    grid: str
    label: str
    x_col: str  # "seq_len_q" or "seq_len_kv"
    x_symbol: str  # "N", "Nq" or "Nk"
    x_label: str
    rows: list[Row]

    @property
    def xs(self) -> list[int]:
        return sorted({int(r[self.x_col]) for r in self.rows})


def make_groups(rows: list[Row]) -> list[Group]:
    """Grid -> combination of GROUP_PARAMS -> x-axis choice (see the module docstring)."""
    groups: list[Group] = []
    for grid in dict.fromkeys(r["grid"] for r in rows):
        combos: dict[tuple, list[Row]] = {}
        for r in rows:
            if r["grid"] == grid and r["seq_len_q"] and r["seq_len_kv"]:
                own = _workload(r).group_params
                combos.setdefault(tuple(r[p] for p in (*GROUP_PARAMS, *own)), []).append(r)
        for rs in combos.values():
            groups.extend(_split_x(grid, rs))
    if len({r.device_model for r in rows if r["status"] != "skipped"}) > 1:  # several machines: say which
        for g in groups:  # a group that never ran names no machine (a CUDA grid on a CPU: not "on unknown")
            if measured(g):
                g.label += f" on {g.rows[0].device_model}"
    # Groups where something was measured first (in scenario order), wholly skipped ones after:
    # on a CPU machine the CUDA grids are a footnote, not the opening of the report.
    return sorted(groups, key=lambda g: not measured(g))


def measured(g: Group) -> bool:
    """Did at least one case of the group run (any status but skipped)?"""
    return any(r["status"] != "skipped" for r in g.rows)


def _workload(r: Row):
    return workloads.get(r["workload"] or "prefill")


def _split_x(grid: str, rs: list[Row]) -> list[Group]:
    return [Group(grid, _label(part[0], axis.title), axis.column, axis.symbol, axis.label, part)
            for axis, part in _workload(rs[0]).x_axes(rs)]


def _label(r: Row, fixed: str = "") -> str:
    hq, hkv = int(r["heads_q"]), int(r["heads_kv"])
    bits = [f"b{int(r['batch'])}", f"h{hq}" if hq == hkv else f"h{hq}/{hkv}", f"d{int(r['head_dim'])}",
            r["dtype"], r["device"]]
    if fixed:
        bits.append(fixed)
    wl = _workload(r)
    if r["causal"] and wl.label_causal:
        bits.append("causal")
    bits += wl.label_bits(r)
    if r["pass_kind"] and r["pass_kind"] != "forward":
        bits.append(r["pass_kind"])
    if r["threads"]:
        bits.append(f"{r['threads']} threads")
    return " ".join(bits)


def num(v) -> float | None:
    """A finite float, or None."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None
