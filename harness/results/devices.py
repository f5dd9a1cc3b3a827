"""Which device model produced a record, for grouping reports and comparisons by hardware when one
run spans several machines (the Ray executor, harness/run/ray_executor.py).

A record names where it ran in extra["where"] (the executor's reply): for a CUDA case the GPU(s)
it was given ("gpus": [{"name", "uuid"}], via NVML on that node), for a CPU case the node's CPU
model ("cpu_model"). Records from the local executor name only the host; for them the run's
environment (run.json "environment") answers, since the whole run used one machine.
"""

from __future__ import annotations

UNKNOWN = "unknown"


def device_model_of(measurement, environment: dict | None = None) -> str:
    """The device model a record was measured on: the GPU name for a CUDA case ("NVIDIA H100 80GB
    HBM3"), the CPU model for a CPU case ("AMD EPYC 9654 96-Core Processor"); "unknown" when
    neither the record nor `environment` says. `measurement` is a Measurement or its dict form."""
    if isinstance(measurement, dict):
        case, extra = measurement.get("case") or {}, measurement.get("extra") or {}
        device = case.get("device", "cpu") if isinstance(case, dict) else case.device
    else:
        device, extra = measurement.case.device, measurement.extra or {}
    where = extra.get("where") or {}
    env = environment or {}
    if str(device).startswith("cuda"):
        name = _first_gpu_name(where.get("gpus"))
        if name:
            return name
        if where.get("node_id"):  # ran on a known node that could not name its GPU
            return UNKNOWN
        return _first_gpu_name(env.get("gpus"), _cuda_index(device)) or UNKNOWN
    return where.get("cpu_model") or (None if where.get("node_id") else env.get("cpu_model")) or UNKNOWN


def _cuda_index(device: str) -> int:
    _, _, idx = str(device).partition(":")
    return int(idx) if idx.isdigit() else 0


def _first_gpu_name(gpus, index: int = 0) -> str | None:
    """The name of the GPU with CUDA index `index` in a list of {"index", "name", ...}."""
    if not isinstance(gpus, list):
        return None
    for position, g in enumerate(gpus):
        if isinstance(g, dict) and g.get("index", position) == index and g.get("name"):
            return str(g["name"])
    return None
