"""Text for the terminal: progress lines, the end-of-run summary, plain tables.

The only harness module (with report.py) that formats numbers for humans.
"""

from __future__ import annotations

import sys
import time

from harness.case import Case
from harness.results.records import Measurement


def fmt_time_s(t: float | None) -> str:
    if t is None:
        return "-"
    if t >= 1:
        return f"{t:.2f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.2f} ms"
    return f"{t * 1e6:.1f} us"


def fmt_bytes(n: int | float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def fmt_duration_s(t: float) -> str:
    t = int(round(t))
    return f"{t // 60}m{t % 60:02d}s" if t >= 60 else f"{t}s"


def case_shape(case: Case) -> str:
    heads = f"h{case.heads_q}" if case.heads_q == case.heads_kv else f"h{case.heads_q}/{case.heads_kv}"
    n = f"n{case.seq_len_q}" if not case.is_cross else f"n{case.seq_len_q}x{case.seq_len_kv}"
    bits = [f"b{case.batch}", heads, n, f"d{case.head_dim}", case.dtype, case.device]
    if case.causal:
        bits.append("causal")
    if case.mask != "none":
        bits.append(f"pad{case.mask_fraction:g}")
    if case.pass_kind != "forward":
        bits.append(case.pass_kind)
    if case.threads:
        bits.append(f"t{case.threads}")
    return " ".join(bits)


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


class Progress:
    """`[ 3/45] flash  b1 h8 n1024 d64 float32 cpu ... ok 12.3 ms  ETA 1m20s` on stderr."""

    def __init__(self, total: int, stream=None):
        self.total = total
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def skipped(self, measurements: list[Measurement]) -> None:
        self.stream.write(skipped_note(measurements) + "\n")
        self.stream.flush()

    def start(self, i: int, total: int, case: Case) -> None:
        if self.tty:
            self.stream.write(f"\r\033[K[{i:>{len(str(total))}}/{total}] {case.impl:<16} {case_shape(case)} ...")
            self.stream.flush()

    def done(self, i: int, total: int, case: Case, m: Measurement, wall_s: float) -> None:
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / i * (total - i)
        result = m.status
        if m.status == "ok":
            result += f" {fmt_time_s(m.median_s)}"
            if m.noise not in (None, "ok"):
                result += f" ({m.noise})"
        elif m.message:
            result += f": {m.message[:70]}"
        prefix = "\r\033[K" if self.tty else ""
        self.stream.write(
            f"{prefix}[{i:>{len(str(total))}}/{total}] {case.impl:<16} {case_shape(case):<40} "
            f"{result}  ETA {fmt_duration_s(eta)}\n"
        )
        self.stream.flush()


def skip_reasons(measurements: list[Measurement]) -> list[tuple[str, int]]:
    """(reason, count) of the skipped records, most common first."""
    counts: dict[str, int] = {}
    for m in measurements:
        if m.status == "skipped":
            counts[m.message or "no reason given"] = counts.get(m.message or "no reason given", 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def skipped_note(measurements: list[Measurement]) -> str:
    """`140 skipped (recorded with their reasons): 140 x no CUDA device on this machine`."""
    reasons = skip_reasons(measurements)
    n = sum(c for _, c in reasons)
    shown = "; ".join(f"{c} x {r}" for r, c in reasons[:4])
    more = f"; {len(reasons) - 4} more reasons in the report" if len(reasons) > 4 else ""
    return f"{n} skipped (recorded with their reasons): {shown}{more}"


def summary(measurements: list[Measurement]) -> str:
    """The end-of-run table: one row per case that ran; skipped cases as one line per reason."""
    rows = []
    for m in measurements:
        if m.status == "skipped":
            continue
        rows.append(
            [
                m.case.impl,
                case_shape(m.case),
                m.status,
                fmt_time_s(m.median_s),
                f"{m.tflops_per_s:.3f}" if m.tflops_per_s is not None else "-",
                fmt_bytes(m.peak_bytes),
                f"{m.max_abs_error:.1e}" if m.max_abs_error is not None else "-",
            ]
        )
    counts: dict[str, int] = {}
    for m in measurements:
        counts[m.status] = counts.get(m.status, 0) + 1
    tail = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    parts = []
    if rows:
        parts.append(table(["impl", "case", "status", "median", "TFLOP/s", "peak mem", "max err"], rows) + "\n")
    if counts.get("skipped"):
        parts.append(skipped_note(measurements))
    parts.append(f"{len(measurements)} cases: {tail}")
    return "\n".join(parts)
