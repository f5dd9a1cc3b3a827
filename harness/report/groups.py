"""Report groups: the rows of one scenario grid that differ only in sequence length, and the
x-axis each is drawn against. See harness/report/build.py for the grouping rule."""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness.results.rows import Row

GROUP_PARAMS = ("dtype", "device", "device_model", "causal", "batch", "heads_q", "heads_kv", "head_dim", "mask",
                "mask_fraction", "pass_kind", "threads", "workload", "kv_layout", "page_size")
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
                combos.setdefault(tuple(r[p] for p in GROUP_PARAMS), []).append(r)
        for rs in combos.values():
            groups.extend(_split_x(grid, rs))
    if len({r.device_model for r in rows}) > 1:  # a run over several machines: say which one
        for g in groups:
            g.label += f" on {g.rows[0].device_model}"
    # Groups where something was measured first (in scenario order), wholly skipped ones after:
    # on a CPU machine the CUDA grids are a footnote, not the opening of the report.
    return sorted(groups, key=lambda g: all(r["status"] == "skipped" for r in g.rows))


def _split_x(grid: str, rs: list[Row]) -> list[Group]:
    nq = sorted({int(r["seq_len_q"]) for r in rs})
    nk = sorted({int(r["seq_len_kv"]) for r in rs})
    if rs[0]["workload"] == "decode" and len(nq) == 1:
        return [Group(grid, _label(rs[0], f"{nq[0]} query token{'s' if nq[0] > 1 else ''}"), "seq_len_kv", "KV",
                      f"KV cache length (longest sequence; {nq[0]} query token{'s' if nq[0] > 1 else ''})", rs)]
    if rs[0]["workload"] == "decode" and len(nk) == 1:
        return [Group(grid, _label(rs[0], f"KV {nk[0]}"), "seq_len_q", "Nq",
                      f"query tokens per sequence (KV cache up to {nk[0]} tokens)", rs)]
    if all(r["seq_len_q"] == r["seq_len_kv"] for r in rs):
        return [Group(grid, _label(rs[0]), "seq_len_q", "N", "sequence length N (Nq = Nk)", rs)]
    if len(nq) == 1:
        return [Group(grid, _label(rs[0], f"Nq {nq[0]}"), "seq_len_kv", "Nk",
                      f"key/value length Nk (cross-attention, Nq = {nq[0]})", rs)]
    if len(nk) == 1:
        return [Group(grid, _label(rs[0], f"Nk {nk[0]}"), "seq_len_q", "Nq",
                      f"query length Nq (cross-attention, Nk = {nk[0]})", rs)]
    out = []
    for q in nq:  # both vary: one group per Nq, Nk on the x-axis
        out.extend(_split_x(grid, [r for r in rs if int(r["seq_len_q"]) == q]))
    return out


def _label(r: Row, fixed: str = "") -> str:
    hq, hkv = int(r["heads_q"]), int(r["heads_kv"])
    bits = [f"b{int(r['batch'])}", f"h{hq}" if hq == hkv else f"h{hq}/{hkv}", f"d{int(r['head_dim'])}",
            r["dtype"], r["device"]]
    if fixed:
        bits.append(fixed)
    if r["causal"]:
        bits.append("causal")
    if r["mask"] and r["mask"] != "none":
        bits.append(f"{r['mask']} {r['mask_fraction'] or 0:g}")
    if r["pass_kind"] and r["pass_kind"] != "forward":
        bits.append(r["pass_kind"])
    if r["threads"]:
        bits.append(f"{r['threads']} threads")
    if r["workload"] == "decode":
        bits.remove("causal")  # decode is always causal over each sequence
        bits.append("paged " + str(r["page_size"]) if r["kv_layout"] == "paged" else "contiguous")
    return " ".join(bits)




def num(v) -> float | None:
    """A finite float, or None."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None
