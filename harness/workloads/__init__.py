"""The workloads attnbench measures, each one unit (harness/workloads/base.py says what a unit
owns). Importing this package registers every workload's case parameters with harness.case, so
`harness/__init__.py` imports it: any Case can be built and read back as soon as `harness` is.

To add a workload: write its package next to prefill/ and decode/ (parameters, axes, inputs,
float64 reference, FLOPs and bytes, report grouping), add it to WORKLOADS below, register the
implementations that run it (registry.register_path), and ship a scenario.
"""

from __future__ import annotations

from harness.workloads import decode, mla_decode, prefill, serving
from harness.workloads.base import Workload

WORKLOADS: dict[str, Workload] = {w.name: w for w in (prefill.WORKLOAD, decode.WORKLOAD, mla_decode.WORKLOAD,
                                                       serving.WORKLOAD)}


def get(name: str) -> Workload:
    try:
        return WORKLOADS[name]
    except KeyError:
        raise ValueError(f"unknown workload {name!r}; allowed: {', '.join(WORKLOADS)}") from None


def workload_of(case) -> Workload:
    return get(case.workload)
