"""Does a case fit? Its implementation's memory model plus its inputs against the memory of the
place that will run it. Asked where the case runs (the worker, or the executor for its own
machine), never on a machine that merely plans the sweep.
"""

from __future__ import annotations

from harness.case import Case

MEMORY_HEADROOM = 0.8  # a case may use at most this fraction of the device's memory


def input_bytes(case: Case) -> int:
    """Bytes of q, k and v (a decode case's cache holds seq_len_kv = max(kv_lens) per sequence)."""
    q = case.batch * case.heads_q * case.seq_len_q * case.head_dim
    kv = 2 * case.batch * case.heads_kv * case.seq_len_kv * case.head_dim
    return (q + kv) * case.element_bytes


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
