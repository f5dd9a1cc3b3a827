"""Text for the terminal: progress lines, the end-of-run summary, plain tables.
Numbers are shown through the metrics table (harness/results/metrics.py).
"""

from __future__ import annotations

import html
import sys
import time

from harness.case import Case, case_shape
from harness.results.metrics import console_metrics
from harness.results.records import Measurement
from harness.results.units import fmt_duration_s, fmt_time_s


def md_cell(s) -> str:
    """Plain text in a Markdown table cell: HTML escaped (names come from plugins), one line, no
    table breaks."""
    return html.escape(" ".join(str(s).split()), quote=False).replace("|", "\\|") or " "


def md_table(headers: list[str], rows: list[list]) -> list[str]:
    """A GitHub-flavoured Markdown table, one line per row, every cell through md_cell."""
    return ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|",
            *("| " + " | ".join(md_cell(x) for x in row) + " |" for row in rows)]


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
            flags = [m.noise] if m.noise not in (None, "ok") else []
            flags += ["contended"] if m.contended else []
            flags += [m.message.split(" at max_time_s")[0]] if m.message.startswith("precision target not reached") else []
            if flags:
                result += f" ({', '.join(flags)})"
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
    shown = console_metrics()
    rows = [[m.case.impl, case_shape(m.case), m.status + (" !" if m.contended else ""),
             *(x.human(x.value(m)) for x in shown)] for m in measurements if m.status != "skipped"]
    counts: dict[str, int] = {}
    for m in measurements:
        counts[m.status] = counts.get(m.status, 0) + 1
    tail = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    parts = []
    if rows:
        parts.append(table(["impl", "case", "status", *(x.label for x in shown)], rows) + "\n")
    if counts.get("skipped"):
        parts.append(skipped_note(measurements))
    contended = sum(bool(m.contended) for m in measurements)
    if contended:
        parts.append(f"{contended} case(s) marked ! were contended: another process took CPU they asked for; "
                     f"their times are not representative (compare never judges them)")
    parts.append(f"{len(measurements)} cases: {tail}")
    return "\n".join(parts)
