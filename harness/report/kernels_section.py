"""The report's "Kernels and compile time" section: for every case that recorded which kernels ran
(Measurement.extra["kernels"], harness/measure/kernel_names.py) or a compile time
(metrics["compile_s"], harness/measure/compile_time.py), one row: implementation, case, compile time,
kernel names. Says e.g. whether SDPA ran its fused CPU flash kernel or the math fallback, and
whether a compiled implementation ran compiled code."""

from __future__ import annotations

from harness.report.render import Section, Table
from harness.results.rows import Row
from harness.results.units import fmt_time_s


def kernels_section(rows: list[Row]) -> Section | None:
    from harness.case import case_shape

    picked = [r for r in rows if (r.m.extra or {}).get("kernels") is not None
              or (r.m.metrics or {}).get("compile_s") is not None]
    if not picked:
        return None
    sec = Section("Kernels and compile time")
    compiled = [r.m.metrics["compile_s"] for r in picked if (r.m.metrics or {}).get("compile_s") is not None]
    if compiled:
        sec.paragraphs.append(
            f"Compile time (torch.compile, kept out of every latency figure): {fmt_time_s(sum(compiled))} in all "
            f"over {len(compiled)} compiled case(s); a case that reused a shape family's compiled code shows ~0.")
    body = []
    for r in picked:
        cs = (r.m.metrics or {}).get("compile_s")
        names = (r.m.extra or {}).get("kernels") or []
        err = (r.m.extra or {}).get("kernels_error")
        body.append([r["impl"], case_shape(r.case), "-" if cs is None else fmt_time_s(cs),
                     ", ".join(names) if names else (f"(profiler: {err})" if err else "-")])
    title = ("Kernels dispatched (the torch profiler over untimed calls: the memory pass on the CPU, one to "
             "three calls on CUDA) and compile time")
    sec.tables.append(Table(title, ["impl", "case", "compile", "kernels"], body, numeric=False))
    return sec
