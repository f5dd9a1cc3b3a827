"""Does a case fit? Its implementation's memory model plus its inputs against the memory of the
place that will run it. Asked where the case runs (the worker, or the executor for its own
machine), never on a machine that merely plans the sweep.
"""

from __future__ import annotations

from harness.case import Case

MEMORY_HEADROOM = 0.8  # a case may use at most this fraction of the device's memory


def input_bytes(case: Case) -> int:
    """Bytes of the case's inputs as its workload allocates them."""
    from harness.workloads import workload_of

    return workload_of(case).input_bytes(case)


def too_big(case: Case, predicted_peak_bytes: int | None, device_memory_bytes: int) -> str:
    """Why the case must not run on a device with that much memory; "" when it fits (or when
    the implementation has no memory model to predict with)."""
    if predicted_peak_bytes is None:
        return ""
    need = predicted_peak_bytes + input_bytes(case)
    have = int(device_memory_bytes * MEMORY_HEADROOM)
    if need <= have:
        return ""
    return (f"predicted to need {need / 2**30:.1f} GiB, more than the {have / 2**30:.1f} GiB "
            f"allowed on {case.device}")
