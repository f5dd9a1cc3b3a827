"""The roofline section: per device, achieved FLOP/s against arithmetic intensity (FLOPs / minimum
bytes) for every case that ran OK, one marker style per implementation, with both measured
ceilings drawn (the matmul peak, flat; the read bandwidth, the diagonal bytes/s x intensity).
A table beside it gives each case's % of its roofline time and whether it is memory- or
compute-bound. Decode lives at the far left (memory-bound); long prefill at the right, and so does
MLA decode in its absorbed form (each shared latent row serves every query head: ~120 FLOP/B in
float32 at 128 heads, right of a CPU's ridge point: compute-bound). The ridge (where the two
ceilings meet) is marked, and a line under the figure names the workloads whose points lie right of
it.
"""

from __future__ import annotations

import re

from harness.results.ceilings import ceilings_of, lookup
from harness.results.ceilings import bound, roofline_s
from harness.report.figures import new_figure, png_bytes
from harness.report.groups import num
from harness.report.render import Figure, Section, Table
from harness.results.rows import Row

MAX_TABLE_ROWS = 60


def roofline_section(rows: list[Row], calibration: dict, styles: dict) -> Section | None:
    points = [r for r in rows if r.ok and num(r["arithmetic_intensity"]) and num(r["tflops_per_s"])]
    if not points:
        return None
    sec = Section("Roofline")
    peaks, bws = ceilings_of(calibration, "matmul_flops_per_s"), ceilings_of(calibration, "read_bytes_per_s")
    for device in dict.fromkeys(r["device"] for r in points):
        pts = [r for r in points if r["device"] == device]
        peak, bw = lookup(peaks, pts[0].case), lookup(bws, pts[0].case)
        fig = _plot(pts, device, peak, bw, styles)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", device)
        sec.figures.append(Figure(f"90-roofline-{slug}.png", fig, f"roofline: {device}"))
        sec.tables.append(_table(pts, peaks, bws, device))
        note = _compute_bound_note(pts, peak, bw, device)
        if note:
            sec.paragraphs.append(note)
    sec.paragraphs.append("Achieved FLOP/s against arithmetic intensity (FLOPs / minimum bytes moved); the lines are "
                          "the ceilings measured in this run (matmul peak; read bandwidth × intensity). % of roofline "
                          "= roofline time / median time, roofline time = max(FLOPs / peak, bytes / bandwidth).")
    return sec


def _compute_bound_note(pts: list[Row], peak: float | None, bw: float | None, device: str) -> str:
    """`cpu: ridge at 5.1 FLOP/B; compute-bound (right of it): mla_decode (121 FLOP/B), ...`."""
    if not (peak and bw):
        return ""
    knee = peak / bw
    right: dict[str, list[float]] = {}
    for r in pts:
        ai = float(r["arithmetic_intensity"])
        if ai > knee:
            right.setdefault(r["workload"], []).append(ai)
    if not right:
        return f"{device}: ridge at {knee:.3g} FLOP/B; every point is left of it (memory-bound)."
    parts = [f"{w} ({min(a):.3g}" + (f"–{max(a):.3g}" if max(a) > min(a) * 1.01 else "") + " FLOP/B)"
             for w, a in right.items()]
    return f"{device}: ridge at {knee:.3g} FLOP/B; compute-bound (right of it): {', '.join(parts)}."


def _plot(pts: list[Row], device: str, peak: float | None, bw: float | None, styles: dict) -> bytes:
    fig, ax = new_figure()
    ais = [float(r["arithmetic_intensity"]) for r in pts]
    lo, hi = min(ais) / 2, max(ais) * 2
    if peak and bw:
        knee = peak / bw  # intensity where the two ceilings meet
        xs = [lo, min(max(knee, lo), hi), hi]
        ax.plot(xs, [min(peak, bw * x) / 1e12 for x in xs], "-", color="0.2", lw=1.4, label="roofline (measured)")
        if lo < knee < hi:  # the ridge: memory-bound to its left, compute-bound to its right
            ax.axvline(knee, color="0.5", lw=0.8, ls=":")
            ax.annotate(f" ridge {knee:.3g} FLOP/B: compute-bound →", (knee, peak / 1e12), fontsize=7,
                        color="0.35", va="top", xytext=(2, -4), textcoords="offset points")
    elif peak:
        ax.axhline(peak / 1e12, color="0.2", lw=1.4, label="matmul peak (measured)")
    for impl in dict.fromkeys(r.impl for r in pts):
        mine = [r for r in pts if r.impl == impl]
        color, marker = styles.get(impl, ("C0", "o"))
        ax.scatter([float(r["arithmetic_intensity"]) for r in mine], [float(r["tflops_per_s"]) for r in mine],
                   s=30, color=color, marker=marker, label=impl, zorder=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte, minimum bytes)")
    ax.set_ylabel("achieved TFLOP/s")
    ax.set_title(f"Roofline: {device}", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.85)
    return png_bytes(fig)


def _table(pts: list[Row], peaks: dict, bws: dict, device: str) -> Table:
    from harness.case import case_shape

    out = []
    for r in sorted(pts, key=lambda r: float(r["arithmetic_intensity"]))[:MAX_TABLE_ROWS]:
        flops, nbytes, med = float(r["flops"] or 0), float(r["min_bytes"] or 0), float(r["median_s"])
        peak, bw = lookup(peaks, r.case), lookup(bws, r.case)
        roof = roofline_s(flops, nbytes, peak, bw)
        out.append([r.impl, case_shape(r.case), f"{float(r['arithmetic_intensity']):.3g}",
                    f"{float(r['gbytes_per_s'] or 0):.3g}", f"{float(r['tflops_per_s']):.3g}",
                    f"{roof / med * 100:.0f}%" if roof else "-", bound(flops, nbytes, peak, bw) if roof else "-"])
    more = f" (first {MAX_TABLE_ROWS} by intensity)" if len(pts) > MAX_TABLE_ROWS else ""
    return Table(f"{device}: position on the roofline{more}",
                 ["impl", "case", "FLOP/B", "GB/s", "TFLOP/s", "% of roofline", "bound"], out, numeric=False)
