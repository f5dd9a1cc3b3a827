"""Guards that keep an implementation from fooling the harness.

Checking only the first call's output let an implementation that zeroes q, k, v in place and
returns zeros pass with error 0.0, and one that is right once and returns NaN afterwards pass at
7 µs. So after the timed calls:
- q, k, v (and the mask) must be bit-identical to before: else `wrong`, "modified its inputs";
- the output of the LAST timed call is checked against the reference, like the first;
- one call on fresh inputs (another seed, same shape) is checked against its own reference, so
  an output cached from an earlier call is caught;
- a median faster than the measured matmul ceiling allows (calibrate.SUSPECT_FACTOR × it) is
  `suspect`: the work cannot have been done.
"""

from __future__ import annotations

import hashlib
from typing import Callable

from harness.case import Case


def checksums(inputs) -> dict[str, str]:
    """A digest of every input tensor's bytes (copied to the host once)."""
    out = {}
    for name in ("q", "k", "v", "attn_mask"):
        t = getattr(inputs, name, None)
        if t is None:
            continue
        data = t.detach().contiguous().cpu().view(-1).view(dtype=_bytes_dtype()).numpy().tobytes()
        out[name] = hashlib.sha1(data).hexdigest()
    return out


def _bytes_dtype():
    import torch

    return torch.uint8


class LastOutput:
    """Wraps the timed callable and keeps a reference to its latest result."""

    def __init__(self, fn: Callable[[], object]):
        self.fn = fn
        self.value = None

    def __call__(self):
        self.value = self.fn()
        return self.value


def check_after_timing(impl, case: Case, prepared, before: dict[str, str], last: LastOutput, seed: int) -> str:
    """Why the case is `wrong` after its timed calls, or ""."""
    from harness.measure import core

    after = checksums(prepared.inputs)
    changed = [k for k in before if after.get(k) != before[k]]
    if changed:
        return f"modified its inputs ({', '.join(changed)}) during its calls"
    if case.pass_kind == "forward" and last.value is not None:
        acc = core.check_output(last.value, prepared, case.dtype)
        if acc.wrong:
            return f"the last timed call's output is wrong: {acc.wrong}"
    elif last.value is not None:  # training passes return (dq, dk, dv)
        from harness.measure.grad_reference import check_grads

        gc = check_grads(last.value, prepared.ref_grads, prepared.naive_grads, case.dtype)
        if gc.wrong:
            return f"the last timed call's gradients are wrong: {gc.wrong}"
    last.value = None
    fresh = core.prepare(case, seed + 1_000_003)  # other values, same shape and mask
    acc = core.check_impl(impl, fresh, case)
    if acc.wrong:
        return f"a call on fresh inputs gave a wrong output (a cached result?): {acc.wrong}"
    return ""


def too_fast(case: Case, tflops_per_s: float, ceilings: dict) -> str:
    """Why the achieved rate is physically implausible, or ""."""
    from harness.measure.calibrate import SUSPECT_FACTOR, lookup

    ceiling = lookup(ceilings, case)
    if not ceiling or tflops_per_s * 1e12 <= SUSPECT_FACTOR * ceiling:
        return ""
    return (f"achieved {tflops_per_s * 1e3:.3g} GFLOP/s, more than {SUSPECT_FACTOR:g}x the measured matmul "
            f"ceiling ({ceiling / 1e9:.3g} GFLOP/s): it cannot have done the work")
